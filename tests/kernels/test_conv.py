"""Convolutions (NHWC): depthwise 3x3, pointwise and general (im2col) in fp32 and int8, and
the fp32 GEMM under them. int8 bit-exact on every ISA; fp32 within the named tolerance."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import quant

from .tester import assert_bitexact, assert_close, isa_params

RTOL, ATOL = quant.FLOAT_SUM_RTOL * 10, 1e-4  # sums of up to 9*C products in fp32


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("n,h,w,c", [(1, 1, 1, 1), (1, 5, 7, 3), (2, 8, 8, 16), (1, 9, 11, 37), (1, 14, 14, 96)])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise(isa, n, h, w, c, stride):
    rng = np.random.default_rng(h * 100 + w * 10 + c + stride)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wt = rng.standard_normal((3, 3, c)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    xq = rng.integers(-128, 128, (n, h, w, c)).astype(np.int8)
    wq = rng.integers(-128, 128, (3, 3, c)).astype(np.int8)
    ws = rng.uniform(0.001, 0.05, c).astype(np.float32)
    with kernels.use_isa(isa):
        y = kernels.dwconv3x3(x, wt, b, stride)
        y6 = kernels.dwconv3x3(x, wt, b, stride, activation="relu6")
        yq = kernels.dwconv3x3_qs8(xq, 0.05, -7, wq, ws, b, 0.04, 5, stride, activation="relu6")
    ref = quant.dwconv3x3_ref(x, wt, b, stride)
    assert_close(y, ref, RTOL, ATOL, f"{isa} f32")
    assert_close(y6, np.clip(ref, 0, 6), RTOL, ATOL, f"{isa} f32 relu6")
    assert_bitexact(yq, quant.dwconv3x3_qs8_ref(xq, 0.05, -7, wq, ws, b, 0.04, 5, stride, (0, 6)), f"{isa} int8")


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("k,stride,pad", [(1, 1, 0), (3, 1, 1), (3, 2, 1), (5, 2, (2, 1, 2, 1)), (2, 1, 0)])
@pytest.mark.parametrize("c", [1, 6])      # 1: a stem conv, im2col copies taps of one byte
def test_general_conv(isa, k, stride, pad, c):
    rng = np.random.default_rng(k * 10 + stride)
    x = rng.standard_normal((2, 9, 10, c)).astype(np.float32)
    w = rng.standard_normal((11, c, k, k)).astype(np.float32)
    b = rng.standard_normal(11).astype(np.float32)
    xq = rng.integers(-128, 128, x.shape).astype(np.int8)
    wq = rng.integers(-128, 128, w.shape).astype(np.int8)
    ws = rng.uniform(0.001, 0.05, 11).astype(np.float32)
    pads = (pad,) * 4 if isinstance(pad, int) else pad
    cf, cq = kernels.pack_conv(w, b), kernels.pack_conv(wq, b, ws)
    with kernels.use_isa(isa):
        y = kernels.conv2d(x, cf, stride, pad)
        yq = kernels.conv2d_qs8(xq, 0.02, 100, cq, stride, pad)
        yq8 = kernels.conv2d_qs8(xq, 0.02, -128, cq, stride, pad, out_scale=0.1, out_zero_point=-3, activation="relu")
    assert_close(y, quant.conv2d_ref(x, w, b, stride, pads), RTOL, ATOL, f"{isa} f32")
    assert_bitexact(yq, quant.conv2d_qs8_ref(xq, 0.02, 100, wq, ws, b, stride, pads), f"{isa} int8")
    assert_bitexact(yq8, quant.conv2d_qs8_ref(xq, 0.02, -128, wq, ws, b, stride, pads, 0.1, -3, (0, np.inf)), f"{isa} int8 out")


@pytest.mark.parametrize("isa", isa_params())
# the AVX-512 wide tile (two 16-column blocks, up to 12 rows): exact pairs, a pair plus one
# block, pairs with 1 and 8 columns in the second block, and row tails of every size
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 17, 33), (3, 16, 64), (5, 48, 300), (33, 20, 7),
                                   (12, 32, 40), (13, 49, 19), (25, 33, 100), (40, 70, 130), (7, 24, 1)])
def test_f32_linear(isa, m, n, k):
    rng = np.random.default_rng(m + n + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    p = kernels.pack_f32(w, b)
    with kernels.use_isa(isa):
        y = kernels.f32_linear(x, p, activation="relu")
    ref = np.maximum(x.astype(np.float64) @ w.T.astype(np.float64) + b, 0)
    assert_close(y, ref.astype(np.float32), RTOL, ATOL * np.sqrt(k), isa)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 20), stride=st.sampled_from([1, 2]),
       x_zp=st.integers(-128, 127), out_zp=st.integers(-128, 127), seed=st.integers(0, 2**32 - 1))
def test_property_depthwise_int8(h, w, c, stride, x_zp, out_zp, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (1, h, w, c)).astype(np.int8)
    wt = rng.choice(np.array([-128, 127, 0, 1], np.int8), (3, 3, c))
    ws = rng.uniform(1e-3, 0.1, c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    want = quant.dwconv3x3_qs8_ref(x, 0.03, x_zp, wt, ws, b, 0.2, out_zp, stride)
    for isa in kernels.available_isas():
        with kernels.use_isa(isa):
            assert_bitexact(kernels.dwconv3x3_qs8(x, 0.03, x_zp, wt, ws, b, 0.2, out_zp, stride), want, isa)


@pytest.mark.parametrize("x_val,w_val,x_zp", [(-128, -128, 127), (127, -128, -128), (-128, 127, 127), (127, 127, -128)])
def test_depthwise_int8_extremes(x_val, w_val, x_zp):
    """Every tap at the int8 extremes, 16 + 8 + 3 channels (vector steps and the scalar tail):
    the largest sums the kernels must hold exactly (9 * 255 * 128)."""
    c = 27
    x = np.full((1, 5, 6, c), x_val, np.int8)
    wt = np.full((3, 3, c), w_val, np.int8)
    ws = np.full(c, 1e-4, np.float32)
    b = np.zeros(c, np.float32)
    for stride in (1, 2):
        want = quant.dwconv3x3_qs8_ref(x, 0.5, x_zp, wt, ws, b, 0.25, 3, stride)
        for isa in kernels.available_isas():
            with kernels.use_isa(isa):
                assert_bitexact(kernels.dwconv3x3_qs8(x, 0.5, x_zp, wt, ws, b, 0.25, 3, stride), want, isa)


def _patches_reference(x, kh, kw, sh, sw, pads, pad_value, channel_major):
    """NHWC patches by numpy: [N, OH*OW, K], K in (kh, kw, c) or ONNX (c, kh, kw) order."""
    n, h, w, c = x.shape
    top, left, bottom, right = pads
    xp = np.full((n, h + top + bottom, w + left + right, c), pad_value, x.dtype)
    xp[:, top:top + h, left:left + w] = x
    oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    taps = np.stack([xp[:, ky:ky + (oh - 1) * sh + 1:sh, kx:kx + (ow - 1) * sw + 1:sw]
                     for ky in range(kh) for kx in range(kw)], axis=3)          # [n, oh, ow, taps, c]
    if channel_major:
        taps = taps.transpose(0, 1, 2, 4, 3)
    return taps.reshape(n, oh * ow, -1), oh, ow


@pytest.mark.parametrize("dtype", [np.int8, np.float32])
@pytest.mark.parametrize("channel_major", [False, True])
@pytest.mark.parametrize("k,stride,pads", [(3, 1, (1, 1, 1, 1)), (3, 2, (1, 1, 0, 0)), (2, 1, (0, 0, 0, 0)),
                                           (5, 2, (2, 1, 2, 1)), (7, 1, (3, 3, 3, 3)), (7, 2, (6, 5, 6, 5))])
@pytest.mark.parametrize("c", [1, 2, 3, 8])
def test_im2col_both_orders(dtype, channel_major, k, stride, pads, c):
    """The C patches equal numpy's, in kernel order and in ONNX (c, kh, kw) order, padding
    included (int4 convolutions take the ONNX order: their groups run along it). Pixels of up
    to 8 bytes take the tap-by-tap path; kernels as wide as the image and padding wider than
    it put whole rows and columns of taps in the padding."""
    from kernels import _kernels
    rng = np.random.default_rng(c + k)
    x = rng.integers(-128, 128, (2, 7, 6, c)).astype(dtype)
    pad_value = -5 if dtype == np.int8 else 0.0
    want, oh, ow = _patches_reference(x, k, k, stride, stride, pads, pad_value, channel_major)
    got = np.full(want.shape, 77, dtype)
    _kernels.im2col(x, k, k, stride, stride, pads[0], pads[1], oh, ow, float(pad_value), got, channel_major)
    np.testing.assert_array_equal(got, want)


def test_bad_input():
    x = np.zeros((1, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        kernels.dwconv3x3(x, np.zeros((3, 3, 3), np.float32), stride=3)
    with pytest.raises(ValueError, match="w: dimension 2"):
        kernels.dwconv3x3(x, np.zeros((3, 3, 4), np.float32))
    with pytest.raises(TypeError, match="w: expected dtype float32"):
        kernels.dwconv3x3(x, np.zeros((3, 3, 3), np.int8))
    with pytest.raises(TypeError, match="x: expected dtype int8"):
        kernels.dwconv3x3_qs8(x, 1.0, 0, np.zeros((3, 3, 3), np.int8), np.ones(3))
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.dwconv3x3(np.zeros((1, 4, 4, 6), np.float32)[..., ::2], np.zeros((3, 3, 3), np.float32))
    cw = kernels.pack_conv(np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="expected 3 channels"):
        kernels.conv2d(np.zeros((1, 4, 4, 5), np.float32), cw)
    with pytest.raises(TypeError, match="conv2d_qs8"):
        kernels.conv2d(x, kernels.pack_conv(np.zeros((2, 3, 3, 3), np.int8), w_scales=np.ones(2)))
    with pytest.raises(ValueError, match="empty"):
        kernels.conv2d(np.zeros((1, 1, 1, 3), np.float32), cw)
    with pytest.raises(ValueError, match="per-channel scales"):
        kernels.pack_conv(np.zeros((2, 3, 3, 3), np.int8))
