"""Merge the Linears that read one tensor (Q, K, V) into one MatMul + Split.

At batch 1 x 32 tokens each projection is a 32x384x384 product: a few tens of
microseconds of arithmetic and as much again in per-op overhead and thread hand-off. One
32x384x1152 product does the same work in one op (one dynamic quantization, one int8
GEMM with its bias fused). Per-output-channel weight scales make the int8 result identical
to three separate quantized products; in fp32 it is exact.

    x -> MatMul(Wq) -> Add(bq) -> ...        x -> MatMul([Wq|Wk|Wv]) -> Add([bq|bk|bv])
    x -> MatMul(Wk) -> Add(bk) -> ...   =>     -> Split(axis=-1, [Nq, Nk, Nv]) -> ...
    x -> MatMul(Wv) -> Add(bv) -> ...
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper

from compressor.quant.graph import Graph, make_init, remove_unused_initializers, topological_sort


def _linear(g: Graph, n: onnx.NodeProto):
    """(MatMul, bias Add, bias name) if n is MatMul(x, const W) -> Add(const b) only."""
    if n.op_type != "MatMul" or n.input[1] not in g.inits or len(g.inits[n.input[1]].dims) != 2:
        return None
    users = g.consumers.get(n.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add" or n.output[0] in g.graph_outputs:
        return None
    add = users[0]
    bias = next((i for i in add.input if i in g.inits), None)
    if bias is None or len(g.inits[bias].dims) != 1:
        return None
    return n, add, bias


def merge_parallel_linears(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict]]:
    """Return (copy with every group of >= 2 Linears sharing an input merged, report)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out)
    groups: dict[str, list] = {}
    for n in out.graph.node:
        lin = _linear(g, n)
        if lin is not None:
            groups.setdefault(n.input[0], []).append(lin)
    report = []
    drop = set()
    for x, lins in groups.items():
        ks = {g.inits[m.input[1]].dims[0] for m, _, _ in lins}
        if len(lins) < 2 or len(ks) != 1:
            continue
        ws = [g.array(m.input[1]) for m, _, _ in lins]
        bs = [g.array(b) for _, _, b in lins]
        names = [m.input[1] for m, _, _ in lins]
        prefix = os.path.commonprefix(names)
        merged = g.fresh(prefix + "+".join(nm[len(prefix):].split(".")[0] for nm in names) + ".weight_t")
        w_name, b_name, sizes = merged, g.fresh(merged.replace(".weight_t", ".bias")), g.fresh(f"{merged}_split")
        out.graph.initializer.extend([make_init(w_name, np.concatenate(ws, axis=1)),
                                      make_init(b_name, np.concatenate(bs)),
                                      make_init(sizes, np.asarray([w.shape[1] for w in ws], np.int64))])
        mm, biased = g.fresh(f"{merged}_matmul"), g.fresh(f"{merged}_biased")
        out.graph.node.extend([
            helper.make_node("MatMul", [x, w_name], [mm], name=g.fresh(f"{merged}_MatMul")),
            helper.make_node("Add", [mm, b_name], [biased], name=g.fresh(f"{merged}_Add")),
            helper.make_node("Split", [biased, sizes], [add.output[0] for _, add, _ in lins],
                             axis=-1, name=g.fresh(f"{merged}_Split"))])
        for m, add, _ in lins:
            drop.update({id(m), id(add)})
        report.append({"input": x, "merged": names, "weight": w_name})
    kept = [n for n in out.graph.node if id(n) not in drop]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    remove_unused_initializers(out)
    topological_sort(out)
    return out, report


# -- one head split for the merged Q/K/V -----------------------------------------------------

def _const_int(g: Graph, name: str) -> int | None:
    if name not in g.inits:
        return None
    a = g.array(name).reshape(-1)
    return int(a[0]) if a.size == 1 else None


def merge_head_splits(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Split heads once for the merged Q/K/V instead of once per projection.

    After merge_parallel_linears each of Q, K, V still goes Split -> Reshape (B, S, H, D)
    -> Transpose: seven small ops per layer, each ~8-15 us of onnxruntime overhead at
    batch 1 x 32 tokens on 2 threads. The same tensors come from

        Reshape (B, S, 3H, D) -> Transpose (0, 2, 1, 3) -> Split(axis=1, [H, H, H])

    with K's (0, 2, 3, 1) layout one Transpose (0, 1, 3, 2) further, which onnxruntime
    folds into the attention MatMul (FusedMatMul transB). Pure data movement: exact.
    Returns (copy, number of Splits rewritten)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out)
    drop, done = set(), 0
    for sp in list(out.graph.node):
        if sp.op_type != "Split" or len(sp.input) < 2 or sp.input[1] not in g.inits:
            continue
        axis = next((helper.get_attribute_value(a) for a in sp.attribute if a.name == "axis"), 0)
        sizes = [int(v) for v in g.array(sp.input[1]).reshape(-1)]
        chain = []
        for o in sp.output:
            users = g.consumers.get(o, [])
            if len(users) != 1 or users[0].op_type != "Reshape" or users[0].input[0] != o:
                break
            rs = users[0]
            t_users = g.consumers.get(rs.output[0], [])
            if len(t_users) != 1 or t_users[0].op_type != "Transpose" or rs.output[0] in g.graph_outputs:
                break
            perm = next((list(helper.get_attribute_value(a)) for a in t_users[0].attribute
                         if a.name == "perm"), None)
            if perm not in ([0, 2, 1, 3], [0, 2, 3, 1]):
                break
            chain.append((rs, t_users[0], perm))
        if len(chain) != len(sp.output) or axis not in (-1, 2) or len({rs.input[1] for rs, _, _ in chain}) != 1:
            continue
        shape = g.producer.get(chain[0][0].input[1])
        if shape is None or shape.op_type != "Concat" or len(shape.input) != 4:
            continue
        h, d = _const_int(g, shape.input[2]), _const_int(g, shape.input[3])
        if not h or not d or any(s != h * d for s in sizes):
            continue
        n = len(sizes)
        shape_name, heads_name = g.fresh(f"{sp.name}_heads_shape"), g.fresh(f"{sp.name}_head_split")
        out.graph.initializer.extend([make_init(shape_name, np.asarray([0, 0, n * h, d], np.int64)),
                                      make_init(heads_name, np.asarray([h] * n, np.int64))])
        r, t = g.fresh(f"{sp.name}_heads"), g.fresh(f"{sp.name}_heads_t")
        outs, extra = [], []
        for rs, tr, perm in chain:
            if perm == [0, 2, 1, 3]:
                outs.append(tr.output[0])
            else:
                o = g.fresh(f"{tr.output[0]}_bhsd")
                outs.append(o)
                extra.append(helper.make_node("Transpose", [o], [tr.output[0]], perm=[0, 1, 3, 2],
                                              name=g.fresh(f"{tr.name}_last2")))
            drop.update({id(rs), id(tr)})
        drop.add(id(sp))
        out.graph.node.extend([
            helper.make_node("Reshape", [sp.input[0], shape_name], [r], name=g.fresh(f"{sp.name}_Heads")),
            helper.make_node("Transpose", [r], [t], perm=[0, 2, 1, 3], name=g.fresh(f"{sp.name}_HeadsT")),
            helper.make_node("Split", [t, heads_name], outs, axis=1, name=g.fresh(f"{sp.name}_SplitHeads")),
            *extra])
        done += 1
    kept = [n for n in out.graph.node if id(n) not in drop]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    remove_unused_initializers(out)
    topological_sort(out)
    return out, done


# -- residual Adds as Sum: keep onnxruntime's SkipLayerNormalization out -----------------------

def residual_sums(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Write each residual Add read only by a LayerNormalization as a Sum.

    onnxruntime fuses Add -> LayerNormalization into com.microsoft SkipLayerNormalization,
    and on this CPU (onnxruntime 1.32) that kernel is the slower form: ~97 us per call
    on (1, 32, 384) against ~25 us for Sum + LayerNormalization (benchmarks run both in one
    process). Sum is the same addition and is not fused. An Add of two tensors of which
    one is itself an Add read only here (MiniLM's outlier correction: int8 part + fp32
    part + residual) becomes one three-input Sum. Exact: same float additions, in the same
    order. Returns (copy, number of LayerNormalization inputs rewritten)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out)
    drop, done = set(), 0
    for n in out.graph.node:
        if n.op_type != "Add" or n.domain not in ("", "ai.onnx") or len(n.input) != 2 or \
                any(i in g.inits for i in n.input) or n.output[0] in g.graph_outputs:
            continue
        users = g.consumers.get(n.output[0], [])
        if len(users) != 1 or users[0].op_type != "LayerNormalization" or users[0].input[0] != n.output[0]:
            continue
        terms = list(n.input)
        inner = g.producer.get(terms[0])
        if inner is not None and inner.op_type == "Add" and inner.domain in ("", "ai.onnx") and \
                len(g.consumers.get(inner.output[0], [])) == 1 and \
                terms[0] not in g.graph_outputs and not any(i in g.inits for i in inner.input):
            terms = list(inner.input) + terms[1:]   # (a + b) + c, in that order
            drop.add(id(inner))
        n.op_type = "Sum"
        del n.input[:]
        n.input.extend(terms)
        done += 1
    kept = [nd for nd in out.graph.node if id(nd) not in drop]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out, done


def remove_dead_nodes(model: onnx.ModelProto) -> int:
    """Drop, in place, nodes none of whose outputs is read (e.g. the additive attention
    mask and head-shape Concats left behind once every attention block is one op):
    onnxruntime still runs them. Returns how many were dropped."""
    g = model.graph
    dropped = 0
    while True:
        used = {o.name for o in g.output} | _read_names(g.node)
        keep = [n for n in g.node if any(o in used for o in n.output if o)]
        if len(keep) == len(g.node):
            break
        dropped += len(g.node) - len(keep)
        del g.node[:]
        g.node.extend(keep)
    remove_unused_initializers(model)
    return dropped


def _read_names(nodes) -> set[str]:
    """Every tensor name read by `nodes` or by the nodes of their subgraphs (If, Loop)."""
    out = set()
    for n in nodes:
        out.update(n.input)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out |= _read_names(a.g.node)
    return out
