"""Wiring: `serve(config)` builds and starts the control plane; `main(argv)` runs it as a process.

serve() spells the steps out in order: resolve config -> open the database (and sweep the
artifact files no bundle references) -> on PostgreSQL, the cross-replica notifications (NOTIFY
sender and listener, server/notify.py) -> create the gRPC server -> add servicers (device,
admin, health, reflection) -> add the port -> start -> start the reaper and /metrics -> write
data_dir/server.json (temp + rename) so other processes find the ports.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client.registry import CollectorRegistry

from proto import fleet_pb2, fleet_pb2_grpc
from server.admin_service import AdminService
from server.artifacts import ArtifactStore
from server.config import ServerConfig
from server.db import Database
from server.device_service import DeviceService
from server.interceptors import RequestCountingInterceptor
from server.metrics import (FleetCollector, LatestDeviceMetrics, ServerStats,
                            register_fleet_collector, start_metrics_server)
from server.notify import NotifyListener, NotifySender, listener_conninfo, new_replica_id
from server.reaper import DeploymentReaper
from server.sessions import SessionHub

log = logging.getLogger(__name__)

DEVICE_SERVICE = fleet_pb2.DESCRIPTOR.services_by_name["DeviceService"].full_name
ADMIN_SERVICE = fleet_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


def grpc_server_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_receive_message_bytes),
        ("grpc.max_send_message_length", config.max_send_message_bytes),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        # Agents ping their long-lived stream; allow it this often without a GOAWAY.
        ("grpc.http2.min_ping_interval_without_data_ms", config.min_client_ping_interval_ms),
        ("grpc.http2.max_pings_without_data", 0),
        # Without this a second server on a taken port would silently share it.
        ("grpc.so_reuseport", 0),
    ]


def _address(host: str, port: int) -> str:
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"          # server.json is read by local processes
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class RunningServer:
    config: ServerConfig
    grpc_server: grpc.Server
    port: int
    metrics_port: int | None
    address: str
    operator_token: str
    trusted_keys: list[bytes]
    db: Database
    store: ArtifactStore
    hub: SessionHub
    latest_metrics: LatestDeviceMetrics
    stats: ServerStats
    registry: CollectorRegistry
    health: health.HealthServicer
    reaper: DeploymentReaper
    notify_listener: NotifyListener | None = None     # None on SQLite (one process)
    _metrics_httpd: object = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    def stop(self, grace: float | None = 2.0) -> None:
        """Stop taking calls, end device streams (agents reconnect), wait up to `grace`."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        done = self.grpc_server.stop(grace)
        self.hub.close_all()
        done.wait()
        self.reaper.stop()
        if self.notify_listener is not None:
            self.notify_listener.stop()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        self.db.dispose()
        _remove_server_json(self.config.server_json_path)
        log.info("server stopped")

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def serve(config: ServerConfig, registry: CollectorRegistry | None = None) -> RunningServer:
    # Resolve what lives in the data dir.
    config.data_dir.mkdir(parents=True, exist_ok=True)
    operator_token = config.resolved_operator_token()
    trusted_keys = config.resolved_trusted_keys()
    if not trusted_keys:
        log.warning("no trusted publisher keys: every bundle upload will be refused")
    tls_credentials = config.resolved_tls_credentials()
    db = Database(config.resolved_db_url())
    db.create_schema()
    store = ArtifactStore(config.artifacts_dir)
    # Files a removal or an upload left unreferenced when the server stopped before its sweep.
    swept = db.sweep_artifacts(store.remove_except)
    if swept:
        log.info("removed %d unreferenced artifact file(s), %d bytes", len(swept), sum(swept.values()))
    latest, stats = LatestDeviceMetrics(), ServerStats()
    # PostgreSQL may be shared by several replicas: changes made here are NOTIFYed to them and
    # theirs LISTENed for. SQLite is one process: the hub alone reaches every stream.
    replica_id = new_replica_id()
    hub = SessionHub(peers=None if db.is_sqlite else NotifySender(db.engine, replica_id))
    notify_listener = None if db.is_sqlite else NotifyListener(listener_conninfo(db.url), hub, replica_id)

    # Whatever was started before a failure (port taken, metrics port taken...) is undone.
    undo: list = [db.dispose]
    try:
        if notify_listener is not None:
            notify_listener.start()
            undo.append(notify_listener.stop)
        # Create.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers,
                                                        thread_name_prefix="grpc"),
                             interceptors=[RequestCountingInterceptor(stats)],
                             options=grpc_server_options(config))
        # Add servicers.
        fleet_pb2_grpc.add_DeviceServiceServicer_to_server(
            DeviceService(db, store, hub, latest, stats, trusted_keys,
                          desired_recheck_seconds=config.desired_recheck_seconds,
                          bind_client_certificates=config.mutual_tls), server)
        fleet_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminService(db, store, hub, operator_token, trusted_keys,
                         heartbeat_timeout_seconds=config.heartbeat_timeout_seconds,
                         deployment_timeout_seconds=config.deployment_timeout_seconds,
                         enrollment_token_ttl_seconds=config.enrollment_token_ttl_seconds,
                         max_bundle_bytes=config.max_bundle_bytes), server)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (DEVICE_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        # Add the port.
        if tls_credentials is None:
            port = server.add_insecure_port(_bind(config.host, config.port))
        else:
            port = server.add_secure_port(_bind(config.host, config.port), tls_credentials)
        # Start.
        reaper = DeploymentReaper(db, config.reaper_interval_seconds, on_desired_changed=hub.notify_desired)
        reaper.start()
        undo.append(reaper.stop)
        server.start()
        undo.append(lambda: server.stop(0).wait())
        for name in ("", DEVICE_SERVICE, ADMIN_SERVICE):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

        registry = registry if registry is not None else CollectorRegistry()
        register_fleet_collector(registry, FleetCollector(db, latest, stats, config.heartbeat_timeout_seconds,
                                                          connected=hub.connected))
        httpd, metrics_port = None, None
        if config.metrics_port >= 0:
            httpd, _thread = start_metrics_server(config.host, config.metrics_port, registry)
            metrics_port = httpd.server_port
            undo.append(lambda: (httpd.shutdown(), httpd.server_close()))

        running = RunningServer(config=config, grpc_server=server, port=port, metrics_port=metrics_port,
                                address=_address(config.host, port), operator_token=operator_token,
                                trusted_keys=trusted_keys, db=db, store=store, hub=hub,
                                latest_metrics=latest, stats=stats, registry=registry,
                                health=health_servicer, reaper=reaper,
                                notify_listener=notify_listener, _metrics_httpd=httpd)
        _write_server_json(config.server_json_path, {
            "pid": os.getpid(), "grpc_port": port, "metrics_port": metrics_port,
            "address": running.address, "tls": config.tls})
        transport = " (mutual TLS)" if config.mutual_tls else " (TLS)" if config.tls else ""
        log.info("edgefleet server on %s%s (metrics %s, db %s)", running.address, transport,
                 metrics_port if metrics_port is not None else "disabled", db.engine.url.render_as_string())
        return running
    except BaseException:
        for step in reversed(undo):
            try:
                step()
            except Exception:
                log.exception("cleanup after a failed start")
        raise


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write_server_json(path: pathlib.Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove_server_json(path: pathlib.Path) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edgefleet server", description="Run the edgefleet control plane.")
    p.add_argument("--data-dir", default=os.environ.get("EDGEFLEET_DATA_DIR", "./var/server"),
                   help="database, artifacts, operator token, server.json (default ./var/server)")
    p.add_argument("--host", default="127.0.0.1", help="bind address for gRPC and /metrics")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (0 = pick a free one)")
    p.add_argument("--metrics-port", type=int, default=9464,
                   help="Prometheus /metrics port (0 = pick a free one, -1 = disabled)")
    p.add_argument("--db-url", default=None,
                   help="SQLAlchemy URL (default sqlite in the data dir; e.g. postgresql+psycopg://...)")
    p.add_argument("--operator-token", default=None,
                   help="operator token (default: data_dir/operator.token, created on first start)")
    p.add_argument("--trust-key", action="append", default=[], metavar="FILE",
                   help="raw 32-byte Ed25519 publisher key to trust (repeatable)")
    p.add_argument("--tls-cert", default=os.environ.get("EDGEFLEET_TLS_CERT"), metavar="PEM",
                   help="certificate chain: serve gRPC over TLS (with --tls-key; default $EDGEFLEET_TLS_CERT)")
    p.add_argument("--tls-key", default=os.environ.get("EDGEFLEET_TLS_KEY"), metavar="PEM",
                   help="private key of --tls-cert (default $EDGEFLEET_TLS_KEY)")
    p.add_argument("--tls-client-ca", default=os.environ.get("EDGEFLEET_TLS_CLIENT_CA"), metavar="PEM",
                   help="mutual TLS: require client certificates signed by this CA; a device must keep "
                        "the certificate it enrolled with (default $EDGEFLEET_TLS_CLIENT_CA)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p.parse_args(argv)


def _path_or_none(value: str | None) -> pathlib.Path | None:
    return pathlib.Path(value) if value else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ServerConfig(data_dir=pathlib.Path(args.data_dir), host=args.host, port=args.port,
                              metrics_port=args.metrics_port, db_url=args.db_url,
                              operator_token=args.operator_token,
                              trust_key_files=[pathlib.Path(p) for p in args.trust_key],
                              tls_cert_file=_path_or_none(args.tls_cert), tls_key_file=_path_or_none(args.tls_key),
                              tls_client_ca_file=_path_or_none(args.tls_client_ca))
        running = serve(config)
    except ValueError as exc:          # a bad option or file (TLS, keys, token): say which, no traceback
        log.error("cannot start: %s", exc)
        print(f"edgefleet server: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum, _frame):
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stop.wait(1.0):
        pass
    running.stop(grace=5.0)
    return 0
