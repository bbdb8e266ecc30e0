"""int4/int2 group-quantized weights x fp32 activations: every ISA within the stated
tolerance of the numpy reference; packing, block sizes and bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import quant

from .tester import isa_params


def _check(isa, x, q, d, o, bits, group, bias=None):
    # packed under the ISA too: the packed layout follows the ISA selected when packing
    # (avx512: 16-column panels; the others: rows of blocks.h blocks)
    with kernels.use_isa(isa):
        p = kernels.pack_qb(q, d, o, bits=bits, group_size=group, bias=bias)
        got = kernels.qb_linear(x, p)
    want = quant.qb_linear_ref(x, q, d, o, group, bias)
    tol = quant.qb_tolerance(x, q, d, o, group)
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= tol), f"{isa}: max err {err.max():.3g}, bound {tol.min():.3g}"
    return got


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 19, 100), (2, 16, 256), (3, 7, 33), (5, 33, 129), (9, 4, 384),
                                   (1, 65, 256), (1, 200, 64), (4, 130, 96)])
def test_matches_reference(isa, bits, group, m, n, k):
    rng = np.random.default_rng(bits * 7 + group + m * 100 + n + k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    q, d, o = quant.quantize_groups(w, bits, group)
    _check(isa, x, q, d, o, bits, group, rng.standard_normal(n).astype(np.float32))


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("bits", [4, 2])
def test_extreme_quants_and_activations(isa, bits):
    """All quants at the maximum and activations at +-max: the int16 pairs inside
    vpmaddubsw reach 2 * 15 * 127 and must not saturate."""
    n, k, group = 5, 256, 32
    q = np.full((n, k), (1 << bits) - 1, np.uint8)
    d = np.ones((n, k // group), np.float32)
    o = np.zeros((n, k // group), np.float32)
    x = np.where(np.arange(k) % 3 == 0, -1.0, 1.0).astype(np.float32)[None, :]
    got = _check(isa, x, q, d, o, bits, group)
    assert got[0, 0] == pytest.approx(((1 << bits) - 1) * float(x.sum()), rel=1e-6)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("m,n", [(1, 70), (5, 33), (9, 130)])
def test_fused_activation_is_the_clamp_of_the_plain_output(isa, bits, m, n):
    """The clamp runs on each tile as the kernel writes it: bit for bit the clamp of the
    unclamped result, on every ISA, tile and tail (n past the 16-column panels)."""
    rng = np.random.default_rng(bits + m + n)
    k, group = 96, 32
    q, d, o = quant.quantize_groups(rng.standard_normal((n, k)).astype(np.float32), bits, group)
    x = (3 * rng.standard_normal((m, k))).astype(np.float32)
    with kernels.use_isa(isa):
        p = kernels.pack_qb(q, d, o, bits=bits, group_size=group, bias=rng.standard_normal(n).astype(np.float32))
        plain = kernels.qb_linear(x, p)
        for activation, (lo, hi) in (("relu", (0.0, np.inf)), ("relu6", (0.0, 6.0)), ((-1.5, 0.25), (-1.5, 0.25))):
            got = kernels.qb_linear(x, p, activation=activation)
            want = np.minimum(np.maximum(plain, np.float32(lo)), np.float32(hi))
            assert (got < plain).any() or (got > plain).any(), "the clamp changed nothing: a weak case"
            np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32), err_msg=f"{isa} {activation}")
        np.testing.assert_array_equal(kernels.qb_linear(x, p, relu=True), np.maximum(plain, 0))


def test_group_quantization_roundtrip_error_is_bounded():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 200)).astype(np.float32)
    for bits in (4, 2):
        q, d, o = quant.quantize_groups(w, bits, 64)
        err = np.abs(quant.dequantize_groups(q, d, o, 64) - w)
        assert q.max() < (1 << bits)
        assert np.all(err <= d[:, np.arange(200) // 64] / 2 + 1e-6)


def test_packed_is_smaller_than_int8():
    q, d, o = quant.quantize_groups(np.ones((64, 1024), np.float32), 4, 128)
    p4 = kernels.pack_qb(q, d, o, 4, 128)
    q2, d2, o2 = quant.quantize_groups(np.ones((64, 1024), np.float32), 2, 128)
    p2 = kernels.pack_qb(q2, d2, o2, 2, 128)
    assert p4.kind == "q4_g128" and p2.kind == "q2_g128"
    assert p4.nbytes <= 64 * 1024 * 4.25 / 8 + 64 * 4  # + the fp32 bias
    assert p2.nbytes < p4.nbytes


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 5), n=st.integers(1, 20), k=st.integers(1, 300), bits=st.sampled_from([2, 4]),
       group=st.sampled_from([32, 64, 128]), seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_property_all_isas(m, n, k, bits, group, seed, scale):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * scale).astype(np.float32)
    x = (rng.standard_normal((m, k)) / scale).astype(np.float32)
    q, d, o = quant.quantize_groups(w, bits, group)
    for isa in kernels.available_isas():
        _check(isa, x, q, d, o, bits, group)


def test_weights_packed_under_one_isa_run_under_every_other():
    """A layout the running ISA has no kernels for goes through its fallback (down to the
    portable kernels), with the same results within the tolerance."""
    rng = np.random.default_rng(11)
    n, k, group = 37, 200, 64
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((3, k)).astype(np.float32)
    for bits in (4, 2):
        q, d, o = quant.quantize_groups(w, bits, group)
        want = quant.qb_linear_ref(x, q, d, o, group)
        tol = quant.qb_tolerance(x, q, d, o, group)
        for pack_isa in kernels.available_isas():
            with kernels.use_isa(pack_isa):
                p = kernels.pack_qb(q, d, o, bits, group)
            for run_isa in kernels.available_isas():
                with kernels.use_isa(run_isa):
                    got = kernels.qb_linear(x, p)
                    got1 = kernels.qb_linear(x[1], p)
                assert np.all(np.abs(got.astype(np.float64) - want) <= tol), (bits, pack_isa, run_isa)
                assert np.all(np.abs(got1.astype(np.float64) - want[1]) <= tol[1]), (bits, pack_isa, run_isa)


def test_bad_input():
    q, d, o = quant.quantize_groups(np.ones((4, 64), np.float32), 4, 32)
    with pytest.raises(ValueError, match="bits must be 4 or 2"):
        kernels.pack_qb(q, d, o, 3, 32)
    with pytest.raises(ValueError, match="group_size"):
        kernels.pack_qb(q, d, o, 4, 48)
    with pytest.raises(ValueError, match="does not fit in 2 bits"):
        kernels.pack_qb(np.full((4, 64), 5, np.uint8), d, o, 2, 32)
    with pytest.raises(ValueError, match="scales: dimension 1"):
        kernels.pack_qb(q, d[:, :1], o, 4, 32)
    with pytest.raises(ValueError, match="not finite in fp16"):
        kernels.pack_qb(q, d * 1e6, o, 4, 32)
    with pytest.raises(TypeError, match="q: expected dtype uint8"):
        kernels.pack_qb(q.astype(np.int8), d, o, 4, 32)
    p = kernels.pack_qb(q, d, o, 4, 32)
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        kernels.qb_linear(np.ones((1, 64)), p)
    with pytest.raises(ValueError, match="K of the packed weights"):
        kernels.qb_linear(np.ones((1, 63), np.float32), p)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.qb_linear(np.ones((1, 128), np.float32)[:, ::2], p)
    with pytest.raises(TypeError, match="pack_qb"):
        kernels.qb_linear(np.ones((1, 64), np.float32), kernels.pack_qs8(np.zeros((4, 64), np.int8), np.ones(4)))
    with pytest.raises(ValueError, match="lo <= hi"):
        kernels.qb_linear(np.ones((1, 64), np.float32), p, activation=(1.0, 0.0))
    with pytest.raises(ValueError, match="out_min must be <= out_max"):
        kernels._kernels.qb_gemm(np.ones((1, 64), np.float32), p, np.empty((1, 4), np.float32), 1.0, float("nan"))


@pytest.mark.parametrize("isa", isa_params())
def test_fp32_scales_are_rounded_to_fp16_like_numpy(isa):
    """Arbitrary fp32 scales/offsets (normal, subnormal in fp16, ties) go through the packer's
    fp32 -> fp16 rounding, which must match numpy's float16 exactly."""
    rng = np.random.default_rng(4)
    n, k, group = 6, 128, 32
    q = rng.integers(0, 16, (n, k)).astype(np.uint8)
    d = (10.0 ** rng.uniform(-7, 4, (n, k // group))).astype(np.float32)
    d[0, 0] = np.float32(1 + 2**-11)  # exactly halfway between two fp16 values: ties to even
    d[0, 1] = np.float32(3e-8)        # fp16 subnormal
    o = (-d * rng.uniform(0, 8, d.shape)).astype(np.float32)
    x = rng.standard_normal((2, k)).astype(np.float32)
    with kernels.use_isa(isa):
        p = kernels.pack_qb(q, d, o, 4, group)
        got = kernels.qb_linear(x, p)
    want = quant.qb_linear_ref(x, q, d, o, group)
    tol = quant.qb_tolerance(x, q, d, o, group)
    assert np.all(np.abs(got.astype(np.float64) - want) <= tol)
