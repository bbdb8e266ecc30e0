"""The foundation's acceptance test: a real server process and two real agent processes over
loopback; the example model compressed, uploaded and deployed; both agents report the bundle
installed and verified; the local endpoint answers exactly what onnxruntime answers on the same
variant; a server restart loses no device, bundle or deployment."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet import processes
from proto import fleet_pb2
from proto.manifest import Manifest

pytestmark = pytest.mark.slow


def _wait(predicate, timeout: float, what: str):
    """Poll until predicate() is truthy; generous bound, no assertion on how long it took."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _infer(port: int, inputs: np.ndarray, variant: str) -> tuple[np.ndarray, str, str]:
    body = json.dumps({"inputs": {"input": inputs.tolist()}, "variant": variant}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    return np.asarray(answer["outputs"]["logits"], dtype=np.float32), answer["variant"], answer["engine"]


def _native(path, x: np.ndarray) -> np.ndarray:
    """What the native engine answers on this file with one thread (the agent's --threads 1)."""
    import kernels
    from kernels.engine import Model

    kernels.set_num_threads(1)
    model = Model(str(path))
    return model.run({"input": x})[model.outputs[0].name]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from edgefleet.demo import build_bundle

    root = tmp_path_factory.mktemp("bundle")
    key = root / "publisher.key"
    bundle_dir = build_bundle(root / "bundle", key, seed=0, epochs=3, student=False)
    return bundle_dir, key


@pytest.fixture
def fleet(tmp_path, bundle):
    """A server and two agents; everything is stopped at the end, whatever happens."""
    _, key = bundle
    children: list[processes.ManagedProcess] = []
    try:
        server = processes.start_server(tmp_path / "server", trust_keys=[str(key.with_suffix(".pub"))])
        children.append(server)
        from server.admin_client import AdminClient, read_operator_token

        client = AdminClient(server.info["address"], read_operator_token(tmp_path / "server"))
        agents = []
        for i in range(2):
            token = client.create_enrollment_token(300, {"ring": "test"}).token
            agent = processes.start_agent(tmp_path / f"agent{i}", server=server.info["address"], token=token,
                                          name=f"agent{i}")
            children.append(agent)
            agents.append(agent)
        yield {"server": server, "client": client, "agents": agents, "children": children, "tmp": tmp_path,
               "key": key}
    finally:
        for child in reversed(children):
            child.stop()


def test_compress_deploy_infer_restart(fleet, bundle):
    bundle_dir, key = bundle
    client = fleet["client"]
    agents = fleet["agents"]
    manifest = Manifest.from_bytes((bundle_dir / "manifest.json").read_bytes())
    assert {v.method for v in manifest.variants} >= {"fp32"}
    assert {v.weight_bits for v in manifest.variants} >= {32, 8, 4}

    device_ids = [a.info["device_id"] for a in agents]
    _wait(lambda: all(d.online for d in client.list_devices("")
                      if d.device_id in device_ids) and len(client.list_devices("ring=test")) == 2,
          60, "both agents online")

    uploaded = client.upload_bundle(str(bundle_dir))
    deployment = client.deploy(uploaded.bundle_id, label_selector="ring=test")
    assert {t.device_id for t in deployment.targets} == set(device_ids)
    deployment = client.wait_deployment(deployment.deployment_id, timeout=180)
    assert deployment.state == fleet_pb2.Deployment.SUCCEEDED, deployment

    # Both agents report the bundle installed (after verifying signature and every digest) ...
    for device_id in device_ids:
        reported = client.get_device(device_id).reported
        assert reported.bundle_id == uploaded.bundle_id
        assert reported.phase == fleet_pb2.ReportedState.INSTALLED
        assert {p.variant_id for p in reported.profiles} >= {v.id for v in manifest.variants}
    # ... and the files they hold are the ones the compressor wrote, byte for byte.
    for agent in agents:
        installed = agent.data_dir / "bundles" / uploaded.bundle_id
        for v in manifest.variants:
            data = (installed / v.file).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == v.digest

    # The local endpoint answers exactly what the engine that served it (the default "auto":
    # whichever of onnxruntime and the native engine measured faster for that variant)
    # answers on the same variant file.
    rng = np.random.default_rng(0)
    x = rng.random((4, 1, 8, 8), dtype=np.float32)  # digits are scaled to [0, 1]
    for v in manifest.variants:
        # Run it as the agent does: one intra-op thread (--threads 1, the same reduction order)
        # and the session settings the variant carries in its manifest.
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        for entry, value in v.details.get("onnxruntime_session_config", {}).items():
            options.add_session_config_entry(entry, value)
        session = ort.InferenceSession(str(bundle_dir / v.file), sess_options=options,
                                       providers=["CPUExecutionProvider"])
        expected = session.run(None, {"input": x})[0]
        for agent in agents:
            got, served_by, engine = _infer(agent.info["local_port"], x, v.id)
            assert served_by == v.id
            if engine == "onnxruntime":
                np.testing.assert_array_equal(got, expected)
            else:
                assert engine == "native", engine
                np.testing.assert_array_equal(got, _native(bundle_dir / v.file, x))
                np.testing.assert_allclose(got, expected, rtol=0, atol=0.05 * np.abs(expected).max())

    # Restart the server on the same port and data directory: nothing is lost.
    devices_before = sorted(d.device_id for d in client.list_devices(""))
    bundles_before = sorted(b.bundle_id for b in client.list_bundles())
    deployments_before = {d.deployment_id: d.state for d in client.list_deployments()}
    server = fleet["server"]
    port = server.info["grpc_port"]
    assert server.stop() == 0
    restarted = processes.start_server(server.data_dir, trust_keys=[str(key.with_suffix(".pub"))], port=port)
    fleet["children"].append(restarted)
    from server.admin_client import AdminClient, read_operator_token

    client = AdminClient(restarted.info["address"], read_operator_token(server.data_dir))
    assert sorted(d.device_id for d in client.list_devices("")) == devices_before
    assert sorted(b.bundle_id for b in client.list_bundles()) == bundles_before
    assert {d.deployment_id: d.state for d in client.list_deployments()} == deployments_before
    # The agents come back by themselves (jittered backoff) and still hold the bundle.
    _wait(lambda: all(client.get_device(d).online for d in device_ids), 90, "agents reconnected")
    for device_id in device_ids:
        assert client.get_device(device_id).reported.bundle_id == uploaded.bundle_id


def test_agent_takes_its_enrollment_token_from_the_environment(tmp_path):
    """The token may come from $EDGEFLEET_ENROLL_TOKEN instead of argv (kept out of `ps`)."""
    from server.admin_client import AdminClient, read_operator_token

    server = processes.start_server(tmp_path / "server")
    agent = None
    try:
        client = AdminClient(server.info["address"], read_operator_token(tmp_path / "server"))
        token = client.create_enrollment_token(60, {}).token
        agent = processes.start_agent(tmp_path / "agent", server=server.info["address"], token=None,
                                      env={"EDGEFLEET_ENROLL_TOKEN": token})
        assert token not in " ".join(agent.popen.args)
        device_id = agent.info["device_id"]
        _wait(lambda: client.get_device(device_id).online, 60, "agent online")
    finally:
        if agent is not None:
            agent.stop()
        server.stop()


def test_a_failing_bundle_rolls_the_fleet_back(fleet, bundle, tmp_path):
    """Real agents: both run a good bundle; a signed bundle whose models cannot load goes out
    with rollback_on_failure; the first agent to fail ends the deployment ROLLED_BACK, both are
    sent the good bundle again, report it installed, and still answer on it. Then one device is
    removed: its agent is refused from then on."""
    from proto import signing
    from tests.server.conftest import make_bundle

    bundle_dir, key = bundle
    client = fleet["client"]
    agents = fleet["agents"]
    device_ids = [a.info["device_id"] for a in agents]
    _wait(lambda: all(client.get_device(d).online for d in device_ids), 60, "both agents online")
    good = client.upload_bundle(str(bundle_dir)).bundle_id
    first = client.wait_deployment(client.deploy(good, device_ids=device_ids).deployment_id, timeout=180)
    assert first.state == fleet_pb2.Deployment.SUCCEEDED, first

    broken_dir, _, _ = make_bundle(tmp_path / "broken", signing.load_private_key(key), model="broken")
    broken = client.upload_bundle(str(broken_dir)).bundle_id
    deployment = client.deploy(broken, device_ids=device_ids, rollback_on_failure=True)
    assert {t.rollback_bundle_id for t in deployment.targets} == {good}
    done = client.wait_deployment(deployment.deployment_id, timeout=180)
    assert done.state == fleet_pb2.Deployment.ROLLED_BACK, done
    assert any("could be loaded" in t.error for t in done.targets), done

    def back_on_good():
        reported = [client.get_device(d).reported for d in device_ids]
        return all(r.bundle_id == good and r.phase == fleet_pb2.ReportedState.INSTALLED
                   and not r.deployment_id for r in reported)

    _wait(back_on_good, 60, "both agents back on the good bundle")
    x = np.zeros((1, 1, 8, 8), np.float32)
    manifest = Manifest.from_bytes((bundle_dir / "manifest.json").read_bytes())
    for agent in agents:
        _, served_by, _ = _infer(agent.info["local_port"], x, manifest.variants[0].id)
        assert served_by == manifest.variants[0].id

    # Decommission one: the server drops it and its stream; the agent's next connection is refused.
    client.remove_device(device_ids[0])
    assert [d.device_id for d in client.list_devices("")] == [device_ids[1]]
    _wait(lambda: "rejected this device's credential" in agents[0].log_tail(200), 60,
          "the removed agent to be refused")
    assert agents[0].alive()            # it keeps serving what it holds, offline
