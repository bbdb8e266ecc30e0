"""Sparse weights (unstructured, block, 2:4), int8 and fp32, GEMV and GEMM paths, and the
int8 "windows", "bitmask" and "permute" layouts: int8 bit-exact with the dense qs8 reference
on every ISA, fp32 within the named tolerance; compact storage; bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import quant

from .tester import assert_bitexact, assert_close, isa_params

PATTERNS = {
    "unstructured50": lambda w: quant.prune_unstructured(w, 0.5),
    "unstructured75": lambda w: quant.prune_unstructured(w, 0.75),
    "unstructured95": lambda w: quant.prune_unstructured(w, 0.95),
    "2:4": quant.prune_2_4,
    "block1x16": lambda w: quant.prune_blocks(w, 0.75, (1, 16)),
    "empty_rows": lambda w: np.where(np.arange(w.shape[0])[:, None] % 3 == 0, 0, w).astype(w.dtype),
}


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("m", [1, 3, 4, 9, 40])  # GEMV path below 4 rows, transposed GEMM path from 4
def test_int8_bit_exact_and_fp32_close(isa, pattern, m):
    rng = np.random.default_rng(len(pattern) * 31 + m)
    n, k = 24, 64
    wq = PATTERNS[pattern](rng.integers(-128, 128, (n, k)).astype(np.int8))
    wf = PATTERNS[pattern](rng.standard_normal((n, k)).astype(np.float32))
    ws = rng.uniform(0.01, 1, n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    xq = rng.integers(-128, 128, (m, k)).astype(np.int8)
    xs = rng.uniform(0.01, 1, m).astype(np.float32)
    xz = rng.integers(-128, 128, m).astype(np.int32)
    xf = rng.standard_normal((m, k)).astype(np.float32)
    pq, pf = kernels.pack_sparse(wq, ws, b), kernels.pack_sparse(wf, bias=b)
    with kernels.use_isa(isa):
        yq = kernels.sparse_linear(xq, pq, xs, xz, relu=True)
        yf = kernels.sparse_linear(xf, pf, relu=False)
    assert_bitexact(yq, quant.sparse_linear_ref(xq, wq, xs, xz, ws, b, True), f"{isa} int8")
    assert_close(yf, quant.sparse_linear_ref(xf, wf, bias=b), quant.FLOAT_SUM_RTOL, quant.FLOAT_SUM_ATOL, f"{isa} fp32")


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("pattern", ["block16x4", "unstructured75", "empty_rows"])
@pytest.mark.parametrize("m,n,k", [(1, 16, 64), (3, 17, 30), (9, 40, 208), (37, 64, 96)])
def test_fp32_blocks_layout_close(isa, pattern, m, n, k):
    """float32 16 x 4 block-sparse ("blocks"): within the fp32 tolerance of the float64
    reference on every ISA, for N off the 16-column grid and K off the 4-column grid (rows
    padded, so a last block never reads into the next row: the infinity there would make
    0 * inf = NaN), with bias and ReLU6; stores only the nonzero blocks."""
    rng = np.random.default_rng(m * 13 + n + k + len(pattern))
    w = rng.standard_normal((n, k)).astype(np.float32)
    if pattern == "block16x4":
        w = np.ascontiguousarray(quant.prune_blocks(np.pad(w, ((0, -n % 16), (0, -k % 4))), 0.75, (16, 4))[:n, :k])
    else:
        w = PATTERNS[pattern](w)
    b = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((m + 1, k)).astype(np.float32)
    x[m, 0] = np.inf  # the row after the last one computed below
    p = kernels.pack_sparse(w, bias=b, layout="blocks")
    blocks = np.pad(w != 0, ((0, -n % 16), (0, -k % 4))).reshape(-(-n // 16), 16, -1, 4).any(axis=(1, 3)).sum()
    assert (p.kind, p.n, p.k, p.nnz) == ("sparse_f32_blocks", n, k, blocks * 64)
    with kernels.use_isa(isa):
        y = kernels.sparse_linear(x, p, activation="relu6")
        y1 = kernels.sparse_linear(x[0], p)
    assert_close(y[:m], quant.sparse_linear_ref(x[:m], w, bias=b, clamp=(0, 6)), quant.FLOAT_SUM_RTOL,
                 quant.FLOAT_SUM_ATOL, f"{isa} blocks")
    assert y1.shape == (n,)
    assert_close(y1, quant.sparse_linear_ref(x[:1], w, bias=b)[0], quant.FLOAT_SUM_RTOL, quant.FLOAT_SUM_ATOL,
                 f"{isa} blocks GEMV")


def test_fp32_blocks_layout_bad_input():
    w = quant.prune_blocks(np.ones((32, 64), np.float32), 0.75, (16, 4))
    with pytest.raises(TypeError, match="blocks layout needs float32"):
        kernels.pack_sparse(w.astype(np.int8), np.ones(32, np.float32), layout="blocks")
    with pytest.raises(ValueError, match="bias"):
        kernels.pack_sparse(w, bias=np.ones(31, np.float32), layout="blocks")
    p = kernels.pack_sparse(w, layout="blocks")
    assert p.nbytes < 0.3 * w.nbytes
    with pytest.raises(ValueError):
        kernels.sparse_linear(np.ones((2, 63), np.float32), p)
    with pytest.raises(TypeError):
        kernels.sparse_linear(np.ones((2, 64), np.float64), p)
    with pytest.raises(ValueError):
        kernels.sparse_linear(np.ones((4, 128), np.float32)[:, ::2], p)  # not contiguous
    with pytest.raises(TypeError):
        kernels._kernels.f32_bsr_gemm(np.ones((2, 64), np.float32), kernels.pack_f32(w), np.empty((2, 32), np.float32),
                                      -np.inf, np.inf)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("m,n,k", [(1, 8, 16), (1, 24, 64), (2, 13, 48), (3, 40, 208)])
def test_windows_layout_bit_exact(isa, pattern, m, n, k):
    """The gather-free GEMV layout: exact, also when activations hit -128 (second pass)."""
    rng = np.random.default_rng(len(pattern) + m * 7 + n + k)
    w = PATTERNS[pattern](rng.integers(-128, 128, (n, k)).astype(np.int8))
    ws = rng.uniform(0.01, 1, n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    x[0, ::5] = -128
    xs = rng.uniform(0.01, 1, m).astype(np.float32)
    xz = rng.integers(-128, 128, m).astype(np.int32)
    p = kernels.pack_sparse(w, ws, b, layout="windows")
    assert p.kind == "sparse_qs8_windows" and p.nnz == np.count_nonzero(w)
    with kernels.use_isa(isa):
        y = kernels.sparse_linear(x, p, xs, xz, activation="relu6")
        y_sym = kernels.sparse_linear(np.clip(x, -127, 127), p, xs, 0)
    assert_bitexact(y, quant.sparse_linear_ref(x, w, xs, xz, ws, b, clamp=(0, 6)), f"{isa} windows")
    assert_bitexact(y_sym, quant.sparse_linear_ref(np.clip(x, -127, 127), w, xs, 0, ws, b), f"{isa} windows symmetric")


def test_windows_layout_is_smaller_than_dense_at_75_percent():
    rng = np.random.default_rng(2)
    w = quant.prune_unstructured(rng.integers(-128, 128, (256, 1024)).astype(np.int8), 0.75)
    p = kernels.pack_sparse(w, np.ones(256, np.float32), layout="windows")
    assert p.nbytes < 0.85 * w.nbytes
    with pytest.raises(TypeError, match="windows layout needs int8"):
        kernels.pack_sparse(w.astype(np.float32), layout="windows")
    with pytest.raises(ValueError, match="layout must be 'rows', 'blocks', 'windows', 'bitmask', 'permute' or 'auto'"):
        kernels.pack_sparse(w, np.ones(256, np.float32), layout="csc")


@pytest.mark.parametrize("layout", ["bitmask", "permute"])
@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 8, 16), (1, 16, 64), (1, 24, 64), (2, 13, 65), (3, 40, 208),
                                   (5, 9, 130), (5, 17, 130), (9, 33, 300)])
def test_int8_gemv_layouts_bit_exact(layout, isa, pattern, m, n, k):
    """The int8 GEMV layouts exact on every ISA: bitmask (64-column masks + packed nonzeros) and
    permute (16-row groups, 64-column windows, 4 nonzeros per row and step, blocks of 4 steps),
    for N off the 16-row grid, K off the 64-column grid, odd M (the kernels take rows in
    blocks), a fully dense row (16 permute steps per window) and the pattern's empty rows."""
    rng = np.random.default_rng(len(pattern) * 5 + m * 7 + n + k + len(layout))
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    w = PATTERNS[pattern](w) if k % 16 == 0 else quant.prune_unstructured(w, 0.6)
    w[n // 2] = rng.integers(1, 128, k).astype(np.int8)
    ws = rng.uniform(0.01, 1, n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    x[0, ::5] = -128
    xs = rng.uniform(0.01, 1, m).astype(np.float32)
    xz = rng.integers(-128, 128, m).astype(np.int32)
    p = kernels.pack_sparse(w, ws, b, layout=layout)
    assert p.kind == f"sparse_qs8_{layout}" and p.nnz == np.count_nonzero(w) and (p.n, p.k) == (n, k)
    with kernels.use_isa(isa):
        y = kernels.sparse_linear(x, p, xs, xz, activation="relu6")
        y1 = kernels.sparse_linear(x[0], p, float(xs[0]), int(xz[0]))
    assert_bitexact(y, quant.sparse_linear_ref(x, w, xs, xz, ws, b, clamp=(0, 6)), f"{isa} {layout}")
    assert y1.shape == (n,)
    assert_bitexact(y1, quant.sparse_linear_ref(x[:1], w, xs[0], xz[0], ws, b)[0], f"{isa} {layout} GEMV")


@pytest.mark.parametrize("layout", ["bitmask", "permute"])
@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("m", [1, 3, 4, 6])
@pytest.mark.parametrize("zp", [-128, 127])
def test_int8_gemv_layouts_extremes(layout, isa, m, zp):
    """Every product at its extreme (-128 * -128), zero points at both ends, K long enough that
    the sums use most of int32, rows with no nonzero (in both 16-row groups of the permute
    layout) and a fully dense row."""
    n, k = 19, 4001
    w = np.where(np.arange(k) % 2 == 0, -128, 0).astype(np.int8)[None, :].repeat(n, 0)
    w[1] = -128  # a dense row
    w[2] = 0  # an empty row
    w[17] = 0  # an empty row in the second group
    w[3, ::3] = 127
    x = np.full((m, k), -128, np.int8)
    if m > 1:
        x[1] = 127
    ws = np.ones(n, np.float32)
    p = kernels.pack_sparse(w, ws, layout=layout)
    with kernels.use_isa(isa):
        y = kernels.sparse_linear(x, p, 1.0, zp)
    assert_bitexact(y, quant.sparse_linear_ref(x, w, 1.0, zp, ws), f"{layout} {isa} zp {zp}")
    assert y[0, 1] == np.float32((-128 - zp) * -128 * k)


@pytest.mark.parametrize("isa", isa_params())
def test_permute_windows_start_anywhere(isa):
    """Permute packing starts each step's 64-column window at the first column some row of the
    group still has to place: here every row's nonzeros lie in its own band of columns, so the
    windows start off the 64-column grid, run into K's end (the padding past K) and leave rows
    idle while others are placed."""
    rng = np.random.default_rng(11)
    n, k = 21, 333
    w = np.zeros((n, k), np.int8)
    for i in range(n):
        lo = (i * 37) % (k - 50)
        w[i, lo:lo + 50 + i] = rng.integers(-128, 128, min(50 + i, k - lo))
    w[n - 1, k - 3:] = 127  # nonzeros in the last columns
    ws = rng.uniform(0.01, 1, n).astype(np.float32)
    x = rng.integers(-128, 128, (3, k)).astype(np.int8)
    p = kernels.pack_sparse(w, ws, layout="permute")
    with kernels.use_isa(isa):
        y = kernels.sparse_linear(x, p, 0.5, -7)
    assert_bitexact(y, quant.sparse_linear_ref(x, w, 0.5, -7, ws), f"{isa} permute bands")


def test_permute_layout_bytes_per_weight():
    """6-bit columns (1.75 bytes per slot) and greedy windows that fill ~0.9 of the slots:
    ~0.5 bytes per weight at 75% unstructured sparsity and under 1 (dense int8) at 50%. Byte
    columns in 128-column windows were 0.57 and 1.06."""
    rng = np.random.default_rng(4)
    w = rng.integers(-128, 128, (512, 1024)).astype(np.int8)
    w[w == 0] = 1
    ones = np.ones(512, np.float32)
    for sparsity, most in ((0.75, 0.53), (0.5, 0.95)):
        p = kernels.pack_sparse(quant.prune_unstructured(w, sparsity), ones, layout="permute")
        assert 0.45 < p.nbytes / w.size < most, (sparsity, p.nbytes / w.size)


def test_bitmask_layout_bytes_per_weight():
    """Density + 1/8 byte per weight (plus per-row scale, bias and sum)."""
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (512, 1024)).astype(np.int8)
    w[w == 0] = 1
    ones = np.ones(512, np.float32)
    for sparsity, want in ((0.75, 0.375), (0.5, 0.625), (0.0, 1.125)):
        p = kernels.pack_sparse(quant.prune_unstructured(w, sparsity), ones, layout="bitmask")
        assert want <= p.nbytes / w.size <= want + 0.02, (sparsity, p.nbytes / w.size)
    with pytest.raises(TypeError, match="bitmask layout needs int8"):
        kernels.pack_sparse(w.astype(np.float32), layout="bitmask")
    with pytest.raises(ValueError, match="per-row scales"):
        kernels.pack_sparse(w, layout="bitmask")
    p = kernels.pack_sparse(w, ones, layout="bitmask")
    with pytest.raises(ValueError, match="K of the packed weights"):
        kernels.sparse_linear(np.ones((1, 1023), np.int8), p, 1.0, 0)
    with pytest.raises(ValueError, match="int8 range"):
        kernels.sparse_linear(np.ones((1, 1024), np.int8), p, 1.0, -129)
    with pytest.raises(TypeError, match="x: expected dtype int8"):
        kernels.sparse_linear(np.ones((1, 1024), np.float32), p, 1.0, 0)
    with pytest.raises(TypeError, match="x_zero_point: expected integers"):
        kernels.sparse_linear(np.ones((1, 1024), np.int8), p, 1.0, 0.5)
    with pytest.raises(ValueError, match="x_scale: expected a scalar or shape"):
        kernels.sparse_linear(np.ones((2, 1024), np.int8), p, np.ones(3, np.float32), 0)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("m", [1, 8])
def test_int8_extremes(isa, m):
    n, k = 9, 4001
    w = np.where(np.arange(k) % 4 == 0, -128, 0).astype(np.int8)[None, :].repeat(n, 0)
    x = np.full((m, k), -128, np.int8)
    p = kernels.pack_sparse(w, np.ones(n, np.float32))
    with kernels.use_isa(isa):
        y = kernels.sparse_linear(x, p, 1.0, 127)
    assert_bitexact(y, quant.sparse_linear_ref(x, w, 1.0, 127, np.ones(n, np.float32)), isa)
    assert y[0, 0] == np.float32(-255 * -128 * 1001)


def test_storage_is_compact():
    rng = np.random.default_rng(0)
    w = quant.prune_unstructured(rng.integers(-128, 128, (256, 1024)).astype(np.int8), 0.75)
    p = kernels.pack_sparse(w, np.ones(256, np.float32))
    assert p.nnz == np.count_nonzero(w)
    assert p.nbytes < 0.8 * w.nbytes
    wf = quant.prune_unstructured(rng.standard_normal((256, 1024)).astype(np.float32), 0.75)
    assert kernels.pack_sparse(wf).nbytes < 0.4 * wf.nbytes


def test_pruners():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    assert np.count_nonzero(quant.prune_unstructured(w, 0.75)) == 8 * 16
    w24 = quant.prune_2_4(w)
    assert np.all(np.count_nonzero(w24.reshape(8, 16, 4), axis=2) == 2)
    wb = quant.prune_blocks(w, 0.5, (1, 16))
    assert np.all(np.isin(np.count_nonzero(wb.reshape(8, 4, 16), axis=2), [0, 16]))


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 20), k=st.integers(1, 90), sparsity=st.floats(0, 1),
       seed=st.integers(0, 2**32 - 1), relu=st.booleans())
def test_property_all_isas(m, n, k, sparsity, seed, relu):
    rng = np.random.default_rng(seed)
    w = quant.prune_unstructured(rng.integers(-128, 128, (n, k)).astype(np.int8), sparsity)
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    ws = rng.uniform(0.01, 1, n).astype(np.float32)
    zp = rng.integers(-128, 128, m).astype(np.int32)
    p = kernels.pack_sparse(w, ws)
    pw = kernels.pack_sparse(w, ws, layout="windows")
    pb = kernels.pack_sparse(w, ws, layout="bitmask")
    pp = kernels.pack_sparse(w, ws, layout="permute")
    want = quant.sparse_linear_ref(x, w, 0.5, zp, ws, None, relu)
    for isa in kernels.available_isas():
        with kernels.use_isa(isa):
            assert_bitexact(kernels.sparse_linear(x, p, 0.5, zp, relu=relu), want, isa)
            assert_bitexact(kernels.sparse_linear(x, pw, 0.5, zp, relu=relu), want, f"{isa} windows")
            assert_bitexact(kernels.sparse_linear(x, pb, 0.5, zp, relu=relu), want, f"{isa} bitmask")
            assert_bitexact(kernels.sparse_linear(x, pp, 0.5, zp, relu=relu), want, f"{isa} permute")


def test_bad_input():
    with pytest.raises(ValueError, match="per-row scales"):
        kernels.pack_sparse(np.zeros((2, 8), np.int8))
    with pytest.raises(TypeError, match="w: expected dtype float32"):
        kernels.pack_sparse(np.zeros((2, 8), np.float64))
    with pytest.raises(ValueError, match="K <= 65535"):
        kernels.pack_sparse(np.zeros((1, 70000), np.float32))
    pf = kernels.pack_sparse(np.eye(8, dtype=np.float32))
    pq = kernels.pack_sparse(np.eye(8, dtype=np.int8), np.ones(8, np.float32))
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        kernels.sparse_linear(np.ones((1, 8), np.int8), pf)
    with pytest.raises(ValueError, match="x_scale and x_zero_point"):
        kernels.sparse_linear(np.ones((1, 8), np.int8), pq)
    with pytest.raises(ValueError, match="K of the packed weights"):
        kernels.sparse_linear(np.ones((1, 7), np.float32), pf)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.sparse_linear(np.ones((8, 8), np.float32).T[::2], pf)
    with pytest.raises(ValueError, match="int8 range"):
        kernels.sparse_linear(np.ones((1, 8), np.int8), pq, 1.0, 128)


# ----------------------------------------------------------------------------- choosing a layout


def test_auto_layout_rule():
    """"auto": with the VBMI kernel, permute where it fits the cache budget; otherwise one of
    the layouts this CPU runs natively (windows, bitmask, permute with VBMI), whichever was
    fastest at packing; bit-identical to every other layout either way."""
    rng = np.random.default_rng(5)
    w = rng.integers(-128, 128, (512, 1536)).astype(np.int8)
    w[w == 0] = 1
    ones = np.ones(512, np.float32)
    x = rng.integers(-128, 128, 1536).astype(np.int8)
    vbmi = kernels._kernels.spp_isa() == "avx512"
    native = {"sparse_qs8_windows", "sparse_qs8_bitmask"} | ({"sparse_qs8_permute"} if vbmi else set())
    for sparsity in (0.75, 0.5, 0.0):
        ws = quant.prune_unstructured(w, sparsity)
        p = kernels.pack_sparse(ws, ones, layout="auto")
        permute = kernels.pack_sparse(ws, ones, layout="permute")
        if vbmi and permute.nbytes <= kernels.AUTO_PERMUTE_CACHE_BYTES:
            assert p.kind == "sparse_qs8_permute", sparsity
        else:
            assert p.kind in native, (sparsity, p.kind)
        assert_bitexact(kernels.sparse_linear(x, p, 0.5, 3), kernels.sparse_linear(x, permute, 0.5, 3), "auto")
    # in the cache budget: a small matrix always packs as permute where VBMI runs it
    small = quant.prune_unstructured(w[:64, :512], 0.75)
    small_kind = kernels.pack_sparse(small, ones[:64], layout="auto").kind
    assert small_kind == "sparse_qs8_permute" if vbmi else small_kind in native
    # 75% unstructured is below a byte per weight (2 bytes per slot, padded), dense is not
    assert kernels.pack_sparse(quant.prune_unstructured(w, 0.75), ones, layout="permute").nbytes < 0.8 * w.size
    with pytest.raises(TypeError, match="auto layout needs int8"):
        kernels.pack_sparse(w.astype(np.float32), layout="auto")


def test_permute_and_fast_path_bad_input():
    """The lean call path still checks everything: dtypes, shapes, contiguity, zero-point range,
    read-only and mis-shaped outputs (through the binding, as the engine calls it)."""
    w = np.eye(8, 16, dtype=np.int8)
    p = kernels.pack_sparse(w, np.ones(8, np.float32), layout="permute")
    x = np.ones(16, np.int8)
    with pytest.raises(ValueError, match="K of the packed weights"):
        kernels.sparse_linear(np.ones(15, np.int8), p, 1.0, 0)
    with pytest.raises(TypeError, match="x: expected dtype int8"):
        kernels.sparse_linear(x.astype(np.int16), p, 1.0, 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.sparse_linear(np.ones((2, 32), np.int8)[:, ::2], p, 1.0, 0)
    with pytest.raises(ValueError, match="int8 range"):
        kernels.sparse_linear(x, p, 1.0, 128)
    with pytest.raises(ValueError, match="int8 range"):
        kernels.sparse_linear(np.ones((2, 16), np.int8), p, 1.0, np.array([0, -129], np.int32))
    with pytest.raises(TypeError, match="x_zero_point: expected integers"):
        kernels.sparse_linear(x, p, 1.0, 0.5)
    with pytest.raises(ValueError, match="x_scale: expected a scalar or shape"):
        kernels.sparse_linear(np.ones((2, 16), np.int8), p, np.ones(3, np.float32), 0)
    with pytest.raises(TypeError, match="x: expected a numpy array"):
        kernels.sparse_linear([1] * 16, p, 1.0, 0)
    with pytest.raises(ValueError, match="dimensions"):
        kernels.sparse_linear(np.ones((1, 1, 16), np.int8), p, 1.0, 0)
    ro = np.empty(8, np.float32)
    ro.flags.writeable = False
    for gemm in (kernels._kernels.spp_gemm, kernels._kernels.spb_gemm):
        pk = p if gemm is kernels._kernels.spp_gemm else kernels.pack_sparse(w, np.ones(8, np.float32), layout="bitmask")
        with pytest.raises(TypeError, match="writable"):
            gemm(x, 1.0, 0, pk, ro, -np.inf, np.inf)
        with pytest.raises(ValueError, match="out"):
            gemm(x, 1.0, 0, pk, np.empty(7, np.float32), -np.inf, np.inf)
        with pytest.raises(ValueError, match="out"):
            gemm(x, 1.0, 0, pk, np.empty((1, 8), np.float32), -np.inf, np.inf)  # [K] in, [N] out
        with pytest.raises(TypeError, match="out: expected dtype float32"):
            gemm(x, 1.0, 0, pk, np.empty(8, np.float64), -np.inf, np.inf)
        with pytest.raises(TypeError, match="packed"):
            gemm(x, 1.0, 0, kernels.pack_sparse(w, np.ones(8, np.float32)), np.empty(8, np.float32), -np.inf, np.inf)
        with pytest.raises(TypeError, match="takes exactly 7 arguments"):
            gemm(x, 1.0, 0, pk, np.empty(8, np.float32))
    # per-tensor Python numbers broadcast over M rows like arrays [M]
    x2 = np.arange(32, dtype=np.int8).reshape(2, 16)
    assert_bitexact(kernels.sparse_linear(x2, p, 0.25, 3),
                    kernels.sparse_linear(x2, p, np.full(2, 0.25, np.float32), np.full(2, 3, np.int32)), "broadcast")
