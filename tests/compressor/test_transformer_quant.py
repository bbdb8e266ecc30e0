"""Transformer quantization pieces against numpy references (no pretrained model needed):
SmoothQuant math and graph rewrite, simulated dynamic quantization vs onnxruntime, int4
blocks, GatherBlockQuantized embeddings, GPTQ, configs."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compressor.configs import config_from_dict, config_to_dict
from compressor.evaluate import session
from compressor.quant.dynamic import quantize_dynamic_int8
from compressor.quant.graph import Graph, make_init, remove_unused_initializers, topological_sort
from compressor.transformer import SmoothQuantInt8Config, TransformerInt4Config
from compressor.transformer.embedding import (INT4_MAX, INT4_MIN, embedding_gathers,
                                              gather_block_dequant_ref, quantize_blocks_mse,
                                              quantize_embedding_int4, quantize_embedding_int8,
                                              quantize_table_int8_dq, sliced_tables)
from compressor.transformer.gptq import gptq_int4, hessian, rtn_int4, write_int4_weight
from compressor.transformer.smoothquant import (apply_smoothquant, dynamic_int8_error,
                                                fake_dynamic_uint8, search_alpha,
                                                smoothable_inputs, smoothing_scales)
from compressor.quant import reference as ref


# -- SmoothQuant -----------------------------------------------------------------------------

def test_smoothing_scales_hand_computed_and_product_unchanged():
    x = np.array([[4.0, -1.0], [2.0, 0.5]], np.float32)
    w = np.array([[1.0, 0.5], [-0.5, 4.0]], np.float32)          # (K=2, N=2)
    act = np.abs(x).max(axis=0)                                   # [4, 1]
    wmax = np.abs(w).max(axis=1)                                  # [1, 4]
    s = smoothing_scales(act, wmax, alpha=0.5)
    np.testing.assert_allclose(s, [2.0, 0.5])                     # sqrt(4/1), sqrt(1/4)
    xs, ws = x / s, w * s[:, None]
    np.testing.assert_allclose(xs, [[2.0, -2.0], [1.0, 1.0]])
    np.testing.assert_allclose(ws, [[2.0, 1.0], [-0.25, 2.0]])
    np.testing.assert_allclose(xs @ ws, [[4.5, -2.0], [1.75, 3.0]])
    np.testing.assert_allclose(x @ w, xs @ ws)
    np.testing.assert_allclose(np.abs(xs).max(axis=0), [2.0, 2.0])   # channels now flat


def test_smoothing_scales_edge_cases():
    s = smoothing_scales(np.array([0.0, 1e6, 1.0]), np.array([1.0, 1e-6, 0.0]), alpha=0.5)
    assert s[0] == 1.0 and s[2] == 1.0          # dead channel / zero weight row: untouched
    assert s[1] == pytest.approx(100.0)          # clipped
    with pytest.raises(ValueError):
        smoothing_scales(np.ones(2), np.ones(2), alpha=1.5)


def _ln_block(seed=0, k=8, n=6):
    """x -> LayerNorm -> (MatMul W1, MatMul W2, residual Add): Q/K-like shared input."""
    rng = np.random.default_rng(seed)
    gamma = np.ones(k, np.float32)
    gamma[2] = 20.0                               # an outlier channel, as in transformers
    inits = [make_init("gamma", gamma), make_init("beta", np.zeros(k, np.float32)),
             make_init("w1", rng.standard_normal((k, n)).astype(np.float32)),
             make_init("w2", rng.standard_normal((k, n)).astype(np.float32)),
             make_init("wr", rng.standard_normal((k, n)).astype(np.float32))]
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1),
             helper.make_node("MatMul", ["h", "w1"], ["a"]),
             helper.make_node("MatMul", ["h", "w2"], ["b"]),
             helper.make_node("MatMul", ["h", "wr"], ["r"]),
             helper.make_node("Add", ["a", "b"], ["ab"]),
             helper.make_node("Add", ["r", "r"], ["r2"]),
             helper.make_node("ReduceSum", ["h"], ["hs"], keepdims=1),
             helper.make_node("Mul", ["r2", "hs"], ["h2"]),
             helper.make_node("Add", ["ab", "h2"], ["y"])]
    g = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    onnx.checker.check_model(m)
    return m, rng.standard_normal((16, k)).astype(np.float32)


def test_apply_smoothquant_graph_is_exact_and_shares_one_mul():
    m, x = _ln_block()
    targets = smoothable_inputs(m)
    assert targets == {"h": ["w1", "w2", "wr"]}
    h = session(m).run(None, {"x": x})[0]
    sm, report = apply_smoothquant(m, {"h": np.linspace(1, 30, 8).astype(np.float32)}, alpha=0.6)
    onnx.checker.check_model(sm)
    muls = [n for n in sm.graph.node if n.name.endswith("SmoothQuant")]
    assert len(muls) == 1                         # one smoothed tensor serves all readers
    g = Graph(sm)
    readers = {n.op_type for n in g.consumers["h"]}
    assert readers == {"Mul", "ReduceSum"}        # the non-MatMul reader keeps the original
    np.testing.assert_allclose(session(sm).run(None, {"x": x})[0], h, rtol=1e-4, atol=1e-4)
    assert report["tensors"][0]["alpha"] == 0.6
    # a None alpha leaves the graph alone
    same, rep = apply_smoothquant(m, {"h": np.ones(8, np.float32)}, alpha={"h": None})
    assert rep["tensors"] == [] and len(same.graph.node) == len(m.graph.node)


def test_fake_dynamic_quantization_matches_onnxruntime():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((10, 16)) * np.linspace(0.1, 8, 16)).astype(np.float32)
    w = rng.standard_normal((16, 5)).astype(np.float32)
    m = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [make_init("w", w)]),
        opset_imports=[helper.make_opsetid("", 21)])
    q, _ = quantize_dynamic_int8(m)
    sess = session(q)
    sentence = np.repeat([0, 1], 5)
    got = np.concatenate([sess.run(None, {"x": x[sentence == i]})[0] for i in (0, 1)])
    wq, ws = ref.quantize_symmetric_ref(w, axis=1)
    sim = fake_dynamic_uint8(x, sentence) @ (wq.astype(np.float32) * ws)
    np.testing.assert_allclose(got, sim, rtol=1e-5, atol=1e-5)
    rel = dynamic_int8_error(x, sentence, [w])
    assert rel == pytest.approx(np.sum((sim - x @ w) ** 2) / np.sum((x @ w) ** 2), rel=1e-4)


def test_search_alpha_prefers_smoothing_for_an_outlier_channel():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    x[:, 3] *= 60.0                                       # one outlier channel
    w = rng.standard_normal((32, 16)).astype(np.float32) * 0.1
    sentence = np.repeat(np.arange(4), 16)
    best, errors = search_alpha(x, sentence, [w], np.abs(x).max(0))
    assert best is not None and errors[best] < 0.5 * errors[None]


def test_outlier_channels_split_is_exact_and_found():
    from compressor.transformer.outliers import outlier_channels, split_outlier_channels
    a = np.full(100, 1.0)
    a[[7, 42]] = [30.0, 10.0]
    assert list(outlier_channels(a, ratio=3.0)) == [7, 42]
    assert list(outlier_channels(a, ratio=3.0, max_channels=1)) == [7]
    assert len(outlier_channels(np.ones(100))) == 0
    rng = np.random.default_rng(8)
    k, n = 16, 6
    w = rng.standard_normal((k, n)).astype(np.float32)
    m = helper.make_model(helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y0"]),
         helper.make_node("Add", ["y0", "b"], ["y"])], "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [make_init("w", w), make_init("b", np.ones(n, np.float32))]),
        opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    x = rng.standard_normal((5, k)).astype(np.float32)
    x[:, 3] *= 40.0
    want = session(m).run(None, {"x": x})[0]
    small = split_outlier_channels(m, "h", ["w"], np.array([3]))
    topological_sort(m)
    onnx.checker.check_model(m)
    np.testing.assert_allclose(session(m).run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    g = Graph(m)
    assert g.array(small[0]).shape == (1, n) and not g.array("w")[3].any()
    # the bias Add still follows the MatMul directly (onnxruntime fuses it); the fp32
    # correction comes after it
    mm = next(nd for nd in m.graph.node if nd.op_type == "MatMul" and nd.input[1] == "w")
    assert g.consumers[mm.output[0]][0].input[1] == "b"
    # after dynamic int8 (the outlier part excluded), the split beats plain int8
    q_split, _ = quantize_dynamic_int8(m, exclude=tuple(small))
    m0 = _ln_free_plain(w, k, n)
    q_plain, _ = quantize_dynamic_int8(m0)
    err = lambda q: np.abs(session(q).run(None, {"x": x})[0] - want).max()
    assert err(q_split) < err(q_plain)


def _ln_free_plain(w, k, n):
    m = helper.make_model(helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y0"]),
         helper.make_node("Add", ["y0", "b"], ["y"])], "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [make_init("w", w), make_init("b", np.ones(n, np.float32))]),
        opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


def test_merge_parallel_linears_is_exact_and_quantizes_as_one_gemm():
    from compressor.transformer.fuse import merge_parallel_linears
    rng = np.random.default_rng(9)
    k = 8
    inits = [make_init(f"w{i}", rng.standard_normal((k, 4 + i)).astype(np.float32)) for i in range(3)]
    inits += [make_init(f"b{i}", rng.standard_normal(4 + i).astype(np.float32)) for i in range(3)]
    nodes = []
    for i in range(3):
        nodes += [helper.make_node("MatMul", ["x", f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"y{i}"])]
    m = helper.make_model(helper.make_graph(
        nodes, "qkv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [None, 4 + i]) for i in range(3)],
        inits), opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    x = rng.standard_normal((5, k)).astype(np.float32)
    want = session(m).run(None, {"x": x})
    merged, report = merge_parallel_linears(m)
    onnx.checker.check_model(merged)
    assert [n.op_type for n in merged.graph.node] == ["MatMul", "Add", "Split"]
    assert report[0]["merged"] == ["w0", "w1", "w2"]
    for a, b in zip(session(merged).run(None, {"x": x}), want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # per-output-channel weight scales: quantizing the merged weight = quantizing each
    q_merged, _ = quantize_dynamic_int8(merged)
    q_sep, _ = quantize_dynamic_int8(m)
    for a, b in zip(session(q_merged).run(None, {"x": x}), session(q_sep).run(None, {"x": x})):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# -- int4 blocks and embeddings ------------------------------------------------------------

def test_quantize_blocks_mse_range_and_beats_plain_absmax():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((20, 64)).astype(np.float32)
    b = quantize_blocks_mse(w, 32)
    assert b.q.min() >= INT4_MIN and b.q.max() <= INT4_MAX and b.scale.shape == (20, 2)
    err_mse = np.sum((gather_block_dequant_ref(b, np.arange(20)) - w) ** 2)
    plain = ref.quantize_blockwise_ref(w, axis=1, block_size=32, bits=4)
    err_plain = np.sum((ref.dequantize_blockwise_ref(plain) - w) ** 2)
    assert err_mse < err_plain


def _gather_model(table: np.ndarray) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
                           helper.make_node("Relu", ["e"], ["y"])], "emb",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, table.shape[1]])],
                          [make_init("table", table)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


@pytest.mark.parametrize("fp16", [False, True])
def test_int4_gather_block_quantized_matches_numpy_reference(fp16):
    rng = np.random.default_rng(4)
    table = rng.standard_normal((100, 64)).astype(np.float32)
    m = _gather_model(table)
    g = Graph(m)
    (node,) = embedding_gathers(m, g)
    rep = quantize_embedding_int4(m, g, node, block_size=32, fp16_scales=fp16)
    topological_sort(m)
    onnx.checker.check_model(m)
    ops = [n.op_type for n in m.graph.node]
    assert "GatherBlockQuantized" in ops and "Gather" not in ops
    packed = next(t for t in m.graph.initializer if t.data_type == TensorProto.INT4)
    assert len(packed.raw_data) == 100 * 64 // 2                 # really 4 bits per value
    ids = np.array([[0, 99, 5], [7, 7, 42]], np.int64)
    got = session(m).run(None, {"ids": ids})[0]
    b = quantize_blocks_mse(table, 32, np.float16 if fp16 else np.float32)
    want = np.maximum(gather_block_dequant_ref(b, ids), 0)
    np.testing.assert_allclose(got, want, rtol=1e-3 if fp16 else 1e-6, atol=1e-3 if fp16 else 1e-6)
    assert rep["sqnr_db"] > 15                                   # int4 blocks: ~20 dB on gaussians


def test_int8_embedding_rows_and_position_table():
    rng = np.random.default_rng(5)
    table = rng.standard_normal((50, 16)).astype(np.float32)
    m = _gather_model(table)
    g = Graph(m)
    quantize_embedding_int8(m, g, embedding_gathers(m, g)[0])
    topological_sort(m)
    onnx.checker.check_model(m)
    ids = np.array([[3, 49]], np.int64)
    q, s = ref.quantize_symmetric_ref(table, axis=0)
    want = np.maximum(q[ids].astype(np.float32) * s[ids][..., None], 0)
    np.testing.assert_allclose(session(m).run(None, {"ids": ids})[0], want, rtol=1e-6)
    # a table read by Slice (position embeddings) gets int8 rows + DequantizeLinear
    pos = rng.standard_normal((12, 16)).astype(np.float32)
    gm = helper.make_graph(
        [helper.make_node("Slice", ["pos", "start", "n"], ["y"])], "pos",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])],
        [make_init("pos", pos), make_init("start", np.array([0], np.int64))])
    pm = helper.make_model(gm, opset_imports=[helper.make_opsetid("", 21)])
    pg = Graph(pm)
    assert sliced_tables(pm, pg) == ["pos"]
    quantize_table_int8_dq(pm, pg, "pos")
    topological_sort(pm)
    got = session(pm).run(None, {"n": np.array([5], np.int64)})[0]
    q, s = ref.quantize_symmetric_ref(pos, axis=0)
    np.testing.assert_allclose(got, (q * s[:, None])[:5], rtol=1e-6)


# -- GPTQ ----------------------------------------------------------------------------------

def test_gptq_lowers_output_error_and_runs_as_int4_matmul():
    rng = np.random.default_rng(6)
    base = rng.standard_normal((512, 16)).astype(np.float32)
    x = (base @ rng.standard_normal((16, 64)) + 0.1 * rng.standard_normal((512, 64))).astype(np.float32)
    w = (rng.standard_normal((64, 24)) * 0.05).astype(np.float32)
    h = hessian(x)
    g_b, r_b = gptq_int4(w, h, group_size=32), rtn_int4(w, group_size=32)
    for b in (g_b, r_b):
        assert b.q.shape == w.shape and b.scale.shape == (2, 24)
        assert b.q.min() >= INT4_MIN and b.q.max() <= INT4_MAX
    y = x @ w
    err = {k: np.sum((x @ ref.dequantize_blockwise_ref(b) - y) ** 2)
           for k, b in (("gptq", g_b), ("rtn", r_b))}
    assert err["gptq"] < 0.8 * err["rtn"]
    # the codes as a blocked DequantizeLinear in front of a MatMul: onnxruntime fuses the
    # pair into MatMulNBits, by default at accuracy level 4 (activations quantized to int8
    # per block, ~1% error); at level 0 it is x @ dequantized(W) to float rounding
    m = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 24])], [make_init("w", w)]),
        opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    g = Graph(m)
    write_int4_weight(m, g, g.weight_sites()[0], g_b)
    remove_unused_initializers(m)
    topological_sort(m)
    onnx.checker.check_model(m)
    want = x[:4] @ ref.dequantize_blockwise_ref(g_b)
    exact = session(m, 1, {"session.qdq_matmulnbits_accuracy_level": "0"}).run(None, {"x": x[:4]})[0]
    np.testing.assert_allclose(exact, want, rtol=1e-4, atol=1e-4)
    fast = session(m).run(None, {"x": x[:4]})[0]
    assert np.abs(fast - want).max() < 0.03 * np.abs(want).max()


# -- configs -------------------------------------------------------------------------------

def test_transformer_configs_round_trip_and_reject_nonsense():
    for cfg in (SmoothQuantInt8Config(alpha=0.6, keep_fp32=2, exclude=("w",), outlier_ratio=0),
                SmoothQuantInt8Config(), TransformerInt4Config(method="rtn", group_size=64)):
        assert config_from_dict(config_to_dict(cfg)) == cfg
    assert TransformerInt4Config(method="rtn", group_size=64).id == "int4-rtn-g64"
    with pytest.raises(ValueError):
        SmoothQuantInt8Config(alpha=1.5)
    with pytest.raises(ValueError):
        SmoothQuantInt8Config(alpha_grid=(0.5, 2.0))
    with pytest.raises(ValueError):
        TransformerInt4Config(group_size=12)
    with pytest.raises(ValueError):
        TransformerInt4Config(method="awq")


def test_outliers_of_an_ffn_are_recomputed_at_their_source():
    # x -> MatMul(W1) -> Add(b1) -> Gelu -> MatMul(W2) -> Add(b2): the outlier channel is
    # zeroed in W1/b1 (no Mask Mul, no Gather) and recomputed in fp32 beside; exact in fp32
    from compressor.transformer.outliers import split_outlier_channels
    rng = np.random.default_rng(9)
    d, k, n = 8, 16, 6
    w1 = rng.standard_normal((d, k)).astype(np.float32)
    w1[:, 5] *= 30.0                                    # channel 5 of the Gelu output is huge
    w2 = rng.standard_normal((k, n)).astype(np.float32)
    m = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["a0"]), helper.make_node("Add", ["a0", "b1"], ["a"]),
         helper.make_node("Gelu", ["a"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y0"]),
         helper.make_node("Add", ["y0", "b2"], ["y"])], "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [make_init("w1", w1), make_init("b1", rng.standard_normal(k).astype(np.float32)),
         make_init("w2", w2), make_init("b2", np.ones(n, np.float32))]),
        opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    x = rng.standard_normal((5, d)).astype(np.float32)
    want = session(m).run(None, {"x": x})[0]
    small = split_outlier_channels(m, "h", ["w2"], np.array([5]))
    topological_sort(m)
    onnx.checker.check_model(m)
    np.testing.assert_allclose(session(m).run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-4)
    g = Graph(m)
    assert not any(nd.op_type in ("Mul", "Gather") for nd in m.graph.node)
    assert g.array("w1").shape == (d, k + 1) and not g.array("w1")[:, 5].any()
    assert g.array("b1")[5] == -30.0
    assert [g.array(s).shape for s in small] == [(1, n)]
    # the main Gelu output's channel 5 is exactly 0 now (what the int8 range sees)
    m.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [None, k]))
    h = session(m).run(["h"], {"x": x})[0]
    assert np.all(h[:, 5] == 0)


def test_int8_embedding_block_size():
    from compressor.transformer.embedding import int8_block_size
    assert (int8_block_size(384), int8_block_size(16), int8_block_size(512), int8_block_size(24)) == \
        (128, 16, 512, 0)


def test_merge_head_splits_is_exact_and_drops_reshapes():
    from compressor.transformer.fuse import merge_head_splits
    h, d = 3, 4
    e = h * d
    outs = ["qt", "kt", "vt"]
    nodes = [helper.make_node("Shape", ["x"], ["b"], start=0, end=1),
             helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
             helper.make_node("Concat", ["b", "s", "hh", "dd"], ["shape"], axis=0),
             helper.make_node("Split", ["x", "sizes"], ["q", "k", "v"], axis=-1)]
    for name, o, perm in zip("qkv", outs, ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3])):
        nodes += [helper.make_node("Reshape", [name, "shape"], [f"{name}r"], allowzero=1),
                  helper.make_node("Transpose", [f"{name}r"], [o], perm=perm)]
    m = helper.make_model(helper.make_graph(
        nodes, "heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 3 * e])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * 4) for o in outs],
        [make_init("hh", np.array([h], np.int64)), make_init("dd", np.array([d], np.int64)),
         make_init("sizes", np.array([e] * 3, np.int64))]),
        opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    x = np.random.default_rng(3).standard_normal((2, 5, 3 * e)).astype(np.float32)
    want = session(m).run(None, {"x": x})
    fused, n = merge_head_splits(m)
    onnx.checker.check_model(fused)
    assert n == 1
    for a, b in zip(session(fused).run(None, {"x": x}), want):
        np.testing.assert_array_equal(a, b)
    ops = [nd.op_type for nd in fused.graph.node]
    assert ops.count("Reshape") == 1 and ops.count("Split") == 1 and ops.count("Transpose") == 2


# -- attention as one op, residual Sums: a tiny random BERT through the whole int8 build ------

@pytest.fixture(scope="module")
def tiny_bert():
    """(fp32 export, ids, mask) of a random 2-layer, 4-head BERT (one export per module)."""
    return _tiny_bert()


def _tiny_bert(seed=0):
    import torch
    from compressor.models.minilm import BertConfig, MiniLMEncoder
    from compressor.transformer.export import export_encoder

    torch.manual_seed(seed)
    model = MiniLMEncoder(BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=128,
                                     max_position_embeddings=64)).eval()
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 200, (24, 20)).astype(np.int64)
    mask = np.ones_like(ids)
    for i, n in enumerate(rng.integers(3, 21, len(ids))):
        mask[i, n:] = 0                                  # real padding: the mask must matter
    return export_encoder(model, ids[:2, :8], mask[:2, :8]), ids, mask


def _embed(model_proto, ids, mask):
    from compressor.transformer.fidelity import run_encoder
    return run_encoder(session(model_proto, 2), ids, mask)


def test_fuse_attention_is_exact_on_a_bert_export(tiny_bert):
    from compressor.transformer.attention import fuse_attention
    from compressor.transformer.fuse import merge_head_splits, merge_parallel_linears

    fp32, ids, mask = tiny_bert
    merged, _ = merge_parallel_linears(fp32)
    merged, _ = merge_head_splits(merged)
    fused, blocks = fuse_attention(merged)
    onnx.checker.check_model(fused)
    assert len(blocks) == 2 and all(b["heads"] == 4 and b["head_size"] == 16 for b in blocks)
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("Attention") == 2 and "Softmax" not in ops and "Split" not in ops
    np.testing.assert_allclose(_embed(fused, ids, mask), _embed(fp32, ids, mask), atol=1e-5)
    # a block whose Q/K/V MatMul is to stay as it is is left unfused
    skipped, blocks = fuse_attention(merged, skip=(blocks[0]["weight"],))
    assert len(blocks) == 1 and [n.op_type for n in skipped.graph.node].count("Softmax") == 1


def test_fuse_attention_folds_a_non_default_score_scale(tiny_bert):
    from compressor.transformer.attention import fuse_attention
    from compressor.transformer.fuse import merge_head_splits, merge_parallel_linears

    fp32, ids, mask = tiny_bert
    merged, _ = merge_head_splits(merge_parallel_linears(fp32)[0])
    g = Graph(merged)
    scale = next(n for n in merged.graph.node if n.op_type == "Mul" and
                 g.producer.get(n.input[0]) is not None and g.producer[n.input[0]].op_type == "MatMul"
                 and n.input[1] in g.inits)
    g.inits[scale.input[1]].CopyFrom(make_init(scale.input[1], np.asarray(0.4, np.float32)))
    fused, blocks = fuse_attention(merged)
    assert len(blocks) == 2
    np.testing.assert_allclose(_embed(fused, ids, mask), _embed(merged, ids, mask), atol=1e-5)


def test_residual_sums_keep_the_graph_exact_and_unfused(tiny_bert):
    from compressor.transformer.fuse import remove_dead_nodes, residual_sums

    fp32, ids, mask = tiny_bert
    summed, n = residual_sums(fp32)
    assert n == 4                              # two LayerNorms after a residual per layer
    onnx.checker.check_model(summed)
    np.testing.assert_allclose(_embed(summed, ids, mask), _embed(fp32, ids, mask), atol=1e-6)
    # nothing left to drop in a clean export; the mask chain goes once nobody reads it
    assert remove_dead_nodes(summed) == 0
    dead = onnx.ModelProto()
    dead.CopyFrom(summed)
    dead.graph.node.append(helper.make_node("Neg", [dead.graph.node[0].output[0]], ["unread"]))
    assert remove_dead_nodes(dead) == 1 and "unread" not in {o for n in dead.graph.node for o in n.output}


def test_fused_int8_build_loads_and_matches_fp32_embeddings(tiny_bert):
    """The int8 build as shipped (QAttention, residual Sums, int8 embedding table): loads in
    onnxruntime with default options and stays close to the fp32 model on every sentence,
    padded ones included; the unfused build gives the same embeddings."""
    from compressor.transformer.fidelity import cosine_rows
    from compressor.transformer.int8 import build_smoothquant_int8

    fp32, ids, mask = tiny_bert
    cfg = SmoothQuantInt8Config(sensitivity_sentences=8, calibration_rows=64)
    q, report = build_smoothquant_int8(fp32, ids, mask, cfg)
    onnx.checker.check_model(q)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QAttention") == 2 and "Softmax" not in ops
    assert "Sum" in ops and "SkipLayerNormalization" not in ops
    assert sum(l["op"] == "Attention" and l["weight_bits"] == 8 for l in report["layers"]) == 2
    import onnxruntime as ort
    plain = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    want = _embed(fp32, ids, mask)
    got = _embed(q, ids, mask)
    feeds = {"input_ids": ids[:3], "attention_mask": mask[:3]}
    np.testing.assert_allclose(plain.run(None, feeds)[0], session(q, 2).run(None, feeds)[0],
                               atol=1e-5)
    assert cosine_rows(got, want).min() > 0.99
    unfused, _ = build_smoothquant_int8(
        fp32, ids, mask, SmoothQuantInt8Config(sensitivity_sentences=8, calibration_rows=64,
                                               fuse_attention=False, residual_sum=False))
    assert "QAttention" not in {n.op_type for n in unfused.graph.node}
    np.testing.assert_allclose(got, _embed(unfused, ids, mask), atol=2e-3)


def test_attention_with_another_mask_value_is_left_unfused_in_int8(tiny_bert):
    """QAttention always adds -10000 at masked positions: a graph with another mask value
    keeps its attention ops in the int8 build (and still builds); a graph with no
    attention at all passes through fuse_attention unchanged."""
    from compressor.transformer.attention import fuse_attention
    from compressor.transformer.int8 import build_smoothquant_int8

    fp32, ids, mask = tiny_bert
    other = onnx.ModelProto()
    other.CopyFrom(fp32)
    g = Graph(other)
    filt = next(n for n in other.graph.node if n.op_type == "Mul" and
                g.producer.get(n.input[0]) is not None and g.producer[n.input[0]].op_type == "Sub")
    c = next(i for i in filt.input if i in g.inits)
    g.inits[c].CopyFrom(make_init(c, np.asarray(-1e9, np.float32)))
    q, _ = build_smoothquant_int8(other, ids, mask, SmoothQuantInt8Config(
        sensitivity_sentences=8, calibration_rows=64))
    ops = [n.op_type for n in q.graph.node]
    assert "QAttention" not in ops and "Attention" not in ops and ops.count("Softmax") == 2
    assert session(q, 1).run(None, {"input_ids": ids[:2], "attention_mask": mask[:2]})[0].shape == (2, 64)
    no_attention = _ln_block()[0]
    plain, blocks = fuse_attention(no_attention)
    assert blocks == [] and [n.op_type for n in plain.graph.node] == \
        [n.op_type for n in no_attention.graph.node]
