"""Request batching: concurrent requests coalesce, answers stay bit-identical to unbatched runs,
variants whose rows depend on each other (dynamic int8) or that have no batch axis are served
unbatched, the latency budget caps the batch, and an error reaches every request of its batch."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from agent.batching import BatchConfig, Coalescer, row_independent
from agent.config import AgentConfig
from agent.engines import get_engine
from agent.engines.base import IOSpec
from agent.runtime import Runner
from agent.store import Store
from tests.agent.helpers import IN_DIM, linear_model_bytes, make_bundle, wait_for


def _dynamic_int8(tmp_path) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    src, dst = tmp_path / "fp32.onnx", tmp_path / "dyn.onnx"
    src.write_bytes(linear_model_bytes(2))
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst.read_bytes()


def _fixed_batch(seed: int) -> bytes:
    model = onnx.load_from_string(linear_model_bytes(seed))
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 1
    return model.SerializeToString()


@pytest.fixture
def installed(tmp_path):
    bundle = make_bundle(models={"int8": _dynamic_int8(tmp_path), "int4": _fixed_batch(3)})
    store = Store(tmp_path / "store")
    for digest, data in bundle.files.items():
        (store.artifacts / digest.removeprefix("sha256:")).write_bytes(data)
    return store.install(bundle.manifest_bytes, bundle.signature, bundle.publisher_key, bundle.manifest, "d")


def _direct(installed, vid, x):
    s = ort.InferenceSession(str(installed.variant_path(vid)), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


def _hammer(runner, xs, variant=None, threads=6, rounds=40):
    results, failures = [], []
    lock = threading.Lock()

    def client(k):
        for r in range(rounds):
            i = (k * rounds + r) % len(xs)
            try:
                res = runner.run({"input": xs[i]}, variant=variant)
                with lock:
                    results.append((i, res))
            except Exception as exc:          # noqa: BLE001
                with lock:
                    failures.append(repr(exc))

    ts = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return results, failures


def test_batched_answers_equal_unbatched_and_batches_form(installed):
    runner = Runner(get_engine("onnxruntime"), batching=BatchConfig(max_rows=8, budget_seconds=1.0, max_inflight=1))
    runner.activate(installed, "fp32")
    assert runner.batching_state()["fp32"]["batching"] == "on"
    rng = np.random.default_rng(0)
    # Requests of 1..3 rows each.
    xs = [rng.standard_normal((1 + i % 3, IN_DIM)).astype(np.float32) for i in range(24)]
    expected = [_direct(installed, "fp32", x) for x in xs]
    seen_batches = []
    for _ in range(20):                       # concurrency is up to the OS: retry until batches formed
        results, failures = _hammer(runner, xs)
        assert failures == []
        for i, res in results:
            assert res.variant == "fp32"
            np.testing.assert_array_equal(res.outputs["logits"], expected[i])
            assert res.outputs["logits"].shape[0] == xs[i].shape[0]
        seen_batches += [res.batch_rows for _, res in results]
        if max(seen_batches) > 3:
            break
    assert max(seen_batches) > 3 and max(seen_batches) <= 8
    state = runner.batching_state()["fp32"]
    assert state["batches"] > 0 and state["mean_rows"] > 1


def test_row_dependent_and_fixed_batch_variants_run_unbatched(installed):
    runner = Runner(get_engine("onnxruntime"), batching=BatchConfig(max_rows=8, budget_seconds=1.0, max_inflight=1))
    runner.activate(installed, "int8")
    x = np.random.default_rng(1).standard_normal((1, IN_DIM)).astype(np.float32)
    runner.run({"input": x}, variant="int4")
    state = runner.batching_state()
    assert state["int8"]["batching"].startswith("off: rows differ when batched")
    assert state["int4"]["batching"] == "off: not every input and output has a dynamic leading axis"
    xs = [np.random.default_rng(i).standard_normal((1, IN_DIM)).astype(np.float32) for i in range(12)]
    results, failures = _hammer(runner, xs, threads=4, rounds=10)
    assert failures == []
    for i, res in results:
        assert res.batch_rows == 0
        np.testing.assert_array_equal(res.outputs["logits"], _direct(installed, "int8", xs[i]))


def test_row_independence_probe_on_real_sessions(installed):
    engine = get_engine("onnxruntime")
    def feeds(seed):
        return {"input": np.random.default_rng(seed).standard_normal((1, IN_DIM)).astype(np.float32)}
    assert row_independent(engine.load(installed.variant_path("fp32")), feeds, 8) == (True, "")
    ok, why = row_independent(engine.load(installed.variant_path("int8")), feeds, 8)
    assert not ok and "differs by up to" in why


class _Session:
    """A minimal Session for the error path (a real one never fails on checked feeds)."""

    input_specs = [IOSpec("input", (None, IN_DIM))]
    output_specs = [IOSpec("logits", (None, 4))]

    def __init__(self, fail=False):
        self.fail = fail
        self.gate = threading.Event()
        self.calls = []

    def run(self, feeds):
        self.gate.wait(10)
        self.calls.append(len(feeds["input"]))
        if self.fail:
            raise RuntimeError("kernel exploded")
        return {"logits": feeds["input"][:, :4] * 2}


def test_budget_caps_rows_and_errors_reach_every_request():
    session = _Session(fail=True)
    c = Coalescer(session, BatchConfig(max_rows=16, budget_seconds=0.01, max_inflight=1))
    assert c.max_batch_rows() == 16                       # nothing measured yet
    c._per_row = 0.004
    assert c.max_batch_rows() == 2                        # 2 x 4 ms fits 10 ms, 3 x 4 ms does not
    c._per_row = 1.0
    assert c.max_batch_rows() == 1
    c._per_row = 0.0
    errors = []
    def call():
        try:
            c.submit({"input": np.ones((1, IN_DIM), np.float32)})
        except RuntimeError as exc:
            errors.append(str(exc))
    ts = [threading.Thread(target=call) for _ in range(5)]
    for t in ts:
        t.start()
    wait_for(lambda: len(c._queue) == 4, 10, "4 queued behind the first")
    session.gate.set()
    for t in ts:
        t.join(10)
    assert errors == ["kernel exploded"] * 5
    assert session.calls == [1, 4]                        # the first alone, the rest as one batch
    assert c._inflight == 0 and not c._queue


def test_batching_config_is_checked():
    with pytest.raises(ValueError):
        BatchConfig(max_rows=1)
    with pytest.raises(ValueError):
        BatchConfig(budget_seconds=0)
    with pytest.raises(ValueError, match="batch_max_rows"):
        AgentConfig(batch_max_rows=1)
    assert AgentConfig().batch_max_rows == 0             # opt-in
