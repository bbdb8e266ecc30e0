"""The ONNX quantization rewrites: graph form, numerics against numpy, accuracy, size."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import kernels

from compressor.errors import EmptyCalibrationError, UnsupportedLayerError
from compressor.evaluate import accuracy_fn, run, session
from compressor.export import check_model, export_onnx
from compressor.quant import reference as ref
from compressor.quant.qdq import QdqOptions, quantize_static_qdq
from compressor.quant.weight_only import quantize_weight_only


def _acc(model, data):
    return accuracy_fn(*data)(session(model))


@pytest.fixture(scope="module")
def int8_model(digits, digits_fp32_onnx):
    q, report = quantize_static_qdq(digits_fp32_onnx, digits.calibration[0], QdqOptions())
    return q, report


def test_int8_graph_stores_int8_weights_and_checks(int8_model, digits_fp32_onnx):
    q, report = int8_model
    check_model(q)
    inits = {t.name: t for t in q.graph.initializer}
    weights = [l["weight"] for l in report["layers"]]
    assert len(weights) == 5
    for w in weights:
        assert w not in inits                                   # fp32 weight is gone
        qt = [t for n, t in inits.items() if n.startswith(w + "_quantized")]
        assert qt and qt[0].data_type == onnx.TensorProto.INT8
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") >= 5 and "DequantizeLinear" in ops
    fp32_size = len(digits_fp32_onnx.SerializeToString())
    assert len(q.SerializeToString()) < fp32_size / 3


def test_int8_accuracy_within_half_a_point(digits, digits_fp32_onnx, int8_model):
    fp32 = _acc(digits_fp32_onnx, digits.heldout)
    int8 = _acc(int8_model[0], digits.heldout)
    assert fp32 >= 0.97
    assert int8 >= fp32 - 0.005, (fp32, int8)


def test_onnxruntime_fuses_int8_ops(int8_model, tmp_path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(int8_model[0].SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QLinearConv") == 3, ops        # the convs really run in int8
    assert "QGemm" in ops or "QLinearMatMul" in ops, ops


def test_int8_linear_numerics_match_numpy_simulation():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4).eval()
    m = export_onnx(torch.nn.Sequential(lin).eval(), np.zeros((2, 6), np.float32))
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 2, size=(32, 6)).astype(np.float32)
    q, _ = quantize_static_qdq(m, calib, QdqOptions(quantize_outputs=True))
    x = rng.uniform(-1, 2, size=(5, 6)).astype(np.float32)
    # where onnxruntime's fused int8 saturates (kernels.int8_dot_saturates), the QDQ graph as written
    exact = {"session.disable_quant_qdq": "1"} if kernels.int8_dot_saturates() else None
    got = run(session(q, config=exact), x)
    # the same computation by hand with the reference quantizers
    xs, xz = ref.affine_params_ref(calib.min(), calib.max(), "uint8")
    xd = ref.dequantize_affine_ref(ref.quantize_affine_ref(x, xs, xz), xs, xz)
    w = lin.weight.detach().numpy()
    wq, ws = ref.quantize_symmetric_ref(w, axis=0)
    wd = wq.astype(np.float32) * ws[:, None]
    bq, bs = ref.quantize_bias_ref(lin.bias.detach().numpy(), xs, ws)
    y = xd @ wd.T + bq * bs
    calib_out = run(session(m), calib)
    ys, yz = ref.affine_params_ref(calib_out.min(), calib_out.max(), "uint8")
    want = ref.dequantize_affine_ref(ref.quantize_affine_ref(y, ys, yz), ys, yz)
    # fused int8 kernels requantize with fixed-point multipliers: at most one step apart
    assert np.max(np.abs(got - want)) <= float(ys) * 1.01


def test_int4_conv_and_gemm_match_dequantized_reference(digits_fp32_onnx, digits):
    q, report = quantize_weight_only(digits_fp32_onnx, bits=4, group_size=32)
    check_model(q)
    # rebuild the fp32 graph with the reference-dequantized weights: outputs must agree
    ref_model = onnx.ModelProto()
    ref_model.CopyFrom(digits_fp32_onnx)
    for t in ref_model.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.ndim >= 2:
            w2 = w.reshape(w.shape[0], -1)
            b = ref.quantize_blockwise_ref(w2, axis=1, block_size=min(32, w2.shape[1]), bits=4)
            t.CopyFrom(numpy_helper.from_array(ref.dequantize_blockwise_ref(b).reshape(w.shape), t.name))
    x = digits.heldout[0][:50]
    np.testing.assert_allclose(run(session(q), x), run(session(ref_model), x), rtol=1e-4, atol=1e-4)
    int4 = [t for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert len(int4) == 5
    assert all(l["sqnr_db"] > 15 for l in report["layers"])


def test_int4_matmul_runs_in_onnxruntime():
    """MatMul weights (K, N): blocks along K; onnxruntime fuses to MatMulNBits."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(1)
    w = rng.normal(size=(64, 16)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 16])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    q, _ = quantize_weight_only(m, bits=4, group_size=32)
    check_model(q)
    x = rng.normal(size=(3, 64)).astype(np.float32)
    wd = ref.dequantize_blockwise_ref(ref.quantize_blockwise_ref(w, axis=0, block_size=32))
    # MatMulNBits may compute with int8-quantized activations: compare loosely
    got = run(session(q), x)
    np.testing.assert_allclose(got, x @ wd, rtol=0.05, atol=0.05 * np.abs(x @ wd).max())


def test_sizes_int4_lt_int8_lt_fp32(digits, digits_fp32_onnx, int8_model):
    q4, _ = quantize_weight_only(digits_fp32_onnx, bits=4, group_size=32)
    s32 = len(digits_fp32_onnx.SerializeToString())
    s8 = len(int8_model[0].SerializeToString())
    s4 = len(q4.SerializeToString())
    assert s4 < s8 < s32


def test_empty_calibration_is_a_clear_error(digits_fp32_onnx):
    with pytest.raises(EmptyCalibrationError, match="calibration data"):
        quantize_static_qdq(digits_fp32_onnx, np.zeros((0, 1, 8, 8), np.float32), QdqOptions())
    with pytest.raises(EmptyCalibrationError):
        quantize_static_qdq(digits_fp32_onnx, None, QdqOptions())


def test_unsupported_weight_op_is_a_clear_error():
    from onnx import TensorProto, helper
    w = numpy_helper.from_array(np.ones((1, 2, 3, 3), np.float32), "deconv.weight")
    g = helper.make_graph([helper.make_node("ConvTranspose", ["x", "deconv.weight"], ["y"], name="up")],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(UnsupportedLayerError, match="ConvTranspose"):
        quantize_static_qdq(m, np.ones((2, 1, 4, 4), np.float32), QdqOptions())
    with pytest.raises(UnsupportedLayerError, match="ConvTranspose"):
        quantize_weight_only(m)
