"""nn kernels (layer norm, GELU, erf, softmax, attention) under every ISA this CPU has, against
the float64 references in kernels.nn within NN_RTOL / NN_ATOL, plus argument checking."""

from __future__ import annotations

import math

import numpy as np
import pytest

import kernels
from kernels import nn
from kernels.nn import NN_ATOL, NN_RTOL

from tests.kernels.tester import assert_close, isa_params

F32 = np.float32


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (32, 384), (2, 5, 33), (4, 1536)])
@pytest.mark.parametrize("residual", [False, True])
def test_layer_norm(isa, shape, residual):
    rng = _rng(1)
    x = (rng.standard_normal(shape) * 3 + 1.5).astype(F32)
    r = rng.standard_normal(shape).astype(F32) if residual else None
    g, b = rng.standard_normal(shape[-1]).astype(F32), rng.standard_normal(shape[-1]).astype(F32)
    with kernels.use_isa(isa):
        y = kernels.layer_norm(x, g, b, eps=1e-12, residual=r)
        y_nobeta = kernels.layer_norm(x, g, None, eps=1e-5)
    # the output is (s - mean) * inv_std * gamma + beta: its rounding scales with |gamma| * |normalized|
    ref = nn.layer_norm_ref(x, g, b, eps=1e-12, residual=r)
    scale = np.abs(g) * (np.abs(ref - b) / np.maximum(np.abs(g), 1e-30)) + np.abs(b)
    assert np.all(np.abs(y - ref) <= NN_ATOL + 4 * NN_RTOL * (scale + 1)), np.abs(y - ref).max()
    ref2 = nn.layer_norm_ref(x, g, None, eps=1e-5)
    assert np.all(np.abs(y_nobeta - ref2) <= NN_ATOL + 4 * NN_RTOL * (np.abs(ref2) + 1))


def test_layer_norm_constant_row_is_beta():
    x = np.full((2, 16), 3.25, F32)
    b = np.arange(16, dtype=F32)
    np.testing.assert_array_equal(kernels.layer_norm(x, np.ones(16, F32), b, eps=1e-5), np.broadcast_to(b, (2, 16)))


def _special_values():
    return np.array([0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 1.0, -1.0, math.sqrt(2), -math.sqrt(2),
                     1.4142134, 1.4142137, -1.4142134, -1.4142137, 0.9999999, 1.0000001, 5.0, -5.0, 9.0, -9.0,
                     12.0, -12.0, 13.0, -13.0, 30.0, -30.0, 1e4, -1e4, 3e38, -3e38], F32)


@pytest.mark.parametrize("isa", isa_params())
def test_gelu_and_erf(isa):
    rng = _rng(2)
    x = np.concatenate([rng.standard_normal(4099).astype(F32) * 4, _special_values(),
                        np.linspace(-10, 10, 2001, dtype=F32)])
    with kernels.use_isa(isa):
        g, e = kernels.gelu(x), kernels.erf(x)
    assert_close(e, nn.erf_ref(x), 2 * NN_RTOL, 1e-30, "erf")      # relative, even near 0
    ref = nn.gelu_ref(x)
    # relative where GELU is a normal float32; absolute below (the negative tail past -13)
    assert_close(g, ref, 4 * NN_RTOL, 1e-37, "gelu")
    assert np.all(g[x == 0] == 0)


@pytest.mark.parametrize("isa", isa_params())
def test_gelu_inf_nan(isa):
    x = np.array([np.inf, np.nan, -np.nan], F32)
    with kernels.use_isa(isa):
        g, e = kernels.gelu(x), kernels.erf(np.array([np.inf, -np.inf, np.nan], F32))
    assert g[0] == np.inf and np.isnan(g[1]) and np.isnan(g[2])
    assert e[0] == 1.0 and e[1] == -1.0 and np.isnan(e[2])


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (12, 32), (3, 4, 129)])
def test_softmax(isa, shape):
    rng = _rng(3)
    x = (rng.standard_normal(shape) * 6).astype(F32)
    x.reshape(-1)[::5] = np.finfo(F32).min            # masked entries as exports write them
    x.reshape(-1, shape[-1])[:, 0] = 1.0              # every row keeps one unmasked entry
    with kernels.use_isa(isa):
        y = kernels.softmax(x)
    assert_close(y, softmax_ref := nn.softmax_ref(x), NN_RTOL, NN_ATOL * 0.1, "softmax")
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=0, atol=4e-6)
    assert np.all(softmax_ref[x == np.finfo(F32).min] == 0) and np.all(y[x == np.finfo(F32).min] == 0)


def test_softmax_all_minus_inf_row_is_nan_like_the_definition():
    y = kernels.softmax(np.array([[-np.inf, -np.inf], [0.0, -np.inf]], F32))
    assert np.all(np.isnan(y[0])) and y[1].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("b,sq,skv,heads,d", [(1, 32, 32, 12, 32), (2, 5, 9, 3, 7), (1, 1, 1, 1, 1), (3, 17, 40, 2, 64)])
@pytest.mark.parametrize("mask_kind", ["none", "shared", "per_batch"])
def test_attention(isa, b, sq, skv, heads, d, mask_kind):
    rng = _rng(4)
    q = rng.standard_normal((b, sq, heads * d)).astype(F32)
    k = rng.standard_normal((b, skv, heads * d)).astype(F32)
    v = rng.standard_normal((b, skv, heads * d)).astype(F32)
    mask = None
    if mask_kind != "none":
        mask = np.zeros((b if mask_kind == "per_batch" else 1, skv), F32)
        mask[:, skv // 2 + 1:] = np.finfo(F32).min
    with kernels.use_isa(isa):
        out = kernels.attention(q, k, v, heads, mask=mask)
    ref = nn.attention_ref(q, k, v, heads, mask=mask)
    assert_close(out, ref, 0, NN_ATOL + 8 * NN_RTOL * float(np.abs(v).max()) * math.sqrt(skv), "attention")


def test_attention_merged_qkv_offsets():
    """One [B, S, 3E] tensor read at column offsets equals three separate tensors."""
    rng = _rng(5)
    b, s, heads, d = 2, 6, 4, 8
    e = heads * d
    qkv = rng.standard_normal((b, s, 3 * e)).astype(F32)
    out = np.empty((b, s, e), F32)
    kernels._kernels.attention(qkv, qkv, qkv, None, out, heads, d, 0.25, 0, e, 2 * e)
    q, k, v = (np.ascontiguousarray(qkv[..., i * e:(i + 1) * e]) for i in range(3))
    np.testing.assert_array_equal(out, kernels.attention(q, k, v, heads, scale=0.25))


def test_bad_arguments():
    x = np.zeros((2, 8), F32)
    with pytest.raises(TypeError):
        kernels.gelu(np.zeros(4, np.float64))
    with pytest.raises(ValueError):
        kernels.layer_norm(x, np.ones(8, F32), residual=np.zeros((2, 7), F32))
    with pytest.raises(ValueError):
        kernels.layer_norm(np.zeros((2, 0), F32), np.ones(0, F32))
    with pytest.raises(ValueError):
        kernels._kernels.layernorm(x, None, np.ones(7, F32), None, 1e-5, np.empty_like(x))
    with pytest.raises(ValueError):
        kernels._kernels.layernorm(x, None, np.ones(8, F32), None, -1.0, np.empty_like(x))
    with pytest.raises(ValueError):
        kernels._kernels.softmax(x, np.empty((2, 9), F32))
    with pytest.raises(ValueError):
        kernels._kernels.gelu(np.zeros(4, F32), np.empty(5, F32))
    q = np.zeros((1, 4, 8), F32)
    with pytest.raises(ValueError):
        kernels.attention(q, q, q, heads=3)
    with pytest.raises(ValueError):       # offsets past the width
        kernels._kernels.attention(q, q, q, None, np.empty((1, 4, 8), F32), 2, 4, 1.0, 1, 0, 0)
    with pytest.raises(ValueError):       # mask batch neither 1 nor B
        kernels._kernels.attention(np.zeros((2, 4, 8), F32), np.zeros((2, 4, 8), F32), np.zeros((2, 4, 8), F32),
                                   np.zeros((3, 4), F32), np.empty((2, 4, 8), F32), 2, 4, 1.0, 0, 0, 0)
    with pytest.raises(TypeError):        # read-only output
        ro = np.empty((2, 8), F32)
        ro.flags.writeable = False
        kernels._kernels.softmax(x, ro)
