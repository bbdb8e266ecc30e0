"""Wiring of the device daemon: identity, store, engine, runner, sensors + scheduler control
loop, deployment worker, Connect stream, local API. Plain and explicit, one place.

Threads: the Connect stream (connection.py), the deployment worker (deployer.py), the control
loop (here: read sensors -> ask the scheduler -> hot-swap), and the HTTP servers.
"""

from __future__ import annotations

import collections
import logging
import os
import pathlib
import threading
import time

from agent.channel import auth_metadata, make_channel
from agent.config import AgentConfig
from agent.connection import Connection
from agent.deployer import Deployer
from agent.deviceinfo import device_info
from agent.download import Downloader
from agent.engines import get_engine
from agent.fsutil import atomic_write_json
from agent.identity import Identity, ensure_identity
from agent.local_api import LocalApiServer
from agent.metrics import AgentMetrics
from agent.profiling import ProfileCache, profile_bundle
from agent.runtime import Runner
from agent.state import ReportedStateHolder
from agent.store import InstalledBundle, Store
from proto import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

AGENT_INFO_FILE = "agent.json"
_SENSOR_FIELDS = ("battery_percent", "power_plugged", "temperature_celsius", "cpu_load_percent",
                  "memory_available_bytes", "cpu_frequency_mhz")


def reading_to_proto(reading) -> fleet_pb2.SensorReading:
    msg = fleet_pb2.SensorReading(source=getattr(reading, "source", "") or "")
    for name in _SENSOR_FIELDS:
        value = getattr(reading, name, None)
        if value is not None:
            setattr(msg, name, type(getattr(msg, name))(value))
    return msg


def reason_text(reason) -> str:
    """Scheduler reasons are str-Enums; metric labels and the proto want the plain value."""
    return str(getattr(reason, "value", reason))


def reading_to_dict(reading) -> dict:
    if reading is None:
        return {}
    return {name: getattr(reading, name, None) for name in (*_SENSOR_FIELDS, "source")}


def variant_options(manifest, profiles: list[fleet_pb2.VariantProfile]):
    """What the scheduler may choose from: the variants that ran here, with this device's numbers."""
    from agent.scheduler import VariantOption

    measured = {p.variant_id: p for p in profiles}
    options = []
    for v in manifest.variants:
        p = measured.get(v.id)
        if p is None:
            continue          # failed to load on this device: never schedule it
        options.append(VariantOption(
            variant_id=v.id, quality=float(v.quality),
            latency_p50_seconds=p.latency_p50_seconds, latency_p95_seconds=p.latency_p95_seconds,
            cpu_seconds_per_inference=p.cpu_seconds_per_inference, size_bytes=v.model_size,
            weight_bits=v.weight_bits, sparsity=float(v.sparsity)))
    return options


def _profile_dict(p: fleet_pb2.VariantProfile) -> dict:
    return {"variant_id": p.variant_id, "engine": p.engine, "latency_p50_seconds": p.latency_p50_seconds,
            "latency_p95_seconds": p.latency_p95_seconds,
            "cpu_seconds_per_inference": p.cpu_seconds_per_inference,
            "peak_memory_bytes": p.peak_memory_bytes, "runs": p.runs}


class Daemon:
    """One agent. `sensor_source`, `scheduler` and `engine` can be injected (tests)."""

    def __init__(self, config: AgentConfig, *, sensor_source=None, scheduler=None, engine=None):
        self.config = config
        self.stop_event = threading.Event()
        self.data_dir = pathlib.Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if sensor_source is None:
            from agent.sensors import make_sensor_source
            sensor_source = make_sensor_source(config.sensors, speed=config.sim_speed, seed=config.sensor_seed)
        if scheduler is None:
            from agent.scheduler import PolicyConfig, Scheduler
            scheduler = Scheduler(PolicyConfig.load(config.policy_file))
        self.sensors = sensor_source
        self.scheduler = scheduler
        self.engine = engine or get_engine(config.engine, intra_op_threads=config.intra_op_threads)
        self.metrics = AgentMetrics()
        self.state = ReportedStateHolder()
        self.store = Store(self.data_dir)
        self.profile_cache = ProfileCache(self.store.profiles)
        batching = None
        if config.batch_max_rows:
            from agent.batching import BatchConfig
            policy = getattr(scheduler, "policy", None)
            budget = policy.latency.budget_p95_seconds if policy is not None else 0.1
            batching = BatchConfig(max_rows=config.batch_max_rows, budget_seconds=budget,
                                   max_inflight=os.cpu_count() or 1)
        self.runner = Runner(self.engine, metrics=self.metrics, on_work=self._record_work,
                             on_latency=self._observe_latency, load_nice=config.load_nice,
                             batching=batching)
        # One switch at a time: decide + activate must not interleave between the control loop
        # and the deployment worker (a stale decision could revert a fresh bundle).
        self._switch_lock = threading.RLock()
        self._decisions: collections.deque[dict] = collections.deque(maxlen=50)
        # Switches applied here, by reason: the one source for the local counter
        # (edgefleet_agent_variant_switches_total), /v1/status and DeviceMetrics.switches.
        self._switch_counts: dict[str, int] = {}
        self._last_reading = None
        self._profiles: list[fleet_pb2.VariantProfile] = []
        self._options = []
        self.identity: Identity | None = None
        self.connection: Connection | None = None
        self.deployer: Deployer | None = None
        self.api: LocalApiServer | None = None
        self.metrics_server: LocalApiServer | None = None
        self.channel = None
        self._threads: list[threading.Thread] = []

    # -- callbacks from the runner (hot path: keep them cheap) -----------------------------
    def _record_work(self, cpu_seconds: float) -> None:
        try:
            self.sensors.record_work(cpu_seconds)
        except Exception:
            log.debug("sensor record_work failed", exc_info=True)

    def _observe_latency(self, variant_id: str, seconds: float) -> None:
        try:
            self.scheduler.observe_latency(variant_id, seconds)
        except Exception:
            log.debug("scheduler observe_latency failed", exc_info=True)

    # -- switching ------------------------------------------------------------------------
    def _read_sensors(self):
        try:
            reading = self.sensors.read()
        except Exception as exc:            # a sensor source must not take the agent down
            log.warning("sensor read failed: %s", exc)
            return self._last_reading
        self._last_reading = reading
        self.metrics.set_sensors(reading)
        self.state.set_sensors_quietly(reading_to_proto(reading))
        return reading

    def _apply_decision(self, bundle: InstalledBundle, decision, force_switch: bool = False) -> None:
        """Hot-swap to the decided variant (caller holds _switch_lock) and report why."""
        previous = self.runner.active_variant
        reason = reason_text(decision.reason)
        switching = force_switch or decision.variant_id != previous or self.runner.bundle is not bundle
        if switching:
            self.runner.activate(bundle, decision.variant_id)
        if switching or decision.changed:
            self.metrics.switches.labels(reason).inc()
            self._switch_counts[reason] = self._switch_counts.get(reason, 0) + 1
            self._decisions.append({"variant_id": decision.variant_id, "reason": reason,
                                    "detail": getattr(decision, "detail", ""), "at": time.time(),
                                    "previous": previous, "changed": True})
            log.info("variant %s -> %s (%s: %s)", previous, decision.variant_id, reason,
                     getattr(decision, "detail", ""))
        self.state.update(active_variant=decision.variant_id, switch_reason=reason)

    def activate_bundle(self, bundle: InstalledBundle) -> None:
        """Benchmark (or load cached profiles), let the scheduler choose, load + warm that variant.
        Raises if nothing can run; the previous bundle keeps serving then."""
        profiles = profile_bundle(self.engine, bundle, self.profile_cache,
                                  warmup=self.config.profile_warmup, runs=self.config.profile_runs)
        options = variant_options(bundle.manifest, profiles)
        if not options:
            raise RuntimeError(f"none of the {len(bundle.manifest.variants)} variants loads on this device")
        reading = self._read_sensors()
        with self._switch_lock:
            old_options = self._options
            self.scheduler.set_variants(options)
            try:
                decision = self.scheduler.decide(reading)
                self._apply_decision(bundle, decision, force_switch=True)
                self._update_pause()
            except Exception:
                self.scheduler.set_variants(old_options)
                raise
            self._options, self._profiles = options, profiles
        self.state.update(profiles=profiles, sensors=reading_to_proto(reading) if reading else None)

    def _control_step(self) -> None:
        reading = self._read_sensors()
        if reading is None:
            return
        with self._switch_lock:
            bundle = self.runner.bundle
            if bundle is None or not self._options:
                return
            decision = self.scheduler.decide(reading)
            self._update_pause()
            if decision.variant_id == self.runner.active_variant and not decision.changed:
                return
            try:
                self._apply_decision(bundle, decision)
            except Exception as exc:
                log.error("could not switch to variant %s: %s; staying on %s", decision.variant_id, exc,
                          self.runner.active_variant)

    def _update_pause(self) -> None:
        """Pause low-priority requests while the scheduler holds a thermal trip or critical battery."""
        try:
            pause = self.scheduler.low_priority_pause() if hasattr(self.scheduler, "low_priority_pause") else None
        except Exception:
            log.debug("low_priority_pause failed", exc_info=True)
            return
        if pause is None:
            self.runner.set_low_priority_pause(None)
        else:
            self.runner.set_low_priority_pause(reason_text(pause[0]), pause[1])

    def _control_loop(self) -> None:
        while not self.stop_event.wait(self.config.control_interval):
            try:
                self._control_step()
            except Exception:
                log.exception("control loop step failed")

    # -- upstream reports -------------------------------------------------------------------
    def metrics_message(self) -> fleet_pb2.DeviceMetrics:
        msg = fleet_pb2.DeviceMetrics(timestamp_unix=time.time(), active_variant=self.runner.active_variant or "")
        if self._last_reading is not None:
            msg.sensors.CopyFrom(reading_to_proto(self._last_reading))
        msg.variants.extend(self.runner.counters())
        counts = dict(self._switch_counts)
        msg.switches.extend(fleet_pb2.SwitchCount(reason=r, total=int(n)) for r, n in sorted(counts.items()))
        return msg

    def status(self) -> dict:
        _, reported = self.state.snapshot()
        bundle = self.runner.bundle
        pause = self.runner.low_priority_pause
        return {
            "device_id": self.identity.device_id if self.identity else None,
            "server": self.config.server,
            "connected": bool(self.connection and self.connection.connected.is_set()),
            "connection_error": self.connection.last_error if self.connection else "",
            "bundle": None if bundle is None else {
                "bundle_id": bundle.bundle_id, "deployment_id": bundle.deployment_id,
                "model": bundle.manifest.model, "version": bundle.manifest.version,
                "variants": [v.id for v in bundle.manifest.variants]},
            "phase": fleet_pb2.ReportedState.Phase.Name(reported.phase),
            "error": reported.error,
            "target_bundle_id": reported.target_bundle_id,
            "progress": reported.progress,
            "active_variant": self.runner.active_variant,
            "reason": reported.switch_reason,
            "sensors": reading_to_dict(self._last_reading),
            "profiles": [_profile_dict(p) for p in self._profiles],
            # Switches applied (newest 50), and the scheduler's own history: every switch and
            # every change of reason while holding, each with reason + detail.
            "decisions": list(self._decisions),
            "scheduler_history": (self.scheduler.history_snapshot(50)
                                  if hasattr(self.scheduler, "history_snapshot") else []),
            "switch_counts": dict(self._switch_counts),
            "low_priority_paused": None if pause is None else {"reason": pause[0],
                                                                "retry_after_seconds": pause[1]},
            "scheduler": self.scheduler.state() if hasattr(self.scheduler, "state") else {},
            "batching": self.runner.batching_state(),
            "counters": [{"variant_id": c.variant_id, "inferences_total": c.inferences_total,
                          "errors_total": c.errors_total, "latency_p50_seconds": c.latency_p50_seconds,
                          "latency_p95_seconds": c.latency_p95_seconds} for c in self.runner.counters()],
        }

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Enroll (or reuse the identity), restore the active bundle, start every thread and
        the local API, then publish agent.json. Raises EnrollmentError on a rejected token."""
        config = self.config
        info = device_info()
        self.channel = make_channel(config)
        self.identity = ensure_identity(config, self.channel, info, self.stop_event)

        # Whatever a killed process left behind: temp files go, the active bundle is re-verified.
        active = self.store.recover(self.identity.trusted_publisher_keys)
        if active is not None:
            try:
                self.activate_bundle(active)
                self.state.update(bundle_id=active.bundle_id, deployment_id=active.deployment_id,
                                  target_bundle_id=active.bundle_id, phase=fleet_pb2.ReportedState.INSTALLED)
            except Exception as exc:
                log.error("installed bundle %s cannot run: %s", active.bundle_id[:12], exc)
                active = None

        stub = fleet_pb2_grpc.DeviceServiceStub(self.channel)
        downloader = Downloader(stub, auth_metadata(self.identity.credential), self.data_dir,
                                deadline=config.download_deadline, retry_delay=config.backoff_base)
        self.deployer = Deployer(self.store, downloader, self.state, self.identity.trusted_publisher_keys,
                                 self.activate_bundle, backoff_base=config.backoff_base,
                                 backoff_max=config.backoff_max)
        self.deployer.active = active
        self.connection = Connection(config, self.channel, self.identity.credential, self.state, info=info,
                                     metrics_message=self.metrics_message, on_desired=self.deployer.submit,
                                     agent_metrics=self.metrics)

        self.api = LocalApiServer(config.local_host, config.local_port, self.runner, self.metrics,
                                  self.status).start()
        if config.metrics_port >= 0:
            self.metrics_server = LocalApiServer(config.local_host, config.metrics_port, None, self.metrics,
                                                 metrics_only=True).start()
        for name, target in (("deployer", self.deployer.run), ("connection", self.connection.run),
                             ("control", self._control_loop)):
            t = threading.Thread(target=target, name=f"agent-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        atomic_write_json(self.data_dir / AGENT_INFO_FILE, {
            "pid": os.getpid(), "device_id": self.identity.device_id, "local_host": config.local_host,
            "local_port": self.api.port,
            "metrics_port": self.metrics_server.port if self.metrics_server else -1})
        log.info("agent %s up: local API http://%s:%d, server %s", self.identity.device_id,
                 config.local_host, self.api.port, config.server)

    def wait(self) -> None:
        self.stop_event.wait()

    def stop(self) -> None:
        """Close the stream, stop the workers and HTTP servers; idempotent."""
        self.stop_event.set()
        if self.connection:
            self.connection.stop()
        if self.deployer:
            self.deployer.stop()
        for server in (self.api, self.metrics_server):
            if server:
                server.stop()
        self.api = self.metrics_server = None
        for t in self._threads:
            t.join(10)
        self._threads = []
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        log.info("agent stopped")
