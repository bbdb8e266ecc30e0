"""2-bit weights: packing vs numpy, the MSE search, the in-graph unpacking in onnxruntime
(constant-folded at load), GPTQ error feedback, sizes, and the settings refused."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor import Fp32Config, Int4WeightOnlyConfig, compress
from compressor.evaluate import LatencyConfig, run, session
from compressor.export import check_model
from compressor.quant import int2
from compressor.quant.graph import Graph
from compressor.quant.weight_only import quantize_weight_only

FAST = LatencyConfig(warmup=1, repeats=3)
FOLD = {"session.disable_quant_qdq": "1"}


def _canonical(site, w):
    """Weight -> (rows = outputs, K = reduction), as int2.emit_int2_weight lays it out."""
    if site.node.op_type == "Conv":
        return w.reshape(w.shape[0], -1)
    return w.T if site.reduce_axis == 0 else w


def _reference_model(model, group_size, symmetric, skip=()):
    """The fp32 graph with every weight replaced by numpy's dequantized int2 weight."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out)
    for s in g.weight_sites():
        if s.weight_name in skip:
            continue
        w = g.array(s.weight_name)
        d = int2.dequantize_int2_ref(int2.quantize_int2_ref(_canonical(s, w), group_size, symmetric))
        d = d.reshape(w.shape) if s.node.op_type == "Conv" else (d.T if s.reduce_axis == 0 else d)
        g.inits[s.weight_name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(d), s.weight_name))
    return out


def test_pack_unpack_round_trip_matches_numpy_bits():
    rng = np.random.default_rng(0)
    for n in (1, 3, 4, 5, 64, 1001):
        codes = rng.integers(0, 4, size=n).astype(np.uint8)
        packed = int2.packed_codes(codes.reshape(1, -1), n)     # one row, one group
        assert packed.dtype == np.uint8 and packed.shape == (-(-n // 4), 1)
        # independent decode: little-endian bit order, pairs of bits = one code
        bits = np.unpackbits(packed.reshape(-1), bitorder="little").reshape(-1, 2)
        np.testing.assert_array_equal((bits[:, 0] + 2 * bits[:, 1])[:n], codes)
        np.testing.assert_array_equal(int2.unpack_codes_ref(packed, n), codes)
    # hand value: codes 1, 3, 0, 2 -> 0b10_00_11_01
    assert int2.packed_codes(np.array([[1, 3, 0, 2]], np.uint8), 4).tolist() == [[0b10001101]]


def test_mse_search_exact_on_grid_and_no_worse_than_absmax():
    s = 0.25
    sym = np.array([[[-1.5, -0.5, 0.5, 1.5, 0.5, -0.5, 1.5, -1.5]]], np.float32) * s
    sc, zp, c = int2.fit_groups(sym, symmetric=True)
    assert zp is None and float(sc[0, 0]) == s
    np.testing.assert_array_equal(int2._deq(c, sc, None), sym)
    asym = (np.array([[[0, 1, 2, 3, 3, 0, 1, 2]]], np.float32) * 0.5 + 0.125)   # levels 0.125..1.625
    sc, zp, c = int2.fit_groups(asym, symmetric=False)
    np.testing.assert_allclose(int2._deq(c, sc, zp), asym, atol=1e-3)
    # random groups: the searched scale beats the plain absmax / 1.5 scale on every group
    w = np.random.default_rng(1).standard_t(4, size=(64, 128)).astype(np.float32)
    q = int2.quantize_int2_ref(w, 64, symmetric=True)
    err = ((int2.dequantize_int2_ref(q) - w) ** 2).reshape(64, 2, 64).sum(-1)
    blocks = w.reshape(64, 2, 64)
    s0 = np.abs(blocks).max(-1) / 1.5
    c0 = np.clip(np.rint(blocks / s0[..., None] + 1.5), 0, 3)
    err0 = (((c0 - 1.5) * s0[..., None] - blocks) ** 2).sum(-1)
    assert np.all(err <= err0 * (1 + 1e-3)) and err.sum() < 0.8 * err0.sum()


def _small_graph():
    """Conv (K = 27) -> depthwise Conv (K = 9) -> Flatten -> MatMul (K = 54, N = 7) -> Gemm
    transB=1 (K = 7): every layout, K not a multiple of 4 or of the group."""
    rng = np.random.default_rng(2)
    ws = {"c1": rng.normal(size=(6, 3, 3, 3)), "dw": rng.normal(size=(6, 1, 3, 3)),
          "mm": rng.normal(size=(54, 7)), "fc": rng.normal(size=(5, 7))}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in ws.items()]
    nodes = [helper.make_node("Conv", ["x", "c1"], ["a"], name="c1n", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "dw"], ["b"], name="dwn", group=6, strides=[2, 2]),
             helper.make_node("Flatten", ["b"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "mm"], ["m"], name="mmn"),
             helper.make_node("Gemm", ["m", "fc"], ["y"], name="fcn", transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 7, 7])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("symmetric", [True, False])
def test_every_layout_runs_in_onnxruntime_like_numpy(symmetric, tmp_path):
    m = _small_graph()
    q, report = quantize_weight_only(m, bits=2, group_size=32, symmetric=symmetric, edge_bits=2)
    check_model(q)
    onnx.checker.check_model(q, full_check=True)
    assert [l["weight_bits"] for l in report["layers"]] == [2, 2, 2, 2]
    assert not [t for t in q.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2]
    x = np.random.default_rng(3).normal(size=(4, 3, 7, 7)).astype(np.float32)
    want = run(session(_reference_model(m, 32, symmetric)), x)
    np.testing.assert_allclose(run(session(q), x), want, rtol=1e-5, atol=1e-5)
    # onnxruntime folds the unpacking at load: no integer arithmetic left in the graph
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(q.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert not ops & {"Div", "Mod", "Cast", "Sub", "Slice"}, ops


def test_digits_int2_matches_numpy_and_shrinks(digits, digits_fp32_onnx):
    q, report = quantize_weight_only(digits_fp32_onnx, bits=2, group_size=64, edge_bits=8)
    check_model(q)
    sites = Graph(digits_fp32_onnx).weight_sites()
    edges = (sites[0].weight_name, sites[-1].weight_name)
    assert {l["weight"]: l["weight_bits"] for l in report["layers"]} == {
        s.weight_name: 8 if s.weight_name in edges else 2 for s in sites}
    x = digits.heldout[0][:64]
    # all layers at 2 bits: the same float ops as numpy's dequantized weights
    q_all, _ = quantize_weight_only(digits_fp32_onnx, bits=2, group_size=64, edge_bits=2)
    np.testing.assert_allclose(run(session(q_all, config=FOLD), x),
                               run(session(_reference_model(digits_fp32_onnx, 64, True)), x),
                               rtol=1e-4, atol=1e-4)
    # edges at int8: the int2 layers are unchanged, the edges differ by int8 rounding only
    got = run(session(q, config=FOLD), x)
    want = run(session(_reference_model(digits_fp32_onnx, 64, True, skip=edges)), x)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    two = [l for l in report["layers"] if l["weight_bits"] == 2]
    assert all(l["bits_per_weight"] <= 2.6 for l in two) and all(l["sqnr_db"] > 8 for l in two)
    # ~2.25-2.5 bits per weight: the whole file (fp32 biases and exporter metadata
    # included) is under 1/8 of fp32 and under the int4 variant's size
    q4, _ = quantize_weight_only(digits_fp32_onnx, bits=4, group_size=32)
    size2, size32 = len(q.SerializeToString()), len(digits_fp32_onnx.SerializeToString())
    assert size2 < size32 / 8 and size2 < 0.7 * len(q4.SerializeToString())


def test_gptq_int2_lowers_layer_output_error(digits, digits_fp32_onnx):
    from compressor.quant.gptq import layer_inputs
    g = Graph(digits_fp32_onnx)
    site = [s for s in g.weight_sites() if s.node.op_type == "Conv"][-1]
    w2 = g.array(site.weight_name).reshape(g.array(site.weight_name).shape[0], -1)
    x = layer_inputs(digits_fp32_onnx, [site], digits.calibration[0])[site.weight_name]
    for symmetric in (True, False):
        rtn = int2.dequantize_int2_ref(int2.quantize_int2_ref(w2, 64, symmetric))
        gq = int2.gptq_int2(w2, x, 64, symmetric)
        assert gq.codes.max() <= 3 and gq.scale.shape == (w2.shape[0], -(-w2.shape[1] // 64))
        gd = int2.dequantize_int2_ref(gq)
        e_rtn = np.sum((x @ (w2 - rtn).T) ** 2)
        e_gptq = np.sum((x @ (w2 - gd).T) ** 2)
        assert e_gptq < 0.9 * e_rtn, (symmetric, e_gptq, e_rtn)


def test_int2_variant_through_compress(digits):
    r = compress(digits.model, [Fp32Config(), Int4WeightOnlyConfig(bits=2, group_size=64),
                                Int4WeightOnlyConfig(bits=2, group_size=64, algorithm="gptq")],
                 calib_data=digits.calibration[0], eval_data=digits.heldout, latency=FAST)
    fp32, rtn, gptq = r.manifest.variants
    assert (rtn.id, rtn.method, gptq.id, gptq.method) == ("int2-g64", "weight-only-int2",
                                                          "int2-g64-gptq", "gptq-int2")
    for v in (rtn, gptq):
        assert v.size_bytes < fp32.size_bytes / 8
        assert v.quality > fp32.quality - 0.05
        assert v.details["edge_bits"] == 8
        # weight_bits is the widest width (the int8 edges); the label names both
        assert v.weight_bits == 8 and v.bits_label == "w2/8a32"
    assert fp32.bits_label == "w32a32"
    assert {row["id"]: row["bits"] for row in r.table()}["int2-g64"] == "w2/8a32"


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=3), "bits must be one of"),
    (dict(bits=8), "bits must be one of"),
    (dict(bits=2, group_size=16), "int2 group_size must be one of"),
    (dict(bits=2, group_size=256), "int2 group_size must be one of"),
    (dict(bits=2, group_size=48), "power of two"),
    (dict(bits=4, group_size=4), "power of two"),
    (dict(bits=2, edge_bits=3), "edge_bits"),
    (dict(bits=4, symmetric=False, algorithm="gptq"), "symmetric only"),
])
def test_bad_settings_are_clear_errors(kwargs, match, digits_fp32_onnx):
    with pytest.raises(ValueError, match=match):
        Int4WeightOnlyConfig(**kwargs)
    if "algorithm" not in kwargs:       # the rewrite checks the same things for direct callers
        with pytest.raises(ValueError, match=match):
            quantize_weight_only(digits_fp32_onnx, **kwargs)


def test_config_round_trip():
    from compressor.configs import config_from_dict, config_to_dict
    c = Int4WeightOnlyConfig(bits=2, group_size=128, symmetric=False, edge_bits=4)
    assert c.id == "int2-g128-e4"
    assert config_from_dict(config_to_dict(c)) == c
