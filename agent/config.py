"""AgentConfig: every knob of the device daemon in one dataclass (CLI flags map onto it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from proto.tls import check_client_certificate_options

DEFAULT_LOCAL_PORT = 8470


@dataclass
class AgentConfig:
    """Configuration of one agent process.

    Args:
        server: control plane address "host:port".
        enrollment_token: one-time token; only needed until data_dir holds an identity.
        data_dir: everything the agent keeps (identity, artifacts, bundles, profiles).
        sensors: sensor spec for agent.sensors.make_sensor_source ("psutil", "sim:drain", ...).
        sim_speed: time factor for simulated sensors (1.0 = real time).
        sensor_seed: seed for simulated sensors (None = random).
        local_host / local_port: local inference API bind address (port 0 = any free port).
        metrics_port: separate Prometheus /metrics listener (-1 = off, 0 = any free port);
            /metrics is always served on the local API port too.
        policy_file: scheduler policy TOML (None = built-in defaults).
        heartbeat_interval / metrics_interval / control_interval: seconds.
        backoff_base / backoff_max: reconnect backoff bounds, seconds (jittered exponential).
        rpc_deadline: deadline of unary calls (Enroll), seconds.
        download_deadline: deadline of one Download call; a longer transfer resumes.
        labels: initial device labels sent with enrollment.
        tls_ca: PEM file of the CA that signs the server certificate; None = plaintext.
        tls_cert / tls_key: this device's client certificate (PEM chain) and its private key, for
            a server that requires mutual TLS; both or neither, and only with tls_ca. The server
            binds the device to the certificate's subject CN at enrollment: keep using a
            certificate with the same CN (a renewed one is fine).
        intra_op_threads: onnxruntime intra-op threads per session.
        engine: inference engine name from agent.engines: "auto" (the default) measures each
            variant on the native engine and onnxruntime when it arrives and serves it on the
            faster; "onnxruntime" or "native" pin one.
        profile_warmup / profile_runs: on-arrival benchmark of each variant.
        batch_max_rows: coalesce concurrent requests for the same variant into batches of at
            most this many rows, within the policy's latency budget (0 = off, the default;
            see agent/batching.py for which variants qualify).
        load_nice: variant loads for a switch run at this much lower CPU priority (0..19; 0 =
            same priority as serving), so serving keeps its latency while a switch loads.
        max_message_bytes: explicit gRPC message size limit both ways.
    """

    server: str = "127.0.0.1:50051"
    enrollment_token: str | None = None
    data_dir: str = field(default_factory=lambda: os.path.expanduser("~/.local/share/edgefleet-agent"))
    sensors: str = "psutil"
    sim_speed: float = 1.0
    sensor_seed: int | None = None
    local_host: str = "127.0.0.1"
    local_port: int = DEFAULT_LOCAL_PORT
    metrics_port: int = -1
    policy_file: str | None = None
    heartbeat_interval: float = 2.0
    metrics_interval: float = 2.0
    control_interval: float = 1.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    rpc_deadline: float = 10.0
    download_deadline: float = 300.0
    labels: dict[str, str] = field(default_factory=dict)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    intra_op_threads: int = 1
    engine: str = "auto"
    profile_warmup: int = 2
    profile_runs: int = 10
    load_nice: int = 10
    batch_max_rows: int = 0
    max_message_bytes: int = 32 * 1024 * 1024
    # Keepalive: a ping every 30 s, dead after 10 s without an answer. The server must allow
    # pings this often (grpc.http2.min_recv_ping_interval_without_data_ms <= 30000).
    keepalive_time_ms: int = 30_000
    keepalive_timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        if ":" not in self.server:
            raise ValueError(f"server address {self.server!r} must be host:port")
        if self.sim_speed <= 0:
            raise ValueError("sim_speed must be positive")
        if not 0 <= self.local_port <= 65535:
            raise ValueError("local_port must be 0..65535")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be -1 (off) or 0..65535")
        for name in ("heartbeat_interval", "metrics_interval", "control_interval",
                     "backoff_base", "backoff_max", "rpc_deadline", "download_deadline"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.backoff_max < self.backoff_base:
            raise ValueError("backoff_max must be >= backoff_base")
        if self.batch_max_rows < 0 or self.batch_max_rows == 1:
            raise ValueError("batch_max_rows must be 0 (off) or >= 2")
        if not 0 <= self.load_nice <= 19:
            raise ValueError("load_nice must be 0..19")
        if self.intra_op_threads < 1 or self.profile_runs < 1 or self.profile_warmup < 0:
            raise ValueError("intra_op_threads and profile_runs must be >= 1, profile_warmup >= 0")
        check_client_certificate_options(self.tls_ca, self.tls_cert, self.tls_key)

    @property
    def insecure(self) -> bool:
        return self.tls_ca is None
