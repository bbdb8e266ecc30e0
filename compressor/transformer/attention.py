"""Self-attention as one onnxruntime op: com.microsoft Attention, and its int8 form QAttention.

After merge_parallel_linears + merge_head_splits (compressor.transformer.fuse) a BERT layer's
self-attention is still eleven ops at run time:

    x -> MatMul(W_qkv) -> Add(b_qkv) -> Reshape(B,S,3H,D) -> Transpose -> Split -> q, k, v
    k -> Transpose;  MatMul(q, k^T) -> Mul(scale) -> Add(mask) -> Softmax -> MatMul(., v)
      -> Transpose -> Reshape(B,S,H*D)

At batch 1 x 32 tokens on 2 threads each op costs more in dispatch and thread hand-off than
in arithmetic. onnxruntime's contrib Attention op does all of it in one kernel (packed
Q/K/V weight (hidden, 3 hidden), bias, 2-D raw attention mask) and QAttention does the same
with an int8 weight and a uint8 input from DynamicQuantizeLinear: 2 ops instead of 11 (and
6 of onnxruntime's DynamicQuantizeLinear/MatMulInteger/Cast/Mul/Add ops before its own
DynamicQuantizeMatMul fusion).

The pattern is matched on our own export (onnxruntime.transformers' optimizer does not
recognise the torch.export graph: its attention and SkipLayerNorm fusions find nothing on
it), and only where every piece is exactly what the fused op computes:

  * the mask input is Unsqueeze(Mul(Sub(1, Cast(attention_mask)), c), axes (1, 2)) with a
    graph-input mask: Attention's raw 2-D mask with mask_filter_value = c (QAttention
    always adds -10000, so only c = -10000 goes on to int8 as one op);
  * the score scale is a scalar Mul (or Div) constant; one that differs from 1/sqrt(D) is
    folded into the Q columns of the packed weight and bias (exact in real arithmetic);
  * every intermediate tensor has a single reader and is no graph output.

Anything else is left as it was.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from compressor.quant import reference as ref
from compressor.quant.graph import Graph, make_init, remove_unused_initializers, topological_sort

MS_DOMAIN = "com.microsoft"
QATTENTION_MASK_FILTER = -10000.0    # what QAttention adds at masked positions (fixed)


def _attr(n: onnx.NodeProto, name: str, default=None):
    return next((helper.get_attribute_value(a) for a in n.attribute if a.name == name), default)


def _only_reader(g: Graph, tensor: str, op_type: str) -> onnx.NodeProto | None:
    users = g.consumers.get(tensor, [])
    if len(users) != 1 or users[0].op_type != op_type or tensor in g.graph_outputs:
        return None
    return users[0]


def _scalar(g: Graph, name: str) -> float | None:
    if name not in g.inits:
        return None
    a = g.array(name)
    return float(a.reshape(-1)[0]) if a.size == 1 else None


def _ints(g: Graph, name: str) -> list[int] | None:
    return [int(v) for v in g.array(name).reshape(-1)] if name in g.inits else None


def _other(n: onnx.NodeProto, name: str) -> str:
    return n.input[1] if n.input[0] == name else n.input[0]


def _mask_source(g: Graph, mask_add: str) -> tuple[str, float] | None:
    """(graph-input attention mask, filter value) if mask_add = Unsqueeze(Mul(Sub(1,
    Cast(mask)), c), axes (1, 2))."""
    un = g.producer.get(mask_add)
    if un is None or un.op_type != "Unsqueeze" or len(un.input) < 2 or _ints(g, un.input[1]) != [1, 2]:
        return None
    mul = g.producer.get(un.input[0])
    if mul is None or mul.op_type != "Mul":
        return None
    c_name = next((i for i in mul.input if _scalar(g, i) is not None), None)
    if c_name is None:
        return None
    sub = g.producer.get(_other(mul, c_name))
    if sub is None or sub.op_type != "Sub" or _scalar(g, sub.input[0]) != 1.0:
        return None
    cast = g.producer.get(sub.input[1])
    inputs = {i.name for i in g.model.graph.input}
    if cast is None or cast.op_type != "Cast" or cast.input[0] not in inputs:
        return None
    return cast.input[0], _scalar(g, c_name)


def _match(g: Graph, softmax: onnx.NodeProto):
    """The nodes of one self-attention block around `softmax`, or None."""
    if softmax.op_type != "Softmax" or _attr(softmax, "axis", -1) not in (-1, 3):
        return None
    add = g.producer.get(softmax.input[0])
    if add is None or add.op_type != "Add" or len(g.consumers.get(add.output[0], [])) != 1:
        return None
    for scaled_name in add.input:
        scale_node = g.producer.get(scaled_name)
        if scale_node is not None and scale_node.op_type in ("Mul", "Div"):
            break
    else:
        return None
    mask = _mask_source(g, _other(add, scaled_name))
    if mask is None or len(g.consumers.get(scaled_name, [])) != 1:
        return None
    c_name = scale_node.input[1]
    c = _scalar(g, c_name)
    if c is None or c == 0 or (scale_node.op_type == "Mul" and _scalar(g, scale_node.input[0]) is not None):
        return None
    scale = c if scale_node.op_type == "Mul" else 1.0 / c
    scores = g.producer.get(scale_node.input[0])
    if scores is None or scores.op_type != "MatMul" or len(g.consumers.get(scores.output[0], [])) != 1:
        return None
    k_t = g.producer.get(scores.input[1])
    if k_t is None or k_t.op_type != "Transpose" or list(_attr(k_t, "perm", [])) != [0, 1, 3, 2]:
        return None
    split = g.producer.get(scores.input[0])
    if split is None or split.op_type != "Split" or len(split.output) != 3 or \
            list(split.output[:2]) != [scores.input[0], k_t.input[0]] or _attr(split, "axis", 0) != 1:
        return None
    pv = _only_reader(g, softmax.output[0], "MatMul")
    if pv is None or pv.input[0] != softmax.output[0] or pv.input[1] != split.output[2]:
        return None
    for o, reader in zip(split.output, (scores, k_t, pv)):
        if g.consumers.get(o, []) != [reader] or o in g.graph_outputs:
            return None
    heads_t = g.producer.get(split.input[0])
    if heads_t is None or heads_t.op_type != "Transpose" or list(_attr(heads_t, "perm", [])) != [0, 2, 1, 3]:
        return None
    heads = g.producer.get(heads_t.input[0])
    sizes = _ints(g, split.input[1]) if len(split.input) > 1 else None
    if heads is None or heads.op_type != "Reshape" or sizes is None or len(set(sizes)) != 1:
        return None
    shape = _ints(g, heads.input[1])
    h = sizes[0]
    if shape is None or len(shape) != 4 or shape[:3] != [0, 0, 3 * h] or shape[3] <= 0:
        return None
    d = shape[3]
    bias_add = g.producer.get(heads.input[0])
    if bias_add is None or bias_add.op_type != "Add":
        return None
    bias = next((i for i in bias_add.input if i in g.inits and len(g.inits[i].dims) == 1), None)
    if bias is None:
        return None
    mm = g.producer.get(_other(bias_add, bias))
    if mm is None or mm.op_type != "MatMul" or mm.input[1] not in g.inits or \
            list(g.inits[mm.input[1]].dims) != [h * d, 3 * h * d] or list(g.inits[bias].dims) != [3 * h * d]:
        return None
    ctx_t = _only_reader(g, pv.output[0], "Transpose")
    if ctx_t is None or list(_attr(ctx_t, "perm", [])) != [0, 2, 1, 3]:
        return None
    merge = _only_reader(g, ctx_t.output[0], "Reshape")
    if merge is None:
        return None
    for t in (mm.output[0], bias_add.output[0], heads.output[0], heads_t.output[0], scores.output[0]):
        if len(g.consumers.get(t, [])) != 1 or t in g.graph_outputs:
            return None
    if len(g.consumers.get(mm.input[1], [])) != 1 or len(g.consumers.get(bias, [])) != 1:
        return None
    nodes = [mm, bias_add, heads, heads_t, split, k_t, scores, scale_node, add, softmax, pv,
             ctx_t, merge]
    return {"x": mm.input[0], "weight": mm.input[1], "bias": bias, "heads": h, "head_size": d,
            "scale": scale, "mask": mask[0], "filter": mask[1], "out": merge.output[0],
            "nodes": nodes, "name": mm.input[1]}   # nodes[0] is the Q/K/V MatMul


def fuse_attention(model: onnx.ModelProto, skip: tuple[str, ...] = (),
                   mask_filter: float | None = None) -> tuple[onnx.ModelProto, list[dict]]:
    """Copy of `model` with each matched self-attention block as one com.microsoft
    Attention (fp32), except blocks whose Q/K/V MatMul (node or weight name) is in `skip`
    and, when `mask_filter` is given, blocks whose mask adds another value at masked
    positions; returns (copy, [{weight, heads, head_size}, ...])."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out)
    blocks = [b for b in (_match(g, n) for n in out.graph.node if n.op_type == "Softmax")
              if b and b["weight"] not in skip and b["nodes"][0].name not in skip
              and (mask_filter is None or b["filter"] == mask_filter)]
    if not blocks:
        return out, []
    drop, new, report = set(), [], []
    masks: dict[str, str] = {}
    for b in blocks:
        if b["mask"] not in masks:
            m32 = g.fresh(f"{b['mask']}_int32")
            new.append(helper.make_node("Cast", [b["mask"]], [m32], to=onnx.TensorProto.INT32,
                                        name=g.fresh(f"{b['mask']}_CastInt32")))
            masks[b["mask"]] = m32
        w, bias = g.array(b["weight"]).copy(), g.array(b["bias"]).copy()
        hidden = b["heads"] * b["head_size"]
        fold = b["scale"] * math.sqrt(b["head_size"])
        if not math.isclose(fold, 1.0, rel_tol=1e-6):
            w[:, :hidden] *= np.float32(fold)            # Attention scales by 1/sqrt(D)
            bias[:hidden] *= np.float32(fold)
        # both had the dropped MatMul / Add as only reader: rewrite them in place
        w_name, b_name = b["weight"], b["bias"]
        g.inits[w_name].CopyFrom(make_init(w_name, w.astype(np.float32)))
        g.inits[b_name].CopyFrom(make_init(b_name, bias.astype(np.float32)))
        new.append(helper.make_node(
            "Attention", [b["x"], w_name, b_name, masks[b["mask"]]], [b["out"]],
            name=g.fresh(f"{b['name']}_Attention"), domain=MS_DOMAIN, num_heads=b["heads"],
            mask_filter_value=float(b["filter"])))
        drop.update(id(n) for n in b["nodes"])
        report.append({"weight": w_name, "heads": b["heads"], "head_size": b["head_size"]})
    kept = [n for n in out.graph.node if id(n) not in drop]
    del out.graph.node[:]
    out.graph.node.extend(kept + new)
    _ensure_ms_opset(out)
    remove_unused_initializers(out)
    topological_sort(out)
    return out, report


def _ensure_ms_opset(model: onnx.ModelProto) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def quantize_attention_int8(model: onnx.ModelProto, exclude: tuple[str, ...] = ()
                            ) -> tuple[onnx.ModelProto, list[dict]]:
    """Copy with each fp32 com.microsoft Attention (constant weight, not in `exclude`) as
    DynamicQuantizeLinear -> QAttention: per-column symmetric int8 weight (one scale per
    output column of the packed Q/K/V weight, zero point 0), uint8 input quantized per
    call over the whole batch (as DynamicQuantizeMatMul does)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out)
    layers = []
    new, drop = [], set()
    for n in out.graph.node:
        if n.op_type != "Attention" or n.domain != MS_DOMAIN or n.input[1] not in g.inits or \
                n.input[1] in exclude or n.name in exclude or len(n.input) < 3 or not n.input[2]:
            continue
        if _attr(n, "mask_filter_value", QATTENTION_MASK_FILTER) != QATTENTION_MASK_FILTER:
            continue                    # QAttention has no such attribute: it always uses this
        x, w_name = n.input[0], n.input[1]
        wq, ws = ref.quantize_symmetric_ref(g.array(w_name), axis=1)
        q_name, s_name = g.fresh(f"{w_name}_quantized"), g.fresh(f"{w_name}_scale")
        z_name = g.fresh(f"{w_name}_zero_point")
        out.graph.initializer.extend([make_init(q_name, wq.astype(np.int8)),
                                      make_init(s_name, ws.reshape(-1).astype(np.float32)),
                                      make_init(z_name, np.zeros((), np.int8))])
        xq, xs, xz = (g.fresh(f"{x}_quantized"), g.fresh(f"{x}_scale"), g.fresh(f"{x}_zero_point"))
        mask = n.input[3] if len(n.input) > 3 else ""
        new += [helper.make_node("DynamicQuantizeLinear", [x], [xq, xs, xz],
                                 name=g.fresh(f"{x}_DynamicQuantize")),
                helper.make_node("QAttention", [xq, q_name, n.input[2], xs, s_name, mask, xz, z_name],
                                 list(n.output), name=g.fresh(f"{n.name}_int8"), domain=MS_DOMAIN,
                                 num_heads=_attr(n, "num_heads"))]
        drop.add(id(n))
        layers.append({"node": n.name, "op": "Attention", "weight": w_name, "weight_bits": 8,
                       "activation_dtype": "uint8"})
    kept = [nd for nd in out.graph.node if id(nd) not in drop]
    del out.graph.node[:]
    out.graph.node.extend(kept + new)
    remove_unused_initializers(out)
    topological_sort(out)
    return out, layers
