"""The engine's transformer patterns (kernels/engine/transformer.py) on small BERT-style layers
written with onnx.helper: every fused form is checked to be recognised (op kinds) and to match
onnxruntime on the same file, and the dynamic int8 form also against the engine's own numpy
reference of the same integer math.

Tolerances: fp32 |ours - ort| <= 2e-5 * max|ort| (different summation order, polynomial erf/exp
within ~1e-6); dynamic int8: we quantize activations per row, onnxruntime per tensor, so
cosine >= 0.999 on these small well-scaled layers, and <= 1e-5 * max against our reference.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import kernels
from kernels.engine import Model

F32 = np.float32
B, S, H, D = 2, 7, 4, 8
E = H * D
FFN = 3 * E


def _layer(gelu: str = "op", scale_op: str = "Div", mask: str = "bcast", residual_ln: bool = True,
           attention_output: bool = False) -> onnx.ModelProto:
    """One post-LN encoder layer. gelu: 'op' (Gelu node), 'erf' (x*0.5*(1+Erf(x/sqrt2))) or
    'erf_mul' (Mul by 1/sqrt2, 0.5 first); mask: 'bcast' ([B,1,1,S] from a [B,S] 0/1 mask),
    'none', or 'full' ([B,1,S,S], which the attention kernel does not take: numpy path)."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def w(name, *shape, s=0.2):
        return const(name, (rng.standard_normal(shape) * s).astype(F32))

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], name=out + "_node", **attrs))
        return out

    def dense(x, k, n, tag):
        return node("Add", [node("MatMul", [x, w(tag + ".w", k, n)], tag + ".mm"), w(tag + ".b", n)], tag)

    def layer_norm(x, tag):
        return node("LayerNormalization", [x, w(tag + ".g", E, s=1.0), w(tag + ".beta", E)], tag, epsilon=1e-12)

    x0 = layer_norm("x", "ln0")
    q, k, v = dense(x0, E, E, "q"), dense(x0, E, E, "k"), dense(x0, E, E, "v")
    heads_shape = const("heads_shape", np.array([0, 0, H, D], np.int64))
    qt = node("Transpose", [node("Reshape", [q, heads_shape], "q4")], "qt", perm=[0, 2, 1, 3])
    kt = node("Transpose", [node("Reshape", [k, heads_shape], "k4")], "kt", perm=[0, 2, 3, 1])
    vt = node("Transpose", [node("Reshape", [v, heads_shape], "v4")], "vt", perm=[0, 2, 1, 3])
    scores = node("MatMul", [qt, kt], "scores")
    c = np.sqrt(D) if scale_op == "Div" else 1 / np.sqrt(D)
    scores = node(scale_op, [scores, const("scale", np.array(c, F32))], "scaled")
    if mask == "bcast":
        neg = node("Mul", [node("Sub", [const("one", np.array(1.0, F32)), "mask"], "inv_mask"),
                           const("big", np.array(-10000.0, F32))], "neg")
        scores = node("Add", [scores, node("Unsqueeze", [neg, const("axes", np.array([1, 2], np.int64))], "mask4")],
                      "masked")
    elif mask == "full":
        scores = node("Add", [scores, "mask_full"], "masked")
    probs = node("Softmax", [scores], "probs", axis=-1)
    ctx = node("Transpose", [node("MatMul", [probs, vt], "ctx4")], "ctx4t", perm=[0, 2, 1, 3])
    ctx = node("Reshape", [ctx, const("merge_shape", np.array([0, 0, E], np.int64))], "ctx")
    att = dense(ctx, E, E, "o")
    x1 = layer_norm(node("Add", [att, x0], "res1") if residual_ln else att, "ln1")
    h = dense(x1, E, FFN, "up")
    if gelu == "op":
        h = node("Gelu", [h], "gelu")
    else:
        if gelu == "erf":
            a = node("Div", [h, const("sqrt2", np.array(np.sqrt(2), F32))], "erf_in")
        else:
            a = node("Mul", [h, const("isqrt2", np.array(1 / np.sqrt(2), F32))], "erf_in")
        e = node("Add", [node("Erf", [a], "erf"), const("one_b", np.array(1.0, F32))], "erf1")
        if gelu == "erf":
            h = node("Mul", [node("Mul", [h, e], "xe"), const("half", np.array(0.5, F32))], "gelu")
        else:
            h = node("Mul", [node("Mul", [e, const("half", np.array(0.5, F32))], "he"), h], "gelu")
    down = dense(h, FFN, E, "down")
    out = layer_norm(node("Add", [down, x1], "res2"), "ln2")
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, [B, S, E])]
    if attention_output:       # an intermediate value read outside the block: no fusion
        outputs.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, [B, H, S, S]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, E])]
    if mask == "bcast":
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [B, S]))
    elif mask == "full":
        inputs.append(helper.make_tensor_value_info("mask_full", TensorProto.FLOAT, [B, 1, S, S]))
    graph = helper.make_graph(nodes, "layer", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _feeds(model: onnx.ModelProto) -> dict:
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((B, S, E)).astype(F32)}
    names = {i.name for i in model.graph.input}
    if "mask" in names:
        m = np.ones((B, S), F32)
        m[1, 4:] = 0                       # second sequence padded
        feeds["mask"] = m
    if "mask_full" in names:
        feeds["mask_full"] = (rng.standard_normal((B, 1, S, S)) * 3).astype(F32)
    return feeds


def _ort(data: bytes, feeds: dict) -> list:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


def _quantize_dynamic(model: onnx.ModelProto) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx")
        onnx.save(model, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)
        with open(dst, "rb") as f:
            return f.read()


@pytest.mark.parametrize("gelu,scale_op,mask", [("op", "Div", "bcast"), ("erf", "Mul", "none"),
                                                ("erf_mul", "Div", "bcast"), ("op", "Mul", "full")])
def test_fp32_layer_fuses_and_matches_onnxruntime(gelu, scale_op, mask):
    model = _layer(gelu, scale_op, mask)
    data, feeds = model.SerializeToString(), _feeds(model)
    engine = Model(data)
    kinds = engine.op_kinds()
    assert kinds["attention"] == 1 and kinds["gelu"] == 1
    assert kinds["layernorm"] == 1 and kinds["layernorm+add"] == 2
    assert not kinds["Softmax"] and not kinds["Transpose"] and not kinds["Erf"] and not kinds["MatMul"]
    assert kinds["dense[f32]"] == 6 and not kinds["Add"]      # biases in the GEMM epilogue
    ours = engine.run(feeds)[engine.outputs[0].name]
    ref = _ort(data, feeds)[0]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    np.testing.assert_allclose(ours, engine.run_reference(feeds)[engine.outputs[0].name], rtol=0,
                               atol=2e-5 * np.abs(ref).max())


def test_intermediate_graph_output_blocks_the_attention_fusion():
    model = _layer(attention_output=True)
    data, feeds = model.SerializeToString(), _feeds(model)
    engine = Model(data)
    assert not engine.op_kinds()["attention"] and engine.op_kinds()["softmax"] == 1
    ours = engine.run(feeds)
    ref = _ort(data, feeds)
    for name, r in zip([o.name for o in engine.outputs], ref):
        np.testing.assert_allclose(ours[name], r, rtol=0, atol=2e-5 * np.abs(r).max())


def test_dynamic_int8_layer_merges_qkv():
    model = _layer("op", "Div", "bcast")
    data, feeds = _quantize_dynamic(model), _feeds(model)
    engine = Model(data)
    kinds = engine.op_kinds()
    assert kinds["dense[qd8]"] == 4          # Q/K/V merged into one, output projection, FFN up and down
    assert kinds["attention"] == 1 and kinds["gelu"] == 1 and kinds["layernorm+add"] == 2
    ours = engine.run(feeds)[engine.outputs[0].name]
    np.testing.assert_allclose(ours, engine.run_reference(feeds)[engine.outputs[0].name], rtol=0,
                               atol=1e-5 * np.abs(ours).max())
    def cosine(a, b):
        return float((a.ravel() @ b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))

    assert cosine(ours, _ort(model.SerializeToString(), feeds)[0]) >= 0.999   # the fp32 layer
    if not kernels.int8_dot_saturates():
        assert cosine(ours, _ort(data, feeds)[0]) >= 0.999                    # onnxruntime's int8


def test_other_batch_sizes_reuse_the_lowering():
    """Plans for other shapes than the declared ones (batch 1, shorter sequences) still fuse
    correctly: the attention geometry comes from the shapes each plan resolves."""
    model = _layer("op", "Div", "none")
    for dim in (model.graph.input[0].type.tensor_type.shape.dim[:2]):
        dim.dim_param = "n"
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "s"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "n"
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "s"
    data = model.SerializeToString()
    engine = Model(data)
    for b, s in ((1, 3), (3, 11)):
        x = np.random.default_rng(b).standard_normal((b, s, E)).astype(F32)
        ours = engine.run({"x": x})[engine.outputs[0].name]
        ref = _ort(data, {"x": x})[0]
        np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_pooling_tail_runs_without_numpy_fallback():
    """The sentence-embedding tail of an encoder export (int8 embedding Gather + DequantizeLinear,
    Cast of the mask, masked mean = ReduceSum / Clip(ReduceSum), L2 normalisation) binds to
    preallocated numpy steps (no per-call allocation) and matches onnxruntime."""
    rng = np.random.default_rng(3)
    table = rng.integers(-128, 128, (50, E), dtype=np.int8)
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array(0.02, F32), "t_scale"),
             numpy_helper.from_array(np.array(3, np.int8), "t_zp"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([-1], np.int64), "axlast"),
             numpy_helper.from_array(np.array(1e-9, F32), "tiny"), numpy_helper.from_array(np.array(1e-12, F32), "eps")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb_q"]),
             helper.make_node("DequantizeLinear", ["emb_q", "t_scale", "t_zp"], ["emb"]),
             helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "axlast"], ["mask3"]),
             helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
             helper.make_node("ReduceSum", ["masked", "ax1"], ["total"], keepdims=0),
             helper.make_node("ReduceSum", ["mask3", "ax1"], ["count"], keepdims=0),
             helper.make_node("Clip", ["count", "tiny"], ["count_c"]),
             helper.make_node("Div", ["total", "count_c"], ["mean"]),
             helper.make_node("ReduceL2", ["mean", "axlast"], ["norm"], keepdims=1),
             helper.make_node("Clip", ["norm", "eps"], ["norm_c"]),
             helper.make_node("Div", ["mean", "norm_c"], ["out"])]
    graph = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("ids", TensorProto.INT64, [B, S]),
                                              helper.make_tensor_value_info("mask", TensorProto.INT64, [B, S])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [B, E])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    feeds = {"ids": rng.integers(0, 50, (B, S)).astype(np.int64), "mask": np.ones((B, S), np.int64)}
    feeds["mask"][1, 3:] = 0
    engine = Model(data)
    assert engine.fallback_ops() == []
    ours = engine.run(feeds)["out"]
    np.testing.assert_allclose(ours, _ort(data, feeds)[0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ours, engine.run_reference(feeds)["out"])
