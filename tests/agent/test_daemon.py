"""The whole daemon in-process against a small DeviceService over real gRPC (tests/agent/helpers.py):
enrollment, the Connect stream, a deployment, inference through the local API, reconnection,
and a restart that reuses identity, bundle and profiles. Plus the CLI's exit on a bad token."""

from __future__ import annotations

import json
import stat
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from agent.channel import make_channel
from agent.config import AgentConfig
from agent.connection import Connection, backoff_delay
from agent.daemon import Daemon
from agent.main import main
from agent.state import ReportedStateHolder
from proto import fleet_pb2
from tests.agent.helpers import IN_DIM, FakeFleet, FakeServer, engine_answer, make_bundle, wait_for
from tests.conftest import free_port

RS = fleet_pb2.ReportedState


def _config(tmp_path, server, **kw) -> AgentConfig:
    base = dict(server=server.address, enrollment_token="good-token", data_dir=str(tmp_path / "agent"),
                sensors="sim:mains", sensor_seed=0, local_port=0, metrics_port=0, heartbeat_interval=0.2,
                metrics_interval=0.2, control_interval=0.2, backoff_base=0.05, backoff_max=0.5,
                profile_warmup=1, profile_runs=3)
    base.update(kw)
    return AgentConfig(**base)


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read()


def _infer(port, x, variant=None):
    payload = {"inputs": {"input": x.tolist()}}
    if variant:
        payload["variant"] = variant
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/infer", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture
def fleet():
    bundle = make_bundle()
    fleet = FakeFleet(trusted_keys=[bundle.publisher_key])
    fleet.artifacts.update(bundle.files)
    server = FakeServer(fleet, free_port()).start()
    yield fleet, server, bundle
    server.stop()


def test_enroll_connect_deploy_infer_reconnect_restart(tmp_path, fleet):
    fleet, server, bundle = fleet
    config = _config(tmp_path, server)
    daemon = Daemon(config)
    try:
        daemon.start()
        data_dir = tmp_path / "agent"
        identity = json.loads((data_dir / "identity.json").read_text())
        assert identity["device_id"] == "dev-1"
        assert stat.S_IMODE((data_dir / "identity.json").stat().st_mode) == 0o600
        info = json.loads((data_dir / "agent.json").read_text())
        assert info["device_id"] == "dev-1" and info["local_port"] == daemon.api.port
        assert info["metrics_port"] == daemon.metrics_server.port
        # No bundle yet: the API says so.
        with pytest.raises(urllib.error.HTTPError) as err:
            _infer(info["local_port"], np.zeros((1, IN_DIM), np.float32))
        assert err.value.code == 503

        wait_for(lambda: {"hello", "heartbeat", "metrics", "state"} <= fleet.kinds(), 30, "stream traffic")
        assert fleet.received[0].WhichOneof("kind") == "hello"

        before = len(fleet.states())
        fleet.set_desired(bundle.desired("dep-1"))
        wait_for(lambda: (s := fleet.last_state()) is not None and s.phase == RS.INSTALLED, 60, "INSTALLED")
        # State is reported "latest wins": a phase that lasted less than one send may be skipped,
        # but what the server sees must move forward through the pipeline and end INSTALLED.
        # (VERIFYING twice: the signature before downloading, every digest after.)
        pipeline = [RS.VERIFYING, RS.DOWNLOADING, RS.VERIFYING, RS.INSTALLING, RS.INSTALLED]
        seen = [s.phase for s in fleet.states()[before:]]
        seen = [p for i, p in enumerate(seen) if i == 0 or p != seen[i - 1]]
        steps = iter(pipeline)
        assert all(any(p == q for q in steps) for p in seen), seen   # seen is a subsequence
        assert seen[-1] == RS.INSTALLED
        final = fleet.last_state()
        assert final.bundle_id == bundle.bundle_id and final.deployment_id == "dep-1"
        assert {p.variant_id for p in final.profiles} == {"fp32", "int8", "int4"}
        assert final.active_variant in {"fp32", "int8", "int4"} and final.switch_reason
        assert json.loads((data_dir / "current.json").read_text())["bundle_id"] == bundle.bundle_id
        assert (data_dir / "profiles" / f"{bundle.bundle_id}.json").exists()

        x = np.random.default_rng(0).standard_normal((2, IN_DIM)).astype(np.float32)
        for vid in ("fp32", "int4"):
            answer = _infer(info["local_port"], x, vid)
            path = data_dir / "bundles" / bundle.bundle_id / bundle.manifest.variant(vid).file
            assert path.read_bytes() == bundle.file_of(vid)
            # The default engine is "auto": each variant on whichever engine measured faster.
            assert answer["variant"] == vid and answer["engine"] in ("native", "onnxruntime")
            expected = engine_answer(answer["engine"], path, {"input": x})
            np.testing.assert_array_equal(np.asarray(answer["outputs"]["logits"], np.float32), expected)
        status = json.loads(_get(info["local_port"], "/v1/status"))
        assert status["device_id"] == "dev-1" and status["bundle"]["bundle_id"] == bundle.bundle_id
        assert status["active_variant"] == final.active_variant and status["decisions"]
        assert status["sensors"]["source"].startswith("sim")
        assert b"edgefleet_agent_inferences_total" in _get(info["metrics_port"], "/metrics")
        # Metrics upstream carry the inference counters.
        wait_for(lambda: any(c.inferences_total >= 1 for m in list(fleet.received)
                             if m.WhichOneof("kind") == "metrics" for c in m.metrics.variants),
                 30, "counters upstream")

        # The server goes away and comes back on the same port: the agent reconnects by itself.
        connects = fleet.connects
        server.stop()
        wait_for(lambda: not daemon.connection.connected.is_set(), 30, "disconnect noticed")
        server.start()
        wait_for(lambda: fleet.connects > connects and daemon.connection.connected.is_set(), 60, "reconnect")
    finally:
        daemon.stop()

    # Restart: no token needed (and the token is spent), bundle and profiles are reused.
    profile_file = tmp_path / "agent" / "profiles" / f"{bundle.bundle_id}.json"
    mtime = profile_file.stat().st_mtime_ns
    again = Daemon(_config(tmp_path, server, enrollment_token=None))
    try:
        again.start()
        assert again.identity.device_id == "dev-1"
        assert again.runner.bundle.bundle_id == bundle.bundle_id
        assert profile_file.stat().st_mtime_ns == mtime
        answer = _infer(again.api.port, np.ones((1, IN_DIM), np.float32))
        assert answer["variant"] in {"fp32", "int8", "int4"}
    finally:
        again.stop()


def test_rejected_token_exits_nonzero(tmp_path, fleet, capsys):
    _, server, _ = fleet
    code = main(["--server", server.address, "--token", "spent-token", "--data-dir", str(tmp_path / "a"),
                 "--local-port", "0", "--sensors", "sim:mains"])
    assert code == 2
    assert "enrollment token rejected" in capsys.readouterr().err
    assert not (tmp_path / "a" / "identity.json").exists()


def test_no_identity_and_no_token_exits_nonzero(tmp_path, fleet, capsys):
    _, server, _ = fleet
    code = main(["--server", server.address, "--data-dir", str(tmp_path / "a"), "--local-port", "0"])
    assert code == 2 and "--token" in capsys.readouterr().err


def test_unauthenticated_stream_backs_off_to_max(tmp_path, fleet):
    _, server, _ = fleet
    config = _config(tmp_path, server, backoff_max=3.0)
    channel = make_channel(config)
    conn = Connection(config, channel, "not-a-credential", ReportedStateHolder(),
                      info=fleet_pb2.DeviceInfo(), metrics_message=fleet_pb2.DeviceMetrics,
                      on_desired=lambda d: None)
    t = threading.Thread(target=conn.run)
    t.start()
    try:
        wait_for(lambda: "UNAUTHENTICATED" in conn.last_error, 30, "rejection")
        assert conn.attempts >= 64          # pinned: the next wait is backoff_max (jittered)
    finally:
        conn.stop()
        t.join(10)
        channel.close()
    assert not t.is_alive()


def test_backoff_is_jittered_exponential_and_capped():
    import random
    rng = random.Random(0)
    for attempt in range(12):
        capped = min(30.0, 0.5 * 2 ** attempt)
        d = backoff_delay(attempt, 0.5, 30.0, rng)
        assert capped * 0.5 <= d <= capped
    assert backoff_delay(1000, 0.5, 30.0, rng) <= 30.0


def test_draining_battery_switches_variant_without_failing_requests(tmp_path, fleet):
    """Simulated battery drains fast: the control loop's scheduler decision hot-swaps to a cheaper
    variant while clients keep sending requests; none fails and the switch is reported upstream."""
    fleet, server, _ = fleet
    # Variants whose CPU cost per inference really differs (the battery caps act on measured
    # cost): three equally tiny models measure within noise of each other, and when fp32 came
    # out "cheapest" no cap ever moved the agent off it (CI failed that way twice).
    from tests.agent.helpers import COSTLY_HIDDEN, linear_model_bytes

    bundle = make_bundle(models={"fp32": linear_model_bytes(1, hidden=COSTLY_HIDDEN)})
    fleet.trusted_keys.append(bundle.publisher_key)
    fleet.artifacts.update(bundle.files)
    daemon = Daemon(_config(tmp_path, server, sensors="sim:drain", sim_speed=40.0, metrics_port=-1))
    failures, served = [], []
    stop = threading.Event()

    def client(port):
        x = np.zeros((1, IN_DIM), np.float32)
        while not stop.is_set():
            try:
                served.append(_infer(port, x)["variant"])
            except Exception as exc:          # noqa: BLE001 - every failure counts
                failures.append(repr(exc))

    try:
        daemon.start()
        fleet.set_desired(bundle.desired("dep-1"))
        wait_for(lambda: (s := fleet.last_state()) is not None and s.phase == RS.INSTALLED, 60, "INSTALLED")
        first = daemon.runner.active_variant
        threads = [threading.Thread(target=client, args=(daemon.api.port,)) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: any(d["reason"] in ("battery_low", "battery_critical")
                                 for d in daemon.status()["decisions"]), 90, "a battery-driven switch")
        except AssertionError:
            st = daemon.status()
            raise AssertionError(f"no battery-driven switch from {first}: sensors {st['sensors']}, "
                                 f"scheduler {st['scheduler']}, decisions {st['decisions'][-4:]}, "
                                 f"profiles {st['profiles']}") from None
        stop.set()
        for t in threads:
            t.join(30)
        decisions = daemon.status()["decisions"]
        battery = [d for d in decisions if d["reason"] in ("battery_low", "battery_critical")]
        assert battery[0]["previous"] == first and battery[0]["variant_id"] != first
        assert daemon.runner.active_variant == decisions[-1]["variant_id"]
        assert failures == []
        assert served
        wait_for(lambda: fleet.last_state().switch_reason in ("battery_low", "battery_critical"), 30,
                 "switch reported upstream")
        counts = {s.reason: s.total for m in list(fleet.received) if m.WhichOneof("kind") == "metrics"
                  for s in m.metrics.switches}
        wait_for(lambda: any(s.reason.startswith("battery") for m in list(fleet.received)
                             if m.WhichOneof("kind") == "metrics" for s in m.metrics.switches),
                 30, f"switch counts upstream (so far {counts})")
    finally:
        stop.set()
        daemon.stop()


class SettableSensors:
    """A sensor source whose reading the test sets (cool on mains to start)."""

    def __init__(self):
        from agent.sensors import SensorReading
        self.reading = SensorReading(power_plugged=True, temperature_celsius=50.0, source="test")

    def read(self):
        return self.reading

    def record_work(self, cpu_seconds):
        pass


def test_hot_device_pauses_low_priority_and_every_decision_is_visible(tmp_path):
    """Too hot: the scheduler steps down (thermal_trip) and low-priority requests get 503 +
    Retry-After while normal ones run; cool again: back up (thermal_clear), low runs again.
    Each decision is in /v1/status with reason + detail, the reason goes upstream in
    ReportedState.switch_reason, and switches by reason agree between /metrics, /v1/status and
    DeviceMetrics.switches."""
    from agent.scheduler import PolicyConfig, Scheduler, ThermalPolicy
    from agent.sensors import SensorReading
    from tests.agent.helpers import COSTLY_HIDDEN, linear_model_bytes

    # fp32 costs far more than the others, so the thermal cap (0.4 x costliest) excludes it.
    bundle = make_bundle(models={"fp32": linear_model_bytes(1, hidden=COSTLY_HIDDEN)})
    fleet = FakeFleet(trusted_keys=[bundle.publisher_key])
    fleet.artifacts.update(bundle.files)
    server = FakeServer(fleet, free_port()).start()
    sensors = SettableSensors()
    scheduler = Scheduler(PolicyConfig(min_dwell_seconds=0.0,
                                       thermal=ThermalPolicy(clear_hold_seconds=0.0)))
    daemon = Daemon(_config(tmp_path, server, profile_runs=5), sensor_source=sensors, scheduler=scheduler)
    x = np.zeros((1, IN_DIM), np.float32)

    def infer(priority):
        try:
            answer = _infer_priority(daemon.api.port, x, priority)
            return 200, answer, None
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), err.headers.get("Retry-After")

    try:
        daemon.start()
        fleet.set_desired(bundle.desired("dep-1"))
        wait_for(lambda: (s := fleet.last_state()) is not None and s.phase == RS.INSTALLED, 60, "INSTALLED")
        assert daemon.runner.active_variant == "fp32"
        assert infer("low")[0] == 200

        sensors.reading = SensorReading(power_plugged=True, temperature_celsius=95.0, source="test")
        wait_for(lambda: daemon.runner.active_variant != "fp32"
                 and daemon.status()["low_priority_paused"], 30, "thermal step-down")
        code, answer, retry_after = infer("low")
        assert code == 503 and answer["paused"] == "thermal_trip" and retry_after == "1"
        code, answer, _ = infer("normal")
        assert code == 200 and answer["variant"] == daemon.runner.active_variant
        status = daemon.status()
        hot = status["decisions"][-1]
        assert hot["reason"] == "thermal_trip" and hot["previous"] == "fp32"
        assert "temperature 95.0" in hot["detail"] and hot["variant_id"] in ("int8", "int4")
        assert [d["reason"] for d in status["scheduler_history"]][-1] == "thermal_trip"
        assert all(d["detail"] for d in status["scheduler_history"])
        assert status["reason"] == "thermal_trip"
        wait_for(lambda: fleet.last_state().switch_reason == "thermal_trip", 30, "reason upstream")
        metrics_text = _get(daemon.metrics_server.port, "/metrics").decode()
        assert 'edgefleet_agent_low_priority_rejected_total{reason="thermal_trip"} 1.0' in metrics_text
        assert "edgefleet_agent_low_priority_paused 1.0" in metrics_text

        sensors.reading = SensorReading(power_plugged=True, temperature_celsius=40.0, source="test")
        wait_for(lambda: daemon.runner.active_variant == "fp32"
                 and not daemon.status()["low_priority_paused"], 30, "thermal clear")
        assert infer("low")[0] == 200
        status = daemon.status()
        assert status["decisions"][-1]["reason"] == "thermal_clear"
        counts = status["switch_counts"]
        assert counts["thermal_trip"] == 1 and counts["thermal_clear"] == 1
        metrics_text = _get(daemon.metrics_server.port, "/metrics").decode()
        for reason, n in counts.items():
            assert f'edgefleet_agent_variant_switches_total{{reason="{reason}"}} {float(n)}' in metrics_text
        wait_for(lambda: fleet.last_state().switch_reason == "thermal_clear", 30, "clear upstream")

        def upstream():
            pushed = [m.metrics for m in list(fleet.received) if m.WhichOneof("kind") == "metrics"]
            return pushed and {s.reason: s.total for s in pushed[-1].switches} == counts
        wait_for(upstream, 30, f"DeviceMetrics.switches == {counts}")
    finally:
        daemon.stop()
        server.stop()


def _infer_priority(port, x, priority):
    payload = {"inputs": {"input": x.tolist()}, "priority": priority}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/infer", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())
