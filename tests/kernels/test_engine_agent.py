"""The native engine inside the agent: "native" and "auto" through agent.engines, the fallback
to onnxruntime with a log line naming the op, and the per-variant choice in the profiles."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import kernels
from agent.engines import available_engines, get_engine, load_variant
from agent.profiling import profile_variant

from benchmarks.engine_models import digits_variants


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    models, inputs = digits_variants()
    folder = tmp_path_factory.mktemp("variants")
    paths = {}
    for name in ("fp32", "int8", "int4"):
        paths[name] = folder / f"{name}.onnx"
        paths[name].write_bytes(models[name])
    node = helper.make_node("NonZero", ["x"], ["y"], name="find_nonzero")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    paths["unsupported"] = folder / "nonzero.onnx"
    paths["unsupported"].write_bytes(model.SerializeToString())
    return paths, inputs


def test_engines_are_registered():
    assert {"native", "auto", "onnxruntime"} <= set(available_engines())


@pytest.mark.parametrize("variant", ["fp32", "int8", "int4"])
def test_native_session_matches_onnxruntime(files, variant):
    paths, inputs = files
    session = get_engine("native").load(paths[variant])
    assert [s.name for s in session.input_specs] == ["input"]
    assert session.input_specs[0].shape == (None, 1, 8, 8) and session.input_specs[0].dtype == "float32"
    assert session.output_specs[0].name == "logits"
    x = inputs[:4]
    ours = session.run({"input": x[:, :, :, :]})["logits"]
    opts = ort.SessionOptions()
    if variant == "int8" and kernels.int8_dot_saturates():
        # the fused int8 kernels saturate on this CPU (kernels.int8_dot_saturates); the graph
        # as written runs exactly
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(paths[variant]), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=0.02 * np.abs(ref).max())
    # a strided view (one image picked from a batch) is accepted by the agent adapter
    np.testing.assert_allclose(session.run({"input": x[::2]})["logits"], ours[::2], rtol=0, atol=1e-6)


def test_auto_falls_back_to_onnxruntime_naming_the_op(files, caplog):
    paths, _ = files
    engine = get_engine("auto")
    with caplog.at_level(logging.WARNING, logger="agent.engines.native_engine"):
        session = engine.load(paths["unsupported"])
    assert session.engine_name == "onnxruntime"
    assert "NonZero" in caplog.text and "find_nonzero" in caplog.text
    np.testing.assert_array_equal(session.run({"x": np.array([0, 1, 0, 2], np.float32)})["y"], [[1, 3]])


def test_native_engine_refuses_unsupported(files):
    from kernels.engine import UnsupportedGraph
    paths, _ = files
    with pytest.raises(UnsupportedGraph, match="NonZero"):
        get_engine("native").load(paths["unsupported"])


def test_auto_measures_once_and_profiles_name_the_chosen_engine(files, monkeypatch):
    paths, inputs = files
    engine = get_engine("auto", runs=3)
    calls = []
    original = engine._measure
    monkeypatch.setattr(engine, "_measure", lambda *a: calls.append(a[0]) or original(*a))
    profile = profile_variant(engine, paths["int8"], "int8", None, warmup=1, runs=3)
    assert profile.engine in ("native", "onnxruntime") and profile.runs == 3
    again = load_variant(engine, paths["int8"])              # serving load: choice remembered
    assert again.engine_name == profile.engine
    assert len(calls) == 1
    out = again.run({"input": inputs[:2]})["logits"]
    assert out.shape == (2, 10)


def _dynamic_int8_matmul(folder) -> str:
    """A MatMul quantized by onnxruntime's quantize_dynamic: DynamicQuantizeLinear + MatMulInteger."""
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src, dst = folder / "f.onnx", folder / "dynamic-int8.onnx"
    src.write_bytes(model.SerializeToString())
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    return str(dst)


@pytest.mark.parametrize("saturates", [True, False])
def test_auto_keeps_integer_int8_graphs_off_a_saturating_onnxruntime(tmp_path, monkeypatch, caplog, saturates):
    """Where onnxruntime's int8 kernels saturate (x86-64 without VNNI), a graph with integer
    int8 ops goes to the exact native engine without a race; elsewhere the faster one wins."""
    path = _dynamic_int8_matmul(tmp_path)
    monkeypatch.setattr(kernels, "int8_dot_saturates", lambda: saturates)
    engine = get_engine("auto", runs=3)
    calls = []
    original = engine._measure
    monkeypatch.setattr(engine, "_measure", lambda *a: calls.append(a[0]) or original(*a))
    with caplog.at_level(logging.INFO, logger="agent.engines.native_engine"):
        session = engine.load(path)
    if saturates:
        assert session.engine_name == "native" and calls == []
        assert "MatMulInteger" in caplog.text and "saturate" in caplog.text
    else:
        assert len(calls) == 1
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    assert session.run({"x": x})["y"].shape == (1, 32)


class _Skewed:
    """A session whose outputs are off by `shift` x their largest magnitude: what an engine
    computing with saturating int8 dot products returns (onnxruntime on x86-64 without VNNI,
    which this machine is not)."""

    def __init__(self, session, shift: float):
        self.session, self.shift = session, shift
        self.engine_name = getattr(session, "engine_name", None)

    def run(self, feeds):
        return {k: v + self.shift * np.abs(v).max() for k, v in self.session.run(feeds).items()}

    def __getattr__(self, name):
        return getattr(self.session, name)


@pytest.mark.parametrize("wrong", ["onnxruntime", "native"])
def test_auto_takes_the_engine_that_agrees_with_the_reference(files, monkeypatch, caplog, wrong):
    """When the two engines' outputs differ beyond rounding, the graph's numpy reference picks
    the right one, whatever the timing says; when they agree, timing alone decides."""
    from agent.engines.native_engine import AGREEMENT_RTOL, NativeEngine
    from agent.engines.onnxruntime_engine import OnnxRuntimeEngine

    paths, inputs = files
    engine = get_engine("auto", runs=3)
    target = OnnxRuntimeEngine if wrong == "onnxruntime" else NativeEngine
    original = target.load
    monkeypatch.setattr(target, "load", lambda self, *a, **k: _Skewed(original(self, *a, **k), 0.3))
    with caplog.at_level(logging.WARNING, logger="agent.engines.native_engine"):
        session = engine.load(paths["int8"])
    right = "native" if wrong == "onnxruntime" else "onnxruntime"
    assert session.engine_name == right
    assert "outputs differ" in caplog.text and f"-> {right}" in caplog.text
    assert AGREEMENT_RTOL < 0.3


def test_auto_engines_agree_on_the_example_variants(files, caplog):
    """No false alarm: the digits variants agree across engines within AGREEMENT_RTOL here."""
    paths, _ = files
    engine = get_engine("auto", runs=2)
    with caplog.at_level(logging.WARNING, logger="agent.engines.native_engine"):
        for name in ("fp32", "int8", "int4"):
            engine.load(paths[name])
    assert "outputs differ" not in caplog.text
