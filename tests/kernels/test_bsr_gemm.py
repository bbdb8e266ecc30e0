"""Block-sparse (16 x 4 blocks) int8 GEMM: every ISA bit-exact against the numpy reference
(quant.qs8_gemm_ref on the dense matrix), for block-pruned, unstructured and fully zero
weights, odd shapes (N, K not multiples of 16 / 4), -128/127 extremes, both output types and
2 threads; the packing stores exactly the nonzero blocks; bad input raises."""

import numpy as np
import pytest

import kernels
from kernels import quant

from .tester import assert_bitexact, assert_per_tensor_bitexact, isa_params

SHAPES = [(1, 1, 1), (1, 16, 4), (1, 17, 33), (2, 31, 7), (3, 5, 64), (4, 16, 2), (5, 33, 129), (7, 48, 31),
          (9, 100, 257), (64, 24, 96), (256, 96, 16),
          (128, 40, 100), (2, 20, 4500)]  # the last two: activation scratch past the 8 KB on the stack


def block_pruned(rng, n: int, k: int, keep: float) -> np.ndarray:
    """Random int8 [n, k] where each 16 x 4 block is kept with probability `keep` (else zero)."""
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    mask = rng.random((-(-n // 16), -(-k // 4))) < keep
    full = np.repeat(np.repeat(mask, 16, axis=0), 4, axis=1)[:n, :k]
    return np.where(full, w, 0).astype(np.int8)


def _stored_blocks(w: np.ndarray) -> int:
    n, k = w.shape
    pad = np.zeros((-(-n // 16) * 16, -(-k // 4) * 4), np.int8)
    pad[:n, :k] = w
    return int(np.count_nonzero(pad.reshape(pad.shape[0] // 16, 16, -1, 4).any(axis=(1, 3))))


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("pattern", ["block25", "unstructured", "dense"])
@pytest.mark.parametrize("w_zp,bias,relu", [(False, True, True), (True, False, False)])
def test_matches_reference_bit_exact(isa, m, n, k, pattern, w_zp, bias, relu):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    if pattern == "block25":
        w = block_pruned(rng, n, k, 0.25)
    else:
        w = rng.integers(-128, 128, (n, k), dtype=np.int8)
        if pattern == "unstructured":
            w[rng.random((n, k)) < 0.75] = 0
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    a_scale = rng.uniform(0.001, 0.1, m).astype(np.float32)
    a_zp = rng.integers(-128, 128, m).astype(np.int32)
    w_scale = rng.uniform(0.001, 0.1, n).astype(np.float32)
    wz = rng.integers(-128, 128, n).astype(np.int32) if w_zp else None
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    packed = kernels.pack_bsr(w, w_scale, wz, b)
    assert packed.kind == "bsr_qs8" and (packed.n, packed.k) == (n, k)
    assert packed.nnz == 64 * _stored_blocks(w)
    with kernels.use_isa(isa):
        got = kernels.bsr_linear(a, a_scale, a_zp, packed, relu=relu)
        got_q = kernels.bsr_linear(a, a_scale, a_zp, packed, activation="relu6", out_scale=0.05, out_zero_point=-7)
    assert_bitexact(got, quant.qs8_gemm_ref(a, a_scale, a_zp, w, w_scale, wz, b, relu), f"{isa} fp32 out")
    want_q = quant.qs8_gemm_ref(a, a_scale, a_zp, w, w_scale, wz, b, clamp=(0.0, 6.0), out_scale=0.05, out_zp=-7)
    assert_bitexact(got_q, want_q, f"{isa} int8 out")


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("a_val,a_zp,w_val,w_zp", [(-128, 127, -128, 127), (-128, 127, 127, -128), (127, -128, 127, -128),
                                                  (-128, 0, -128, 0), (127, 0, -128, 0), (-128, -128, -128, -128)])
def test_extreme_values_do_not_saturate(isa, a_val, a_zp, w_val, w_zp):
    """All -128/127 with extreme zero points, K at the int32 limit: accumulators reach
    +-K*255*255; half of the blocks are zero so the zero-point terms of skipped blocks count."""
    m, n, k = 5, 19, quant.QS8_MAX_K
    w = np.full((n, k), w_val, np.int8)
    w[:, 4 * np.arange(k // 8)[:, None] * 2 + np.arange(4)[None, :]] = 0   # every other 4-wide K block
    a = np.full((m, k), a_val, np.int8)
    ones = np.ones(n, np.float32)
    packed = kernels.pack_bsr(w, ones, np.full(n, w_zp, np.int32))
    with kernels.use_isa(isa):
        got = kernels.bsr_linear(a, 1.0, a_zp, packed)
    assert_bitexact(got, quant.qs8_gemm_ref(a, 1.0, a_zp, w, ones, np.full(n, w_zp)), isa)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("m", [5, 64, 257])
@pytest.mark.parametrize("a_zp", [-128, 0, 127])
def test_per_tensor_activations_bit_exact(isa, m, a_zp):
    """One scale and zero point for every row (the CNN plans' case: the kernels then set up the
    activation offset and scale product once per group of 16 channels), block-pruned
    symmetric weights, -128/127 in both operands, both output types."""
    rng = np.random.default_rng(m + a_zp + 129)
    n, k = 37, 24
    w = block_pruned(rng, n, k, 0.3)
    w[w == 1] = -128
    a = rng.choice(np.array([-128, 127, 0, 5], np.int8), (m, k))
    ws = rng.uniform(1e-3, 1.0, n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    assert_per_tensor_bitexact(kernels.bsr_linear, kernels.pack_bsr(w, ws, None, b), a, a_zp, w, ws, b, isa)


@pytest.mark.parametrize("isa", isa_params())
def test_all_zero_weights_give_bias(isa):
    m, n, k = 6, 20, 40
    w = np.zeros((n, k), np.int8)
    bias = np.linspace(-3, 3, n).astype(np.float32)
    packed = kernels.pack_bsr(w, np.full(n, 0.5, np.float32), None, bias)
    assert packed.nnz == 0
    a = np.random.default_rng(1).integers(-128, 128, (m, k), dtype=np.int8)
    with kernels.use_isa(isa):
        got = kernels.bsr_linear(a, 0.1, 3, packed)
    assert_bitexact(got, np.broadcast_to(bias, (m, n)).astype(np.float32) + np.float32(0), isa)


def test_two_threads_match_one():
    rng = np.random.default_rng(5)
    m, n, k = 33, 200, 96
    w = block_pruned(rng, n, k, 0.3)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    packed = kernels.pack_bsr(w, np.full(n, 0.01, np.float32))
    before = kernels.get_num_threads()
    try:
        kernels.set_num_threads(1)
        one = kernels.bsr_linear(a, 0.02, -3, packed, out_scale=0.1, out_zero_point=4)
        kernels.set_num_threads(2)
        two = kernels.bsr_linear(a, 0.02, -3, packed, out_scale=0.1, out_zero_point=4)
    finally:
        kernels.set_num_threads(before)
    assert_bitexact(two, one, "2 threads")
    assert_bitexact(one, quant.qs8_gemm_ref(a, 0.02, -3, w, np.full(n, 0.01, np.float32), out_scale=0.1, out_zp=4))


def test_bad_input_raises():
    w = np.zeros((4, 8), np.int8)
    with pytest.raises(TypeError):
        kernels.pack_bsr(w.astype(np.float32), np.ones(4, np.float32))
    with pytest.raises(ValueError):
        kernels.pack_bsr(np.zeros((4, 0), np.int8), np.ones(4, np.float32))
    with pytest.raises(ValueError):
        kernels.pack_bsr(w, np.ones(3, np.float32))
    with pytest.raises(ValueError):
        kernels.pack_bsr(w, np.ones(4, np.float32), np.full(4, 200, np.int32))
    with pytest.raises(ValueError):
        kernels.pack_bsr(np.zeros((2, quant.QS8_MAX_K + 1), np.int8), np.ones(2, np.float32))
    packed = kernels.pack_bsr(w, np.ones(4, np.float32))
    with pytest.raises(ValueError):
        kernels.bsr_linear(np.zeros((2, 7), np.int8), 1.0, 0, packed)          # wrong K
    with pytest.raises(ValueError):
        kernels.bsr_linear(np.zeros((2, 8), np.int8), 1.0, 300, packed)        # zero point out of range
    with pytest.raises(TypeError):
        kernels.bsr_linear(np.zeros((2, 8), np.int8), 1.0, 0, kernels.pack_qs8(w, np.ones(4, np.float32)))
    with pytest.raises(ValueError):
        kernels.bsr_linear(np.zeros((2, 8), np.int8), 1.0, 0, packed, out_scale=0.0)
