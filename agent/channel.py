"""The gRPC channel to the control plane: keepalive, explicit message limits, optional TLS
(and a client certificate for mutual TLS)."""

from __future__ import annotations

import grpc

from agent.config import AgentConfig
from proto.tls import channel_credentials


def channel_options(config: AgentConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        # Only ping while a call (the Connect stream) is open; idle pings get us GOAWAY'd.
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # We do our own jittered backoff; keep grpc's reconnect from sleeping long after
        # the server comes back.
        ("grpc.initial_reconnect_backoff_ms", int(config.backoff_base * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(config.backoff_max * 1000)),
    ]


def make_channel(config: AgentConfig, server: str | None = None) -> grpc.Channel:
    target = server or config.server
    options = channel_options(config)
    if config.tls_ca is None:
        return grpc.insecure_channel(target, options=options)
    creds = channel_credentials(config.tls_ca, config.tls_cert, config.tls_key)   # TlsError names a bad file
    return grpc.secure_channel(target, creds, options=options)


def auth_metadata(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {credential}"),)
