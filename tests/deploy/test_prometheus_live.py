"""The real thing: a Prometheus server scrapes a real /metrics endpoint on loopback with the
repo's alert rules loaded; the dashboard's queries and the rules run against what it scraped.

Two targets, each with its own Prometheus:
- a prometheus_client exporter in this process that serves every series of the metric
  contract for three simulated devices (one hot, one with a low battery on battery power,
  one fine), so every dashboard query and every device rule has data to bite on;
- the real edgefleet server (`python -m server`), which with no devices enrolled exports
  the fleet-wide series: what the server actually emits must be what the rules expect.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tests.conftest import REPO_ROOT
from tests.deploy import files, promql
from tests.deploy.metrics_contract import DEPLOYMENT_STATES, METRICS
from tests.deploy.prometheus_process import BINARY, PrometheusProcess

pytestmark = pytest.mark.skipif(
    BINARY is None, reason="prometheus not installed (Debian package `prometheus`)")

SERVER_START_TIMEOUT_SECONDS = 120.0    # imports torch on a shared 2-core machine

ZERO_TIME = "0001-01-01T00:00:00Z"      # lastEvaluation of a rule never evaluated


# -- a synthetic exporter with the whole contract ------------------------------------------

DEVICES = {
    # device_id: (battery, plugged, temperature, variant, bits, sparsity)
    "hot-1": (0.90, 1, 92.0, "int8", "8", "0"),
    "low-1": (0.08, 0, 41.0, "int4", "4", "0.5"),
    "ok-1": (0.80, 1, 35.0, "fp32", "32", "0"),
}


class FleetLikeCollector:
    """Serves every metric of the contract; counters grow on each scrape so rates are > 0."""

    def __init__(self):
        self.scrapes = 0

    def collect(self):
        self.scrapes += 1
        n = float(self.scrapes)
        now = time.time()
        fam = {name: (CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily)(
                   name, f"synthetic {name}", labels=list(labels))
               for name, labels in METRICS.items() if labels}
        fam["edgefleet_devices"].add_metric(["online"], float(len(DEVICES)))
        fam["edgefleet_devices"].add_metric(["offline"], 0.0)
        for dev, (battery, plugged, temp, variant, bits, sparsity) in DEVICES.items():
            v = [dev, variant, bits, sparsity]
            fam["edgefleet_device_up"].add_metric([dev], 1.0)
            fam["edgefleet_device_last_seen_timestamp_seconds"].add_metric([dev], now)
            fam["edgefleet_device_battery_ratio"].add_metric([dev], battery)
            fam["edgefleet_device_power_plugged"].add_metric([dev], float(plugged))
            fam["edgefleet_device_temperature_celsius"].add_metric([dev], temp)
            fam["edgefleet_device_cpu_load_ratio"].add_metric([dev], 0.5)
            fam["edgefleet_device_memory_available_bytes"].add_metric([dev], 512e6)
            fam["edgefleet_device_active_variant_info"].add_metric(v, 1.0)
            fam["edgefleet_device_inferences_total"].add_metric(v, 100.0 * n)
            fam["edgefleet_device_inference_errors_total"].add_metric(v, n)
            fam["edgefleet_device_inference_latency_seconds"].add_metric(v + ["0.5"], 0.010)
            fam["edgefleet_device_inference_latency_seconds"].add_metric(v + ["0.95"], 0.020)
            fam["edgefleet_device_variant_switches_total"].add_metric([dev, "battery_low"], n)
        for state in DEPLOYMENT_STATES:
            fam["edgefleet_deployments"].add_metric([state], 1.0)
        fam["edgefleet_grpc_requests_total"].add_metric(["edgefleet.Device", "Connect", "OK"], n)
        yield from fam.values()
        yield GaugeMetricFamily("edgefleet_bundles", "synthetic", value=2.0)
        yield GaugeMetricFamily("edgefleet_deployment_targets_waiting", "synthetic", value=3.0)
        yield CounterMetricFamily("edgefleet_artifact_bytes_served_total", "synthetic", value=4096.0 * n)


def prometheus_config(job: str, port: int) -> dict:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(files.ALERTS)],
        "scrape_configs": [{"job_name": job,
                            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }


@pytest.fixture(scope="module")
def synthetic_prometheus(tmp_path_factory):
    registry = CollectorRegistry()
    registry.register(FleetLikeCollector())
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    prom = None
    try:
        prom = PrometheusProcess(tmp_path_factory.mktemp("prom-synthetic"),
                                 prometheus_config("edgefleet-synthetic", httpd.server_port))
        prom.wait_for(lambda: prom.targets_up("edgefleet-synthetic"), "synthetic target up")
        yield prom
    finally:
        if prom is not None:
            prom.stop()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


# -- the real server -------------------------------------------------------------------------

class ServerProcess:
    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--data-dir", str(data_dir),
             "--port", "0", "--metrics-port", "0"],
            cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
        self.info = self._wait_for_server_json()

    def _wait_for_server_json(self) -> dict:
        path = self.data_dir / "server.json"
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.log()}")
            if path.exists():
                try:
                    info = json.loads(path.read_text())
                except json.JSONDecodeError:
                    info = None          # written by temp + rename, but be tolerant
                if info and info.get("pid") == self.proc.pid:
                    return info
            time.sleep(0.2)
        raise AssertionError(f"server wrote no server.json:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("server") / "data")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def server_prometheus(server, tmp_path_factory):
    prom = PrometheusProcess(tmp_path_factory.mktemp("prom-server"),
                             prometheus_config("edgefleet-server", server.info["metrics_port"]))
    try:
        prom.wait_for(lambda: prom.targets_up("edgefleet-server"), "server target up")
        yield prom
    finally:
        prom.stop()


# -- shared checks -------------------------------------------------------------------------

def values_by(results: list[dict], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in results}


def wait_for_rules_evaluated(prom: PrometheusProcess) -> dict[str, dict]:
    """Every rule of alerts.yml is loaded and has been evaluated without error."""
    expected = {r["alert"] for r in files.alert_rules()}

    def evaluated():
        rules = {r["name"]: r for g in prom.api("rules")["groups"] for r in g["rules"]}
        done = set(rules) == expected and all(r["lastEvaluation"] != ZERO_TIME for r in rules.values())
        return rules if done else None

    rules = prom.wait_for(evaluated, "all alert rules evaluated")
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
    return rules


def active_alerts(prom: PrometheusProcess) -> list[dict]:
    return prom.api("alerts")["alerts"]


# -- tests against the synthetic exporter --------------------------------------------------

def test_prometheus_scrapes_the_endpoint(synthetic_prometheus):
    prom = synthetic_prometheus
    online = prom.wait_for(lambda: prom.query('edgefleet_devices{state="online"}'), "edgefleet_devices")
    assert float(online[0]["value"][1]) == len(DEVICES)
    battery = values_by(prom.query("edgefleet_device_battery_ratio"), "device_id")
    assert battery == {dev: spec[0] for dev, spec in DEVICES.items()}


def test_alert_rules_load_and_fire_on_the_right_devices(synthetic_prometheus):
    prom = synthetic_prometheus
    groups = {g["name"] for g in prom.api("rules")["groups"]}
    assert groups == {g["name"] for g in files.load_yaml(files.ALERTS)["groups"]}
    wait_for_rules_evaluated(prom)

    # Hot and low-battery devices are pending (their rules have `for: 5m`); nothing else is.
    def hot_and_low():
        alerts = {(a["labels"]["alertname"], a["labels"].get("device_id")): a["state"]
                  for a in active_alerts(prom)}
        want = {("EdgefleetDeviceHot", "hot-1"), ("EdgefleetDeviceBatteryLow", "low-1")}
        return alerts if want <= set(alerts) else None

    alerts = prom.wait_for(hot_and_low, "hot-1 and low-1 alerts")
    assert set(alerts.values()) <= {"pending", "firing"}
    assert {dev for (_, dev) in alerts} == {"hot-1", "low-1"}, alerts
    assert ("EdgefleetDeviceBatteryLow", "hot-1") not in alerts   # plugged in: not an alert


@pytest.mark.parametrize("path", files.DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_returns_data(synthetic_prometheus, path):
    prom = synthetic_prometheus
    for where, expr in files.dashboard_queries(files.load_json(path)):
        if expr.startswith("label_values("):
            # Grafana's own function: ask Prometheus the same question through the labels API.
            metric, label = (s.strip() for s in expr[len("label_values("):-1].split(","))
            values = prom.api(f"label/{label}/values", **{"match[]": metric})
            assert set(values) == set(DEVICES), f"{where}: {values}"
            continue
        expanded = promql.expand_grafana(expr)
        result = prom.wait_for(lambda: prom.query(expanded), f"{path.name} {where}: {expanded}")
        assert result, where


# -- tests against the real server ---------------------------------------------------------

def test_real_server_metrics_match_what_rules_and_dashboard_expect(server, server_prometheus):
    prom = server_prometheus
    devices = prom.wait_for(lambda: prom.query("edgefleet_devices"), "edgefleet_devices")
    assert values_by(devices, "state") == {"online": 0.0, "offline": 0.0}
    # The deployment rule keys on these state values, and needs each one exported from start.
    deployments = values_by(prom.query("edgefleet_deployments"), "state")
    assert set(DEPLOYMENT_STATES) <= set(deployments), deployments
    assert all(v == 0.0 for v in deployments.values())
    assert float(prom.query("edgefleet_bundles")[0]["value"][1]) == 0.0
    assert float(prom.query("edgefleet_deployment_targets_waiting")[0]["value"][1]) == 0.0

    exported = {r["metric"]["__name__"] for r in prom.query('count by (__name__) ({__name__=~"edgefleet_.+"})')}
    assert {"edgefleet_devices", "edgefleet_bundles", "edgefleet_deployments", "edgefleet_deployment_targets_waiting",
            "edgefleet_artifact_bytes_served_total"} <= exported
    # Every series the contract names and the server exports here has the contract's labels.
    for name in exported & set(METRICS):
        for series in prom.query(name):
            labels = set(series["metric"]) - {"__name__", "job", "instance"}
            assert labels == set(METRICS[name]), f"{name}: {labels}"

    rules = wait_for_rules_evaluated(prom)
    firing = [a for a in active_alerts(prom) if a["state"] == "firing"]
    assert not firing, firing
    assert rules["EdgefleetServerDown"]["health"] == "ok"


def test_healthcheck_script_passes_against_the_real_server(server):
    result = subprocess.run([sys.executable, str(files.DEPLOY / "healthcheck.py"),
                             f"127.0.0.1:{server.info['grpc_port']}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
