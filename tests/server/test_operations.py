"""What operations rely on: health, reflection, /metrics, server.json, restarts, the process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from proto import fleet_pb2, signing
from server.admin_client import AdminClient, read_operator_token, read_server_address
from tests.conftest import REPO_ROOT
from tests.server.conftest import DeviceStream, auth, device_stub, enroll, make_bundle, start_server

State = fleet_pb2.Deployment.State
Phase = fleet_pb2.ReportedState.Phase


def test_health_serving(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "edgefleet.v1.DeviceService", "edgefleet.v1.AdminService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(server):
    with grpc.insecure_channel(server.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"edgefleet.v1.DeviceService", "edgefleet.v1.AdminService", "grpc.health.v1.Health"} <= services


def test_server_json_describes_the_running_server(server):
    info = json.loads(server.config.server_json_path.read_text())
    assert info == {"pid": os.getpid(), "grpc_port": server.port, "metrics_port": server.metrics_port,
                    "address": f"127.0.0.1:{server.port}", "tls": False}
    assert read_server_address(server.config.data_dir) == server.address
    assert read_operator_token(server.config.data_dir) == server.operator_token


def _scrape(server) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_after_device_pushes(server, admin, device_channel, bundle):
    folder, manifest, files = bundle
    online = enroll(admin, device_channel)
    offline = enroll(admin, device_channel)   # enrolled, never connected
    stream = DeviceStream(device_channel, online.credential)
    try:
        uploaded = admin.upload_bundle(folder)
        deployment = admin.deploy(uploaded.bundle_id, device_ids=[online.device_id])
        desired = stream.next("desired")
        chunks = list(device_stub(device_channel).Download(
            fleet_pb2.DownloadRequest(digest=manifest.variants[0].digest), metadata=auth(online.credential),
            timeout=10))
        stream.send(state=fleet_pb2.ReportedState(bundle_id=desired.bundle_id,
                                                  deployment_id=desired.deployment_id,
                                                  phase=Phase.INSTALLED, active_variant="v1"))
        assert admin.wait_deployment(deployment.deployment_id, timeout=30).state == State.SUCCEEDED
        stream.send(metrics=fleet_pb2.DeviceMetrics(
            timestamp_unix=time.time(), active_variant="v1",
            sensors=fleet_pb2.SensorReading(battery_percent=42.0, power_plugged=False,
                                            temperature_celsius=51.5, cpu_load_percent=25.0,
                                            memory_available_bytes=123456789),
            variants=[fleet_pb2.VariantCounters(variant_id="v1", inferences_total=100, errors_total=2,
                                                latency_seconds_sum=1.5, latency_p50_seconds=0.012,
                                                latency_p95_seconds=0.03),
                      fleet_pb2.VariantCounters(variant_id="not-in-bundle", inferences_total=5)],
            switches=[fleet_pb2.SwitchCount(reason="battery_low", total=3)]))
        stream.send(heartbeat=fleet_pb2.Heartbeat(sequence=1))
        stream.next("ack")                     # the metrics message before it has been handled

        m = _scrape(server)
        dev = online.device_id
        v1 = (("bits", "8"), ("device_id", dev), ("sparsity", "0.5"), ("variant", "v1"))
        assert m[("edgefleet_devices", (("state", "online"),))] == 1
        assert m[("edgefleet_devices", (("state", "offline"),))] == 1
        assert m[("edgefleet_device_up", (("device_id", dev),))] == 1
        assert m[("edgefleet_device_up", (("device_id", offline.device_id),))] == 0
        assert m[("edgefleet_device_last_seen_timestamp_seconds", (("device_id", dev),))] > 0
        assert m[("edgefleet_device_battery_ratio", (("device_id", dev),))] == pytest.approx(0.42)
        assert m[("edgefleet_device_power_plugged", (("device_id", dev),))] == 0
        assert m[("edgefleet_device_temperature_celsius", (("device_id", dev),))] == 51.5
        assert m[("edgefleet_device_cpu_load_ratio", (("device_id", dev),))] == 0.25
        assert m[("edgefleet_device_memory_available_bytes", (("device_id", dev),))] == 123456789
        assert m[("edgefleet_device_active_variant_info", v1)] == 1
        assert m[("edgefleet_device_inferences_total", v1)] == 100
        assert m[("edgefleet_device_inference_errors_total", v1)] == 2
        assert m[("edgefleet_device_inference_latency_seconds", tuple(sorted(v1 + (("quantile", "0.5"),))))] \
            == 0.012
        assert m[("edgefleet_device_inference_latency_seconds", tuple(sorted(v1 + (("quantile", "0.95"),))))] \
            == 0.03
        assert m[("edgefleet_device_variant_switches_total", (("device_id", dev), ("reason", "battery_low")))] == 3
        assert not any("not-in-bundle" in str(labels) for _, labels in m)   # bounded by the manifest
        assert m[("edgefleet_bundles", ())] == 1
        assert m[("edgefleet_deployments", (("state", "succeeded"),))] == 1
        assert m[("edgefleet_deployments", (("state", "timed_out"),))] == 0
        assert m[("edgefleet_deployment_targets_waiting", ())] == 0     # no phased rollout here
        assert m[("edgefleet_artifact_bytes_served_total", ())] == sum(len(c.data) for c in chunks)
        assert m[("edgefleet_grpc_requests_total", (("code", "OK"), ("method", "UploadBundle"),
                                                    ("service", "edgefleet.v1.AdminService")))] == 1
        # The offline device has no battery series at all (absent, not zero).
        assert ("edgefleet_device_battery_ratio", (("device_id", offline.device_id),)) not in m
    finally:
        stream.close()


def test_failed_calls_are_counted_by_code(server, device_channel):
    stub = device_stub(device_channel)
    with pytest.raises(grpc.RpcError):
        stub.Enroll(fleet_pb2.EnrollRequest(token="nope"), timeout=10)
    m = _scrape(server)
    assert m[("edgefleet_grpc_requests_total", (("code", "UNAUTHENTICATED"), ("method", "Enroll"),
                                                ("service", "edgefleet.v1.DeviceService")))] == 1


def _restart_keeps_everything(tmp_path, publisher_key, **overrides):
    first = start_server(tmp_path / "server", publisher_key, **overrides)
    try:
        admin = AdminClient(first.address, first.operator_token, timeout=10)
        with grpc.insecure_channel(first.address) as channel:
            device = enroll(admin, channel, labels={"site": "lab"})
        folder, _, _ = make_bundle(tmp_path / "bundle", publisher_key)
        uploaded = admin.upload_bundle(folder)
        deployment = admin.deploy(uploaded.bundle_id, device_ids=[device.device_id], timeout=3600)
        admin.close()
    finally:
        first.stop(grace=0)

    second = start_server(tmp_path / "server", publisher_key, **overrides)
    try:
        assert second.operator_token == first.operator_token or overrides.get("operator_token")
        admin = AdminClient(second.address, second.operator_token, timeout=10)
        assert [d.device_id for d in admin.list_devices("site=lab")] == [device.device_id]
        assert [b.bundle_id for b in admin.list_bundles()] == [uploaded.bundle_id]
        assert admin.get_deployment(deployment.deployment_id).state == State.IN_PROGRESS
        with grpc.insecure_channel(second.address) as channel:
            stream = DeviceStream(channel, device.credential)     # the old credential still works
            try:
                desired = stream.next("desired")
                assert (desired.bundle_id, desired.deployment_id) == (uploaded.bundle_id,
                                                                      deployment.deployment_id)
                stream.send(state=fleet_pb2.ReportedState(bundle_id=desired.bundle_id,
                                                          deployment_id=desired.deployment_id,
                                                          phase=Phase.INSTALLED))
                assert admin.wait_deployment(deployment.deployment_id, 30).state == State.SUCCEEDED
            finally:
                stream.close()
        admin.close()
    finally:
        second.stop(grace=0)


def test_restart_keeps_devices_bundles_deployments(tmp_path, publisher_key):
    _restart_keeps_everything(tmp_path, publisher_key)


@pytest.mark.postgres
def test_restart_keeps_everything_on_postgresql(tmp_path, publisher_key, pg_url):
    _restart_keeps_everything(tmp_path, publisher_key, db_url=pg_url)


def test_deadline_passed_while_down_times_out_after_restart(tmp_path, publisher_key):
    first = start_server(tmp_path / "server", publisher_key)
    try:
        admin = AdminClient(first.address, first.operator_token, timeout=10)
        with grpc.insecure_channel(first.address) as channel:
            device = enroll(admin, channel)
        folder, _, _ = make_bundle(tmp_path / "bundle", publisher_key)
        uploaded = admin.upload_bundle(folder)
        # Stop the reaper first so only the restarted server can end this deployment.
        first.reaper.stop()
        deployment = admin.deploy(uploaded.bundle_id, device_ids=[device.device_id], timeout=0.2)
        admin.close()
    finally:
        first.stop(grace=0)
    while time.time() < deployment.deadline_unix:
        time.sleep(0.05)
    second = start_server(tmp_path / "server", publisher_key, reaper_interval_seconds=3600)
    try:
        # The start-up pass alone must have ended it (the periodic pass is an hour away).
        assert second.db.get_deployment(deployment.deployment_id).deployment.state == "TIMED_OUT"
    finally:
        second.stop(grace=0)


def test_taken_port_fails_start_cleanly(server, tmp_path, publisher_key):
    with pytest.raises(RuntimeError, match="bind"):
        start_server(tmp_path / "second", publisher_key, port=server.port)
    assert not (tmp_path / "second" / "server.json").exists()
    # The first server is unaffected.
    with grpc.insecure_channel(server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_trust_key_files_and_trusted_publishers_dir(tmp_path):
    from server.config import ServerConfig

    a, b = signing.generate_private_key(), signing.generate_private_key()
    (tmp_path / "a.pub").write_bytes(signing.public_key_bytes(a))
    (tmp_path / "data" / "trusted_publishers").mkdir(parents=True)
    (tmp_path / "data" / "trusted_publishers" / "b.pub").write_bytes(signing.public_key_bytes(b))
    config = ServerConfig(data_dir=tmp_path / "data", trust_key_files=[tmp_path / "a.pub"])
    assert config.resolved_trusted_keys() == [signing.public_key_bytes(a), signing.public_key_bytes(b)]
    (tmp_path / "bad.pub").write_bytes(b"not a key")
    with pytest.raises(ValueError, match="32-byte"):
        ServerConfig(data_dir=tmp_path / "data", trust_key_files=[tmp_path / "bad.pub"]).resolved_trusted_keys()


def test_python_dash_m_server_runs_and_stops_cleanly(tmp_path, publisher_key):
    key_file = tmp_path / "publisher.pub"
    key_file.write_bytes(signing.public_key_bytes(publisher_key))
    data_dir = tmp_path / "server"
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--data-dir", str(data_dir), "--port", "0", "--metrics-port", "0",
         "--trust-key", str(key_file), "--log-level", "WARNING"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        info_path = data_dir / "server.json"
        deadline = time.monotonic() + 60
        while not info_path.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "server.json never appeared"
            time.sleep(0.05)
        info = json.loads(info_path.read_text())
        assert info["pid"] == proc.pid
        with AdminClient(info["address"], read_operator_token(data_dir), timeout=10) as admin:
            folder, _, _ = make_bundle(tmp_path / "bundle", publisher_key)
            assert admin.upload_bundle(folder).bundle_id
            assert admin.fleet_status().bundles_total == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not info_path.exists()          # removed on a clean stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
