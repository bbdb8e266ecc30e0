"""numpy reference quantizers and reference GEMMs for the native kernels.

These are the deterministic definitions: the compressor uses the quantizers to produce
weights, and the tests compare every native kernel against the reference functions here
(integer parts exactly, float parts with the named tolerances below). Plain numpy, slow,
no dependency beyond numpy.
"""

from __future__ import annotations

import numpy as np

#: Tolerances for float outputs whose summation order differs between variants
#: (int4/int2 group sums, fp32 sparse and convolution): |ours - ref| <= ATOL + RTOL*|ref|.
FLOAT_SUM_RTOL = 1e-5
FLOAT_SUM_ATOL = 1e-5

#: qb (int4/int2) kernels sum group results in float in an order that differs per ISA:
#: |ours - ref| <= QB_RTOL * (|dequant(w)| @ |x|) + QB_ATOL, i.e. relative to the size of
#: the terms summed, not of the (possibly cancelling) result.
QB_RTOL = 2e-6
QB_ATOL = 1e-6

QS8_MAX_K = 33025  # largest K for which K * 255 * 255 fits in int32


# ----------------------------------------------------------------------------- int8


def quantize_per_channel(w: np.ndarray, symmetric: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-output-channel int8 quantization of w [N, K] (float).

    Returns (q int8 [N,K], scale float32 [N], zero_point int32 [N]); w ~= (q - zp) * scale.
    Symmetric uses [-127, 127] and zp = 0; asymmetric maps [min, max] (widened to include 0)
    onto [-128, 127].
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [N, K], got shape {w.shape}")
    if symmetric:
        amax = np.abs(w).max(axis=1)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
        return q, scale, np.zeros(w.shape[0], np.int32)
    lo = np.minimum(w.min(axis=1), 0.0)
    hi = np.maximum(w.max(axis=1), 0.0)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
    zp = np.clip(np.rint(-128.0 - lo / scale), -128, 127).astype(np.int32)
    q = np.clip(np.rint(w / scale[:, None]) + zp[:, None], -128, 127).astype(np.int8)
    return q, scale, zp


def quantize_rows_dynamic(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row asymmetric int8 quantization of activations x [M, K] (dynamic quantization).

    Returns (q int8 [M,K], scale float32 [M], zero_point int32 [M]).
    """
    x = np.asarray(x, dtype=np.float32)
    lo = np.minimum(x.min(axis=1), 0.0)
    hi = np.maximum(x.max(axis=1), 0.0)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
    zp = np.clip(np.rint(-128.0 - lo / scale), -128, 127).astype(np.int32)
    q = np.clip(np.rint(x / scale[:, None]) + zp[:, None], -128, 127).astype(np.int8)
    return q, scale, zp


def qs8_accumulate_ref(a: np.ndarray, a_zp: np.ndarray, w: np.ndarray, w_zp: np.ndarray) -> np.ndarray:
    """Exact integer part: acc[m, n] = sum_k (a[m,k] - a_zp[m]) * (w[n,k] - w_zp[n]) (int64)."""
    a64 = a.astype(np.int64) - np.asarray(a_zp, np.int64).reshape(-1, 1)
    w64 = w.astype(np.int64) - np.asarray(w_zp, np.int64).reshape(-1, 1)
    return a64 @ w64.T


def clamp_f32(y: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The kernels' activation clamp: y > lo ? y : lo, then y < hi ? y : hi (float32)."""
    y = np.where(y > np.float32(lo), y, np.float32(lo)).astype(np.float32)
    return np.where(y < np.float32(hi), y, np.float32(hi)).astype(np.float32)


def requantize_ref(y: np.ndarray, out_scale: float, out_zp: int) -> np.ndarray:
    """int8 = round_half_even(clamp(y * (1/out_scale), -128 - zp, 127 - zp)) + zp, in float32."""
    inv = np.float32(1) / np.float32(out_scale)
    t = np.clip(y * inv, np.float32(-128 - out_zp), np.float32(127 - out_zp))
    return (np.rint(t).astype(np.int32) + out_zp).astype(np.int8)


def qs8_gemm_ref(a, a_scale, a_zp, w, w_scale, w_zp=None, bias=None, relu=False, out_scale=None, out_zp=0,
                 clamp=None):
    """Reference for kernels.qs8_gemm with the kernels' exact float rounding sequence:
    y = float32(acc) * (a_scale * w_scale) + bias, clamp (relu or (lo, hi)), then optional
    requantization (clamp in float, round half to even, add zero point)."""
    m, n = a.shape[0], w.shape[0]
    a_scale = np.broadcast_to(np.asarray(a_scale, np.float32), (m,))
    a_zp = np.broadcast_to(np.asarray(a_zp, np.int64), (m,))
    w_zp = np.zeros(n, np.int64) if w_zp is None else np.asarray(w_zp, np.int64)
    acc = qs8_accumulate_ref(a, a_zp, w, w_zp)
    assert np.abs(acc).max(initial=0) < 2**31, "accumulator outside int32"
    s = a_scale[:, None] * np.asarray(w_scale, np.float32)[None, :]
    y = acc.astype(np.int32).astype(np.float32) * s
    if bias is not None:
        y = y + np.asarray(bias, np.float32)[None, :]
    else:
        y = y + np.float32(0)
    if relu:
        y = clamp_f32(y, 0.0, np.inf)
    if clamp is not None:
        y = clamp_f32(y, *clamp)
    if out_scale is None:
        return y
    return requantize_ref(y, out_scale, out_zp)


# ----------------------------------------------------------------------------- int4 / int2 groups


def quantize_groups(w: np.ndarray, bits: int, group_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric group quantization of w [N, K] along K (the deterministic reference quantizer).

    Returns (q uint8 [N, K] in [0, 2^bits-1], scales float32 [N, G], offsets float32 [N, G]) with
    G = ceil(K / group_size) and w ~= scales * q + offsets (offsets = the group minimum).
    Scales and offsets are rounded to fp16 first (the packed blocks store them as fp16), and
    the quants are computed against the rounded values.
    """
    w = np.asarray(w, dtype=np.float32)
    if bits not in (2, 4) or group_size not in (32, 64, 128) or w.ndim != 2:
        raise ValueError("bits must be 2 or 4, group_size 32/64/128, w 2-D")
    n, k = w.shape
    groups = -(-k // group_size)
    padded = np.zeros((n, groups * group_size), np.float32)
    padded[:, :k] = w
    g = padded.reshape(n, groups, group_size)
    # Padding must not widen the range of the last group: use its real elements only.
    valid = (np.arange(groups * group_size) < k).reshape(groups, group_size)
    lo = np.where(valid, g, np.inf).min(axis=2)
    hi = np.where(valid, g, -np.inf).max(axis=2)
    qmax = (1 << bits) - 1
    scale = fp16_round(np.where(hi > lo, (hi - lo) / qmax, 1.0))
    lo = fp16_round(lo)
    q = np.clip(np.rint((g - lo[:, :, None]) / scale[:, :, None]), 0, qmax).astype(np.uint8)
    return q.reshape(n, -1)[:, :k].copy(), scale, lo


def fp16_round(v) -> np.ndarray:
    """float32 values rounded to the nearest fp16 (ties to even), as the block headers store them."""
    return np.asarray(v, np.float32).astype(np.float16).astype(np.float32)


def dequantize_groups(q: np.ndarray, scales: np.ndarray, offsets: np.ndarray, group_size: int) -> np.ndarray:
    """w = scales * q + offsets, per group along K (scales and offsets as stored: fp16)."""
    n, k = q.shape
    scales, offsets = fp16_round(scales), fp16_round(offsets)
    idx = np.arange(k) // group_size
    return (scales[:, idx] * q.astype(np.float32) + offsets[:, idx]).astype(np.float32)


def quantize_row_symmetric_int8(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """The kernels' dynamic activation quantizer for one row: scale = max|x| / 127,
    q = round_half_even(x / scale) clamped to [-127, 127]."""
    x = np.asarray(x, np.float32)
    amax = np.float32(np.abs(x).max(initial=0.0))
    scale = np.float32(amax / np.float32(127)) if amax > 0 else np.float32(1)
    inv = np.float32(1) / scale
    return np.clip(np.rint(x * inv), -127, 127).astype(np.int8), scale


def qb_linear_ref(x: np.ndarray, q: np.ndarray, scales: np.ndarray, offsets: np.ndarray, group_size: int,
                  bias: np.ndarray | None = None) -> np.ndarray:
    """Reference for kernels.qb_linear: activations quantized per row exactly as the kernels
    do, group sums exact, the rest in float64."""
    x = np.atleast_2d(np.asarray(x, np.float32))
    w = dequantize_groups(q, scales, offsets, group_size).astype(np.float64)
    out = np.empty((x.shape[0], q.shape[0]), np.float64)
    for r in range(x.shape[0]):
        xq, sx = quantize_row_symmetric_int8(x[r])
        out[r] = (w @ xq.astype(np.float64)) * np.float64(sx)
    if bias is not None:
        out += np.asarray(bias, np.float64)[None, :]
    return out.astype(np.float32)


def qb_tolerance(x: np.ndarray, q: np.ndarray, scales: np.ndarray, offsets: np.ndarray, group_size: int) -> np.ndarray:
    """Per-element bound for kernels.qb_linear against qb_linear_ref (see QB_RTOL)."""
    w = np.abs(dequantize_groups(q, scales, offsets, group_size)).astype(np.float64)
    return QB_RTOL * (np.abs(np.atleast_2d(x)).astype(np.float64) @ w.T) + QB_ATOL


# ----------------------------------------------------------------------------- sparsity


def prune_unstructured(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the smallest-magnitude fraction `sparsity` of each row (reference pruner)."""
    w = np.array(w, copy=True)
    drop = int(round(sparsity * w.shape[1]))
    if drop:
        idx = np.argsort(np.abs(w), axis=1, kind="stable")[:, :drop]
        np.put_along_axis(w, idx, 0, axis=1)
    return w


def prune_2_4(w: np.ndarray) -> np.ndarray:
    """Keep the 2 largest-magnitude weights of every aligned group of 4 along K (K % 4 == 0)."""
    n, k = w.shape
    if k % 4:
        raise ValueError("2:4 needs K divisible by 4")
    g = np.array(w, copy=True).reshape(n, k // 4, 4)
    idx = np.argsort(np.abs(g), axis=2, kind="stable")[:, :, :2]
    np.put_along_axis(g, idx, 0, axis=2)
    return g.reshape(n, k)


def prune_blocks(w: np.ndarray, sparsity: float, block: tuple[int, int] = (1, 16)) -> np.ndarray:
    """Zero the lowest-L1 fraction of (rows x cols) blocks (block pattern)."""
    n, k = w.shape
    bn, bk = block
    if n % bn or k % bk:
        raise ValueError(f"shape {w.shape} not divisible by block {block}")
    blocks = np.abs(w).reshape(n // bn, bn, k // bk, bk).sum(axis=(1, 3))
    cut = int(round(sparsity * blocks.size))
    keep = np.ones(blocks.size, bool)
    keep[np.argsort(blocks, axis=None, kind="stable")[:cut]] = False
    mask = np.repeat(np.repeat(keep.reshape(blocks.shape), bn, axis=0), bk, axis=1)
    return np.where(mask, w, 0).astype(w.dtype)


def sparse_linear_ref(x, w, x_scale=None, x_zp=None, w_scale=None, bias=None, relu=False, clamp=None):
    """Reference for kernels.sparse_linear on the dense form of the weights: int8 follows
    qs8_gemm_ref exactly (symmetric weights); float32 in float64."""
    if w.dtype == np.int8:
        return qs8_gemm_ref(np.atleast_2d(x), x_scale, x_zp, w, w_scale, None, bias, relu, clamp=clamp)
    y = np.atleast_2d(x).astype(np.float64) @ w.astype(np.float64).T
    if bias is not None:
        y += np.asarray(bias, np.float64)
    if relu:
        y = np.maximum(y, 0)
    if clamp is not None:
        y = np.clip(y, *clamp)
    return y.astype(np.float32)


# ----------------------------------------------------------------------------- convolution


def im2col_ref(x: np.ndarray, kh: int, kw: int, stride: int, pads: tuple[int, int, int, int], pad_value) -> np.ndarray:
    """NHWC patches [N*OH*OW, kh*kw*C] in (kh, kw, c) order, padding filled with pad_value."""
    top, left, bottom, right = pads
    n, h, w, c = x.shape
    xp = np.full((n, h + top + bottom, w + left + right, c), pad_value, x.dtype)
    xp[:, top:top + h, left:left + w] = x
    oh = (h + top + bottom - kh) // stride + 1
    ow = (w + left + right - kw) // stride + 1
    cols = np.empty((n, oh, ow, kh, kw, c), x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            cols[:, :, :, ky, kx] = xp[:, ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride]
    return cols.reshape(n * oh * ow, kh * kw * c), oh, ow


def conv2d_ref(x: np.ndarray, w_oihw: np.ndarray, bias=None, stride: int = 1, pads=(0, 0, 0, 0)) -> np.ndarray:
    """fp32 NHWC convolution in float64."""
    cout, cin, kh, kw = w_oihw.shape
    cols, oh, ow = im2col_ref(x.astype(np.float64), kh, kw, stride, pads, 0.0)
    y = cols @ w_oihw.transpose(0, 2, 3, 1).reshape(cout, -1).astype(np.float64).T
    if bias is not None:
        y += bias
    return y.reshape(x.shape[0], oh, ow, cout).astype(np.float32)


def conv2d_qs8_ref(x, x_scale, x_zp, w_oihw, w_scale, bias=None, stride=1, pads=(0, 0, 0, 0), out_scale=None,
                   out_zp=0, clamp=None):
    """int8 NHWC convolution with the qs8 definition (padding = the zero point), exact."""
    cout = w_oihw.shape[0]
    cols, oh, ow = im2col_ref(x, w_oihw.shape[2], w_oihw.shape[3], stride, pads, np.int8(x_zp))
    wr = w_oihw.transpose(0, 2, 3, 1).reshape(cout, -1)
    y = qs8_gemm_ref(cols, x_scale, x_zp, wr, w_scale, None, bias, False, out_scale, out_zp, clamp)
    return y.reshape(x.shape[0], oh, ow, cout)


def dwconv3x3_ref(x: np.ndarray, w: np.ndarray, bias=None, stride: int = 1) -> np.ndarray:
    """fp32 depthwise 3x3, padding 1, NHWC, w [3, 3, C], in float64."""
    cols, oh, ow = im2col_ref(x.astype(np.float64), 3, 3, stride, (1, 1, 1, 1), 0.0)
    c = x.shape[3]
    y = (cols.reshape(-1, 9, c) * w.reshape(9, c).astype(np.float64)).sum(axis=1)
    if bias is not None:
        y += bias
    return y.reshape(x.shape[0], oh, ow, c).astype(np.float32)


def dwconv3x3_qs8_ref(x, x_scale, x_zp, w, w_scale, bias, out_scale, out_zp, stride=1, clamp=(-np.inf, np.inf)):
    """int8 depthwise 3x3 with the kernels' exact sequence: integer taps, then
    float32(acc) * (x_scale * w_scale) + bias, clamp, requantize."""
    cols, oh, ow = im2col_ref(x, 3, 3, stride, (1, 1, 1, 1), np.int8(x_zp))
    c = x.shape[3]
    acc = ((cols.reshape(-1, 9, c).astype(np.int64) - x_zp) * w.reshape(9, c).astype(np.int64)).sum(axis=1)
    s = np.float32(x_scale) * np.asarray(w_scale, np.float32)
    b = np.zeros(c, np.float32) if bias is None else np.asarray(bias, np.float32)
    y = clamp_f32(acc.astype(np.float32) * s + b, *clamp)
    return requantize_ref(y, out_scale, out_zp).reshape(x.shape[0], oh, ow, c)
