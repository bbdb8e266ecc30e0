"""Runner: outputs equal a direct onnxruntime session; hot swaps under concurrent load fail
no request; counters add up."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest

from agent.engines import available_engines, get_engine
from agent.metrics import AgentMetrics
from agent.runtime import InputError, NoBundleError, Runner, UnknownVariantError
from agent.store import Store
from tests.agent.helpers import IN_DIM, make_bundle, wait_for


@pytest.fixture
def installed(tmp_path):
    bundle = make_bundle()
    store = Store(tmp_path)
    for digest, data in bundle.files.items():
        (store.artifacts / digest.removeprefix("sha256:")).write_bytes(data)
    return bundle, store.install(bundle.manifest_bytes, bundle.signature, bundle.publisher_key,
                                 bundle.manifest, "dep-1")


def _reference(installed_bundle, variant_id, x):
    session = ort.InferenceSession(str(installed_bundle.variant_path(variant_id)),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_onnxruntime_engine_is_always_registered():
    assert "onnxruntime" in available_engines()
    with pytest.raises(ValueError, match="unknown engine"):
        get_engine("nope")


def test_outputs_equal_direct_onnxruntime(installed):
    _, bundle = installed
    runner = Runner(get_engine("onnxruntime"))
    with pytest.raises(NoBundleError):
        runner.run({"input": np.zeros((1, IN_DIM), np.float32)})
    runner.activate(bundle, "int8")
    x = np.random.default_rng(0).standard_normal((5, IN_DIM)).astype(np.float32)
    result = runner.run({"input": x})
    assert result.variant == "int8"
    np.testing.assert_array_equal(result.outputs["logits"], _reference(bundle, "int8", x))
    forced = runner.run({"input": x.tolist()}, variant="fp32")       # nested lists work too
    assert forced.variant == "fp32"
    np.testing.assert_array_equal(forced.outputs["logits"], _reference(bundle, "fp32", x))
    assert runner.active_variant == "int8"                              # forcing doesn't switch


def test_bad_inputs_raise_input_errors(installed):
    _, bundle = installed
    runner = Runner(get_engine("onnxruntime"))
    runner.activate(bundle, "fp32")
    with pytest.raises(InputError, match="missing"):
        runner.run({"x": [[0.0] * IN_DIM]})
    with pytest.raises(InputError, match="shape"):
        runner.run({"input": [[0.0] * (IN_DIM + 1)]})
    with pytest.raises(InputError, match="not a regular"):
        runner.run({"input": [[0.0], [0.0, 1.0]]})
    with pytest.raises(UnknownVariantError):
        runner.run({"input": [[0.0] * IN_DIM]}, variant="int2")


def test_hot_swap_under_concurrent_requests_fails_nothing(installed):
    _, bundle = installed
    metrics = AgentMetrics()
    work = []
    runner = Runner(get_engine("onnxruntime"), metrics=metrics, on_work=work.append)
    runner.activate(bundle, "fp32")
    x = np.random.default_rng(1).standard_normal((2, IN_DIM)).astype(np.float32)
    expected = {v.id: _reference(bundle, v.id, x) for v in bundle.manifest.variants}
    stop = threading.Event()
    failures, answers = [], []
    lock = threading.Lock()

    def client():
        while not stop.is_set():
            try:
                r = runner.run({"input": x})
                # Whatever variant answered, the answer is exactly that variant's.
                ok = np.array_equal(r.outputs["logits"], expected[r.variant])
                with lock:
                    answers.append(r.variant)
                    if not ok:
                        failures.append(f"wrong output from {r.variant}")
            except Exception as exc:            # noqa: BLE001 - any failure counts
                with lock:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    order = ["int8", "int4", "fp32"] * 4
    for vid in order:
        runner.activate(bundle, vid)
        seen = len(answers)
        wait_for(lambda: len(answers) >= seen + 5 or failures, 30, "traffic on " + vid)
    stop.set()
    for t in threads:
        t.join(10)
    assert failures == []
    assert set(answers) == {"fp32", "int8", "int4"}
    counters = {c.variant_id: c for c in runner.counters()}
    assert sum(c.inferences_total for c in counters.values()) == len(answers)
    assert all(c.errors_total == 0 for c in counters.values())
    assert metrics.registry.get_sample_value("edgefleet_agent_inferences_total", {"variant": "fp32"}) \
        == counters["fp32"].inferences_total
    assert metrics.registry.get_sample_value("edgefleet_agent_active_variant_info", {"variant": "fp32"}) == 1
    assert metrics.registry.get_sample_value("edgefleet_agent_active_variant_info", {"variant": "int4"}) == 0
    assert len(work) == len(answers) and all(w >= 0 for w in work)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux-only")
def test_loads_run_at_lower_priority_and_a_failed_load_keeps_the_old_variant(installed):
    _, bundle = installed
    runner = Runner(get_engine("onnxruntime", intra_op_threads=1), load_nice=7)
    runner.activate(bundle, "fp32")
    loader = next(t for t in threading.enumerate() if t.name == "agent-variant-loader" and t is runner._loader._thread)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert os.getpriority(os.PRIO_PROCESS, loader.native_id) == min(19, base + 7)
    # A variant that cannot load: the error reaches the caller, fp32 keeps serving.
    bundle.variant_path("int4").write_bytes(b"not an onnx file")
    with pytest.raises(Exception, match="(?i)protobuf|invalid|load"):
        runner.activate(bundle, "int4")
    assert runner.active_variant == "fp32"
    assert runner.run({"input": np.zeros((1, IN_DIM), np.float32)}).variant == "fp32"
    # Several threads (the engine's own pool would inherit the nice value): loads stay in the caller.
    assert Runner(get_engine("onnxruntime", intra_op_threads=2))._loader is None
    assert Runner(get_engine("onnxruntime", intra_op_threads=1), load_nice=0)._loader is None
