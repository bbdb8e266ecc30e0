"""Bad files, unsupported graphs and bad feeds give clear Python exceptions, never a crash."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kernels.engine import EngineError, InputError, InvalidModel, Model, UnsupportedGraph


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m.SerializeToString()


def _mlp() -> bytes:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b")
    return _model([helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1, name="fc"),
                   helper.make_node("Relu", ["h"], ["y"], name="act")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], [w, b])


def test_small_mlp_runs():
    y = Model(_mlp()).run({"x": np.ones((2, 8), np.float32)})["y"]
    assert y.shape == (2, 16) and (y >= 0).all()


@pytest.mark.parametrize("data", [b"", b"\x00\x01garbage\xff" * 3, b"not an onnx file at all"])
def test_garbage_is_invalid_model(data):
    with pytest.raises(InvalidModel):
        Model(data)


def test_every_truncation_is_a_clear_error_or_a_correct_model():
    data = _mlp()
    x = np.ones((1, 8), np.float32)
    expected = Model(data).run({"x": x})["y"]
    for cut in range(0, len(data), max(1, len(data) // 97)):
        try:
            model = Model(data[:cut])
        except EngineError:
            continue
        # a cut that still parses must be complete (never a wrong answer)
        np.testing.assert_array_equal(model.run({"x": x})["y"], expected)


def test_truncated_real_variant(tmp_path):
    from benchmarks.engine_models import digits_variants
    data = digits_variants()[0]["int8"]
    for frac in (0.1, 0.5, 0.9, 0.999):
        with pytest.raises(InvalidModel):
            Model(data[: int(len(data) * frac)])
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModel):
        Model(path)
    with pytest.raises(InvalidModel):
        Model(tmp_path / "missing.onnx")


def test_corrupt_initializer_size_is_invalid():
    m = onnx.load_from_string(_mlp())
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:-4]
    with pytest.raises(InvalidModel, match="bytes"):
        Model(m.SerializeToString())


def test_unsupported_ops_are_all_named():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("NonZero", ["a"], ["b"], name="nz"),
             helper.make_node("TopK", ["x", "k"], ["c", "d"], name="top")]
    data = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
                          helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
                  [helper.make_tensor_value_info("b", TensorProto.INT64, None),
                   helper.make_tensor_value_info("c", TensorProto.FLOAT, None)])
    with pytest.raises(UnsupportedGraph) as err:
        Model(data)
    assert err.value.ops == [("NonZero", "nz"), ("TopK", "top")]
    assert "NonZero (nz)" in str(err.value) and "TopK (top)" in str(err.value)
    assert err.value.op_type == "NonZero" and err.value.node_name == "nz"


def test_custom_domain_is_unsupported():
    node = helper.make_node("FusedGemm", ["x"], ["y"], name="fg", domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(UnsupportedGraph, match="FusedGemm") as err:
        Model(m.SerializeToString())
    assert err.value.node_name == "fg"


def test_unsupported_input_dtype():
    data = _model([helper.make_node("Identity", ["x"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.COMPLEX64, [2])],
                  [helper.make_tensor_value_info("y", TensorProto.COMPLEX64, [2])])
    with pytest.raises(UnsupportedGraph, match="COMPLEX64"):
        Model(data)


def test_external_data_is_unsupported():
    m = onnx.load_from_string(_mlp())
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../../etc/passwd")
    with pytest.raises(UnsupportedGraph, match="external"):
        Model(m.SerializeToString())


@pytest.mark.parametrize("feeds,match", [
    ({"x": np.ones((2, 8), np.float64)}, "dtype"),
    ({"x": np.ones((2, 9), np.float32)}, "axis 1"),
    ({"x": np.ones((8,), np.float32)}, "dimensions"),
    ({"x": np.ones((2, 16), np.float32)[:, ::2]}, "C-contiguous"),
    ({"x": np.ones((0, 8), np.float32)}, "empty"),
    ({}, "missing"),
    ({"x": np.ones((2, 8), np.float32), "z": np.ones(1)}, "unknown"),
    ({"x": [[1.0] * 8]}, "numpy array"),
])
def test_bad_feeds(feeds, match):
    with pytest.raises(InputError, match=match):
        Model(_mlp()).run(feeds)


def test_feeds_not_a_dict():
    with pytest.raises(InputError):
        Model(_mlp()).run([np.ones((2, 8), np.float32)])


def test_shape_that_does_not_fit_the_graph():
    from benchmarks.engine_models import digits_variants
    model = Model(digits_variants()[0]["fp32"])
    with pytest.raises(InputError, match="axis 2 must be 8"):   # declared fixed axes are checked
        model.run({"input": np.ones((1, 1, 9, 9), np.float32)})
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 8], np.int64), "shape")
    data = _model([helper.make_node("Reshape", ["x", "shape"], ["r"], name="rs"),
                   helper.make_node("Gemm", ["r", "w"], ["y"], transB=1, name="fc")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "k"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, shape])
    model = Model(data)
    with pytest.raises(InputError, match="do not fit"):        # symbolic axes: found when planning
        model.run({"x": np.ones((1, 5), np.float32)})
    assert model.run({"x": np.ones((2, 4), np.float32)})["y"].shape == (1, 16)   # still usable


def test_gather_index_out_of_range_is_an_input_error():
    emb = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "emb")
    data = _model([helper.make_node("Gather", ["emb", "ids"], ["y"], name="g")],
                  [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 2])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3])], [emb])
    model = Model(data)
    np.testing.assert_array_equal(model.run({"ids": np.array([[1, 3]])})["y"][0, 1], [9, 10, 11])
    with pytest.raises(InputError):
        model.run({"ids": np.array([[1, 4]])})
