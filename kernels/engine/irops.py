"""The engine's own ops (what a compiled model is made of), each with two faces:

- `ref(*inputs)`: plain numpy, allocating; the definition. Used to trace shapes when a plan is
  built, and as the "numpy reference of the same integer math" the tests compare against
  (int8 ops call kernels.quant's references, so the kernels must match them bit for bit).
- `bind(ins, outs)`: the per-inference steps, as zero-argument callables that write into
  buffers preallocated by the plan (mostly functools.partial over a C kernel or a numpy ufunc
  with out=, so running a step costs no Python frame of ours).

Activations in the quantized domain are always int8 here: a uint8 tensor with zero point z is
held as int8 (q - 128) with zero point z - 128, which is the same real value exactly.
"""

from __future__ import annotations

from functools import partial

import numpy as np

import kernels
from kernels import _kernels, quant
from kernels.engine.graph import Node
from kernels.engine.ops import OPS, conv_geometry, windows

F32 = np.float32
NO_CLAMP = (-np.inf, np.inf)


def _copy_step(dst: np.ndarray, src: np.ndarray):
    return partial(np.copyto, dst, src)


class IROp:
    """One op of a compiled model; `inputs`/`outputs` are tensor names."""

    kind = "op"
    alias = False           # output 0 is a reshaped view of input 0 (no step, no copy)
    fallback = False        # runs on the numpy fallback (no C kernel yet)

    def __init__(self, name: str, inputs: list[str], outputs: list[str]):
        self.name, self.inputs, self.outputs = name, inputs, outputs

    def ref(self, *xs) -> tuple:
        raise NotImplementedError

    def bind(self, ins: list, outs: list[np.ndarray]) -> list:
        """Default: run the reference and copy into the preallocated outputs."""
        ref = self.ref

        def step():
            for o, y in zip(outs, ref(*ins)):
                np.copyto(o, y, casting="unsafe")
        return [step]

    def describe(self) -> str:
        return f"{self.kind} {self.name}"


# ----------------------------------------------------------------------------- generic ONNX

_UFUNCS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power,
           "Relu": None, "Sqrt": np.sqrt, "Exp": np.exp, "Tanh": np.tanh, "Neg": np.negative,
           "Abs": np.abs, "Reciprocal": np.reciprocal, "Max": np.maximum, "Min": np.minimum}
_VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


class Generic(IROp):
    """An ONNX node on its numpy implementation (ops.py); common float ops get out= steps."""

    kind = "numpy"

    def __init__(self, node: Node, inputs: list[str] | None = None, outputs: list[str] | None = None):
        super().__init__(node.name, list(node.inputs if inputs is None else inputs),
                         list(node.outputs if outputs is None else outputs))
        self.node = node
        self.kind = node.op_type
        self.alias = node.op_type in _VIEWS
        self.fallback = node.op_type not in _UFUNCS and node.op_type not in _VIEWS and node.op_type not in _FAST
        self._impl = OPS[node.op_type]

    def ref(self, *xs):
        return self._impl(self.node, *xs)

    def bind(self, ins, outs):
        op = self.node.op_type
        out = outs[0] if outs else None
        floats = out is not None and out.dtype == F32 and all(x is None or x.dtype == F32 for x in ins)
        if floats and op in _UFUNCS and all(x is not None for x in ins):
            if op == "Relu":
                return [partial(np.maximum, ins[0], F32(0), out=out)]
            if op == "Pow" and ins[1].size == 1 and float(ins[1].reshape(-1)[0]) == 2.0:
                return [partial(np.multiply, ins[0], ins[0], out=out)]
            fn = _UFUNCS[op]
            if len(ins) == 1:
                return [partial(fn, ins[0], out=out)]
            if len(ins) == 2:
                return [partial(fn, ins[0], ins[1], out=out)]
        if op in _FAST and (floats or op in _ANY_DTYPE):
            steps = _FAST[op](self.node, ins, outs)
            if steps is not None:
                return steps
        return super().bind(ins, outs)


def _bind_softmax(node, ins, outs):
    x, y = ins[0], outs[0]
    axis = node.attrs.get("axis", -1)
    red = list(x.shape)
    red[axis] = 1
    tmp = np.empty(red, F32)
    return [partial(np.max, x, axis=axis, keepdims=True, out=tmp), partial(np.subtract, x, tmp, out=y),
            partial(np.exp, y, out=y), partial(np.sum, y, axis=axis, keepdims=True, out=tmp),
            partial(np.divide, y, tmp, out=y)]


def _bind_transpose(node, ins, outs):
    perm = node.attrs.get("perm")
    return [partial(np.copyto, outs[0], np.transpose(ins[0], perm))]


def _bind_matmul(node, ins, outs):
    if ins[0].ndim < 2 or ins[1].ndim < 2:
        return None
    return [partial(np.matmul, ins[0], ins[1], out=outs[0])]


def _bind_layer_norm(node, ins, outs):
    x, scale, bias = (list(ins) + [None])[:3]
    y = outs[0]
    axis = node.attrs.get("axis", -1)
    if axis not in (-1, x.ndim - 1):
        return None
    eps = F32(node.attrs.get("epsilon", 1e-5))
    red = x.shape[:-1] + (1,)
    mean, var = np.empty(red, F32), np.empty(red, F32)
    steps = [partial(np.mean, x, axis=-1, keepdims=True, out=mean), partial(np.subtract, x, mean, out=y),
             partial(np.multiply, y, y, out=_ws(y)), None,
             partial(np.add, var, eps, out=var), partial(np.sqrt, var, out=var),
             partial(np.divide, y, var, out=y), partial(np.multiply, y, scale, out=y)]
    sq = steps[2].keywords["out"]
    steps[3] = partial(np.mean, sq, axis=-1, keepdims=True, out=var)
    if bias is not None:
        steps.append(partial(np.add, y, bias, out=y))
    return steps


def _bind_gather(node, ins, outs):
    data, idx = ins
    if node.attrs.get("axis", 0) != 0 or idx.dtype.kind not in "iu":
        return None
    return [partial(np.take, data, idx, axis=0, out=outs[0], mode="raise")]


# erf(a) = 1 - poly(t) * exp(-a^2), t = 1 / (1 + P a), a >= 0 (Abramowitz & Stegun 7.1.26,
# |error| <= 1.5e-7: below float32 resolution of the GELU outputs it feeds).
_AS_P = F32(0.3275911)
_AS_A = [F32(1.061405429), F32(-1.453152027), F32(1.421413741), F32(-0.284496736), F32(0.254829592)]


def _erf_tail_steps(a: np.ndarray, h: np.ndarray, t: np.ndarray) -> list:
    """h = poly(t) * exp(-a^2) for a >= 0 (so erf(a) = 1 - h), in preallocated float32 buffers."""
    steps = [partial(np.multiply, a, _AS_P, out=t), partial(np.add, t, F32(1), out=t),
             partial(np.reciprocal, t, out=t), partial(np.multiply, t, _AS_A[0], out=h)]
    for c in _AS_A[1:]:
        steps += [partial(np.add, h, c, out=h), partial(np.multiply, h, t, out=h)]
    steps += [partial(np.multiply, a, a, out=t), partial(np.negative, t, out=t), partial(np.exp, t, out=t),
              partial(np.multiply, h, t, out=h)]
    return steps


def _bind_gelu(node, ins, outs):
    if node.attrs.get("approximate", "none") != "none":
        return None
    x, y = ins[0], outs[0]
    a, h, t = _ws(x), _ws(x), _ws(x)
    pos = np.empty(x.shape, np.bool_)
    # gelu(x) = x * (1 - h/2) for x >= 0 and x * h/2 below, with h from a = |x| / sqrt(2)
    return ([partial(np.abs, x, out=a), partial(np.multiply, a, F32(1 / np.sqrt(2)), out=a)]
            + _erf_tail_steps(a, h, t)
            + [partial(np.multiply, h, F32(0.5), out=h), partial(np.multiply, x, h, out=y),
               partial(np.greater_equal, x, F32(0), out=pos), partial(np.subtract, x, y, out=t),
               partial(np.copyto, y, t, where=pos)])


def _bind_erf(node, ins, outs):
    x, y = ins[0], outs[0]
    a, h, t = _ws(x), _ws(x), _ws(x)
    # erf(x) = sign(x) * (1 - h)
    return ([partial(np.abs, x, out=a)] + _erf_tail_steps(a, h, t)
            + [partial(np.subtract, F32(1), h, out=y), partial(np.copysign, y, x, out=y)])


def _ws(like: np.ndarray) -> np.ndarray:
    return np.empty(like.shape, like.dtype)


def _bind_reduce(node, ins, outs):
    """ReduceSum/Mean/Max/Min/L2 over constant axes, into the preallocated output."""
    x, y = ins[0], outs[0]
    axes = ins[1] if len(ins) > 1 and ins[1] is not None else node.attrs.get("axes")
    if axes is None or len(np.atleast_1d(axes)) == 0:
        return None
    axes = tuple(int(a) + x.ndim if int(a) < 0 else int(a) for a in np.atleast_1d(axes))
    keep = bool(node.attrs.get("keepdims", 1))
    if node.op_type == "ReduceL2":
        sq = _ws(x)
        return [partial(np.multiply, x, x, out=sq), partial(np.sum, sq, axis=axes, keepdims=keep, out=y),
                partial(np.sqrt, y, out=y)]
    fn = {"ReduceSum": np.sum, "ReduceMean": np.mean, "ReduceMax": np.max, "ReduceMin": np.min}[node.op_type]
    return [partial(fn, x, axis=axes, keepdims=keep, out=y)]


def _bind_clip(node, ins, outs):
    x, y = ins[0], outs[0]
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else node.attrs.get("min")
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else node.attrs.get("max")
    steps = [partial(np.copyto, y, x)] if lo is None and hi is None else []
    src = x
    if lo is not None:           # the same two ufuncs as ops.py's Clip, NaN handling included
        steps.append(partial(np.maximum, src, np.asarray(lo, x.dtype), out=y))
        src = y
    if hi is not None:
        steps.append(partial(np.minimum, src, np.asarray(hi, x.dtype), out=y))
    return steps


def _bind_cast(node, ins, outs):
    from kernels.engine.graph import DTYPES
    if DTYPES.get(node.attrs.get("to")) != outs[0].dtype:
        return None
    return [partial(np.copyto, outs[0], ins[0], casting="unsafe")]


def _bind_dequantize(node, ins, outs):
    """Per-tensor DequantizeLinear of an ONNX-domain int8/uint8 tensor (e.g. a Gather from an
    int8 embedding table): (x - zp) * scale in float32, exact like ops.py's int32 route."""
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    y = outs[0]
    if (x.dtype not in (np.int8, np.uint8) or scale.size != 1 or scale.dtype != F32 or y.dtype != F32
            or (zp is not None and zp.size != 1) or node.attrs.get("block_size", 0)):
        return None
    z = F32(0 if zp is None else int(zp.reshape(-1)[0]))
    return [partial(np.subtract, x, z, out=y, dtype=F32), partial(np.multiply, y, F32(scale.reshape(-1)[0]), out=y)]


_FAST = {"Softmax": _bind_softmax, "Transpose": _bind_transpose, "MatMul": _bind_matmul,
         "LayerNormalization": _bind_layer_norm, "Gather": _bind_gather,
         "Gelu": _bind_gelu, "Erf": _bind_erf,
         "ReduceSum": _bind_reduce, "ReduceMean": _bind_reduce, "ReduceMax": _bind_reduce,
         "ReduceMin": _bind_reduce, "ReduceL2": _bind_reduce, "Clip": _bind_clip, "Cast": _bind_cast,
         "DequantizeLinear": _bind_dequantize}
#: fast binders that check dtypes themselves (integer inputs or outputs)
_ANY_DTYPE = {"Gather", "Cast", "DequantizeLinear"}


# ----------------------------------------------------------------------------- activations

def clamp_steps(y: np.ndarray, clamp: tuple[float, float]) -> list:
    lo, hi = clamp
    if lo == -np.inf and hi == np.inf:
        return []
    if hi == np.inf:
        return [partial(np.maximum, y, F32(lo), out=y)]
    return [partial(np.clip, y, F32(lo), F32(hi), out=y)]


def clamp_ref(y: np.ndarray, clamp: tuple[float, float]) -> np.ndarray:
    return quant.clamp_f32(y, *clamp) if clamp != NO_CLAMP else y


# ----------------------------------------------------------------------------- quantize / dequantize

class Quantize(IROp):
    """float -> int8: clip(round_half_even(x * (1/scale)) + zp, -128, 127), the kernels'
    requantization rule (kernels.quant.requantize_ref)."""

    kind = "quantize"

    def __init__(self, name, inputs, outputs, scale: float, zp: int):
        super().__init__(name, inputs, outputs)
        self.scale, self.zp = F32(scale), int(zp)

    def ref(self, x):
        return (quant.requantize_ref(x.astype(F32), self.scale, self.zp),)

    def bind(self, ins, outs):
        return quantize_steps(ins[0], outs[0], self.scale, self.zp)


HAVE_QCONVERT = hasattr(_kernels, "quantize")


def _flat_view(a: np.ndarray):
    """a as 1-D without copying, or None (a strided view: the numpy steps handle it)."""
    return a.reshape(-1) if a.flags.c_contiguous else None


def quantize_steps(x: np.ndarray, q: np.ndarray, scale, zp: int) -> list:
    xf, qf = _flat_view(x), _flat_view(q)
    if HAVE_QCONVERT and xf is not None and qf is not None:
        return [partial(_kernels.quantize, xf, qf, F32(scale), int(zp))]     # one pass in C
    inv = F32(1) / F32(scale)
    tmp = np.empty(x.shape, F32)
    # clip before rounding (integer bounds, so the same as clipping after), then add the zero
    # point straight into the int8 output (exact integers: the cast is exact).
    return [partial(np.multiply, x, inv, out=tmp),
            partial(np.clip, tmp, F32(-128 - zp), F32(127 - zp), out=tmp),
            partial(np.rint, tmp, out=tmp),
            partial(np.add, tmp, F32(zp), out=q, casting="unsafe")]


class Dequantize(IROp):
    """int8 -> float: (q - zp) * scale (exact in float32 for int8 q)."""

    kind = "dequantize"

    def __init__(self, name, inputs, outputs, scale: float, zp: int):
        super().__init__(name, inputs, outputs)
        self.scale, self.zp = F32(scale), int(zp)

    def ref(self, q):
        return (((q.astype(F32) - F32(self.zp)) * self.scale).astype(F32),)

    def bind(self, ins, outs):
        q, y = ins[0], outs[0]
        qf, yf = _flat_view(q), _flat_view(y)
        if HAVE_QCONVERT and qf is not None and yf is not None:
            return [partial(_kernels.dequantize, qf, yf, self.scale, self.zp)]
        return [partial(np.subtract, q, F32(self.zp), out=y, dtype=F32), partial(np.multiply, y, self.scale, out=y)]


# ----------------------------------------------------------------------------- weights

class Weights:
    """A constant weight matrix W [N, K] (y = x W^T + bias) in the form one kernel wants."""

    backend = "numpy"

    def __init__(self, w: np.ndarray, bias: np.ndarray | None):
        self.w = np.ascontiguousarray(w, F32)
        self.bias = None if bias is None else np.ascontiguousarray(bias, F32).reshape(-1)
        self.n, self.k = self.w.shape

    def ref(self, x2: np.ndarray, clamp) -> np.ndarray:
        y = (x2.astype(np.float64) @ self.w.astype(np.float64).T).astype(F32)
        if self.bias is not None:
            y = y + self.bias
        return clamp_ref(y.astype(F32), clamp)

    def steps(self, x2: np.ndarray, y2: np.ndarray, clamp) -> list:
        wt = self.__dict__.setdefault("_wt", np.ascontiguousarray(self.w.T))
        steps = [partial(np.matmul, x2, wt, out=y2)]
        if self.bias is not None:
            steps.append(partial(np.add, y2, self.bias, out=y2))
        return steps + clamp_steps(y2, clamp)


class F32Weights(Weights):
    """Dense fp32 weights on the kernels' fp32 GEMM (bias and clamp fused)."""

    backend = "f32"

    def __init__(self, w, bias):
        super().__init__(w, bias)
        self.packed = _kernels.f32_pack(self.w, self.bias)

    def steps(self, x2, y2, clamp):
        return [partial(_kernels.f32_gemm, x2, self.packed, y2, F32(clamp[0]), F32(clamp[1]))]


HAVE_F32_GEMM = hasattr(_kernels, "f32_gemm")


class SparseWeights(Weights):
    """fp32 weights with enough exact zeros to run on a sparse kernel (bias, clamp fused): the
    16 x 4 block kernel (bsr_f32: rows in place, 4 FMAs per block and row) when at most
    `block_max_fraction` of the blocks hold a nonzero, else compressed rows (whose GEMM
    transposes activations and outputs). Not timed against dense fp32 on purpose: the kernels
    sum in different orders, so the choice would change the low bits of the results."""

    def __init__(self, w, bias, block_max_fraction: float = 0.0):
        super().__init__(w, bias)
        self.block_max_fraction = block_max_fraction
        blocks = block_max_fraction > 0 and bsr_block_fraction(self.w) <= block_max_fraction
        self.backend = "bsr_f32" if blocks else "sparse_f32"
        self.packed = kernels.pack_sparse(self.w, None, self.bias, layout="blocks" if blocks else "rows")

    def steps(self, x2, y2, clamp):
        lo, hi = F32(clamp[0]), F32(clamp[1])
        if self.backend == "bsr_f32":
            return [partial(_kernels.f32_bsr_gemm, x2, self.packed, y2, lo, hi)]
        return [partial(_kernels.sparse_gemm, x2, None, None, self.packed, y2, lo, hi)]


class QbWeights(Weights):
    """int4/int2 group-quantized weights on the qb kernels (activations quantized per row inside)."""

    backend = "qb"

    def __init__(self, q_u: np.ndarray, scales: np.ndarray, offsets: np.ndarray, bits: int, group: int, bias):
        self.q, self.scales, self.offsets, self.bits, self.group = q_u, scales, offsets, bits, group
        super().__init__(quant.dequantize_groups(q_u, scales, offsets, group), bias)
        self.packed = kernels.pack_qb(q_u, scales, offsets, bits, group, self.bias)

    def ref(self, x2, clamp):
        y = quant.qb_linear_ref(x2, self.q, self.scales, self.offsets, self.group, self.bias)
        return clamp_ref(y, clamp)

    def steps(self, x2, y2, clamp):
        return [partial(_kernels.qb_gemm, x2, self.packed, y2, *clamp)]       # clamp fused


class QD8Weights(Weights):
    """int8 weights with activations quantized per row on the fly (asymmetric int8, inside the
    kernel call): the dynamic-quantization pattern DynamicQuantizeLinear -> MatMulInteger ->
    Cast -> Mul(scales) [-> Add(bias)] as one kernel."""

    backend = "qd8"

    def __init__(self, q: np.ndarray, scale: np.ndarray, zp: np.ndarray, bias):
        self.q = np.ascontiguousarray(q, np.int8)
        self.scale = np.ascontiguousarray(scale, F32)
        self.zp = np.ascontiguousarray(zp, np.int32)
        super().__init__((self.q.astype(F32) - self.zp[:, None]) * self.scale[:, None], bias)
        self.packed = kernels.pack_qs8(self.q, self.scale, self.zp, self.bias)

    def ref(self, x2, clamp):
        a, a_scale, a_zp = quant.quantize_rows_dynamic(x2)
        return quant.qs8_gemm_ref(a, a_scale, a_zp, self.q, self.scale, self.zp, self.bias,
                                  clamp=None if clamp == NO_CLAMP else clamp)

    def steps(self, x2, y2, clamp):
        return [partial(_kernels.qd8_gemm, x2, self.packed, y2, F32(clamp[0]), F32(clamp[1]))]


HAVE_QD8_GEMM = hasattr(_kernels, "qd8_gemm")


def fastest(candidates: list[list]) -> tuple[int, list]:
    """Index and steps of the fastest candidate step list (each run on the plan's own buffers;
    used where two kernels compute the same integers, so the choice cannot change a result)."""
    from kernels.timing import fastest_index

    def run_all(steps):
        def run():
            for step in steps:
                step()
        return run

    best = fastest_index([run_all(steps) for steps in candidates])
    return best, candidates[best]


HAVE_BSR_GEMM = hasattr(_kernels, "bsr_gemm")


def bsr_block_fraction(q: np.ndarray) -> float:
    """Fraction of the 16 x 4 blocks (16 output channels x 4 consecutive K, the bsr kernel's
    unit) of int8 weights [N, K] that hold a nonzero weight, i.e. that the bsr kernel stores
    and multiplies."""
    n, k = q.shape
    pad = np.zeros((-(-n // 16) * 16, -(-k // 4) * 4), bool)
    pad[:n, :k] = q != 0
    return float(pad.reshape(pad.shape[0] // 16, 16, -1, 4).any(axis=(1, 3)).mean())


# The unstructured int8 sparse packing: the permute layout where the CPU runs its VBMI kernel
# (vpermb gathers; faster than dense at 75% sparsity for GEMV and GEMM alike), else compressed
# rows (its GEMM kernel needs no byte permutes). Same arguments, same integers.
def _pack_unstructured(q: np.ndarray, scale: np.ndarray, bias: np.ndarray | None):
    return kernels.pack_sparse(q, scale, bias, layout="permute" if _kernels.spp_isa() == "avx512" else "rows")


class QWeights:
    """int8 weights [N, K] with per-channel scales/zero points for the exact int8 kernels:
    dense qs8 packing; when zero points are 0 and enough weights are exactly zero, also
    an unstructured sparse packing (sparse_qs8: _pack_unstructured); when at most `bsr_max_fraction` of the 16 x 4 blocks hold a
    nonzero weight (block-pruned weights), also the block-sparse packing (bsr_qs8). All give
    the same integers; with `autotune` the plan keeps whichever is fastest for its shapes
    (small layers often run faster dense); without it a sparse packing is used (bsr first)."""

    def __init__(self, q: np.ndarray, scale: np.ndarray, zp: np.ndarray, bias: np.ndarray | None, sparse: bool,
                 autotune: bool = True, bsr_max_fraction: float = 0.0):
        self.q = np.ascontiguousarray(q, np.int8)
        self.scale = np.ascontiguousarray(scale, F32)
        self.zp = np.ascontiguousarray(zp, np.int32)
        self.bias = None if bias is None else np.ascontiguousarray(bias, F32).reshape(-1)
        self.n, self.k = self.q.shape
        self.sparse, self.autotune, self.bsr_max_fraction = sparse, autotune, bsr_max_fraction
        bsr = HAVE_BSR_GEMM and bsr_max_fraction > 0 and bsr_block_fraction(self.q) <= bsr_max_fraction
        self.bsr_packed = kernels.pack_bsr(self.q, self.scale, self.zp, self.bias) if bsr else None
        self.sparse_packed = _pack_unstructured(self.q, self.scale, self.bias) if sparse and (autotune or not bsr) else None
        self.backend = "bsr_qs8" if bsr else ("sparse_qs8" if sparse else "qs8")
        any_sparse = self.sparse_packed is not None or self.bsr_packed is not None
        self.packed = kernels.pack_qs8(self.q, self.scale, self.zp, self.bias) if (autotune or not any_sparse) else None
        self.chosen: list[str] = []          # per bound plan: which packing won

    def ref(self, a2, a_scale, a_zp, clamp, out_q):
        out_scale, out_zp = out_q if out_q else (None, 0)
        return quant.qs8_gemm_ref(a2, a_scale, a_zp, self.q, self.scale, self.zp, self.bias,
                                  clamp=None if clamp == NO_CLAMP else clamp, out_scale=out_scale, out_zp=out_zp)

    def _dense_steps(self, a2, sv, zv, y2, lo, hi, out_q):
        out_scale, out_zp = out_q if out_q else (1.0, 0)
        return [partial(_kernels.qs8_gemm, a2, sv, zv, self.packed, y2, lo, hi, F32(out_scale), int(out_zp))]

    def _bsr_steps(self, a2, sv, zv, y2, lo, hi, out_q):
        out_scale, out_zp = out_q if out_q else (1.0, 0)
        return [partial(_kernels.bsr_gemm, a2, sv, zv, self.bsr_packed, y2, lo, hi, F32(out_scale), int(out_zp))]

    def _sparse_steps(self, a2, sv, zv, y2, lo, hi, out_q):
        gemm = kernels.sparse_qs8_gemm_entry(self.sparse_packed)
        if not out_q:
            return [partial(gemm, a2, sv, zv, self.sparse_packed, y2, lo, hi)]
        tmp = np.empty(y2.shape, F32)
        return [partial(gemm, a2, sv, zv, self.sparse_packed, tmp, lo, hi)] + quantize_steps(tmp, y2, out_q[0], out_q[1])

    def steps(self, a2, a_scale, a_zp, y2, clamp, out_q) -> list:
        m = a2.shape[0]
        sv, zv = np.full(m, a_scale, F32), np.full(m, a_zp, np.int32)
        lo, hi = F32(clamp[0]), F32(clamp[1])
        candidates = {}
        if self.bsr_packed is not None:
            candidates["bsr_qs8"] = self._bsr_steps(a2, sv, zv, y2, lo, hi, out_q)
        if self.sparse_packed is not None:
            candidates["sparse_qs8"] = self._sparse_steps(a2, sv, zv, y2, lo, hi, out_q)
        if self.packed is not None:
            candidates["qs8"] = self._dense_steps(a2, sv, zv, y2, lo, hi, out_q)
        names = list(candidates)
        if len(names) == 1 or not self.autotune:
            self.chosen.append(names[0])
            return candidates[names[0]]
        a2.fill(0)      # plan buffers are uninitialised; any int8 values time the same
        pick, steps = fastest(list(candidates.values()))
        self.chosen.append(names[pick])
        return steps


# ----------------------------------------------------------------------------- dense layers

class Dense(IROp):
    """y = x W^T + bias, clamp; x [..., K] float (Gemm / MatMul with a constant weight)."""

    def __init__(self, name, inputs, outputs, weights: Weights, clamp=NO_CLAMP):
        super().__init__(name, inputs, outputs)
        self.weights, self.clamp = weights, clamp
        self.kind = f"dense[{weights.backend}]"
        self.fallback = weights.backend == "numpy"

    def ref(self, x):
        y = self.weights.ref(x.reshape(-1, x.shape[-1]).astype(F32), self.clamp)
        return (y.reshape(x.shape[:-1] + (self.weights.n,)),)

    def bind(self, ins, outs):
        x, y = ins[0], outs[0]
        return self.weights.steps(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), self.clamp)


class QDense(IROp):
    """int8 x [..., K] (scale, zp) times int8 weights, float out or int8 requantized."""

    def __init__(self, name, inputs, outputs, weights: QWeights, a_q: tuple[float, int], clamp=NO_CLAMP,
                 out_q: tuple[float, int] | None = None):
        super().__init__(name, inputs, outputs)
        self.weights, self.a_q, self.clamp, self.out_q = weights, a_q, clamp, out_q
        self.kind = f"qdense[{weights.backend}{'->int8' if out_q else ''}]"

    def ref(self, x):
        y = self.weights.ref(x.reshape(-1, x.shape[-1]), *self.a_q, self.clamp, self.out_q)
        return (y.reshape(x.shape[:-1] + (self.weights.n,)),)

    def bind(self, ins, outs):
        x, y = ins[0], outs[0]
        return self.weights.steps(x.reshape(-1, x.shape[-1]), *self.a_q, y.reshape(-1, y.shape[-1]),
                                  self.clamp, self.out_q)


# ----------------------------------------------------------------------------- convolution

class _ConvBase(IROp):
    def __init__(self, name, inputs, outputs, node: Node, kernel_hw, group: int, clamp):
        super().__init__(name, inputs, outputs)
        self.node, self.kernel, self.group, self.clamp = node, tuple(kernel_hw), group, clamp

    def geometry(self, x_shape):
        return conv_geometry(self.node, tuple(x_shape[2:]), self.kernel)

    def _padded(self, x: np.ndarray, pad_value):
        """Persistent padded input buffer (border filled once) + the step refreshing its interior."""
        begin, end, strides, dil, out_hw = self.geometry(x.shape)
        n, c, h, w = x.shape
        kh, kw = self.kernel
        need_h = (out_hw[0] - 1) * strides[0] + (kh - 1) * dil[0] + 1
        need_w = (out_hw[1] - 1) * strides[1] + (kw - 1) * dil[1] + 1
        ph, pw = max(h + begin[0] + end[0], need_h), max(w + begin[1] + end[1], need_w)
        if (ph, pw) == (h, w) and begin == [0, 0]:
            return x, [], (strides, dil, out_hw)
        xp = np.full((n, c, ph, pw), pad_value, x.dtype)
        interior = xp[:, :, begin[0]:begin[0] + h, begin[1]:begin[1] + w]
        return xp, [_copy_step(interior, x)], (strides, dil, out_hw)

    def _window_view(self, xp, strides, dil, out_hw, rows_first: bool):
        """im2col source view: [N, OH, OW, C, KH, KW] (rows = positions) or [N, C, KH, KW, OH, OW]."""
        n, c = xp.shape[:2]
        sn, sc, sh, sw = xp.strides
        kh, kw = self.kernel
        if rows_first:
            shape = (n, out_hw[0], out_hw[1], c, kh, kw)
            st = (sn, sh * strides[0], sw * strides[1], sc, sh * dil[0], sw * dil[1])
        else:
            shape = (n, c, kh, kw, out_hw[0], out_hw[1])
            st = (sn, sc, sh * dil[0], sw * dil[1], sh * strides[0], sw * strides[1])
        return np.lib.stride_tricks.as_strided(xp, shape, st, writeable=False)


class Conv(_ConvBase):
    """Float 2-D convolution as im2col + GEMM (numpy matmul, or the qb / sparse kernels for
    group == 1), with bias and a clamp activation fused."""

    def __init__(self, name, inputs, outputs, node, weights: Weights, kernel_hw, group, clamp=NO_CLAMP):
        super().__init__(name, inputs, outputs, node, kernel_hw, group, clamp)
        self.weights = weights
        self.kind = f"conv[{weights.backend}]"
        self.fallback = weights.backend == "numpy"

    def ref(self, x):
        begin, end, strides, dil, out_hw = self.geometry(x.shape)
        win = windows(x, self.kernel, begin, end, strides, dil, out_hw, 0)
        n, g = x.shape[0], self.group
        if self.weights.backend == "numpy":
            cout = self.weights.n
            col = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, g, -1, out_hw[0] * out_hw[1]).astype(np.float64)
            wg = self.weights.w.reshape(g, cout // g, -1).astype(np.float64)
            y = np.matmul(wg[None], col).reshape(n, cout, out_hw[0], out_hw[1]).astype(F32)
            if self.weights.bias is not None:
                y = y + self.weights.bias.reshape(1, -1, 1, 1)
            return (clamp_ref(y.astype(F32), self.clamp),)
        col = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * out_hw[0] * out_hw[1], -1)
        y = self.weights.ref(col, self.clamp)
        return (np.ascontiguousarray(y.reshape(n, out_hw[0], out_hw[1], -1).transpose(0, 3, 1, 2)),)

    def bind(self, ins, outs):
        x, y = ins[0], outs[0]
        xp, steps, (strides, dil, out_hw) = self._padded(x, 0)
        n, g = x.shape[0], self.group
        hw = out_hw[0] * out_hw[1]
        cout = self.weights.n
        if self.weights.backend == "numpy":
            kg = self.weights.k
            col = np.empty((n, g * kg, hw), F32)
            steps.append(_copy_step(col.reshape((n,) + (x.shape[1],) + self.kernel + tuple(out_hw)),
                                    self._window_view(xp, strides, dil, out_hw, rows_first=False)))
            wg = self.weights.w.reshape(g, cout // g, kg)[None]
            y4 = y.reshape(n, g, cout // g, hw)
            steps.append(partial(np.matmul, wg, col.reshape(n, g, kg, hw), out=y4))
            if self.weights.bias is not None:
                steps.append(partial(np.add, y4, self.weights.bias.reshape(1, g, cout // g, 1), out=y4))
            return steps + clamp_steps(y, self.clamp)
        col = np.empty((n * hw, self.weights.k), F32)
        steps.append(_copy_step(col.reshape((n,) + tuple(out_hw) + (x.shape[1],) + self.kernel),
                                self._window_view(xp, strides, dil, out_hw, rows_first=True)))
        tmp = np.empty((n * hw, cout), F32)
        steps += self.weights.steps(col, tmp, self.clamp)
        steps.append(_copy_step(y.reshape(n, cout, hw), tmp.reshape(n, hw, cout).transpose(0, 2, 1)))
        return steps


class QConv(_ConvBase):
    """int8 2-D convolution (group == 1): im2col of the int8 input padded with its zero point,
    the exact qs8 (or sparse int8) GEMM, requantization fused when the graph quantizes the
    result, then NHWC -> NCHW."""

    def __init__(self, name, inputs, outputs, node, weights: QWeights, kernel_hw, a_q, clamp=NO_CLAMP, out_q=None):
        super().__init__(name, inputs, outputs, node, kernel_hw, 1, clamp)
        self.weights, self.a_q, self.out_q = weights, a_q, out_q
        self.kind = f"qconv[{weights.backend}{'->int8' if out_q else ''}]"

    def ref(self, x):
        begin, end, strides, dil, out_hw = self.geometry(x.shape)
        win = windows(x, self.kernel, begin, end, strides, dil, out_hw, np.int8(self.a_q[1]))
        n = x.shape[0]
        col = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n * out_hw[0] * out_hw[1], -1)
        y = self.weights.ref(col, *self.a_q, self.clamp, self.out_q)
        return (np.ascontiguousarray(y.reshape(n, out_hw[0], out_hw[1], -1).transpose(0, 3, 1, 2)),)

    def bind(self, ins, outs):
        x, y = ins[0], outs[0]
        xp, steps, (strides, dil, out_hw) = self._padded(x, np.int8(self.a_q[1]))
        n, hw, cout = x.shape[0], out_hw[0] * out_hw[1], self.weights.n
        col = np.empty((n * hw, self.weights.k), np.int8)
        steps.append(_copy_step(col.reshape((n,) + tuple(out_hw) + (x.shape[1],) + self.kernel),
                                self._window_view(xp, strides, dil, out_hw, rows_first=True)))
        tmp = np.empty((n * hw, cout), y.dtype)
        steps += self.weights.steps(col, *self.a_q, tmp, self.clamp, self.out_q)
        steps.append(_copy_step(y.reshape(n, cout, hw), tmp.reshape(n, hw, cout).transpose(0, 2, 1)))
        return steps


class MaxPool(IROp):
    """MaxPool on float or int8 (max commutes with a shared monotonic quantization)."""

    kind = "maxpool"

    def __init__(self, name, inputs, outputs, node: Node):
        super().__init__(name, inputs, outputs)
        self.node = node
        self.kind = "maxpool"

    def ref(self, x):
        return OPS["MaxPool"](self.node, x)

    def bind(self, ins, outs):
        x, y = ins[0], outs[0]
        kernel = self.node.attrs["kernel_shape"]
        begin, end, strides, dil, out_hw = conv_geometry(self.node, x.shape[2:], kernel)
        if any(begin) or any(end) or self.node.attrs.get("ceil_mode", 0):
            return super().bind(ins, outs)
        sn, sc, sh, sw = x.strides
        view = np.lib.stride_tricks.as_strided(
            x, (x.shape[0], x.shape[1], out_hw[0], out_hw[1], kernel[0], kernel[1]),
            (sn, sc, sh * strides[0], sw * strides[1], sh * dil[0], sw * dil[1]), writeable=False)
        if tuple(kernel) == (2, 2):   # 3 ufunc calls beat a reduction over a 6-D view
            taps = [view[..., i, j] for i in range(2) for j in range(2)]
            return [partial(np.maximum, taps[0], taps[1], out=y), partial(np.maximum, y, taps[2], out=y),
                    partial(np.maximum, y, taps[3], out=y)]
        return [partial(np.max, view, axis=(4, 5), out=y)]


class QView(IROp):
    """A shape-only op (Reshape/Flatten/...) applied to an int8 tensor whose quantization it keeps."""

    alias = True

    def __init__(self, name, inputs, outputs, node: Node):
        super().__init__(name, inputs, outputs)
        self.node = node
        self.kind = f"{node.op_type}[int8]"

    def ref(self, *xs):
        return OPS[self.node.op_type](self.node, *xs)


class DWConv3x3(IROp):
    """Depthwise 3x3 convolution, padding 1, stride 1 or 2, on the kernels' dedicated fp32 or
    int8 kernels (NHWC; the NCHW activations are transposed in and out around the call).
    int8 takes the int8 input (scale, zp) and always requantizes (out_q)."""

    def __init__(self, name, inputs, outputs, w: np.ndarray, bias, stride: int, clamp=NO_CLAMP,
                 a_q=None, w_scale=None, out_q=None):
        super().__init__(name, inputs, outputs)
        c = w.shape[0]
        self.w_hwc = np.ascontiguousarray(w.reshape(c, 3, 3).transpose(1, 2, 0))     # [3, 3, C]
        self.bias = np.zeros(c, F32) if bias is None else np.ascontiguousarray(bias, F32)
        self.stride, self.clamp, self.a_q, self.out_q = stride, clamp, a_q, out_q
        self.w_scale = None if w_scale is None else np.ascontiguousarray(w_scale, F32)
        self.kind = "dwconv3x3[int8]" if a_q else "dwconv3x3[f32]"

    def ref(self, x):
        xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if self.a_q:
            y = quant.dwconv3x3_qs8_ref(xh, self.a_q[0], self.a_q[1], self.w_hwc, self.w_scale, self.bias,
                                        self.out_q[0], self.out_q[1], self.stride, self.clamp)
        else:
            y = clamp_ref(quant.dwconv3x3_ref(xh, self.w_hwc, self.bias, self.stride).astype(F32), self.clamp)
        return (np.ascontiguousarray(y.transpose(0, 3, 1, 2)),)

    def bind(self, ins, outs):
        x, y = ins[0], outs[0]
        xh = np.empty((x.shape[0], x.shape[2], x.shape[3], x.shape[1]), x.dtype)
        yh = np.empty((y.shape[0], y.shape[2], y.shape[3], y.shape[1]), y.dtype)
        lo, hi = F32(self.clamp[0]), F32(self.clamp[1])
        if self.a_q:
            call = partial(_kernels.dwconv3x3, xh, self.w_hwc, self.bias, yh, self.stride, lo, hi,
                           F32(self.a_q[0]), int(self.a_q[1]), self.w_scale, F32(self.out_q[0]), int(self.out_q[1]))
        else:
            call = partial(_kernels.dwconv3x3, xh, self.w_hwc, self.bias, yh, self.stride, lo, hi,
                           F32(1), 0, None, F32(1), 0)
        return [_copy_step(xh, x.transpose(0, 2, 3, 1)), call, _copy_step(y, yh.transpose(0, 3, 1, 2))]


HAVE_DWCONV = hasattr(_kernels, "dwconv3x3")
