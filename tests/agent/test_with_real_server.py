"""In-process end to end with the real control plane (server.app.serve): the agent enrolls with
an operator-made token, connects, receives a deployment, downloads, verifies, installs, reports
INSTALLED, and serves exactly what onnxruntime computes on the deployed file."""

from __future__ import annotations

import json
import urllib.request
import zlib

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.daemon import Daemon
from proto import fleet_pb2
from tests.agent.helpers import IN_DIM, engine_answer, make_bundle, wait_for

server_app = pytest.importorskip("server.app")
from server.admin_client import AdminClient  # noqa: E402
from server.config import ServerConfig  # noqa: E402


@pytest.fixture
def real_server(tmp_path):
    bundle = make_bundle(deflate=("int4",))     # one variant stored deflated, as sparse ones are
    running = server_app.serve(ServerConfig(data_dir=tmp_path / "server", port=0, metrics_port=-1,
                                            trusted_publisher_keys=[bundle.publisher_key]))
    client = AdminClient(running.address, running.operator_token)
    try:
        yield running, client, bundle
    finally:
        client.close()
        running.stop(grace=0.5)


def test_enroll_deploy_install_infer(tmp_path, real_server):
    running, client, bundle = real_server
    token = client.create_enrollment_token(300, {"ring": "agent-test"}).token
    daemon = Daemon(AgentConfig(server=running.address, enrollment_token=token, data_dir=str(tmp_path / "agent"),
                                sensors="sim:mains", sensor_seed=0, local_port=0, heartbeat_interval=0.5,
                                metrics_interval=0.5, control_interval=0.2, backoff_base=0.05, backoff_max=1.0,
                                profile_warmup=1, profile_runs=3, labels={"site": "lab"}))
    try:
        daemon.start()
        device_id = daemon.identity.device_id
        wait_for(lambda: client.get_device(device_id).online, 30, "device online")
        uploaded = client.upload_bundle(bundle.write_dir(tmp_path / "bundle"))
        assert uploaded.bundle_id == bundle.bundle_id
        deployment = client.deploy(uploaded.bundle_id, device_ids=[device_id], timeout=120)
        deployment = client.wait_deployment(deployment.deployment_id, timeout=120, poll_seconds=0.2)
        assert deployment.state == fleet_pb2.Deployment.SUCCEEDED, deployment
        wait_for(lambda: client.get_device(device_id).reported.phase == fleet_pb2.ReportedState.INSTALLED,
                 30, "reported INSTALLED")
        reported = client.get_device(device_id).reported
        assert reported.bundle_id == bundle.bundle_id
        assert {p.variant_id for p in reported.profiles} == {v.id for v in bundle.manifest.variants}
        assert reported.active_variant

        x = np.random.default_rng(7).standard_normal((3, IN_DIM)).astype(np.float32)
        folder = tmp_path / "agent" / "bundles" / bundle.bundle_id
        for v in bundle.manifest.variants:
            stored = bundle.files[v.digest]
            assert (folder / v.model_file).read_bytes() == (zlib.decompress(stored) if v.encoding else stored)
            body = json.dumps({"inputs": {"input": x.tolist()}, "variant": v.id}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{daemon.api.port}/v1/infer", data=body)
            with urllib.request.urlopen(req, timeout=30) as r:
                answer = json.loads(r.read())
            # The default engine is "auto": each variant on whichever engine measured faster.
            assert answer["variant"] == v.id and answer["engine"] in ("native", "onnxruntime")
            expected = engine_answer(answer["engine"], folder / v.model_file, {"input": x})
            np.testing.assert_array_equal(np.asarray(answer["outputs"]["logits"], np.float32), expected)
    finally:
        daemon.stop()


def test_agent_process_runs_until_sigterm(tmp_path, real_server):
    """`python -m agent` as a real process: publishes agent.json, answers /v1/status, and exits 0
    on SIGTERM; started again without a token it reuses its identity."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    running, client, _ = real_server
    data_dir = tmp_path / "agent"

    def start(*extra):
        log = open(tmp_path / "agent.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "agent", "--server", running.address, "--data-dir",
                                 str(data_dir), "--local-port", "0", "--sensors", "sim:drain", *extra],
                                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        info = wait_for(lambda: _agent_info(data_dir, proc), 60, "agent.json")
        return proc, info

    token = client.create_enrollment_token(300).token
    proc, info = start("--token", token, "--label", "k=v")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{info['local_port']}/v1/status", timeout=10) as r:
            status = json.loads(r.read())
        assert status["device_id"] == info["device_id"]
        wait_for(lambda: client.get_device(info["device_id"]).online, 30, "online")
        assert dict(client.get_device(info["device_id"]).labels).get("k") == "v"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        proc, again = start()                 # no token: identity.json is reused
        assert again["device_id"] == info["device_id"] and again["pid"] != info["pid"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _agent_info(data_dir, proc):
    if proc.poll() is not None:
        raise AssertionError(f"agent exited with {proc.returncode}")
    try:
        info = json.loads((data_dir / "agent.json").read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("pid") == proc.pid else None
