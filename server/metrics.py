"""Prometheus export of the fleet: a custom Collector reading the database and the latest
DeviceMetrics each device pushed over its stream (devices sit behind NAT; nobody scrapes them).

Cardinality is bounded on purpose: per-device series carry `device_id`; variant series carry
`variant`, `bits` and `sparsity` taken from the manifest of the bundle the device holds, and
a variant the manifest does not list is dropped rather than exported under a made-up label.
Switch reasons are sanitized and capped per device.

Everything takes an explicit registry (tests use a fresh CollectorRegistry each).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from proto import fleet_pb2
from proto.manifest import Manifest, ManifestError
from server.db import Database

MAX_SWITCH_REASONS_PER_DEVICE = 16
_REASON_RE = re.compile(r"[^a-z0-9_:.-]")
_DEPLOYMENT_STATES = [n for n in fleet_pb2.Deployment.State.keys() if n != "STATE_UNSPECIFIED"]


class LatestDeviceMetrics:
    """The most recent DeviceMetrics per device (in memory: it is a cache of what devices push)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, fleet_pb2.DeviceMetrics] = {}

    def put(self, device_id: str, metrics: fleet_pb2.DeviceMetrics) -> None:
        with self._lock:
            self._latest[device_id] = metrics

    def get(self, device_id: str) -> fleet_pb2.DeviceMetrics | None:
        with self._lock:
            return self._latest.get(device_id)

    def snapshot(self) -> dict[str, fleet_pb2.DeviceMetrics]:
        with self._lock:
            return dict(self._latest)


class ServerStats:
    """Counters the gRPC layer bumps: requests by service/method/code, artifact bytes served."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter = Counter()
        self._bytes_served = 0

    def count_request(self, service: str, method: str, code: str) -> None:
        with self._lock:
            self._requests[(service, method, code)] += 1

    def add_bytes_served(self, n: int) -> None:
        with self._lock:
            self._bytes_served += n

    def snapshot(self) -> tuple[dict[tuple[str, str, str], int], int]:
        with self._lock:
            return dict(self._requests), self._bytes_served


@dataclass
class _VariantLabels:
    bits: str
    sparsity: str


class FleetCollector:
    """prometheus_client custom collector: computed at scrape time, nothing kept in between
    except parsed manifests (immutable, keyed by bundle id)."""

    def __init__(self, db: Database, latest: LatestDeviceMetrics, stats: ServerStats,
                 heartbeat_timeout_seconds: float, connected=lambda: set(), clock=time.time) -> None:
        self.db, self.latest, self.stats = db, latest, stats
        self.heartbeat_timeout_seconds = heartbeat_timeout_seconds
        self.connected = connected
        self.clock = clock
        self._variants_by_bundle: dict[str, dict[str, _VariantLabels]] = {}

    def describe(self):
        # Returning nothing keeps register() from running a full collect (a DB read) up front.
        return []

    def _variants(self, bundle_id: str) -> dict[str, _VariantLabels]:
        if not bundle_id:
            return {}
        cached = self._variants_by_bundle.get(bundle_id)
        if cached is not None:
            return cached
        bundle = self.db.get_bundle(bundle_id)
        if bundle is None:
            return {}
        try:
            manifest = Manifest.from_bytes(bundle.manifest)
        except ManifestError:
            return {}
        labels = {v.id: _VariantLabels(str(v.weight_bits), f"{float(v.sparsity):g}")
                  for v in manifest.variants}
        self._variants_by_bundle[bundle_id] = labels
        return labels

    def collect(self):
        now = self.clock()
        snap = self.db.fleet_snapshot()
        latest = self.latest.snapshot()
        requests, bytes_served = self.stats.snapshot()

        devices = GaugeMetricFamily("edgefleet_devices", "Enrolled devices by connectivity.",
                                    labels=["state"])
        up = GaugeMetricFamily("edgefleet_device_up",
                               "1 if the device was heard from within the heartbeat timeout.",
                               labels=["device_id"])
        last_seen = GaugeMetricFamily("edgefleet_device_last_seen_timestamp_seconds",
                                      "When the device was last heard from (unix seconds).",
                                      labels=["device_id"])
        battery = GaugeMetricFamily("edgefleet_device_battery_ratio",
                                    "Battery charge 0..1 (absent when the device has no battery).",
                                    labels=["device_id"])
        plugged = GaugeMetricFamily("edgefleet_device_power_plugged",
                                    "1 when on external power.", labels=["device_id"])
        temperature = GaugeMetricFamily("edgefleet_device_temperature_celsius",
                                        "Hottest reported temperature.", labels=["device_id"])
        cpu = GaugeMetricFamily("edgefleet_device_cpu_load_ratio", "CPU load 0..1.",
                                labels=["device_id"])
        memory = GaugeMetricFamily("edgefleet_device_memory_available_bytes",
                                   "Memory available on the device.", labels=["device_id"])
        vlabels = ["device_id", "variant", "bits", "sparsity"]
        active = GaugeMetricFamily("edgefleet_device_active_variant_info",
                                   "1 for the variant now serving inference.", labels=vlabels)
        inferences = CounterMetricFamily("edgefleet_device_inferences_total",
                                         "Inferences run on the device since agent start.",
                                         labels=vlabels)
        errors = CounterMetricFamily("edgefleet_device_inference_errors_total",
                                     "Failed inferences since agent start.", labels=vlabels)
        busy = CounterMetricFamily("edgefleet_device_inference_seconds_total",
                                   "Seconds spent in inference since agent start.", labels=vlabels)
        latency = GaugeMetricFamily("edgefleet_device_inference_latency_seconds",
                                    "Inference latency quantiles over the agent's recent window.",
                                    labels=vlabels + ["quantile"])
        switches = CounterMetricFamily("edgefleet_device_variant_switches_total",
                                       "Variant switches by reason since agent start.",
                                       labels=["device_id", "reason"])

        online_count = 0
        for d in snap.devices:
            is_up = d.last_seen is not None and now - d.last_seen <= self.heartbeat_timeout_seconds
            online_count += is_up
            up.add_metric([d.id], 1.0 if is_up else 0.0)
            if d.last_seen is not None:
                last_seen.add_metric([d.id], d.last_seen)
            if not is_up:
                continue    # an offline device's last numbers would read as current: leave them out
            reported = fleet_pb2.ReportedState()
            if d.reported:
                reported.ParseFromString(d.reported)
            m = latest.get(d.id)
            sensors = m.sensors if m is not None and m.HasField("sensors") else reported.sensors
            if sensors.HasField("battery_percent"):
                battery.add_metric([d.id], min(max(sensors.battery_percent / 100.0, 0.0), 1.0))
            if sensors.HasField("power_plugged"):
                plugged.add_metric([d.id], 1.0 if sensors.power_plugged else 0.0)
            if sensors.HasField("temperature_celsius"):
                temperature.add_metric([d.id], sensors.temperature_celsius)
            if sensors.HasField("cpu_load_percent"):
                cpu.add_metric([d.id], sensors.cpu_load_percent / 100.0)
            if sensors.HasField("memory_available_bytes"):
                memory.add_metric([d.id], float(sensors.memory_available_bytes))

            variants = self._variants(reported.bundle_id or d.desired_bundle_id or "")
            active_id = (m.active_variant if m is not None and m.active_variant
                         else reported.active_variant)
            if active_id in variants:
                v = variants[active_id]
                active.add_metric([d.id, active_id, v.bits, v.sparsity], 1.0)
            if m is None:
                continue
            for vc in m.variants:
                v = variants.get(vc.variant_id)
                if v is None:
                    continue
                labels = [d.id, vc.variant_id, v.bits, v.sparsity]
                inferences.add_metric(labels, float(vc.inferences_total))
                errors.add_metric(labels, float(vc.errors_total))
                busy.add_metric(labels, vc.latency_seconds_sum)
                latency.add_metric(labels + ["0.5"], vc.latency_p50_seconds)
                latency.add_metric(labels + ["0.95"], vc.latency_p95_seconds)
            reasons: dict[str, float] = {}
            for sc in m.switches:
                reason = _REASON_RE.sub("_", sc.reason.lower())[:64] or "unspecified"
                if reason in reasons or len(reasons) < MAX_SWITCH_REASONS_PER_DEVICE:
                    reasons[reason] = reasons.get(reason, 0.0) + float(sc.total)
            for reason, total in reasons.items():
                switches.add_metric([d.id, reason], total)

        devices.add_metric(["online"], float(online_count))
        devices.add_metric(["offline"], float(len(snap.devices) - online_count))

        bundles = GaugeMetricFamily("edgefleet_bundles", "Bundles stored on the server.",
                                    value=float(snap.bundles_total))
        deployments = GaugeMetricFamily("edgefleet_deployments", "Deployments by state.",
                                        labels=["state"])
        for state in _DEPLOYMENT_STATES:
            deployments.add_metric([state.lower()], float(snap.deployments_by_state.get(state, 0)))
        waiting = GaugeMetricFamily("edgefleet_deployment_targets_waiting",
                                    "Targets of in-progress phased rollouts (max_in_flight) not released yet.",
                                    value=float(snap.targets_waiting))
        streams = GaugeMetricFamily("edgefleet_device_streams",
                                    "Device streams connected to this server process.",
                                    value=float(len(self.connected())))
        grpc_requests = CounterMetricFamily("edgefleet_grpc_requests_total",
                                            "gRPC calls handled, by service, method and status code.",
                                            labels=["service", "method", "code"])
        for (service, method, code), n in sorted(requests.items()):
            grpc_requests.add_metric([service, method, code], float(n))
        served = CounterMetricFamily("edgefleet_artifact_bytes_served_total",
                                     "Artifact bytes streamed to devices.", value=float(bytes_served))

        yield from (devices, up, last_seen, battery, plugged, temperature, cpu, memory, active,
                    inferences, errors, busy, latency, switches, bundles, deployments, waiting, streams,
                    grpc_requests, served)


def register_fleet_collector(registry: CollectorRegistry, collector: FleetCollector) -> FleetCollector:
    registry.register(collector)
    return collector


class _MetricsHTTPServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _MetricsHTTPServer6(_MetricsHTTPServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - scrapes every 15 s would flood the log
        pass


def start_metrics_server(host: str, port: int, registry: CollectorRegistry):
    """Serve /metrics for `registry` on a daemon thread; returns (httpd, thread).

    httpd.server_port is the bound port (useful with port 0); httpd.shutdown() stops it.
    A short poll interval keeps shutdown quick.
    """
    server_class = _MetricsHTTPServer6 if ":" in host else _MetricsHTTPServer
    httpd = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                              name="metrics-http", daemon=True)
    thread.start()
    return httpd, thread
