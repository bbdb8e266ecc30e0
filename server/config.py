"""ServerConfig: everything the control plane needs to start, with defaults that run on a laptop.

Secrets and keys that live in the data dir are resolved here (not in app.py) so that the
wiring in `serve()` stays a flat list of steps:

    data_dir/edgefleet.db              SQLite database (default db_url)
    data_dir/operator.token            operator token, created 0600 on first start
    data_dir/trusted_publishers/*.pub  raw 32-byte Ed25519 keys whose bundles are accepted
    data_dir/artifacts/sha256/<hex>    content-addressed artifact store
    data_dir/server.json               ports of the running server (written after start)
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field

import grpc

from proto.signing import PUBLIC_KEY_BYTES
from proto.tls import server_credentials
from server.tokens import new_token

MIB = 1 << 20


@dataclass
class ServerConfig:
    """Args:
        data_dir: where the database (by default), artifacts, token and server.json live.
        host: address to bind gRPC and /metrics to.
        port: gRPC port; 0 picks a free one (see RunningServer.port / server.json).
        metrics_port: Prometheus /metrics port; 0 picks a free one, -1 disables it.
        db_url: SQLAlchemy URL; None = sqlite in data_dir. PostgreSQL: postgresql+psycopg://...
        operator_token: None = read data_dir/operator.token or create it.
        trust_key_files: files holding one raw 32-byte public key each (--trust-key).
        trusted_publisher_keys: extra raw keys given programmatically (tests, embedding).
        heartbeat_timeout_seconds: a device silent this long counts as offline.
        deployment_timeout_seconds: deadline of a deployment created with timeout 0.
        enrollment_token_ttl_seconds: lifetime of a token created with ttl 0.
        max_receive_message_bytes / max_send_message_bytes: explicit gRPC message limits.
        max_bundle_bytes: upper bound on the sum of file sizes of one uploaded bundle.
        max_workers: gRPC worker threads; every connected device stream holds one.
        reaper_interval_seconds: how often deployments past their deadline are timed out.
        desired_recheck_seconds: a connected stream re-reads its desired state this often even
            without a notification. On PostgreSQL changes made by another replica arrive at once
            through LISTEN/NOTIFY (server/notify.py); this recheck is the safety net for a
            notification lost while a replica died or its listener was reconnecting.
        tls_cert_file / tls_key_file: PEM certificate chain and private key; both set = gRPC
            over TLS (agents pass the CA with --tls-ca), both None = plaintext.
        tls_client_ca_file: PEM CA certificate(s); set = mutual TLS: every client (devices and
            operators) must present a certificate this CA signed, and a device's calls must come
            with the certificate its id is bound to (server/device_service.py). Needs TLS.
    """

    data_dir: pathlib.Path
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9464
    db_url: str | None = None
    operator_token: str | None = None
    trust_key_files: list[pathlib.Path] = field(default_factory=list)
    trusted_publisher_keys: list[bytes] = field(default_factory=list)
    heartbeat_timeout_seconds: float = 15.0
    deployment_timeout_seconds: float = 900.0
    enrollment_token_ttl_seconds: float = 3600.0
    max_receive_message_bytes: int = 8 * MIB
    max_send_message_bytes: int = 64 * MIB
    max_bundle_bytes: int = 4096 * MIB
    max_workers: int = 128
    keepalive_time_ms: int = 30_000          # server pings an idle connection this often
    keepalive_timeout_ms: int = 10_000       # and drops it if the ping is not answered
    min_client_ping_interval_ms: int = 10_000  # clients may ping this often without strikes
    reaper_interval_seconds: float = 1.0
    desired_recheck_seconds: float = 10.0
    tls_cert_file: pathlib.Path | None = None
    tls_key_file: pathlib.Path | None = None
    tls_client_ca_file: pathlib.Path | None = None

    def __post_init__(self) -> None:
        self.data_dir = pathlib.Path(self.data_dir)
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both a certificate and a private key (or neither for plaintext)")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("a client CA (mutual TLS) needs the server's own TLS certificate and key too")
        self.trust_key_files = [pathlib.Path(p) for p in self.trust_key_files]
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port {self.metrics_port} out of range (-1 disables)")
        if self.heartbeat_timeout_seconds <= 0 or self.deployment_timeout_seconds <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_receive_message_bytes < MIB:
            raise ValueError("max_receive_message_bytes below 1 MiB cannot carry a manifest")
        for key in self.trusted_publisher_keys:
            if len(key) != PUBLIC_KEY_BYTES:
                raise ValueError("trusted publisher keys must be raw 32-byte Ed25519 keys")

    # -- paths ------------------------------------------------------------------------
    @property
    def artifacts_dir(self) -> pathlib.Path:
        return self.data_dir / "artifacts"

    @property
    def trusted_publishers_dir(self) -> pathlib.Path:
        return self.data_dir / "trusted_publishers"

    @property
    def server_json_path(self) -> pathlib.Path:
        return self.data_dir / "server.json"

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def mutual_tls(self) -> bool:
        return self.tls_client_ca_file is not None

    # -- resolution (touches disk) ----------------------------------------------------
    def resolved_tls_credentials(self) -> grpc.ServerCredentials | None:
        """Server credentials built from the PEM files, read once at start; None for plaintext.

        Read and checked here so a wrong path, a non-PEM file or a key of another certificate
        stops the start with the file's name, not with grpc's generic "failed to bind"."""
        if not self.tls:
            return None
        return server_credentials(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)

    def resolved_db_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'edgefleet.db').resolve()}"

    def resolved_operator_token(self) -> str:
        """The explicit token, else the one in data_dir/operator.token (created on first start).

        O_EXCL makes two servers starting at once on the same data dir agree on one token.
        """
        if self.operator_token:
            return self.operator_token
        path = self.data_dir / "operator.token"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            token = path.read_text().strip()
            if not token:
                raise ValueError(f"{path} is empty; delete it to have a new token created") from None
            return token
        token = new_token(32)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        return token

    def resolved_trusted_keys(self) -> list[bytes]:
        """Explicit keys + --trust-key files + data_dir/trusted_publishers/*.pub, deduplicated."""
        keys: list[bytes] = list(self.trusted_publisher_keys)
        files = list(self.trust_key_files)
        if self.trusted_publishers_dir.is_dir():
            files += sorted(self.trusted_publishers_dir.glob("*.pub"))
        for path in files:
            raw = path.read_bytes()
            if len(raw) != PUBLIC_KEY_BYTES:
                raise ValueError(f"{path}: expected a raw {PUBLIC_KEY_BYTES}-byte Ed25519 public key, "
                                 f"got {len(raw)} bytes")
            keys.append(raw)
        return list(dict.fromkeys(keys))
