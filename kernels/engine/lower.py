"""Graph -> list of IR ops (irops.py), once per model, independent of input shapes.

1. Constant folding: every node whose inputs are all constants is evaluated now (numpy,
   ops.py). A folded DequantizeLinear of an integer initializer also remembers the integers
   (QuantInfo) so the weight can be packed for the int8 / int4 kernels instead of used as floats.
2. Lowering, in graph order, with these patterns:
   - Conv / Gemm / MatMul with a constant weight -> Conv / Dense on the best weight form:
     int4/int2 blocked weights -> qb kernels; >= sparse_min_zero_fraction zeros -> sparse
     kernel (fp32: the 16 x 4 block kernel when block-sparse, compressed rows only from
     sparse_f32_min_zero_fraction); else the fp32 GEMM kernel. A following Relu / Clip is fused.
     (int8 weights whose 16 x 4 blocks are mostly zero are also packed for the block-sparse
     kernel, bsr_max_block_fraction; the plan times the packings and keeps the fastest.)
   - QDQ int8: Conv / Gemm / MatMul whose input is DequantizeLinear(dynamic int8) and whose
     weight is DequantizeLinear(int8 initializer, per channel) -> QConv / QDense on the exact
     int8 kernels, taking the int8 tensor directly; [Relu|Clip] -> QuantizeLinear after it is
     fused as requantization, so int8 flows from layer to layer.
   - MaxPool / Reshape / Flatten between DQ and Q with the same scale and zero point -> run on
     the int8 tensor.
   - Conv with group == channels, 3x3, padding 1, stride 1/2 -> the depthwise kernels (int8
     when its input is DQ(int8) and the result is requantized).
   - dynamic int8 (onnxruntime's quantize_dynamic): DynamicQuantizeLinear -> MatMulInteger ->
     Cast -> Mul(scales) [-> Add(bias)] -> one Dense on the qd8 kernel.
   - transformer ops (transformer.py, on the nn kernels): LayerNormalization with a residual
     Add fused, Gelu and its Erf form, Softmax, the Reshape/Transpose/MatMul/Softmax/MatMul
     attention block as one op (matched before the loop: its first nodes precede the anchor),
     MatMul -> Add(constant bias) as one float Dense; after pruning, Q/K/V qd8 Dense ops that
     read one tensor and feed one attention are merged into one GEMM.
   - remaining QuantizeLinear / DequantizeLinear on dynamic tensors -> Quantize / Dequantize
     (or the numpy DequantizeLinear for ONNX-domain integers, e.g. a Gather from an int8 table).
   - everything else -> Generic (numpy implementation), or UnsupportedGraph naming every op
     the engine has no implementation for.
3. Dead ops (e.g. a DequantizeLinear whose consumers all took the int8 tensor) are dropped.
4. Channels-last (nhwc.py): conv chains are rewritten to NHWC with conversions at their edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels import quant
from kernels.engine import irops, transformer
from kernels.engine.config import EngineConfig
from kernels.engine.errors import InvalidModel, UnsupportedGraph
from kernels.engine.graph import Graph, Node
from kernels.engine.ops import OPS, SHAPE_ONLY

F32 = np.float32
_VALUE_AGNOSTIC = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Slice"}
QS8_MAX_K = quant.QS8_MAX_K
SPARSE_MAX_K = 65535


@dataclass
class QuantInfo:
    """Integer origin of a folded constant: value = (q - zp) * scale along axis / blocks."""

    q: np.ndarray            # int8/uint8 (int4/uint4 unpacked one per byte)
    scale: np.ndarray
    zp: np.ndarray | None
    axis: int
    block: int               # 0: per tensor / per axis
    bits: int                # 8 or 4
    signed: bool


@dataclass
class Lowered:
    ops: list[irops.IROp]
    consts: dict[str, np.ndarray]
    inputs: list            # ValueSpec
    outputs: list[str]


def _clamp_of(node: Node, consts: dict) -> tuple[float, float] | None:
    """(lo, hi) if node is Relu or Clip with constant bounds, else None."""
    if node.op_type == "Relu":
        return (0.0, np.inf)
    if node.op_type == "Clip":
        lo, hi = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
        for i, slot in ((1, "lo"), (2, "hi")):
            if len(node.inputs) > i and node.inputs[i]:
                if node.inputs[i] not in consts:
                    return None
                v = float(np.asarray(consts[node.inputs[i]]).reshape(-1)[0])
                lo, hi = (v, hi) if slot == "lo" else (lo, v)
        return (float(lo), float(hi))
    return None


class Lowerer:
    def __init__(self, graph: Graph, config: EngineConfig):
        self.g, self.config = graph, config
        self.consts: dict[str, np.ndarray] = dict(graph.initializers)
        self.qinfo: dict[str, QuantInfo] = {}
        self.qparams: dict[str, tuple[float, int]] = {}   # dynamic int8 tensors: (scale, zp as int8)
        self.ops: list[irops.IROp] = []
        self.done: set[int] = set()
        self.producer: dict[str, Node] = {}
        self.consumers: dict[str, list[Node]] = {}
        self.outputs = {v.name for v in graph.outputs}
        self._fused: set[int] = set()       # ids of nodes folded into an op emitted earlier

    # ------------------------------------------------------------------ folding

    def fold(self) -> None:
        unsupported = [(n.op_type, n.name) for n in self.g.nodes if n.op_type not in OPS]
        if unsupported:
            names = ", ".join(f"{op} ({name})" for op, name in unsupported)
            raise UnsupportedGraph(f"unsupported ops: {names}", unsupported)
        for idx, node in enumerate(self.g.nodes):
            if node.op_type in SHAPE_ONLY or not all(x == "" or x in self.consts for x in node.inputs):
                continue
            args = [self.consts[x] if x else None for x in node.inputs]
            try:
                outs = OPS[node.op_type](node, *args)
            except UnsupportedGraph:
                raise
            except Exception as exc:
                raise InvalidModel(f"{node}: cannot evaluate on its constant inputs: {exc}") from exc
            for name, value in zip(node.outputs, outs):
                if name:
                    self.consts[name] = np.asarray(value)
            self.done.add(idx)
            self._track_quant(node, args)

    def _track_quant(self, node: Node, args) -> None:
        if node.op_type == "DequantizeLinear":
            q, scale = args[0], args[1]
            zp = args[2] if len(args) > 2 else None
            code = {np.dtype(np.int8): (8, True), np.dtype(np.uint8): (8, False)}.get(q.dtype)
            block = int(node.attrs.get("block_size", 0))
            bits, signed = code if code else (0, False)
            src = self._initializer_bits(node.inputs[0])
            if src is not None:
                bits, signed = src
            if bits:
                axis = int(node.attrs.get("axis", 1))
                self.qinfo[node.outputs[0]] = QuantInfo(q, np.asarray(scale, F32), zp,
                                                        axis + q.ndim if axis < 0 else axis, block, bits, signed)
        elif node.op_type in ("Reshape", "Identity") and node.inputs[0] in self.qinfo:
            info = self.qinfo[node.inputs[0]]
            out_shape = self.consts[node.outputs[0]].shape
            if info.block and info.q.ndim == 2 and out_shape[0] == info.q.shape[0]:
                self.qinfo[node.outputs[0]] = info          # conv kernel reshaped from [Cout, K]
            elif not info.block and info.axis == 0 and out_shape[0] == info.q.shape[0]:
                self.qinfo[node.outputs[0]] = QuantInfo(info.q.reshape(out_shape), info.scale, info.zp, 0, 0,
                                                        info.bits, info.signed)

    def _initializer_bits(self, name: str):
        """(4, signed) for INT4/UINT4 initializers (unpacked to int8/uint8 by graph.py)."""
        return self.g.int4_initializers.get(name)

    # ------------------------------------------------------------------ helpers

    def _index(self) -> None:
        for idx, node in enumerate(self.g.nodes):
            if idx in self.done:
                continue
            for x in node.inputs:
                if x:
                    self.consumers.setdefault(x, []).append(node)
            for y in node.outputs:
                self.producer[y] = node

    def only_consumer(self, name: str) -> Node | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.outputs:
            return users[0]
        return None

    def dq_source(self, name: str):
        """If `name` = DequantizeLinear(dynamic int8 tensor) per tensor: (int8 name, (scale, zp))."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or name in self.consts:
            return None
        src = node.inputs[0]
        return (src, self.quant_params(node)) if src in self.qparams else None

    def quant_params(self, node: Node) -> tuple[float, int]:
        """(scale, zp shifted to int8) of a per-tensor Q/DQ node with constant parameters."""
        scale = self.consts.get(node.inputs[1])
        zp = self.consts.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        if scale is None or (len(node.inputs) > 2 and node.inputs[2] and zp is None):
            raise UnsupportedGraph(f"{node}: scale / zero point must be constants", [(node.op_type, node.name)])
        if scale.size != 1 or (zp is not None and zp.size != 1) or node.attrs.get("block_size", 0):
            raise UnsupportedGraph(f"{node}: per-axis quantization of activations is not supported",
                                   [(node.op_type, node.name)])
        dtype = np.dtype(np.uint8) if zp is None else zp.dtype
        if dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
            raise UnsupportedGraph(f"{node}: {dtype} activations are not supported (int8/uint8 only)",
                                   [(node.op_type, node.name)])
        z = 0 if zp is None else int(zp.reshape(-1)[0])
        return float(scale.reshape(-1)[0]), z - 128 if dtype == np.uint8 else z

    def fuse_after(self, name: str, allow_requant: bool):
        """Follow `name` through an optional Relu/Clip and an optional QuantizeLinear.
        Returns (output name, clamp, out_q, fused nodes)."""
        clamp, fused, out = irops.NO_CLAMP, [], name
        nxt = self.only_consumer(out)
        if nxt is not None and nxt.inputs[0] == out:
            c = _clamp_of(nxt, self.consts)
            if c is not None:
                clamp, out = c, nxt.outputs[0]
                fused.append(nxt)
        out_q = None
        nxt = self.only_consumer(out)
        if allow_requant and nxt is not None and nxt.op_type == "QuantizeLinear" and nxt.inputs[0] == out:
            try:
                out_q = self.quant_params(nxt)
            except UnsupportedGraph:
                out_q = None
            if out_q is not None:
                out = nxt.outputs[0]
                fused.append(nxt)
        return out, clamp, out_q, fused

    # ------------------------------------------------------------------ weights

    def weight_matrix(self, name: str, layout: str):
        """Constant weight as [N, K]: layout 'nk' (Gemm transB=1, Conv flattened) or 'kn'
        (MatMul, Gemm transB=0). Returns (float [N,K], QuantInfo oriented to [N,K] or None)."""
        w = self.consts[name]
        info = self.qinfo.get(name)
        if layout == "conv":
            w2 = w.reshape(w.shape[0], -1)
            if info is not None:
                if info.block:
                    if info.q.ndim != 2 or info.q.shape != w2.shape or info.axis != 1:
                        info = None
                elif info.axis == 0 or info.scale.size == 1:
                    info = QuantInfo(info.q.reshape(w2.shape), info.scale, info.zp, 0, 0, info.bits, info.signed)
                else:
                    info = None
            return w2, info
        if w.ndim != 2:
            return None, None
        if layout == "kn":
            w2 = w.T
            if info is not None:
                ax = 1 - info.axis if info.q.ndim == 2 else None
                info = None if ax is None else QuantInfo(
                    info.q.T, info.scale.T if info.block else info.scale,
                    None if info.zp is None else (info.zp.T if info.block else info.zp), ax, info.block,
                    info.bits, info.signed)
            return w2, info
        return w, info

    def float_weights(self, w2: np.ndarray, info: QuantInfo | None, bias) -> irops.Weights:
        n, k = w2.shape
        if (info is not None and info.bits == 4 and info.block in (32, 64, 128) and info.axis == 1
                and self.config.int4_kernels):
            q = info.q.astype(np.int16)
            zp = np.zeros_like(info.scale) if info.zp is None else info.zp.astype(F32)
            q_u = (q + 8 if info.signed else q).astype(np.uint8)
            shift = 8.0 if info.signed else 0.0
            offsets = (-info.scale * (zp + shift)).astype(F32)
            if info.scale.shape == (n, -(-k // info.block)):
                return irops.QbWeights(q_u, info.scale.astype(F32), offsets, 4, info.block, bias)
        zeros = float(np.mean(w2 == 0))
        if zeros >= self.config.sparse_min_zero_fraction and k <= SPARSE_MAX_K:
            max_blocks = self.config.bsr_max_block_fraction
            if (zeros >= self.config.sparse_f32_min_zero_fraction
                    or (max_blocks > 0 and irops.bsr_block_fraction(w2) <= max_blocks)):
                return irops.SparseWeights(w2, bias, max_blocks)
        return irops.F32Weights(w2, bias) if irops.HAVE_F32_GEMM else irops.Weights(w2, bias)

    def int8_weights(self, info: QuantInfo | None, bias) -> irops.QWeights | None:
        if info is None or info.bits != 8 or info.block or not self.config.int8_kernels:
            return None
        n, k = info.q.shape
        if k > QS8_MAX_K:
            return None
        scale = np.broadcast_to(info.scale.reshape(-1), (n,)).astype(F32)
        zp = np.zeros(n, np.int32) if info.zp is None else np.broadcast_to(
            info.zp.reshape(-1).astype(np.int32), (n,)).copy()
        q = info.q
        if not info.signed:                       # uint8 weights: same values as int8 with zp - 128
            q, zp = (q.astype(np.int16) - 128).astype(np.int8), zp - 128
        if np.any(zp < -128) or np.any(zp > 127):
            return None
        sparse = (not np.any(zp) and k <= SPARSE_MAX_K
                  and float(np.mean(q == 0)) >= self.config.sparse_min_zero_fraction)
        return irops.QWeights(q, scale, zp, bias, sparse, self.config.autotune_sparse,
                              self.config.bsr_max_block_fraction)

    # ------------------------------------------------------------------ lowering

    def lower(self) -> Lowered:
        self.fold()
        self._index()
        anchored = transformer.prematch(self)     # attention blocks, Erf-form GELU
        unsupported, messages = [], []
        for idx, node in enumerate(self.g.nodes):
            if idx in self.done or id(node) in self._fused_ids():
                continue
            try:
                handler = getattr(self, f"_lower_{node.op_type}", None)
                if id(node) in anchored:
                    self.ops.append(anchored[id(node)])
                elif handler is None or not handler(node):
                    self._generic(node)
            except UnsupportedGraph as exc:
                unsupported.extend(exc.ops or [(node.op_type, node.name)])
                messages.append(str(exc))
        if unsupported:
            raise UnsupportedGraph("; ".join(messages), unsupported)
        for v in self.g.outputs:
            if v.name in self.qparams:
                raise UnsupportedGraph(f"graph output {v.name!r} is a quantized tensor (not supported)",
                                       [("QuantizeLinear", self.producer[v.name].name)])
        ops = transformer.merge_qkv(self._prune())
        if self.config.channels_last:
            from kernels.engine.nhwc import channels_last
            ops = channels_last(ops, self.consts, [v.name for v in self.g.outputs])
        return Lowered(ops, self.consts, self.g.inputs, [v.name for v in self.g.outputs])

    def _generic(self, node: Node) -> None:
        """The numpy implementation. int8 tensors of ours (zero point shifted for uint8) may
        only pass through ops that move values without looking at them."""
        quantized = [x for x in node.inputs if x in self.qparams]
        if quantized:
            if node.op_type not in _VALUE_AGNOSTIC or node.inputs[0] not in self.qparams or len(quantized) > 1:
                raise UnsupportedGraph(f"{node}: computes on a quantized tensor (only QDQ around "
                                       "Conv/Gemm/MatMul/MaxPool and reshapes are supported)",
                                       [(node.op_type, node.name)])
            self.qparams[node.outputs[0]] = self.qparams[node.inputs[0]]
        self.ops.append(irops.Generic(node))

    def _fused_ids(self) -> set[int]:
        return self._fused

    def _fuse(self, nodes) -> None:
        self._fused.update(id(n) for n in nodes)

    def _prune(self) -> list[irops.IROp]:
        needed = set(v.name for v in self.g.outputs)
        keep = []
        for op in reversed(self.ops):
            if any(o in needed for o in op.outputs):
                keep.append(op)
                needed.update(x for x in op.inputs if x)
        return keep[::-1]

    # Each _lower_X returns True when it emitted ops for the node (False: use Generic).

    def _lower_QuantizeLinear(self, node: Node) -> bool:
        scale, zp = self.quant_params(node)
        self.qparams[node.outputs[0]] = (scale, zp)
        self.ops.append(irops.Quantize(node.name, [node.inputs[0]], [node.outputs[0]], scale, zp))
        return True

    def _lower_DequantizeLinear(self, node: Node) -> bool:
        if node.inputs[0] not in self.qparams:
            return False      # an ONNX-domain integer tensor (e.g. a Gather from an int8 table)
        scale, zp = self.quant_params(node)   # a DQ may use other parameters than its Q: honour its own
        self.ops.append(irops.Dequantize(node.name, [node.inputs[0]], [node.outputs[0]], scale, zp))
        return True

    def _quantized_passthrough(self, node: Node, make) -> bool:
        """DQ -> node -> Q with identical (scale, zp): run node on the int8 tensor."""
        src = self.dq_source(node.inputs[0])
        nxt = self.only_consumer(node.outputs[0])
        if src is None or nxt is None or nxt.op_type != "QuantizeLinear":
            return False
        q_name, params = src
        try:
            out_params = self.quant_params(nxt)
        except UnsupportedGraph:
            return False
        if out_params != params:
            return False
        self.qparams[nxt.outputs[0]] = params
        self.ops.append(make(node, [q_name] + node.inputs[1:], [nxt.outputs[0]]))
        self._fuse([nxt])
        return True

    def _lower_MaxPool(self, node: Node) -> bool:
        if len(node.outputs) > 1 and node.outputs[1]:
            raise UnsupportedGraph(f"{node}: the Indices output is not supported", [(node.op_type, node.name)])
        if self._quantized_passthrough(node, lambda n, i, o: irops.MaxPool(n.name, i, o, n)):
            return True
        self.ops.append(irops.MaxPool(node.name, node.inputs[:1], node.outputs[:1], node))
        return True

    def _lower_view(self, node: Node) -> bool:
        return self._quantized_passthrough(node, lambda n, i, o: irops.QView(n.name, i, o, n))

    _lower_Reshape = _lower_Flatten = _lower_Squeeze = _lower_Unsqueeze = _lower_view

    def _lower_Conv(self, node: Node) -> bool:
        x, w_name = node.inputs[0], node.inputs[1]
        b_name = node.inputs[2] if len(node.inputs) > 2 else ""
        if w_name not in self.consts or (b_name and b_name not in self.consts):
            raise UnsupportedGraph(f"{node}: weights and bias must be constants", [(node.op_type, node.name)])
        w = self.consts[w_name]
        if w.ndim != 4:
            raise UnsupportedGraph(f"{node}: only 2-D convolutions are supported", [(node.op_type, node.name)])
        group = int(node.attrs.get("group", 1))
        bias = self.consts[b_name].astype(F32) if b_name else None
        w2, info = self.weight_matrix(w_name, "conv")
        kernel = w.shape[2:]
        src = self.dq_source(x)
        if src is not None and group == 1:
            qw = self.int8_weights(info, bias)
            if qw is not None:
                out, clamp, out_q, fused = self.fuse_after(node.outputs[0], allow_requant=True)
                if out_q is not None:
                    self.qparams[out] = out_q
                self.ops.append(irops.QConv(node.name, [src[0]], [out], node, qw, kernel, src[1], clamp, out_q))
                self._fuse(fused)
                return True
        if self._depthwise(node, w, group, info, bias, src):
            return True
        out, clamp, _, fused = self.fuse_after(node.outputs[0], allow_requant=False)
        weights = self.float_weights(w2, info, bias) if group == 1 else irops.Weights(w2, bias)
        self.ops.append(irops.Conv(node.name, [x], [out], node, weights, kernel, group, clamp))
        self._fuse(fused)
        return True

    def _depthwise(self, node: Node, w: np.ndarray, group: int, info, bias, src) -> bool:
        """3x3 depthwise, padding 1, stride 1/2 -> the dedicated kernels (int8 when the input is
        DQ(int8) with symmetric per-channel int8 weights and the result is requantized)."""
        a = node.attrs
        cout = w.shape[0]
        if not (irops.HAVE_DWCONV and group == cout and w.shape[1:] == (1, 3, 3)
                and a.get("auto_pad", "NOTSET") in ("NOTSET", "") and list(a.get("pads", [0] * 4)) == [1, 1, 1, 1]
                and list(a.get("dilations", [1, 1])) == [1, 1]):
            return False
        strides = list(a.get("strides", [1, 1]))
        if strides not in ([1, 1], [2, 2]):
            return False
        if src is not None and self.config.int8_kernels and info is not None and info.bits == 8 and not info.block \
                and info.signed and (info.zp is None or not np.any(info.zp)):
            out, clamp, out_q, fused = self.fuse_after(node.outputs[0], allow_requant=True)
            if out_q is not None:
                w_scale = np.broadcast_to(info.scale.reshape(-1), (cout,)).astype(F32)
                self.qparams[out] = out_q
                self.ops.append(irops.DWConv3x3(node.name, [src[0]], [out], info.q.reshape(cout, 9).astype(np.int8),
                                                bias, strides[0], clamp, src[1], w_scale, out_q))
                self._fuse(fused)
                return True
        out, clamp, _, fused = self.fuse_after(node.outputs[0], allow_requant=False)
        self.ops.append(irops.DWConv3x3(node.name, [node.inputs[0]], [out], w.reshape(cout, 9).astype(F32),
                                        bias, strides[0], clamp))
        self._fuse(fused)
        return True

    def _dense(self, node: Node, w_name: str, layout: str, bias) -> bool:
        w2, info = self.weight_matrix(w_name, layout)
        if w2 is None:
            return False
        src = self.dq_source(node.inputs[0])
        if src is not None:
            qw = self.int8_weights(info, bias)
            if qw is not None:
                out, clamp, out_q, fused = self.fuse_after(node.outputs[0], allow_requant=True)
                if out_q is not None:
                    self.qparams[out] = out_q
                self.ops.append(irops.QDense(node.name, [src[0]], [out], qw, src[1], clamp, out_q))
                self._fuse(fused)
                return True
        bias_add = None
        if bias is None:      # MatMul -> Add(constant [N] bias): the bias goes into the GEMM epilogue
            bias, bias_add = transformer.bias_after(self, node.outputs[0], w2.shape[0])
        out, clamp, _, fused = self.fuse_after(bias_add.outputs[0] if bias_add else node.outputs[0], allow_requant=False)
        self.ops.append(irops.Dense(node.name, [node.inputs[0]], [out], self.float_weights(w2, info, bias), clamp))
        self._fuse(fused + ([bias_add] if bias_add else []))
        return True

    def _lower_MatMulInteger(self, node: Node) -> bool:
        """DynamicQuantizeLinear(x) -> MatMulInteger(q, W) -> Cast(float) -> Mul(x_scale * w_scale)
        [-> Add(bias)] [-> Relu/Clip]  ==>  one Dense on the qd8 kernel (x quantized per row inside;
        onnxruntime quantizes per tensor, so results differ by that rounding, see the tests)."""
        if not (self.config.int8_kernels and irops.HAVE_QD8_GEMM):
            return False
        dq = self.producer.get(node.inputs[0])
        w_name = node.inputs[1]
        if dq is None or dq.op_type != "DynamicQuantizeLinear" or w_name not in self.consts:
            return False
        if len(node.inputs) < 3 or node.inputs[2] != dq.outputs[2]:
            return False
        w = self.consts[w_name]
        if w.ndim != 2 or w.dtype not in (np.int8, np.uint8) or w.shape[0] > QS8_MAX_K:
            return False
        wzp = self.consts.get(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else np.zeros(1, w.dtype)
        if wzp is None:
            return False
        cast = self.only_consumer(node.outputs[0])
        if cast is None or cast.op_type != "Cast" or cast.attrs.get("to") != 1:
            return False
        mul = self.only_consumer(cast.outputs[0])
        if mul is None or mul.op_type != "Mul":
            return False
        s_name = mul.inputs[1] if mul.inputs[0] == cast.outputs[0] else mul.inputs[0]
        smul = self.producer.get(s_name)
        if smul is None or smul.op_type != "Mul" or dq.outputs[1] not in smul.inputs:
            return False
        ws_name = smul.inputs[1] if smul.inputs[0] == dq.outputs[1] else smul.inputs[0]
        if ws_name not in self.consts:
            return False
        n = w.shape[1]
        w_scale = np.broadcast_to(self.consts[ws_name].astype(F32).reshape(-1), (n,))
        zp = np.broadcast_to(wzp.astype(np.int32).reshape(-1), (n,))
        q = w.T
        if w.dtype == np.uint8:
            q, zp = (q.astype(np.int16) - 128).astype(np.int8), zp - 128
        fused, out, bias = [cast, mul], mul.outputs[0], None
        add = self.only_consumer(out)
        if add is not None and add.op_type == "Add":
            b_name = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
            b = self.consts.get(b_name)
            if b is not None and b.size == n and b.shape[-1:] == (n,):
                bias, out = b.astype(F32).reshape(-1), add.outputs[0]
                fused.append(add)
        out, clamp, _, more = self.fuse_after(out, allow_requant=False)
        weights = irops.QD8Weights(q, w_scale, zp, bias)
        self.ops.append(irops.Dense(node.name, [dq.inputs[0]], [out], weights, clamp))
        self._fuse(fused + more)
        return True

    # transformer ops on the nn kernels (transformer.py)
    def _lower_LayerNormalization(self, node: Node) -> bool:
        return transformer.lower_layernorm(self, node)

    def _lower_Add(self, node: Node) -> bool:
        return transformer.lower_residual_add(self, node)

    def _lower_Gelu(self, node: Node) -> bool:
        return transformer.lower_gelu(self, node)

    def _lower_Erf(self, node: Node) -> bool:
        return transformer.lower_erf(self, node)

    def _lower_Softmax(self, node: Node) -> bool:
        return transformer.lower_softmax(self, node)

    def _lower_MatMul(self, node: Node) -> bool:
        if node.inputs[1] not in self.consts or node.inputs[0] in self.consts:
            return False
        return self._dense(node, node.inputs[1], "kn", None)

    def _lower_Gemm(self, node: Node) -> bool:
        a = node.attrs
        if a.get("transA", 0) or node.inputs[1] not in self.consts:
            return False
        c_name = node.inputs[2] if len(node.inputs) > 2 else ""
        bias = None
        if c_name:
            if c_name not in self.consts:
                return False
            c = self.consts[c_name].astype(F32)
            n = self.consts[node.inputs[1]].shape[0 if a.get("transB", 0) else 1]
            if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
                return False
            bias = np.broadcast_to(c.reshape(-1), (n,)) * F32(a.get("beta", 1.0))
        alpha = float(a.get("alpha", 1.0))
        if alpha != 1.0:   # fold alpha into the float weight; the quantized forms no longer apply
            w = self.consts[node.inputs[1]] * F32(alpha)
            name = node.inputs[1] + "#alpha"
            self.consts[name] = w.astype(F32)
            return self._dense(node, name, "nk" if a.get("transB", 0) else "kn", bias)
        return self._dense(node, node.inputs[1], "nk" if a.get("transB", 0) else "kn", bias)


def lower(graph: Graph, config: EngineConfig) -> Lowered:
    return Lowerer(graph, config).lower()
