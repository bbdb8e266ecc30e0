"""The agent's own Prometheus registry (served on /metrics locally; never the global one).

Labels stay bounded: `variant` is limited by the bundle (<= 64 variants) and `reason` by
the scheduler's fixed reason set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets from 100 µs to 5 s: small models on a device sit at the low end.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0)


class AgentMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.inferences = Counter("edgefleet_agent_inferences", "Inferences served, by variant",
                                  ["variant"], registry=r)
        self.errors = Counter("edgefleet_agent_inference_errors", "Inferences that raised, by variant",
                              ["variant"], registry=r)
        self.latency = Histogram("edgefleet_agent_inference_latency_seconds", "Inference latency",
                                 ["variant"], buckets=LATENCY_BUCKETS, registry=r)
        self.active_variant = Gauge("edgefleet_agent_active_variant_info",
                                    "1 for the variant now serving inference", ["variant"], registry=r)
        self.switches = Counter("edgefleet_agent_variant_switches", "Variant switches by reason",
                                ["reason"], registry=r)
        self.low_priority_rejected = Counter(
            "edgefleet_agent_low_priority_rejected", "Low-priority requests refused (503) while paused, by reason",
            ["reason"], registry=r)
        self.low_priority_paused = Gauge("edgefleet_agent_low_priority_paused",
                                         "1 while low-priority requests are paused (hot, battery critical)",
                                         registry=r)
        self.battery = Gauge("edgefleet_agent_battery_percent", "Battery charge (absent if unknown)", registry=r)
        self.power_plugged = Gauge("edgefleet_agent_power_plugged", "1 on mains power", registry=r)
        self.temperature = Gauge("edgefleet_agent_temperature_celsius", "Hottest CPU temperature", registry=r)
        self.cpu_load = Gauge("edgefleet_agent_cpu_load_percent", "CPU load", registry=r)
        self.memory_available = Gauge("edgefleet_agent_memory_available_bytes", "Available memory", registry=r)
        self.connected = Gauge("edgefleet_agent_connected", "1 while the Connect stream is up", registry=r)
        self.reconnects = Counter("edgefleet_agent_reconnects", "Connect stream (re)attempts", registry=r)
        self.download_bytes = Counter("edgefleet_agent_download_bytes", "Verified artifact bytes received",
                                      registry=r)
        self._active: str | None = None

    def observe_inference(self, variant: str, seconds: float, ok: bool) -> None:
        self.inferences.labels(variant).inc()
        if ok:
            self.latency.labels(variant).observe(seconds)
        else:
            self.errors.labels(variant).inc()

    def set_active_variant(self, variant: str | None) -> None:
        if self._active and self._active != variant:
            self.active_variant.labels(self._active).set(0)
        if variant:
            self.active_variant.labels(variant).set(1)
        self._active = variant

    def set_sensors(self, reading) -> None:
        for gauge, value in ((self.battery, reading.battery_percent),
                             (self.temperature, reading.temperature_celsius),
                             (self.cpu_load, reading.cpu_load_percent),
                             (self.memory_available, reading.memory_available_bytes),
                             (self.power_plugged, None if reading.power_plugged is None
                              else float(reading.power_plugged))):
            gauge.set(float("nan") if value is None else float(value))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
