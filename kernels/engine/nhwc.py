"""Channels-last ops: convolution chains run in NHWC so that GEMM rows are output pixels and
outputs need no transpose (a 1x1 convolution is a GEMM on the activation as it lies; a KxK one
is the kernels' im2col + GEMM). ONNX tensors are NCHW: lower.py converts at the edges of a
chain (ToNHWC / ToNCHW) and keeps every tensor produced inside it channels-last.

References transpose to NCHW, run the NCHW reference and transpose back, so the numpy
definition stays the one in irops.py / ops.py.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from kernels import _kernels
from kernels.engine import irops
from kernels.engine.irops import F32, NO_CLAMP, IROp, clamp_steps
from kernels.engine.ops import conv_geometry

HAVE_IM2COL = hasattr(_kernels, "im2col")


def to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


class ToNHWC(IROp):
    kind = "to_nhwc"

    def ref(self, x):
        return (to_nhwc(x),)

    def bind(self, ins, outs):
        x, y = ins[0], outs[0]
        if x.shape[1] == 1:               # one channel: same bytes in both layouts
            return [partial(np.copyto, y.reshape(x.shape), x)]
        return [partial(np.copyto, y, x.transpose(0, 2, 3, 1))]


class ToNCHW(IROp):
    kind = "to_nchw"

    def ref(self, x):
        return (to_nchw(x),)

    def bind(self, ins, outs):
        return [partial(np.copyto, outs[0], ins[0].transpose(0, 3, 1, 2))]


class ConvNHWC(IROp):
    """Convolution (group 1) on NHWC activations with weights in any irops form (f32 / sparse /
    qb / numpy) or int8 (QWeights: a_q set, optional requantization out_q)."""

    def __init__(self, name, inputs, outputs, nchw_op: IROp):
        super().__init__(name, inputs, outputs)
        self.inner = nchw_op                      # irops.Conv or irops.QConv: geometry + weights + ref
        self.weights = nchw_op.weights            # the form the bound steps use (see bind)
        self.kind = nchw_op.kind + "@nhwc"
        self.fallback = nchw_op.fallback
        self._kernel_order = None

    def ref(self, x):
        return (to_nhwc(self.inner.ref(to_nchw(x))[0]),)

    def _weights_kernel_order(self):
        """The same weights with columns in (kh, kw, c) order, for the kernels' im2col."""
        op = self.inner
        if self._kernel_order is None:
            w = op.weights
            kh, kw = op.kernel
            cin = w.k // (kh * kw)
            perm = np.arange(w.k).reshape(cin, kh, kw).transpose(1, 2, 0).reshape(-1)
            if isinstance(w, irops.QWeights):
                self._kernel_order = irops.QWeights(w.q[:, perm], w.scale, w.zp, w.bias, w.sparse, w.autotune,
                                                    w.bsr_max_fraction)
            elif isinstance(w, irops.SparseWeights):
                self._kernel_order = irops.SparseWeights(w.w[:, perm], w.bias, w.block_max_fraction)
            elif isinstance(w, irops.F32Weights):
                self._kernel_order = irops.F32Weights(w.w[:, perm], w.bias)
            else:
                return None
        return self._kernel_order

    def bind(self, ins, outs):
        x, y = ins[0], outs[0]                     # x [N, H, W, C], y [N, OH, OW, Cout]
        op = self.inner
        n, h, w_, c = x.shape
        kh, kw = op.kernel
        begin, end, strides, dil, out_hw = conv_geometry(op.node, (h, w_), (kh, kw))
        m = n * out_hw[0] * out_hw[1]
        y2 = y.reshape(m, -1)
        quantized = isinstance(op.weights, irops.QWeights)
        pad_value = np.int8(op.a_q[1]) if quantized else F32(0)
        steps: list = []
        weights = op.weights
        if (kh, kw) == (1, 1) and strides == [1, 1] and not any(begin + end):
            col = x.reshape(m, c)                  # pointwise: the activation is the GEMM input
        else:
            kernel_w = self._weights_kernel_order() if HAVE_IM2COL and dil == [1, 1] else None
            if kernel_w is not None:
                weights = self.weights = kernel_w
                col = np.empty((n, out_hw[0] * out_hw[1], kh * kw * c), x.dtype)
                steps.append(partial(_kernels.im2col, x, kh, kw, strides[0], strides[1], begin[0], begin[1],
                                     out_hw[0], out_hw[1], float(pad_value), col))
                col = col.reshape(m, -1)
            elif HAVE_IM2COL and dil == [1, 1]:    # weights in ONNX order (int4 groups run along it)
                col = np.empty((n, out_hw[0] * out_hw[1], kh * kw * c), x.dtype)
                steps.append(partial(_kernels.im2col, x, kh, kw, strides[0], strides[1], begin[0], begin[1],
                                     out_hw[0], out_hw[1], float(pad_value), col, True))
                col = col.reshape(m, -1)
            else:                                  # numpy strided copy in ONNX (c, kh, kw) order
                ph = max(h + begin[0] + end[0], (out_hw[0] - 1) * strides[0] + (kh - 1) * dil[0] + 1)
                pw = max(w_ + begin[1] + end[1], (out_hw[1] - 1) * strides[1] + (kw - 1) * dil[1] + 1)
                xp = np.full((n, ph, pw, c), pad_value, x.dtype)
                steps.append(partial(np.copyto, xp[:, begin[0]:begin[0] + h, begin[1]:begin[1] + w_], x))
                sn, sh, sw, sc = xp.strides
                view = np.lib.stride_tricks.as_strided(
                    xp, (n, out_hw[0], out_hw[1], c, kh, kw),
                    (sn, sh * strides[0], sw * strides[1], sc, sh * dil[0], sw * dil[1]), writeable=False)
                col = np.empty((m, c * kh * kw), x.dtype)
                steps.append(partial(np.copyto, col.reshape(view.shape), view))
        if quantized:
            steps += weights.steps(col, *op.a_q, y2, op.clamp, op.out_q)
        else:
            steps += weights.steps(col, y2, op.clamp)
        return steps


class DWConvNHWC(IROp):
    """irops.DWConv3x3 without the layout transposes."""

    def __init__(self, name, inputs, outputs, dw: irops.DWConv3x3):
        super().__init__(name, inputs, outputs)
        self.inner = dw
        self.kind = dw.kind + "@nhwc"

    def ref(self, x):
        return (to_nhwc(self.inner.ref(to_nchw(x))[0]),)

    def bind(self, ins, outs):
        d = self.inner
        lo, hi = F32(d.clamp[0]), F32(d.clamp[1])
        if d.a_q:
            return [partial(_kernels.dwconv3x3, ins[0], d.w_hwc, d.bias, outs[0], d.stride, lo, hi,
                            F32(d.a_q[0]), int(d.a_q[1]), d.w_scale, F32(d.out_q[0]), int(d.out_q[1]))]
        return [partial(_kernels.dwconv3x3, ins[0], d.w_hwc, d.bias, outs[0], d.stride, lo, hi, F32(1), 0, None,
                        F32(1), 0)]


class MaxPoolNHWC(IROp):
    kind = "maxpool@nhwc"

    def __init__(self, name, inputs, outputs, pool: irops.MaxPool):
        super().__init__(name, inputs, outputs)
        self.inner = pool

    def ref(self, x):
        return (to_nhwc(self.inner.ref(to_nchw(x))[0]),)

    def bind(self, ins, outs):
        x, y = ins[0], outs[0]
        node = self.inner.node
        kernel = node.attrs["kernel_shape"]
        begin, end, strides, dil, out_hw = conv_geometry(node, x.shape[1:3], kernel)
        if any(begin) or any(end) or node.attrs.get("ceil_mode", 0):
            return super().bind(ins, outs)
        native = {np.dtype(np.int8): _kernels.maxpool_qs8, np.dtype(np.float32): _kernels.maxpool_f32}.get(x.dtype)
        if native is not None and x.flags.c_contiguous and y.flags.c_contiguous:
            # one C pass (numpy below takes a call per tap): the max of int8 codes is exact,
            # and the fp32 kernel takes the taps in numpy's order with numpy's NaN rule
            return [partial(native, x, y, int(kernel[0]), int(kernel[1]), int(strides[0]), int(strides[1]),
                            int(dil[0]), int(dil[1]))]
        sn, sh, sw, sc = x.strides
        taps = [np.lib.stride_tricks.as_strided(
            x[:, i * dil[0]:, j * dil[1]:, :], (x.shape[0], out_hw[0], out_hw[1], x.shape[3]),
            (sn, sh * strides[0], sw * strides[1], sc), writeable=False)
            for i in range(kernel[0]) for j in range(kernel[1])]
        steps = [partial(np.maximum, taps[0], taps[1], out=y)] if len(taps) > 1 else [partial(np.copyto, y, taps[0])]
        return steps + [partial(np.maximum, y, t, out=y) for t in taps[2:]]


class Elementwise(IROp):
    """Add / Sub / Mul / Relu / Clip between channels-last tensors of one shape (a residual
    Add, an activation left unfused): layout does not matter to them."""

    def __init__(self, name, inputs, outputs, generic: irops.Generic):
        super().__init__(name, inputs, outputs)
        self.inner = generic
        self.kind = generic.kind + "@nhwc"

    def ref(self, *xs):
        return self.inner.ref(*xs)

    def bind(self, ins, outs):
        return self.inner.bind(ins, outs)


__all__ = ["ToNHWC", "ToNCHW", "ConvNHWC", "DWConvNHWC", "MaxPoolNHWC", "Elementwise", "NO_CLAMP", "clamp_steps"]


_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Max", "Min"}


class SpatialMeanNHWC(IROp):
    """GlobalAveragePool / ReduceMean over H, W of an NHWC tensor. [N, 1, 1, C] has the bytes of
    the NCHW result [N, C, 1, 1] (or [N, C] without keepdims), so it writes the ONNX output as is."""

    kind = "spatial_mean@nhwc"

    def __init__(self, name, inputs, outputs, generic: irops.Generic):
        super().__init__(name, inputs, outputs)
        self.inner = generic

    def ref(self, x, *rest):
        return self.inner.ref(to_nchw(x), *rest)

    def bind(self, ins, outs):
        x, y = ins[0], outs[0]
        n, h, w, c = x.shape
        out = y.reshape(n, 1, 1, c)
        # np.mean's own steps (float32 pairwise sum, then divide by the count), without its
        # Python-level wrapper, which cost more than the sum on these small maps
        return [partial(np.add.reduce, x, axis=(1, 2), keepdims=True, out=out),
                partial(np.true_divide, out, F32(h * w), out=out)]


def _spatial_mean(op: IROp, consts: dict) -> bool:
    """Is op a mean over axes (2, 3) of a 4-D NCHW tensor?"""
    if not isinstance(op, irops.Generic):
        return False
    node = op.node
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean":
        return False
    axes = node.attrs.get("axes")
    if len(node.inputs) > 1 and node.inputs[1]:
        axes = consts.get(node.inputs[1])
        axes = None if axes is None else [int(a) for a in np.atleast_1d(axes)]
    return axes is not None and sorted(a % 4 for a in axes) == [2, 3]


def channels_last(ops: list[IROp], consts: dict, outputs: list[str]) -> list[IROp]:
    """Rewrite NCHW conv chains to NHWC, inserting layout conversions at their edges."""
    nhwc: set[str] = set()
    made: dict[tuple[str, str], str] = {}
    result: list[IROp] = []

    def convert(name: str, to: str) -> str:
        key = (name, to)
        if key not in made:
            made[key] = f"{name}@{to}"
            cls = ToNHWC if to == "nhwc" else ToNCHW
            result.append(cls(f"{name}:{to}", [name], [made[key]]))
            if to == "nhwc":
                nhwc.add(made[key])
        return made[key]

    def as_nhwc(name: str) -> str:
        return name if name in nhwc else convert(name, "nhwc")

    def as_nchw(name: str) -> str:
        return convert(name, "nchw") if name in nhwc else name

    for op in ops:
        new = None
        if isinstance(op, irops.QConv) or (isinstance(op, irops.Conv) and (op.group == 1 or op.weights.backend != "numpy")):
            if op.group == 1:
                new = ConvNHWC(op.name, [as_nhwc(op.inputs[0])], op.outputs, op)
        elif isinstance(op, irops.DWConv3x3):
            new = DWConvNHWC(op.name, [as_nhwc(op.inputs[0])], op.outputs, op)
        elif isinstance(op, irops.MaxPool) and op.inputs[0] in nhwc:
            new = MaxPoolNHWC(op.name, [op.inputs[0]], op.outputs, op)
        elif op.inputs and op.inputs[0] in nhwc and _spatial_mean(op, consts):
            result.append(SpatialMeanNHWC(op.name, list(op.inputs), op.outputs, op))
            continue
        elif isinstance(op, (irops.Quantize, irops.Dequantize)) and op.inputs[0] in nhwc:
            nhwc.update(op.outputs)
            result.append(op)
            continue
        elif isinstance(op, irops.Generic) and op.node.op_type in _ELEMENTWISE and any(x in nhwc for x in op.inputs):
            dynamic = [x for x in op.inputs if x and x not in consts]
            scalars = all(consts[x].size == 1 for x in op.inputs if x and x in consts)
            if all(x in nhwc for x in dynamic) and scalars:
                new = Elementwise(op.name, op.inputs, op.outputs, op)
        if new is not None:
            nhwc.update(new.outputs)
            result.append(new)
            continue
        op.inputs = [as_nchw(x) if x else x for x in op.inputs]
        result.append(op)

    if HAVE_QADD:
        result = fuse_residual_qadd(result, set(outputs))
    renames = {name: f"{name}@nhwc-out" for name in outputs if name in nhwc}
    if renames:
        for op in result:
            op.inputs = [renames.get(x, x) for x in op.inputs]
            op.outputs = [renames.get(y, y) for y in op.outputs]
        for name, inner in renames.items():
            result.append(ToNCHW(f"{name}:nchw", [inner], [name]))
    return result


HAVE_QADD = hasattr(_kernels, "qadd")


class QAddNHWC(IROp):
    """Dequantize(a) + Dequantize(b) -> Quantize (an int8 residual Add of a QDQ graph) as one
    kernel pass instead of 9 numpy steps; the C kernel repeats the three ops' float32
    operations in order, so results are those of the unfused ops, bit for bit."""

    kind = "qadd@nhwc"

    def __init__(self, name, inputs, outputs, dq_a: irops.Dequantize, dq_b: irops.Dequantize, add: IROp,
                 q: irops.Quantize):
        super().__init__(name, inputs, outputs)
        self.dq_a, self.dq_b, self.add, self.q = dq_a, dq_b, add, q

    def ref(self, a, b):
        return self.q.ref(self.add.ref(self.dq_a.ref(a)[0], self.dq_b.ref(b)[0])[0])

    def bind(self, ins, outs):
        a, b, y = ins[0], ins[1], outs[0]
        if a.shape != b.shape or a.shape != y.shape or a.dtype != np.int8 or b.dtype != np.int8:
            return super().bind(ins, outs)
        return [partial(_kernels.qadd, a.reshape(-1), b.reshape(-1), y.reshape(-1), float(self.dq_a.scale),
                        self.dq_a.zp, float(self.dq_b.scale), self.dq_b.zp, float(self.q.scale), self.q.zp)]


def fuse_residual_qadd(ops: list[IROp], outputs: set[str]) -> list[IROp]:
    """Replace Dequantize, Dequantize -> Add -> Quantize chains (float tensors used by nothing
    else) with QAddNHWC."""
    producer = {y: op for op in ops for y in op.outputs if y}
    uses: dict[str, int] = {}
    for op in ops:
        for x in op.inputs:
            if x:
                uses[x] = uses.get(x, 0) + 1
    fused: dict[int, QAddNHWC] = {}
    drop: set[int] = set()
    for op in ops:
        if not isinstance(op, irops.Quantize):
            continue
        add = producer.get(op.inputs[0])
        if not (isinstance(add, Elementwise) and add.inner.node.op_type == "Add" and len(add.inputs) == 2):
            continue
        dqs = [producer.get(x) for x in add.inputs]
        inner = [add.outputs[0]] + list(add.inputs)
        if not all(isinstance(d, irops.Dequantize) for d in dqs) or add.inputs[0] == add.inputs[1]:
            continue
        if any(uses.get(t, 0) != 1 or t in outputs for t in inner):
            continue
        fused[id(op)] = QAddNHWC(op.name, [dqs[0].inputs[0], dqs[1].inputs[0]], op.outputs, dqs[0], dqs[1], add, op)
        drop.update({id(add), id(dqs[0]), id(dqs[1])})
    return [fused.get(id(op), op) for op in ops if id(op) not in drop]
