"""Reference quantizers: the one place each format's formula lives.

Deterministic numpy, "not designed to be fast" (ggml's `quantize_row_q4_0_ref` habit): the
graph rewrites call these, and tests check them against hand-computed values. Rounding is
round-half-to-even (np.rint), the same as ONNX QuantizeLinear, so a value quantized here and
one quantized by onnxruntime at run time agree exactly.

Conventions
    symmetric signed b-bit   q in [-(2^(b-1)-1), 2^(b-1)-1]   (int8: [-127, 127]; the -128
                             code is unused so that -q never overflows); zero point 0;
                             scale = absmax / qmax
    int4 blocks              q in [-8, 7], scale = absmax / 7 per block of `block_size`
                             consecutive values along one axis (the -8 code is unused, as
                             above); asymmetric uint4 blocks use q in [0, 15] and a zero point
    affine (activations)     range widened to include 0 so that 0.0 is exact;
                             scale = (max - min) / (qmax - qmin), zp = qmin - round(min / scale)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A channel of all zeros has absmax 0; any positive scale represents it exactly.
_TINY = np.float32(1e-12)

INT_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "uint16": (0, 65535),
    "int4": (-8, 7),
    "uint4": (0, 15),
    "int2": (-2, 1),
    "uint2": (0, 3),
}
NUMPY_STORAGE = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
                 "int4": np.int8, "uint4": np.uint8, "int2": np.int8, "uint2": np.uint8}


def symmetric_qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def quantize_symmetric_ref(w: np.ndarray, axis: int | None, bits: int = 8
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric signed quantization, per channel along `axis` (None: per tensor).

    Returns (q, scale): q has w's shape (stored as int8/int16), scale has one value per
    channel (shape (C,)) or is a 0-d array. w ~= q * scale (broadcast along `axis`).
    """
    w = np.asarray(w, dtype=np.float32)
    qmax = symmetric_qmax(bits)
    if axis is None:
        absmax = np.max(np.abs(w)) if w.size else np.float32(0)
        scale = np.asarray(max(absmax / qmax, _TINY) if absmax > 0 else 1.0, dtype=np.float32)
        bscale = scale
    else:
        axis = axis % w.ndim
        other = tuple(a for a in range(w.ndim) if a != axis)
        absmax = np.max(np.abs(w), axis=other) if other else np.abs(w)
        scale = np.where(absmax > 0, absmax / np.float32(qmax), np.float32(1.0)).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        bscale = scale.reshape(shape)
    q = np.clip(np.rint(w / bscale), -qmax, qmax)
    dtype = np.int8 if bits <= 8 else np.int16
    return q.astype(dtype), scale


def affine_params_ref(rmin: float, rmax: float, dtype: str = "uint8",
                      symmetric: bool = False) -> tuple[np.float32, int]:
    """Scale and zero point for an activation range [rmin, rmax] in the integer type `dtype`.

    Asymmetric: the full integer range covers [min(rmin,0), max(rmax,0)].
    Symmetric (signed types only): zero point 0, scale = absmax / qmax.
    """
    qmin, qmax = INT_RANGES[dtype]
    rmin, rmax = min(float(rmin), 0.0), max(float(rmax), 0.0)
    if symmetric:
        if qmin == 0:
            raise ValueError(f"symmetric activation quantization needs a signed type, not {dtype}")
        absmax = max(abs(rmin), abs(rmax))
        scale = np.float32(absmax / qmax) if absmax > 0 else np.float32(1.0)
        return scale, 0
    if rmax == rmin:
        return np.float32(1.0), int(qmin if rmin == 0 else 0)
    scale = np.float32((rmax - rmin) / (qmax - qmin))
    zp = int(np.clip(np.rint(qmin - rmin / np.float64(scale)), qmin, qmax))
    return scale, zp


def quantize_affine_ref(x: np.ndarray, scale: float, zero_point: int, dtype: str = "uint8"
                        ) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(rint(x / scale) + zero_point)."""
    qmin, qmax = INT_RANGES[dtype]
    q = np.clip(np.rint(np.asarray(x, np.float32) / np.float32(scale)) + zero_point, qmin, qmax)
    return q.astype(NUMPY_STORAGE[dtype])


def dequantize_affine_ref(q: np.ndarray, scale, zero_point=0) -> np.ndarray:
    return ((np.asarray(q, np.int32) - np.asarray(zero_point, np.int32)) *
            np.asarray(scale, np.float32)).astype(np.float32)


def quantize_bias_ref(b: np.ndarray, input_scale: float, weight_scale: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias for a quantized Conv/Gemm: scale = input_scale * weight_scale (per channel)."""
    scale = (np.float32(input_scale) * np.asarray(weight_scale, np.float32)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(np.asarray(b, np.float64) / scale), -(2**31 - 1), 2**31 - 1)
    return q.astype(np.int32), scale


@dataclass(frozen=True)
class Blockwise:
    """Block quantization of a tensor along `axis` in blocks of `block_size` values.

    q has the tensor's shape; scale (and zero_point, if any) have the tensor's shape with
    dimension `axis` replaced by ceil(D / block_size): the layout of ONNX DequantizeLinear
    with `block_size` (opset 21).
    """

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int
    block_size: int
    dtype: str


def quantize_blockwise_ref(w: np.ndarray, axis: int, block_size: int, bits: int = 4,
                           symmetric: bool = True) -> Blockwise:
    """Group-wise weight quantization (int4/int2 weight-only): one scale per block."""
    w = np.asarray(w, dtype=np.float32)
    axis = axis % w.ndim
    d = w.shape[axis]
    nblocks = -(-d // block_size)
    pad = nblocks * block_size - d
    moved = np.moveaxis(w, axis, -1)
    padded = np.concatenate([moved, np.zeros(moved.shape[:-1] + (pad,), np.float32)], -1) if pad else moved
    blocks = padded.reshape(moved.shape[:-1] + (nblocks, block_size))
    if symmetric:
        dtype = f"int{bits}"
        qmax = symmetric_qmax(bits)
        absmax = np.max(np.abs(blocks), axis=-1)
        scale = np.where(absmax > 0, absmax / np.float32(qmax), np.float32(1.0)).astype(np.float32)
        q = np.clip(np.rint(blocks / scale[..., None]), -qmax, qmax)
        zp = None
    else:
        dtype = f"uint{bits}"
        qmin, qmax = INT_RANGES[dtype]
        bmin = np.minimum(np.min(blocks, axis=-1), 0.0)
        bmax = np.maximum(np.max(blocks, axis=-1), 0.0)
        scale = np.where(bmax > bmin, (bmax - bmin) / np.float32(qmax - qmin), np.float32(1.0)).astype(np.float32)
        zp_f = np.clip(np.rint(qmin - bmin / scale), qmin, qmax)
        q = np.clip(np.rint(blocks / scale[..., None]) + zp_f[..., None], qmin, qmax)
        zp = np.moveaxis(zp_f.astype(NUMPY_STORAGE[dtype]), -1, axis)
    q = q.reshape(moved.shape[:-1] + (nblocks * block_size,))[..., :d]
    q = np.moveaxis(q, -1, axis).astype(NUMPY_STORAGE[dtype])
    return Blockwise(q=q, scale=np.moveaxis(scale, -1, axis), zero_point=zp, axis=axis,
                     block_size=block_size, dtype=dtype)


def dequantize_blockwise_ref(b: Blockwise) -> np.ndarray:
    scale = np.repeat(b.scale, b.block_size, axis=b.axis)
    scale = np.take(scale, np.arange(b.q.shape[b.axis]), axis=b.axis)
    zp = 0
    if b.zero_point is not None:
        zp = np.repeat(b.zero_point.astype(np.int32), b.block_size, axis=b.axis)
        zp = np.take(zp, np.arange(b.q.shape[b.axis]), axis=b.axis)
    return ((b.q.astype(np.int32) - zp) * scale).astype(np.float32)


def pack_nibbles_ref(q: np.ndarray) -> bytes:
    """Pack 4-bit values two per byte, first element in the low nibble (ONNX INT4/UINT4)."""
    flat = (np.asarray(q).astype(np.int16).ravel() & 0x0F).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def pack_crumbs_ref(q: np.ndarray) -> bytes:
    """Pack 2-bit values four per byte, first element in the lowest bits (ONNX INT2/UINT2)."""
    flat = (np.asarray(q).astype(np.int16).ravel() & 0x03).astype(np.uint8)
    pad = (-flat.size) % 4
    if pad:
        flat = np.concatenate([flat, np.zeros(pad, np.uint8)])
    return (flat[0::4] | (flat[1::4] << 2) | (flat[2::4] << 4) | (flat[3::4] << 6)).astype(np.uint8).tobytes()
