"""Small helpers for rewriting ONNX graphs: lookups, fresh names, weight-bearing ops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.errors import UnsupportedLayerError

# Ops whose weight we know how to quantize, and the axis of the weight that holds output
# channels (per-channel scales) for each layout.
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
# Ops that only move or select values: their output may reuse their input's quantization
# parameters, which lets onnxruntime run them directly on int8 (DQ -> op -> Q is dropped).
PASSTHROUGH_OPS = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                   "Identity")
# Ops that carry no learned weights matrix; a float initializer of rank >= 2 on any other op
# is a layer we cannot quantize and must not silently leave in fp32.
_WEIGHTLESS_OK = ("Add", "Mul", "Sub", "Div", "Relu", "Clip", "Sigmoid", "Tanh", "Softmax",
                  "GlobalAveragePool", "AveragePool", "Concat", "Shape", "Gather", "Constant",
                  "BatchNormalization", "LayerNormalization", "Pad", "Resize", "Slice",
                  "Expand", "Cast", "Where", "Equal") + PASSTHROUGH_OPS


@dataclass(frozen=True)
class WeightSite:
    """A node whose input `weight_index` is a constant weight matrix/kernel."""

    node: onnx.NodeProto
    weight_index: int
    channel_axis: int           # output channels: per-channel scales run along it
    reduce_axis: int            # input (reduction) dimension: int4 blocks run along it

    @property
    def weight_name(self) -> str:
        return self.node.input[self.weight_index]


class Graph:
    """Indexes of one ModelProto (rebuild after structural edits)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in g.output}
        self._names = {t.name for t in g.initializer} | {i.name for i in g.input} | {
            o for n in g.node for o in n.output} | {n.name for n in g.node}

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def weight_sites(self) -> list[WeightSite]:
        """Conv/Gemm/MatMul nodes with a constant float weight, in graph order."""
        sites = []
        for n in self.model.graph.node:
            site = _site_of(n, self)
            if site is not None:
                sites.append(site)
        return sites

    def check_supported(self, what: str) -> None:
        """Raise UnsupportedLayerError for an op that holds weights we cannot quantize."""
        for n in self.model.graph.node:
            if n.op_type in WEIGHT_OPS:
                if n.op_type in ("Conv", "Gemm", "MatMul") and _site_of(n, self) is None and \
                        any(i in self.inits and self.inits[i].data_type == onnx.TensorProto.FLOAT
                            for i in n.input):
                    raise UnsupportedLayerError(
                        f"{what}: {n.op_type} node {n.name!r} has its weight in an unsupported "
                        f"position or layout")
                continue
            if n.op_type in _WEIGHTLESS_OK:
                continue
            for i in n.input:
                t = self.inits.get(i)
                if t is not None and t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2:
                    raise UnsupportedLayerError(
                        f"{what}: op {n.op_type} (node {n.name!r}) holds weights {i!r} "
                        f"{list(t.dims)}; supported weight ops are {', '.join(WEIGHT_OPS)}")


def _site_of(n: onnx.NodeProto, g: Graph) -> WeightSite | None:
    def is_float_init(name: str) -> bool:
        t = g.inits.get(name)
        return t is not None and t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2

    if n.op_type == "Conv" and len(n.input) > 1 and is_float_init(n.input[1]):
        return WeightSite(n, 1, channel_axis=0, reduce_axis=1)
    if n.op_type == "Gemm" and len(n.input) > 1 and is_float_init(n.input[1]):
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("transA", 0):
            return None
        trans_b = attrs.get("transB", 0)
        return WeightSite(n, 1, channel_axis=0 if trans_b else 1, reduce_axis=1 if trans_b else 0)
    if n.op_type == "MatMul" and len(n.input) > 1 and is_float_init(n.input[1]) \
            and len(g.inits[n.input[1]].dims) == 2:
        return WeightSite(n, 1, channel_axis=1, reduce_axis=0)
    return None


def make_init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def replace_input(node: onnx.NodeProto, old: str, new: str) -> None:
    for k, i in enumerate(node.input):
        if i == old:
            node.input[k] = new


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def topological_sort(model: onnx.ModelProto) -> None:
    """Reorder nodes so every input is produced before use (after inserting nodes)."""
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        progressed = False
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            raise ValueError("graph has a cycle or a dangling input: "
                             + ", ".join(sorted({i for n in rest for i in n.input if i not in ready})))
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
