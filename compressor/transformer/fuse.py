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
