"""Local inference API over a real socket: exact float32 round trip, 4xx for client mistakes,
503 before any bundle, /metrics and /v1/status."""

from __future__ import annotations

import http.client
import json

import numpy as np
import onnxruntime as ort
import pytest

from agent.engines import get_engine
from agent.local_api import MAX_BODY_BYTES, LocalApiServer
from agent.metrics import AgentMetrics
from agent.runtime import Runner
from agent.store import Store
from tests.agent.helpers import IN_DIM, make_bundle


@pytest.fixture
def api(tmp_path):
    bundle = make_bundle()
    store = Store(tmp_path)
    for digest, data in bundle.files.items():
        (store.artifacts / digest.removeprefix("sha256:")).write_bytes(data)
    installed = store.install(bundle.manifest_bytes, bundle.signature, bundle.publisher_key,
                              bundle.manifest, "dep-1")
    metrics = AgentMetrics()
    runner = Runner(get_engine("onnxruntime"), metrics=metrics)
    server = LocalApiServer("127.0.0.1", 0, runner, metrics, lambda: {"device_id": "dev-x"}).start()
    yield server, runner, installed
    server.stop()


def _request(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, data, response.getheader("Content-Type")
    finally:
        conn.close()


def _infer(server, payload):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, data, _ = _request(server, "POST", "/v1/infer", body, {"Content-Type": "application/json"})
    return status, json.loads(data)


def test_no_bundle_is_503(api):
    server, _, _ = api
    status, answer = _infer(server, {"inputs": {"input": [[0.0] * IN_DIM]}})
    assert status == 503 and "no bundle" in answer["error"]


def test_infer_equals_onnxruntime_exactly(api):
    server, runner, installed = api
    runner.activate(installed, "fp32")
    x = np.random.default_rng(3).standard_normal((3, IN_DIM)).astype(np.float32)
    for variant in (None, "int4"):
        payload = {"inputs": {"input": x.tolist()}}
        if variant:
            payload["variant"] = variant
        status, answer = _infer(server, payload)
        assert status == 200, answer
        used = variant or "fp32"
        assert answer["variant"] == used and answer["latency_seconds"] >= 0
        session = ort.InferenceSession(str(installed.variant_path(used)), providers=["CPUExecutionProvider"])
        expected = session.run(None, {"input": x})[0]
        got = np.asarray(answer["outputs"]["logits"], dtype=np.float32)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("payload, status, message", [
    (b"{not json", 400, "not valid JSON"),
    ({"inputs": [1, 2]}, 400, '"inputs"'),
    ({"inputs": {"wrong": [[0.0] * IN_DIM]}}, 400, "missing ['input']"),
    ({"inputs": {"input": [[0.0] * 3]}}, 400, "shape"),
    ({"inputs": {"input": [["a"] * IN_DIM]}}, 400, "not a regular"),
    ({"inputs": {"input": [[0.0] * IN_DIM]}, "variant": "nope"}, 404, "unknown variant"),
    ({"inputs": {"input": [[0.0] * IN_DIM]}, "variant": 3}, 400, "must be a string"),
])
def test_client_mistakes_are_4xx_with_a_message(api, payload, status, message):
    server, runner, installed = api
    runner.activate(installed, "fp32")
    got, answer = _infer(server, payload)
    assert got == status
    assert message in answer["error"]
    # ... and the server is still fine afterwards.
    ok, _ = _infer(server, {"inputs": {"input": [[0.0] * IN_DIM]}})
    assert ok == 200


def test_too_large_body_is_413_without_reading_it(api):
    server, _, _ = api
    status, data, _ = _request(server, "POST", "/v1/infer", b"",
                               {"Content-Length": str(MAX_BODY_BYTES + 1)})
    assert status == 413 and "limit" in json.loads(data)["error"]


def test_status_and_metrics(api):
    server, runner, installed = api
    runner.activate(installed, "int8")
    _infer(server, {"inputs": {"input": [[0.5] * IN_DIM]}})
    status, data, _ = _request(server, "GET", "/v1/status")
    assert status == 200 and json.loads(data) == {"device_id": "dev-x"}
    status, data, content_type = _request(server, "GET", "/metrics")
    text = data.decode()
    assert status == 200 and content_type.startswith("text/plain")
    assert 'edgefleet_agent_inferences_total{variant="int8"} 1.0' in text
    assert 'edgefleet_agent_active_variant_info{variant="int8"} 1.0' in text
    assert "edgefleet_agent_inference_latency_seconds_bucket" in text
    status, _, _ = _request(server, "GET", "/nope")
    assert status == 404


def _infer_full(server, payload):
    body = json.dumps(payload).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/v1/infer", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Retry-After")
    finally:
        conn.close()


def test_low_priority_is_refused_with_retry_after_while_paused(api):
    server, runner, installed = api
    runner.activate(installed, "fp32")
    x = [[0.25] * IN_DIM]
    registry = server.metrics.registry
    # Not paused: both priorities run.
    for priority in ("low", "normal"):
        status, answer, _ = _infer_full(server, {"inputs": {"input": x}, "priority": priority})
        assert status == 200, answer
    runner.set_low_priority_pause("thermal_trip", 29.2)
    assert registry.get_sample_value("edgefleet_agent_low_priority_paused") == 1
    status, answer, retry_after = _infer_full(server, {"inputs": {"input": x}, "priority": "low"})
    assert status == 503 and retry_after == "30"
    assert answer["paused"] == "thermal_trip" and answer["retry_after_seconds"] == 30
    assert "paused" in answer["error"]
    # Normal priority (explicit or by default) still runs while hot.
    assert _infer_full(server, {"inputs": {"input": x}, "priority": "normal"})[0] == 200
    assert _infer_full(server, {"inputs": {"input": x}})[0] == 200
    _infer_full(server, {"inputs": {"input": x}, "priority": "low"})
    assert registry.get_sample_value("edgefleet_agent_low_priority_rejected_total",
                                     {"reason": "thermal_trip"}) == 2
    # Served counts exclude refusals: 2 before + 2 normal while paused.
    assert registry.get_sample_value("edgefleet_agent_inferences_total", {"variant": "fp32"}) == 4
    runner.set_low_priority_pause(None)
    assert registry.get_sample_value("edgefleet_agent_low_priority_paused") == 0
    assert _infer_full(server, {"inputs": {"input": x}, "priority": "low"})[0] == 200


@pytest.mark.parametrize("priority", ["high", "", 1, None, ["low"]])
def test_bad_priority_is_400(api, priority):
    server, runner, installed = api
    runner.activate(installed, "fp32")
    status, answer, _ = _infer_full(server, {"inputs": {"input": [[0.0] * IN_DIM]}, "priority": priority})
    assert status == 400 and '"priority"' in answer["error"]
