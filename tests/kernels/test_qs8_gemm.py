"""int8 x int8 GEMM/GEMV: every ISA bit-exact against the numpy reference, for random and
adversarial inputs, odd shapes, both output types, 1 and 2 threads; bad input raises."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import quant

from .tester import assert_bitexact, assert_per_tensor_bitexact, isa_params

SHAPES = [(1, 1, 1), (1, 16, 32), (1, 17, 33), (2, 31, 7), (3, 5, 64), (4, 16, 2), (5, 33, 129), (7, 48, 31), (9, 100, 257)]


def _case(rng, m, n, k, w_zp: bool, bias: bool):
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    a_scale = rng.uniform(0.001, 0.1, m).astype(np.float32)
    a_zp = rng.integers(-128, 128, m).astype(np.int32)
    w_scale = rng.uniform(0.001, 0.1, n).astype(np.float32)
    wz = rng.integers(-128, 128, n).astype(np.int32) if w_zp else None
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    return a, a_scale, a_zp, w, w_scale, wz, b


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("w_zp,bias,relu", [(False, False, False), (True, True, True), (True, False, True), (False, True, False)])
def test_matches_reference_bit_exact(isa, m, n, k, w_zp, bias, relu):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a, a_scale, a_zp, w, w_scale, wz, b = _case(rng, m, n, k, w_zp, bias)
    packed = kernels.pack_qs8(w, w_scale, wz, b)
    with kernels.use_isa(isa):
        got = kernels.qs8_linear(a, a_scale, a_zp, packed, relu=relu)
        got_q = kernels.qs8_linear(a, a_scale, a_zp, packed, relu=relu, out_scale=0.05, out_zero_point=-7)
    assert_bitexact(got, quant.qs8_gemm_ref(a, a_scale, a_zp, w, w_scale, wz, b, relu), f"{isa} fp32 out")
    assert_bitexact(got_q, quant.qs8_gemm_ref(a, a_scale, a_zp, w, w_scale, wz, b, relu, 0.05, -7), f"{isa} int8 out")


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("a_val,a_zp,w_val,w_zp", [(-128, 127, -128, 127), (-128, 127, 127, -128), (127, -128, 127, -128),
                                                  (-128, 0, -128, 0), (127, 0, -128, 0), (-128, -128, -128, -128)])
def test_extreme_values_do_not_saturate(isa, a_val, a_zp, w_val, w_zp):
    """All -128/127 with zero points at the extremes: the accumulators reach +-K*255*255,
    where a vpmaddubsw-style int16 pair sum would saturate."""
    m, n, k = 3, 17, quant.QS8_MAX_K
    a = np.full((m, k), a_val, np.int8)
    w = np.full((n, k), w_val, np.int8)
    packed = kernels.pack_qs8(w, np.ones(n, np.float32), np.full(n, w_zp, np.int32))
    with kernels.use_isa(isa):
        got = kernels.qs8_linear(a, 1.0, a_zp, packed)
    want = quant.qs8_gemm_ref(a, 1.0, a_zp, w, np.ones(n, np.float32), np.full(n, w_zp))
    assert_bitexact(got, want, isa)
    assert got[0, 0] == np.float32((a_val - a_zp) * (w_val - w_zp) * k)


@pytest.mark.parametrize("isa", isa_params())
def test_gemv_alternating_extremes(isa):
    rng = np.random.default_rng(7)
    k, n = 1001, 65
    a = np.where(rng.random((1, k)) < 0.5, -128, 127).astype(np.int8)
    w = np.where(rng.random((n, k)) < 0.5, -128, 127).astype(np.int8)
    ws = np.full(n, 0.5, np.float32)
    packed = kernels.pack_qs8(w, ws)
    with kernels.use_isa(isa):
        got = kernels.qs8_linear(a[0], 0.25, -128, packed)
    assert got.shape == (n,)
    assert_bitexact(got, quant.qs8_gemm_ref(a, 0.25, -128, w, ws)[0], isa)


def test_threads_do_not_change_results():
    rng = np.random.default_rng(3)
    a, a_scale, a_zp, w, w_scale, wz, b = _case(rng, 9, 200, 130, True, True)
    packed = kernels.pack_qs8(w, w_scale, wz, b)
    before = kernels.get_num_threads()
    try:
        kernels.set_num_threads(1)
        one = kernels.qs8_linear(a, a_scale, a_zp, packed)
        kernels.set_num_threads(2)
        two = kernels.qs8_linear(a, a_scale, a_zp, packed)
    finally:
        kernels.set_num_threads(before)
    assert_bitexact(one, two, "1 vs 2 threads")


def test_every_share_of_the_pool_runs_whatever_the_thread_count():
    """The pool cuts a job's chunks into one share per thread, each claimed by its owner first
    and by the others once theirs are done (threadpool.c). With more threads than this
    machine's CPUs some workers come late or not at all, and their shares must still run
    (a missed chunk leaves np.empty garbage in the output); shrinking the count leaves
    workers whose slot the job no longer has, which must stay out."""
    rng = np.random.default_rng(5)
    a, a_scale, a_zp, w, w_scale, wz, b = _case(rng, 1, 3000, 700, True, True)
    packed = kernels.pack_qs8(w, w_scale, wz, b)
    want = quant.qs8_gemm_ref(a, a_scale, a_zp, w, w_scale, wz, b)
    before = kernels.get_num_threads()
    try:
        for threads in (5, 3, 8, 2, 1):
            kernels.set_num_threads(threads)
            for _ in range(20):
                assert_bitexact(kernels.qs8_linear(a, a_scale, a_zp, packed), want, f"{threads} threads")
    finally:
        kernels.set_num_threads(before)


def test_dynamic_rows_end_to_end_close_to_float():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 96)).astype(np.float32)
    wf = rng.standard_normal((24, 96)).astype(np.float32)
    q, xs, xz = quant.quantize_rows_dynamic(x)
    wq, wsc, wz = quant.quantize_per_channel(wf, symmetric=False)
    y = kernels.qs8_gemm(q, xs, xz, wq, wsc, wz)
    ref = x @ wf.T
    assert np.abs(y - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("m", [5, 64, 257])
@pytest.mark.parametrize("a_zp", [-128, 0, 127])
def test_per_tensor_activations_bit_exact(isa, m, a_zp):
    """One scale and zero point for every row (the CNN plans' case: the kernels then take the
    activation offset and the scale product once per column block instead of per row), with
    symmetric weights, -128/127 in both operands and both output types."""
    rng = np.random.default_rng(m + a_zp + 128)
    n, k = 37, 19
    a = rng.choice(np.array([-128, 127, 0, 5], np.int8), (m, k))
    w = rng.choice(np.array([-128, 127, 0, -3], np.int8), (n, k))
    ws = rng.uniform(1e-3, 1.0, n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    assert_per_tensor_bitexact(kernels.qs8_linear, kernels.pack_qs8(w, ws, None, b), a, a_zp, w, ws, b, isa)


int8s = st.integers(-128, 127)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 6), n=st.integers(1, 40), k=st.integers(1, 70), seed=st.integers(0, 2**32 - 1),
       extreme=st.booleans(), a_zp=int8s, w_zp=int8s, relu=st.booleans(), out_zp=int8s)
def test_property_every_isa_equals_reference(m, n, k, seed, extreme, a_zp, w_zp, relu, out_zp):
    rng = np.random.default_rng(seed)
    if extreme:  # only the two extreme values, the worst case for int16 intermediates
        a = rng.choice(np.array([-128, 127], np.int8), (m, k))
        w = rng.choice(np.array([-128, 127], np.int8), (n, k))
    else:
        a = rng.integers(-128, 128, (m, k), dtype=np.int8)
        w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    ws = rng.uniform(1e-3, 1.0, n).astype(np.float32)
    wz = np.full(n, w_zp, np.int32)
    b = rng.standard_normal(n).astype(np.float32)
    packed = kernels.pack_qs8(w, ws, wz, b)
    want = quant.qs8_gemm_ref(a, 0.01, a_zp, w, ws, wz, b, relu)
    want_q = quant.qs8_gemm_ref(a, 0.01, a_zp, w, ws, wz, b, relu, 0.7, out_zp)
    for isa in kernels.available_isas():
        with kernels.use_isa(isa):
            assert_bitexact(kernels.qs8_linear(a, 0.01, a_zp, packed, relu=relu), want, isa)
            assert_bitexact(kernels.qs8_linear(a, 0.01, a_zp, packed, relu=relu, out_scale=0.7, out_zero_point=out_zp), want_q, isa)



# ------------------------------------------------------------------ AMX / tile-shaped paths
# The AMX kernel works on 16-row x 16-column x 64-K tiles (padding M to 16 rows, N to 16
# columns, K to 64) from M = panel_min_m (2) up; M = 1 falls back to AVX-VNNI. These
# cases straddle every one of those boundaries and run under every ISA the CPU has.


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("m", list(range(1, 41)))
def test_every_m_up_to_40_bit_exact(isa, m):
    rng = np.random.default_rng(100 + m)
    n = int(rng.integers(1, 51))
    k = int(rng.choice([1, 3, 63, 64, 65, 127, 200, 384]))
    a, a_scale, a_zp, w, w_scale, wz, b = _case(rng, m, n, k, True, True)
    packed = kernels.pack_qs8(w, w_scale, wz, b)
    with kernels.use_isa(isa):
        got = kernels.qs8_linear(a, a_scale, a_zp, packed, relu=m % 2 == 0)
        got_q = kernels.qs8_linear(a, a_scale, a_zp, packed, out_scale=0.03, out_zero_point=m - 20)
    assert_bitexact(got, quant.qs8_gemm_ref(a, a_scale, a_zp, w, w_scale, wz, b, m % 2 == 0), f"{isa} {m}x{n}x{k}")
    assert_bitexact(got_q, quant.qs8_gemm_ref(a, a_scale, a_zp, w, w_scale, wz, b, False, 0.03, m - 20), f"{isa} {m}x{n}x{k} int8")


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("n", [1, 15, 16, 17, 31, 32, 33, 47, 48, 49, 50])
def test_every_n_boundary_bit_exact(isa, n):
    rng = np.random.default_rng(200 + n)
    m, k = 19, 130
    a, a_scale, a_zp, w, w_scale, wz, b = _case(rng, m, n, k, True, True)
    packed = kernels.pack_qs8(w, w_scale, wz, b)
    with kernels.use_isa(isa):
        got = kernels.qs8_linear(a, a_scale, a_zp, packed)
    assert_bitexact(got, quant.qs8_gemm_ref(a, a_scale, a_zp, w, w_scale, wz, b), f"{isa} n={n}")


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("m", [8, 16, 17, 33])
@pytest.mark.parametrize("a_val,a_zp,w_val,w_zp", [(-128, 127, -128, 127), (127, -128, 127, -128), (-128, 127, 127, -128),
                                                  (-128, -128, -128, -128)])
def test_extreme_values_tile_shapes(isa, m, a_val, a_zp, w_val, w_zp):
    """The largest |acc| (K * 255 * 255 at K = QS8_MAX_K, not a multiple of 64) through the tile
    path, with the row count on and off the 16-row tiles; int8 output saturates both ways."""
    n, k = 33, quant.QS8_MAX_K
    a = np.full((m, k), a_val, np.int8)
    w = np.full((n, k), w_val, np.int8)
    ws = np.ones(n, np.float32)
    packed = kernels.pack_qs8(w, ws, np.full(n, w_zp, np.int32))
    with kernels.use_isa(isa):
        got = kernels.qs8_linear(a, 1.0, a_zp, packed)
        got_q = kernels.qs8_linear(a, 1.0, a_zp, packed, out_scale=1e-6, out_zero_point=3)
    assert_bitexact(got, quant.qs8_gemm_ref(a, 1.0, a_zp, w, ws, np.full(n, w_zp)), isa)
    assert_bitexact(got_q, quant.qs8_gemm_ref(a, 1.0, a_zp, w, ws, np.full(n, w_zp), None, False, 1e-6, 3), isa)
    assert got[m - 1, n - 1] == np.float32((a_val - a_zp) * (w_val - w_zp) * k)


@pytest.mark.parametrize("isa", isa_params())
def test_qd8_linear_minilm_shape(isa):
    """The native engine's MiniLM dense[qd8] layer shape (M = 32 tokens, 384 -> 1536 -> 384)."""
    rng = np.random.default_rng(32)
    for n, k in [(1536, 384), (384, 1536)]:
        x = rng.standard_normal((32, k)).astype(np.float32)
        w = rng.integers(-128, 128, (n, k), dtype=np.int8)
        ws = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        packed = kernels.pack_qs8(w, ws, None, b)
        q, s, z = quant.quantize_rows_dynamic(x)
        with kernels.use_isa(isa):
            got = kernels.qd8_linear(x, packed)
        assert_bitexact(got, quant.qs8_gemm_ref(q, s, z, w, ws, None, b), f"{isa} {n}x{k}")


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("m,k", [(1, 2000), (1, 2100), (4, 448), (4, 520), (5, 300), (2, 4096)])
def test_scratch_on_stack_and_heap(isa, m, k):
    """Panel calls keep their activation scratch on the stack up to 8 KB (M rounded up to the
    kernel's row padding, times K rounded up to 64) and allocate beyond: shapes on both sides
    of that line, int8 and fp32 activations, are exact."""
    rng = np.random.default_rng(m * k)
    n = 40
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    a_scale = rng.uniform(0.001, 0.1, m).astype(np.float32)
    a_zp = rng.integers(-128, 128, m).astype(np.int32)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    ws = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    packed = kernels.pack_qs8(w, ws)
    x = rng.standard_normal((m, k)).astype(np.float32)
    q, s, z = quant.quantize_rows_dynamic(x)
    with kernels.use_isa(isa):
        got = kernels.qs8_linear(a, a_scale, a_zp, packed)
        got_qd8 = kernels.qd8_linear(x, packed)
    assert_bitexact(got, quant.qs8_gemm_ref(a, a_scale, a_zp, w, ws), f"{isa} qs8 {m}x{k}")
    assert_bitexact(got_qd8, quant.qs8_gemm_ref(q, s, z, w, ws), f"{isa} qd8 {m}x{k}")


@settings(max_examples=40, deadline=None)
@given(m=st.integers(8, 40), n=st.integers(1, 50), k=st.integers(1, 300), seed=st.integers(0, 2**32 - 1),
       extreme=st.booleans(), a_zp=int8s, w_zp=int8s, out_zp=int8s)
def test_property_tile_path_equals_reference(m, n, k, seed, extreme, a_zp, w_zp, out_zp):
    rng = np.random.default_rng(seed)
    pick = (lambda shape: rng.choice(np.array([-128, 127], np.int8), shape)) if extreme else \
        (lambda shape: rng.integers(-128, 128, shape, dtype=np.int8))
    a, w = pick((m, k)), pick((n, k))
    ws = rng.uniform(1e-3, 1.0, n).astype(np.float32)
    wz = np.full(n, w_zp, np.int32)
    want = quant.qs8_gemm_ref(a, 0.01, a_zp, w, ws, wz)
    want_q = quant.qs8_gemm_ref(a, 0.01, a_zp, w, ws, wz, None, False, 0.7, out_zp)
    packed = kernels.pack_qs8(w, ws, wz)
    for isa in kernels.available_isas():
        with kernels.use_isa(isa):
            assert_bitexact(kernels.qs8_linear(a, 0.01, a_zp, packed), want, isa)
            assert_bitexact(kernels.qs8_linear(a, 0.01, a_zp, packed, out_scale=0.7, out_zero_point=out_zp), want_q, isa)



@settings(max_examples=40, deadline=None)
@given(m=st.integers(8, 40), n=st.integers(1, 40), k=st.integers(1, 300), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from([1e-30, 1e-4, 1.0, 1e4, 1e30]), sign=st.sampled_from([-1, 0, 1]))
def test_qd8_linear_tile_path_equals_numpy(m, n, k, seed, scale, sign):
    """M >= 8 (the tile path): on AMX the activations are quantized straight into the tile layout (AVX-512,
    multiply by 1/scale with a division fallback near ties); same values as numpy's division."""
    _check_qd8_linear_against_numpy(m, n, k, seed, scale, sign)


@pytest.mark.parametrize("isa", isa_params())
def test_qd8_linear_exact_ties_and_tiny_scales(isa):
    """Rows whose quotients x / scale are exact half-integers (round half to even decides), a row
    of subnormals (1 / scale overflows), an all-zero row, and rows with only a few distinct values."""
    k = 256
    rows = [np.arange(-127.5, 128.0, 1.0)[:k],                   # scale 1, every x / s a tie
            np.arange(-127.5, 128.0, 1.0)[:k] * 2.0 ** -20,      # scale 2^-20, ties again
            np.full(k, 1e-42) * np.sign(np.arange(k) - 100.5),  # subnormal range
            np.zeros(k),
            np.where(np.arange(k) % 3 == 0, 255.0, 0.0),        # scale 1, integers
            np.linspace(-3.0, 5.0, k)]
    # a scale that is not a power of two, and x next to (j + 0.5) * scale: here x * (1 / scale)
    # rounds differently from x / scale for many elements, so a missing fallback would show
    lo, hi = np.float32(-5.167034), np.float32(9.50959)
    s0 = np.float32((hi - lo) / np.float32(255.0))
    base = ((np.arange(-85, 160) + 0.5) * s0).astype(np.float32)
    near = np.stack([np.nextafter(base, np.float32(np.inf)), base, np.nextafter(base, np.float32(-np.inf))], 1).ravel()
    near = np.concatenate([[lo, hi], near[(near > lo) & (near < hi)]])[:k].astype(np.float32)
    assert np.any(np.rint(near / s0) != np.rint(near * (np.float32(1) / s0)))
    rows.append(near)
    x = np.stack([np.resize(r, k) for r in rows] * 3).astype(np.float32)  # 21 rows
    rng = np.random.default_rng(9)
    w = rng.integers(-128, 128, (20, k), dtype=np.int8)
    ws = np.full(20, 0.01, np.float32)
    packed = kernels.pack_qs8(w, ws)
    q, s, z = quant.quantize_rows_dynamic(x)
    with kernels.use_isa(isa):
        got = kernels.qd8_linear(x, packed)
    assert_bitexact(got, quant.qs8_gemm_ref(q, s, z, w, ws), isa)


# ------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def packed():
    return kernels.pack_qs8(np.zeros((8, 16), np.int8), np.ones(8, np.float32))


def test_wrong_dtype_raises_type_error(packed):
    with pytest.raises(TypeError, match="a: expected dtype int8"):
        kernels.qs8_linear(np.zeros((2, 16), np.int16), 1.0, 0, packed)
    with pytest.raises(TypeError, match="w: expected dtype int8"):
        kernels.pack_qs8(np.zeros((8, 16), np.float32), np.ones(8))
    with pytest.raises(TypeError, match="a_zero_point: expected integers"):
        kernels.qs8_linear(np.zeros((2, 16), np.int8), 1.0, 0.5, packed)
    with pytest.raises(TypeError, match="w: expected weights from pack_qs8"):
        kernels.qs8_linear(np.zeros((2, 16), np.int8), 1.0, 0, np.zeros((8, 16), np.int8))


def test_non_contiguous_raises(packed):
    a = np.zeros((2, 32), np.int8)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.qs8_linear(a, 1.0, 0, packed)


def test_binding_reads_numpy_arrays_and_other_buffers_alike(packed):
    """numpy arrays take the NumPy C API, anything else the buffer protocol: the same checks
    and results either way (a memoryview, byte-swapped and read-only arrays, a numpy
    subclass)."""
    from kernels import _kernels
    f32 = np.float32
    a = np.arange(32, dtype=np.int8).reshape(2, 16)
    want = np.empty((2, 8), np.float32)
    _kernels.qs8_gemm(a, np.ones(2, f32), np.zeros(2, np.int32), packed, want, f32(-np.inf), f32(np.inf), f32(1), 0)
    got = np.full((2, 8), 7, np.float32)
    _kernels.qs8_gemm(memoryview(a), memoryview(np.ones(2, f32)), np.zeros(2, np.int32), packed, memoryview(got),
                      f32(-np.inf), f32(np.inf), f32(1), 0)
    np.testing.assert_array_equal(got, want)
    sub = np.ma.MaskedArray(a)  # an ndarray subclass
    got[:] = 7
    _kernels.qs8_gemm(sub, np.ones(2, f32), np.zeros(2, np.int32), packed, got, f32(-np.inf), f32(np.inf), f32(1), 0)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="a_scale: expected dtype float32"):
        _kernels.qs8_gemm(a, np.ones(2, ">f4"), np.zeros(2, np.int32), packed, got, f32(-np.inf), f32(np.inf),
                          f32(1), 0)
    read_only = np.empty((2, 8), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(TypeError, match="writable"):
        _kernels.qs8_gemm(a, np.ones(2, f32), np.zeros(2, np.int32), packed, read_only, f32(-np.inf), f32(np.inf),
                          f32(1), 0)
    with pytest.raises(TypeError, match="writable"):
        _kernels.qs8_gemm(a, np.ones(2, f32), np.zeros(2, np.int32), packed, memoryview(bytes(64)).cast("f", (2, 8)),
                          f32(-np.inf), f32(np.inf), f32(1), 0)


def test_int8_gemm_entries_return_out_and_allocate_it_when_none():
    """qs8_gemm, bsr_gemm and the int8 sparse GEMVs return their `out`: the caller's array
    (the same object) or, for out=None, a new float32 array shaped like x's rows x N. No
    reference is leaked either way, also when out is refused."""
    import sys

    from kernels import _kernels
    rng = np.random.default_rng(5)
    w = quant.prune_unstructured(rng.integers(-128, 128, (24, 64)).astype(np.int8), 0.5)
    ws = np.ones(24, np.float32)
    a = rng.integers(-128, 128, (3, 64)).astype(np.int8)
    calls = {
        "qs8": lambda x, out: _kernels.qs8_gemm(x, 0.5, 3, kernels.pack_qs8(w, ws), out, -np.inf, np.inf, 1.0, 0),
        "bsr": lambda x, out: _kernels.bsr_gemm(x, 0.5, 3, kernels.pack_bsr(w, ws), out, -np.inf, np.inf, 1.0, 0),
        "permute": lambda x, out: _kernels.spp_gemm(x, 0.5, 3, kernels.pack_sparse(w, ws, layout="permute"), out,
                                                    -np.inf, np.inf),
        "bitmask": lambda x, out: _kernels.spb_gemm(x, 0.5, 3, kernels.pack_sparse(w, ws, layout="bitmask"), out,
                                                    -np.inf, np.inf),
    }
    want = quant.qs8_gemm_ref(a, 0.5, 3, w, ws)
    for name, call in calls.items():
        new = call(a, None)
        refs = sys.getrefcount(new)  # the name `new` and getrefcount's argument
        assert new.dtype == np.float32 and new.shape == (3, 24) and refs == 2, name
        assert_bitexact(new, want, name)
        row = call(a[0], None)
        assert row.shape == (24,), name
        assert_bitexact(row, want[0], name)
        out = np.empty((3, 24), np.float32)
        before = sys.getrefcount(out)
        same = call(a, out) is out
        assert same and sys.getrefcount(out) == before, name
        bad = np.empty((2, 24), np.float32)
        before = sys.getrefcount(bad)
        with pytest.raises(ValueError, match="out"):
            call(a, bad)
        assert sys.getrefcount(bad) == before, name


def test_shape_mismatches_raise(packed):
    with pytest.raises(ValueError, match="K of the packed weights"):
        kernels.qs8_linear(np.zeros((2, 15), np.int8), 1.0, 0, packed)
    with pytest.raises(ValueError, match="a_scale"):
        kernels.qs8_linear(np.zeros((2, 16), np.int8), np.ones(3), 0, packed)
    with pytest.raises(ValueError, match="w_scales"):
        kernels.pack_qs8(np.zeros((8, 16), np.int8), np.ones(7))
    with pytest.raises(ValueError, match="dimensions"):
        kernels.pack_qs8(np.zeros((2, 8, 16), np.int8), np.ones(2))
    with pytest.raises(ValueError, match="exceeds"):
        kernels.pack_qs8(np.zeros((1, quant.QS8_MAX_K + 1), np.int8), np.ones(1))


def test_zero_points_out_of_range_raise(packed):
    with pytest.raises(ValueError, match="int8 range"):
        kernels.qs8_linear(np.zeros((1, 16), np.int8), 1.0, 200, packed)
    with pytest.raises(ValueError, match="int8 range"):
        kernels.pack_qs8(np.zeros((8, 16), np.int8), np.ones(8), np.full(8, -129))
    with pytest.raises(ValueError, match="out_scale"):
        kernels.qs8_linear(np.zeros((1, 16), np.int8), 1.0, 0, packed, out_scale=-1.0)


def test_packed_attributes(packed):
    assert (packed.n, packed.k, packed.kind) == (8, 16, "qs8")
    assert packed.nbytes >= 8 * 16


def test_nbytes_counts_the_panel_copy():
    """On CPUs with AVX-512 VNNI or AMX the weights are also kept as an x4 panel (K padded to
    64, N to 16): nbytes includes it, so memory figures are not half the truth there."""
    w = np.ones((40, 100), np.int8)
    p = kernels.pack_qs8(w, np.ones(40, np.float32))
    panel = 48 * 128 if kernels.cpu_features()["avx512"] or kernels.cpu_features()["amx"] else 0
    blocks = 3 * 16 * 100                 # at least the weights of three 16-column blocks
    assert p.nbytes >= blocks + panel
    assert p.nbytes < 2 * blocks + panel + 3 * 1024    # and nothing like a second copy more


# ------------------------------------------------------------------ dispatch


def test_core_clock_is_measured_on_x86_and_unknown_elsewhere():
    """benchmarks/kernels_gemm.py divides by this clock for its peak fractions."""
    ghz = kernels._kernels.core_ghz()
    if kernels.cpu_features()["machine"] == "x86_64":
        assert 0.5 < ghz < 8.0, ghz   # a chain of 3-cycle multiplies: any real x86 core lands here
    else:
        assert ghz == 0.0


def test_set_isa_scalar_and_back():
    assert "scalar" in kernels.available_isas()
    with kernels.use_isa("scalar"):
        assert kernels.get_isa() == "scalar"
    assert kernels.get_isa() == kernels.available_isas()[-1]
    with pytest.raises(ValueError, match="unknown ISA"):
        kernels.set_isa("sse9")


def test_env_var_forces_scalar_and_import_is_light():
    code = ("import sys, kernels; print(kernels.get_isa()); "
            "print(any(m in sys.modules for m in ('torch', 'onnx', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"EDGEFLEET_KERNELS_ISA": "scalar", "PYTHONPATH": str(__import__("pathlib").Path(kernels.__file__).parent.parent)})
    assert out.stdout.split() == ["scalar", "False"]


# ------------------------------------------------------------------ dynamic quantization (fp32 in)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 6), n=st.integers(1, 40), k=st.integers(1, 300), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from([1e-4, 1.0, 1e4]), sign=st.sampled_from([-1, 0, 1]))
def test_qd8_linear_equals_numpy_quantization_then_qs8(m, n, k, seed, scale, sign):
    _check_qd8_linear_against_numpy(m, n, k, seed, scale, sign)


def test_qd8_linear_bad_input(packed):
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        kernels.qd8_linear(np.zeros((1, 16), np.float64), packed)
    with pytest.raises(TypeError, match="pack_qs8"):
        kernels.qd8_linear(np.zeros((1, 16), np.float32), kernels.pack_f32(np.zeros((8, 16), np.float32)))


def test_relu6_activation_clamps():
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (3, 40), dtype=np.int8)
    w = rng.integers(-128, 128, (20, 40), dtype=np.int8)
    ws = np.full(20, 0.01, np.float32)
    packed = kernels.pack_qs8(w, ws)
    for isa in kernels.available_isas():
        with kernels.use_isa(isa):
            y = kernels.qs8_linear(a, 0.05, 0, packed, activation="relu6")
        assert_bitexact(y, quant.qs8_gemm_ref(a, 0.05, 0, w, ws, clamp=(0.0, 6.0)), isa)
        assert y.min() >= 0 and y.max() <= 6
    with pytest.raises(ValueError, match="activation must be"):
        kernels.qs8_linear(a, 0.05, 0, packed, activation="gelu")


# ------------------------------------------------------------------ thread pool


def test_concurrent_callers_get_correct_results():
    """Several Python threads share the pool (the GIL is released)."""
    import concurrent.futures

    rng = np.random.default_rng(9)
    a, a_scale, a_zp, w, w_scale, wz, b = _case(rng, 3, 700, 400, True, True)
    packed = kernels.pack_qs8(w, w_scale, wz, b)
    want = quant.qs8_gemm_ref(a, a_scale, a_zp, w, w_scale, wz, b)
    kernels.set_num_threads(2)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            results = list(ex.map(lambda _: kernels.qs8_linear(a, a_scale, a_zp, packed), range(16)))
        for got in results:
            assert_bitexact(got, want, "concurrent")
    finally:
        kernels.set_num_threads(0)


FORK_CHECK = """
import os, numpy as np, kernels
from kernels import quant
rng = np.random.default_rng(9)
a = rng.integers(-128, 128, (3, 700), dtype=np.int8)
w = rng.integers(-128, 128, (400, 700), dtype=np.int8)
ws = rng.uniform(0.01, 1, 400).astype(np.float32)
packed = kernels.pack_qs8(w, ws)
want = quant.qs8_gemm_ref(a, 0.5, 3, w, ws, None, None)
kernels.set_num_threads(2)
assert np.array_equal(kernels.qs8_linear(a, 0.5, 3, packed), want)   # the pool's workers exist now
pid = os.fork()
if pid == 0:  # child: exit code says whether the kernels still work after fork
    os._exit(0 if np.array_equal(kernels.qs8_linear(a, 0.5, 3, packed), want) else 1)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_recreates_the_pool():
    # In its own interpreter: a fork() of the pytest process, where other tests left gRPC
    # threads running, would run gRPC's fork handlers too (see edgefleet/child.py).
    result = subprocess.run([sys.executable, "-c", FORK_CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def _check_qd8_linear_against_numpy(m, n, k, seed, scale, sign):
    """qd8_linear on every ISA == numpy's per-row quantization followed by the qs8 reference."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * scale).astype(np.float32)
    if sign:  # one-signed rows exercise the zero-point clamps
        x = sign * np.abs(x)
    x[0, : k // 3] = 0
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    ws = rng.uniform(1e-3, 1, n).astype(np.float32)
    packed = kernels.pack_qs8(w, ws)
    q, s, z = quant.quantize_rows_dynamic(x)
    want = quant.qs8_gemm_ref(q, s, z, w, ws)
    for isa in kernels.available_isas():
        with kernels.use_isa(isa):
            assert_bitexact(kernels.qd8_linear(x, packed), want, isa)
