"""Transformer float ops on the nn kernels (kernels/csrc/nn): layer norm (with a fused
residual add), exact GELU, erf, softmax and per-head attention, plus their numpy references.

    y = kernels.layer_norm(x, gamma, beta, eps=1e-12, residual=r)   # LN(x + r) over the last axis
    y = kernels.gelu(x)                                             # x/2 (1 + erf(x / sqrt 2))
    o = kernels.attention(q, k, v, heads=12, mask=m)                # q, k, v [B, S, H*D]

Every variant evaluates the same exp/erf polynomials (nn.h) but sums in its own order, so the
kernels agree with the float64 references here within NN_RTOL / NN_ATOL per element.
"""

from __future__ import annotations

import math

import numpy as np

from . import _kernels

#: |ours - ref| <= NN_ATOL + NN_RTOL * |ref| for layer norm, GELU, erf and softmax (float32
#: rounding of a few operations per element); attention outputs are weighted sums of V, so they
#: are held to NN_ATOL + NN_RTOL * max|V| instead.
NN_RTOL = 2e-6
NN_ATOL = 1e-6

F32 = np.float32


def _f32(x, name: str) -> np.ndarray:
    a = np.ascontiguousarray(x)
    if a.dtype != F32:
        raise TypeError(f"{name}: expected float32, got {a.dtype}")
    return a


def layer_norm(x: np.ndarray, gamma, beta=None, eps: float = 1e-5, residual: np.ndarray | None = None) -> np.ndarray:
    """(s - mean(s)) / sqrt(var(s) + eps) * gamma + beta over the last axis, s = x (+ residual)."""
    x = _f32(x, "x")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"x: needs a non-empty last axis, got shape {x.shape}")
    n = x.shape[-1]
    g = _f32(np.broadcast_to(np.asarray(gamma, F32), (n,)), "gamma")
    b = None if beta is None else _f32(np.broadcast_to(np.asarray(beta, F32), (n,)), "beta")
    r = None
    if residual is not None:
        r = _f32(residual, "residual")
        if r.shape != x.shape:
            raise ValueError(f"residual: shape {r.shape} must equal x's {x.shape}")
        r = r.reshape(-1, n)
    out = np.empty(x.shape, F32)
    _kernels.layernorm(x.reshape(-1, n), r, g, b, float(eps), out.reshape(-1, n))
    return out


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU x * Phi(x) (the erf form, ONNX Gelu with approximate='none')."""
    x = _f32(x, "x")
    out = np.empty(x.shape, F32)
    _kernels.gelu(x.reshape(-1), out.reshape(-1))
    return out


def erf(x: np.ndarray) -> np.ndarray:
    x = _f32(x, "x")
    out = np.empty(x.shape, F32)
    _kernels.erf(x.reshape(-1), out.reshape(-1))
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    x = _f32(x, "x")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"x: needs a non-empty last axis, got shape {x.shape}")
    out = np.empty(x.shape, F32)
    _kernels.softmax(x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1]))
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, mask: np.ndarray | None = None,
              scale: float | None = None) -> np.ndarray:
    """Multi-head attention on [B, S, H*D] tensors: per head h (columns h*D..(h+1)*D),
    softmax(Q_h K_h^T * scale + mask) V_h, concatenated back to [B, Sq, H*D].
    mask: additive, [B, Skv] or [1, Skv] (or None); scale defaults to 1/sqrt(D)."""
    q, k, v = _f32(q, "q"), _f32(k, "k"), _f32(v, "v")
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError("q, k, v: expected [B, S, H*D] arrays")
    if heads <= 0 or q.shape[2] % heads:
        raise ValueError(f"heads: {heads} does not divide the width {q.shape[2]}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: batch and width must match, k and v equal")
    d = q.shape[2] // heads
    m = None if mask is None else _f32(np.asarray(mask, F32).reshape(-1, k.shape[1]), "mask")
    out = np.empty(q.shape, F32)
    _kernels.attention(q, k, v, m, out, int(heads), int(d), float(1 / math.sqrt(d) if scale is None else scale), 0, 0, 0)
    return out


# ----------------------------------------------------------------------------- references (float64)

_erf64 = np.vectorize(math.erf, otypes=[np.float64])
_erfc64 = np.vectorize(math.erfc, otypes=[np.float64])


def layer_norm_ref(x, gamma, beta=None, eps=1e-5, residual=None) -> np.ndarray:
    s = np.asarray(x, np.float64) + (0 if residual is None else np.asarray(residual, np.float64))
    mean = s.mean(-1, keepdims=True)
    var = ((s - mean) ** 2).mean(-1, keepdims=True)
    y = (s - mean) / np.sqrt(var + np.float64(np.float32(eps))) * np.asarray(gamma, np.float64)
    return y + (0 if beta is None else np.asarray(beta, np.float64))


def gelu_ref(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x * 0.5 * _erfc64(-x / math.sqrt(2))


def erf_ref(x) -> np.ndarray:
    return _erf64(np.asarray(x, np.float64))


def softmax_ref(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attention_ref(q, k, v, heads: int, mask=None, scale=None) -> np.ndarray:
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, sq, e = q.shape
    d = e // heads
    scale = 1 / math.sqrt(d) if scale is None else float(np.float32(scale))
    split = lambda t: t.reshape(b, t.shape[1], heads, d).transpose(0, 2, 1, 3)   # noqa: E731
    s = split(q) @ split(k).transpose(0, 1, 3, 2) * scale
    if mask is not None:
        s = s + np.asarray(mask, np.float64).reshape(-1, 1, 1, k.shape[1])
    return (softmax_ref(s) @ split(v)).transpose(0, 2, 1, 3).reshape(b, sq, e)
