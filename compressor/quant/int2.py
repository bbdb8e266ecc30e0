"""2-bit group-quantized weights that onnxruntime 1.32 loads: packed codes unpacked in-graph.

onnxruntime 1.32 has no INT2 DequantizeLinear kernel, so an INT2 initializer does not load.
Here each weight is stored as

    codes        uint8 initializer, four 2-bit codes per byte, first code in the lowest bits
                 (the INT2/UINT2 packing of ONNX; reference.pack_crumbs_ref), shape (bytes, 1)
    scale        float16, one per group of `group_size` consecutive weights along the
                 reduction axis
    zero_point   float16 per group (asymmetric), or the constant 1.5 (symmetric: the four
                 levels are -1.5, -0.5, 0.5, 1.5 times the scale; no zero level, all four
                 codes used)

and the graph rebuilds the float weight with standard ops that onnxruntime (and the
project's engine) constant-fold at load, so inference runs at fp32 speed while the file
holds ~2 bits per weight plus 16 (symmetric) or 32 bits per group:

    Cast(uint8 -> int32) -> Div [1, 4, 16, 64] -> Mod 4      codes (bytes, 4) in [0, 3]
    -> Reshape (rows, groups, group_size) -> Cast(float) -> Sub zero_point -> Mul scale
    -> Reshape (rows, K) [-> Slice K] -> Reshape kernel (Conv) | Transpose (MatMul)

Rows are output channels; K is the reduction length (Conv: in/groups * kh * kw, flattened
as in weight_only.py). A layer narrower than one group gets one group of K values.

Codes are chosen per group by an MSE search: a grid over the clipping range, then a few
Lloyd steps (fix codes -> least-squares scale/zero point -> re-round), keeping the best.
`gptq_int2` adds GPTQ's error feedback (compressor/quant/gptq.py) on top of the same search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from compressor.quant import reference as ref
from compressor.quant.graph import Graph, WeightSite, make_init

LEVELS = 4                                  # codes 0..3
SYMMETRIC_ZERO_POINT = np.float16(1.5)      # levels (c - 1.5) * scale
_DIVISORS = np.array([1, 4, 16, 64], np.int32)
_GRID = np.linspace(0.25, 1.0, 31)          # fractions of the group's range tried as clip
_LLOYD_STEPS = 6


@dataclass(frozen=True)
class Int2Groups:
    """Codes (rows, K) uint8 in [0, 3]; scale and zero_point (rows, groups) float16.

    w ~= (codes - zero_point) * scale per group; zero_point None means the constant 1.5.
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    group_size: int

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None


def _check_group(group_size: int) -> None:
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")


def _blocks(w: np.ndarray, group: int) -> np.ndarray:
    """(rows, K) -> (rows, groups, group), zero-padded at the end of each row."""
    rows, k = w.shape
    n = -(-k // group)
    pad = n * group - k
    if pad:
        w = np.concatenate([w, np.zeros((rows, pad), w.dtype)], axis=1)
    return w.reshape(rows, n, group)


def _round_params(scale: np.ndarray, zp: np.ndarray | None):
    """float16 storage: the search scores codes with the parameters as stored."""
    s = np.asarray(scale, np.float16)
    s = np.where(np.isfinite(s) & (s > 0), s, np.float16(1.0)).astype(np.float16)
    return s, (None if zp is None else np.clip(np.asarray(zp, np.float16), -65504, 65504))


def _codes(x: np.ndarray, s16: np.ndarray, z16) -> np.ndarray:
    z = np.float32(SYMMETRIC_ZERO_POINT) if z16 is None else z16.astype(np.float32)[..., None]
    return np.clip(np.rint(x / s16.astype(np.float32)[..., None] + z), 0, LEVELS - 1)


def _deq(c: np.ndarray, s16: np.ndarray, z16) -> np.ndarray:
    z = np.float32(SYMMETRIC_ZERO_POINT) if z16 is None else z16.astype(np.float32)[..., None]
    return (c.astype(np.float32) - z) * s16.astype(np.float32)[..., None]


def fit_groups(blocks: np.ndarray, symmetric: bool, weights: np.ndarray | None = None):
    """MSE-best (scale, zero_point) in float16 for every group of `blocks` (..., group).

    `weights` (same shape as blocks, or broadcastable) weigh each value's squared error
    (1 by default; padding gets 0). Returns (scale, zero_point or None, codes).
    """
    x = np.asarray(blocks, np.float32)
    wt = np.ones_like(x) if weights is None else np.broadcast_to(weights, x.shape).astype(np.float32)
    lo, hi = x.min(axis=-1), x.max(axis=-1)
    absmax = np.maximum(np.abs(lo), np.abs(hi))
    best_err = np.full(x.shape[:-1], np.inf, np.float64)
    best_s = np.ones(x.shape[:-1], np.float16)
    best_z = None if symmetric else np.zeros(x.shape[:-1], np.float16)

    def consider(scale, zp):
        nonlocal best_s, best_z
        s16, z16 = _round_params(scale, zp)
        c = _codes(x, s16, z16)
        err = np.sum(wt * (x - _deq(c, s16, z16)) ** 2, axis=-1, dtype=np.float64)
        better = err < best_err
        best_err[better] = err[better]
        best_s = np.where(better, s16, best_s)
        if z16 is not None:
            best_z = np.where(better, z16, best_z)
        return c

    # 1. grid over the clipping range (shrinking towards the group's centre)
    for r in _GRID:
        if symmetric:
            consider(absmax * r / 1.5, None)
        else:
            mid = 0.5 * (lo + hi)
            a, b = mid + (lo - mid) * r, mid + (hi - mid) * r
            s = (b - a) / (LEVELS - 1)
            consider(s, -a / np.where(s > 0, s, 1.0))
    # 2. Lloyd steps from the best: codes fixed, weighted least squares for the parameters
    for _ in range(_LLOYD_STEPS):
        s16, z16 = _round_params(best_s, best_z)
        c = _codes(x, s16, z16)
        if symmetric:
            t = c - np.float32(SYMMETRIC_ZERO_POINT)
            den = np.sum(wt * t * t, axis=-1)
            s = np.where(den > 0, np.sum(wt * t * x, axis=-1) / np.where(den > 0, den, 1), best_s)
            consider(s, None)
        else:   # x ~= s * c + m, then zero_point = -m / s
            sw = np.sum(wt, axis=-1)
            sw = np.where(sw > 0, sw, 1)
            mc, mx = np.sum(wt * c, -1) / sw, np.sum(wt * x, -1) / sw
            var = np.sum(wt * (c - mc[..., None]) ** 2, -1)
            cov = np.sum(wt * (c - mc[..., None]) * (x - mx[..., None]), -1)
            s = np.where(var > 0, cov / np.where(var > 0, var, 1), best_s.astype(np.float32))
            s = np.where(s > 0, s, best_s.astype(np.float32))
            consider(s, (s * mc - mx) / s)
    s16, z16 = _round_params(best_s, best_z)
    return s16, z16, _codes(x, s16, z16).astype(np.uint8)


def quantize_int2_ref(w2: np.ndarray, group_size: int, symmetric: bool = True) -> Int2Groups:
    """Round each group of W (rows, K) to 2-bit codes with the MSE-best scale/zero point."""
    _check_group(group_size)
    w2 = np.asarray(w2, np.float32)
    rows, k = w2.shape
    group = min(group_size, k)
    blocks = _blocks(w2, group)
    mask = _blocks(np.ones_like(w2), group)          # padding does not count as error
    s, z, c = fit_groups(blocks, symmetric, mask)
    codes = c.reshape(rows, -1)[:, :k]
    return Int2Groups(codes=codes, scale=s, zero_point=z, group_size=group)


def dequantize_int2_ref(q: Int2Groups) -> np.ndarray:
    """(codes - zero_point) * scale in float32: the same float ops as the graph."""
    rows, k = q.codes.shape
    c = _blocks(q.codes.astype(np.float32), q.group_size)
    return _deq(c, q.scale, q.zero_point).reshape(rows, -1)[:, :k]


def gptq_int2(w2: np.ndarray, x: np.ndarray, group_size: int, symmetric: bool = True,
              damp: float = 0.01) -> Int2Groups:
    """GPTQ (see gptq.py) with 2-bit codes: columns of W (rows, K) are rounded in order and
    each column's error is spread over the later columns through the inverse Hessian of
    ||X W^T - X Q^T||^2. A group's scale/zero point is fitted by fit_groups when the
    quantizer reaches it, on the already-corrected weights."""
    w = np.array(w2, dtype=np.float64)
    rows, cols = w.shape
    group = min(group_size, cols)
    h = x.astype(np.float64).T @ x.astype(np.float64) / max(len(x), 1)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(cols)
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T
    n = -(-cols // group)
    scale = np.ones((rows, n), np.float16)
    zp = None if symmetric else np.zeros((rows, n), np.float16)
    codes = np.zeros((rows, cols), np.uint8)
    for i in range(cols):
        b = i // group
        if i % group == 0:
            blk = w[:, i:i + group].astype(np.float32)[:, None, :]
            s, z, _ = fit_groups(blk, symmetric)
            scale[:, b] = s[:, 0]
            if zp is not None:
                zp[:, b] = z[:, 0]
        s16 = scale[:, b]                               # (rows,): one group per row
        z16 = None if zp is None else zp[:, b]
        col = w[:, i:i + 1].astype(np.float32)          # (rows, 1): a "group" of one value
        c = _codes(col, s16, z16)
        codes[:, i] = c[:, 0]
        err = (w[:, i] - _deq(c, s16, z16)[:, 0].astype(np.float64)) / hinv[i, i]
        w[:, i + 1:] -= np.outer(err, hinv[i, i + 1:])
    return Int2Groups(codes=codes, scale=scale, zero_point=zp, group_size=group)


def gptq_int2_quantizer(model: onnx.ModelProto, calib: np.ndarray):
    """quantizer(site, w2 (rows, K), symmetric, group_size) -> Int2Groups, GPTQ-corrected
    where the layer's inputs are known (grouped/depthwise convs fall back to the MSE search)."""
    from compressor.quant.calibration import check_calibration_data
    from compressor.quant.gptq import layer_inputs
    calib = check_calibration_data(calib, "GPTQ int2")
    xs = layer_inputs(model, Graph(model).weight_sites(), calib)

    def quantize(site: WeightSite, w2: np.ndarray, group_size: int, symmetric: bool) -> Int2Groups:
        if site.weight_name not in xs:
            return quantize_int2_ref(w2, group_size, symmetric)
        return gptq_int2(w2, xs[site.weight_name], group_size, symmetric)
    return quantize


def packed_codes(codes: np.ndarray, group: int) -> np.ndarray:
    """(rows, K) codes -> (bytes, 1) uint8, rows padded to whole groups, 4 codes a byte."""
    padded = _blocks(codes.astype(np.uint8), group).reshape(-1)
    return np.frombuffer(ref.pack_crumbs_ref(padded), np.uint8).reshape(-1, 1).copy()


def unpack_codes_ref(packed: np.ndarray, count: int) -> np.ndarray:
    """The graph's unpacking in numpy (int32 Div/Mod): the first `count` codes."""
    v = packed.reshape(-1, 1).astype(np.int32)
    return ((v // _DIVISORS) % LEVELS).reshape(-1)[:count].astype(np.uint8)


def emit_int2_weight(model: onnx.ModelProto, g: Graph, site: WeightSite, group_size: int,
                     symmetric: bool = True, quantizer=None) -> dict:
    """Replace `site`'s fp32 weight by packed 2-bit codes + the unpacking subgraph."""
    w = g.array(site.weight_name)
    name = site.weight_name
    op = site.node.op_type
    # canonical (rows = output channels, K = reduction) layout
    if op == "Conv":
        w2 = w.reshape(w.shape[0], -1)
    elif site.reduce_axis == 0:          # MatMul (K, N) / Gemm transB=0
        w2 = w.T
    else:                                # Gemm transB=1: (N, K)
        w2 = w
    w2 = np.ascontiguousarray(w2, np.float32)
    q = quantize_int2_ref(w2, group_size, symmetric) if quantizer is None else \
        quantizer(site, w2, group_size, symmetric)
    rows, k = w2.shape
    group = q.group_size
    ngroups = q.scale.shape[1]

    # The unpacking adds ~12 nodes per layer; on MobileNetV2 long per-node names cost as
    # many bytes as the 2-bit payload. So: short intermediate names, no node names, and the
    # constants every layer uses stored once per model.
    tag = g.fresh(f"i2_{len(model.graph.node)}")
    shared = g.__dict__.setdefault("_int2_shared", {})

    def init(base, arr, per_layer=True):
        key = (base, arr.dtype.str, arr.shape, arr.tobytes())
        if not per_layer and key in shared:
            return shared[key]
        n = g.fresh(base if per_layer else f"int2_{base}")
        model.graph.initializer.append(make_init(n, arr))
        if not per_layer:
            shared[key] = n
        return n

    def node(op_type, inputs, out=None, **attrs):
        out = g.fresh(out or f"{tag}_{len(model.graph.node)}")
        model.graph.node.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def const(base, values, dtype=np.int64):
        return init(base, np.asarray(values, dtype), per_layer=False)

    packed = init(f"{name}_int2_codes", packed_codes(q.codes, group))
    scale = init(f"{name}_int2_scale", q.scale.reshape(rows, ngroups, 1))
    zp = const("symmetric_zero_point", np.full((1, 1, 1), SYMMETRIC_ZERO_POINT), np.float16) \
        if q.symmetric else init(f"{name}_int2_zero_point", q.zero_point.reshape(rows, ngroups, 1))
    t = node("Cast", [packed], to=onnx.TensorProto.INT32)
    t = node("Div", [t, const("divisors", _DIVISORS, np.int32)])
    t = node("Mod", [t, const("levels", LEVELS, np.int32)])         # (bytes, 4) codes
    total = rows * ngroups * group
    if total % 4:                                                   # drop the last byte's padding
        t = node("Reshape", [t, const("flat", [-1])])
        t = node("Slice", [t, const("zero", [0]), const(f"n{total}", [total])])
    t = node("Reshape", [t, const(f"shape{rows}x{ngroups}x{group}", [rows, ngroups, group])])
    t = node("Cast", [t], to=onnx.TensorProto.FLOAT)
    t = node("Sub", [t, node("Cast", [zp], to=onnx.TensorProto.FLOAT)])
    t = node("Mul", [t, node("Cast", [scale], to=onnx.TensorProto.FLOAT)])
    t = node("Reshape", [t, const(f"shape{rows}x{ngroups * group}", [rows, ngroups * group])])
    if ngroups * group != k:
        t = node("Slice", [t, const("zero", [0]), const(f"n{k}", [k]), const("one", [1])])
    if op == "Conv":
        t = node("Reshape", [t, const("shape" + "x".join(map(str, w.shape)), w.shape)])
    elif site.reduce_axis == 0:
        t = node("Transpose", [t], perm=[1, 0])
    t = node("Identity", [t], out=f"{name}_int2")     # a readable name for the weight
    site.node.input[site.weight_index] = t
    deq = dequantize_int2_ref(q)
    err = deq - w2
    payload = packed_codes(q.codes, group).nbytes + q.scale.nbytes + (0 if q.symmetric else q.zero_point.nbytes)
    return {"node": site.node.name, "op": op, "weight": name, "weight_bits": 2,
            "group_size": group, "symmetric": symmetric,
            "bits_per_weight": round(8.0 * payload / w.size, 3), "payload_bytes": int(payload),
            "weights": int(w.size),
            "sqnr_db": float(10 * np.log10(np.sum(w2.astype(np.float64) ** 2) /
                                           max(np.sum(err.astype(np.float64) ** 2), 1e-30)))}
