"""Enrollment (once) and the device identity kept in data_dir/identity.json.

The one-time token is traded for a device id, a credential and the publisher keys the
device must trust. The identity file is written atomically with mode 0600 (it holds a
secret); every later start reuses it and never needs the token again.
"""

from __future__ import annotations

import base64
import json
import logging
import pathlib
import random
import socket
import threading
import time
from dataclasses import dataclass, field

import grpc

from agent.config import AgentConfig
from agent.fsutil import atomic_write_json
from proto import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"

# Codes that mean "try again later" rather than "this will never work".
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}


class EnrollmentError(RuntimeError):
    """Enrollment cannot succeed (no token, token rejected, bad identity file): exit, don't retry."""


@dataclass
class Identity:
    device_id: str
    credential: str
    trusted_publisher_keys: list[bytes]
    server: str
    enrolled_unix: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "device_id": self.device_id,
            "credential": self.credential,
            "trusted_publisher_keys": [base64.b64encode(k).decode("ascii")
                                       for k in self.trusted_publisher_keys],
            "server": self.server,
            "enrolled_unix": self.enrolled_unix,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_json(cls, raw: dict) -> "Identity":
        return cls(
            device_id=str(raw["device_id"]),
            credential=str(raw["credential"]),
            trusted_publisher_keys=[base64.b64decode(k) for k in raw.get("trusted_publisher_keys", [])],
            server=str(raw.get("server", "")),
            enrolled_unix=float(raw.get("enrolled_unix", 0.0)),
            labels=dict(raw.get("labels", {})),
        )


def identity_path(data_dir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(data_dir) / IDENTITY_FILE


def load_identity(data_dir: str | pathlib.Path) -> Identity | None:
    path = identity_path(data_dir)
    if not path.exists():
        return None
    try:
        return Identity.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EnrollmentError(f"identity file {path} is unreadable ({exc}); remove it and "
                              "enroll again with a new --token") from None


def save_identity(data_dir: str | pathlib.Path, identity: Identity) -> None:
    pathlib.Path(data_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(identity_path(data_dir), identity.to_json(), mode=0o600)


def enroll(channel: grpc.Channel, config: AgentConfig, info: fleet_pb2.DeviceInfo) -> Identity:
    """One Enroll call. Raises EnrollmentError on a rejected token, grpc.RpcError otherwise."""
    stub = fleet_pb2_grpc.DeviceServiceStub(channel)
    request = fleet_pb2.EnrollRequest(token=config.enrollment_token or "",
                                      hostname=socket.gethostname(), labels=config.labels, info=info)
    try:
        response = stub.Enroll(request, timeout=config.rpc_deadline)
    except grpc.RpcError as exc:
        code = exc.code()
        if code in _TRANSIENT:
            raise
        if code == grpc.StatusCode.UNAUTHENTICATED:
            raise EnrollmentError(f"enrollment token rejected by {config.server}: {exc.details()} "
                                  "(tokens are one-time and expire; ask the operator for a new one)") from None
        raise EnrollmentError(f"enrollment failed: {code.name}: {exc.details()}") from None
    if not response.device_id or not response.credential:
        raise EnrollmentError("server answered Enroll without a device id or credential")
    return Identity(device_id=response.device_id, credential=response.credential,
                    trusted_publisher_keys=list(response.trusted_publisher_keys),
                    server=config.server, enrolled_unix=time.time(), labels=dict(config.labels))


def ensure_identity(config: AgentConfig, channel: grpc.Channel, info: fleet_pb2.DeviceInfo,
                    stop: threading.Event | None = None) -> Identity:
    """Reuse data_dir/identity.json, or enroll once and save it.

    A server that is not reachable yet is retried with backoff (until `stop`); a rejected
    token raises EnrollmentError at once.
    """
    existing = load_identity(config.data_dir)
    if existing is not None:
        log.info("using identity %s from %s", existing.device_id, identity_path(config.data_dir))
        return existing
    if not config.enrollment_token:
        raise EnrollmentError(f"no identity in {config.data_dir} and no enrollment token given "
                              "(pass --token once)")
    stop = stop or threading.Event()
    attempt = 0
    while not stop.is_set():
        try:
            identity = enroll(channel, config, info)
        except grpc.RpcError as exc:
            delay = min(config.backoff_max, config.backoff_base * 2 ** attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            log.warning("enrollment: server %s not reachable (%s); retrying in %.1fs",
                        config.server, exc.code().name, delay)
            stop.wait(delay)
            continue
        save_identity(config.data_dir, identity)
        log.info("enrolled as device %s", identity.device_id)
        return identity
    raise EnrollmentError("stopped before enrollment completed")
