"""Reference quantizers against values computed by hand."""

import numpy as np
import pytest

from compressor.quant import reference as ref


def test_symmetric_per_channel_int8_hand_values():
    w = np.array([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [-2.54, 0.01, 1.27]], np.float32)
    q, scale = ref.quantize_symmetric_ref(w, axis=0, bits=8)
    # row 0: scale 1/127; -0.5*127 = -63.5 -> -64 (half to even); 0.25*127 = 31.75 -> 32
    # row 1: all zero -> scale 1, codes 0; row 2: scale 2.54/127 = 0.02; 0.01/0.02 = 0.5 -> 0
    np.testing.assert_allclose(scale, [1 / 127, 1.0, 0.02], rtol=1e-6)
    np.testing.assert_array_equal(q, [[127, -64, 32], [0, 0, 0], [-127, 0, 64]])
    assert q.dtype == np.int8


def test_symmetric_per_tensor_and_16bit():
    q, scale = ref.quantize_symmetric_ref(np.array([3.0, -1.5]), axis=None, bits=8)
    assert float(scale) == pytest.approx(3 / 127)
    np.testing.assert_array_equal(q, [127, -64])       # -63.5 -> -64
    q16, s16 = ref.quantize_symmetric_ref(np.array([1.0, 0.5]), axis=None, bits=16)
    assert q16.dtype == np.int16 and float(s16) == pytest.approx(1 / 32767)
    np.testing.assert_array_equal(q16, [32767, 16384])  # 16383.5 -> 16384 (even)


def test_affine_activation_params_hand_values():
    # [0, 2.55] in uint8: scale 0.01, zero point 0 (ReLU output: zp at the type minimum)
    s, zp = ref.affine_params_ref(0.0, 2.55, "uint8")
    assert float(s) == pytest.approx(0.01) and zp == 0
    # [-1, 3] in uint8: scale 4/255, zp = rint(0 + 1/(4/255)) = rint(63.75) = 64
    s, zp = ref.affine_params_ref(-1.0, 3.0, "uint8")
    assert float(s) == pytest.approx(4 / 255) and zp == 64
    # range not containing 0 is widened to include it: [0.5, 1] -> [0, 1]
    s, zp = ref.affine_params_ref(0.5, 1.0, "int8")
    assert float(s) == pytest.approx(1 / 255) and zp == -128
    s, zp = ref.affine_params_ref(-0.3, 1.27, "int8", symmetric=True)
    assert float(s) == pytest.approx(0.01) and zp == 0
    with pytest.raises(ValueError):
        ref.affine_params_ref(0, 1, "uint8", symmetric=True)


def test_quantize_affine_saturates_and_rounds_half_even():
    q = ref.quantize_affine_ref(np.array([-1.0, 0.0, 0.005, 0.015, 3.0]), 0.01, 0, "uint8")
    np.testing.assert_array_equal(q, [0, 0, 0, 2, 255])   # 0.5 -> 0, 1.5 -> 2


def test_bias_int32():
    q, scale = ref.quantize_bias_ref(np.array([0.1, -0.2]), 0.01, np.array([0.5, 0.25]))
    np.testing.assert_allclose(scale, [0.005, 0.0025])
    np.testing.assert_array_equal(q, [20, -80])
    assert q.dtype == np.int32


def test_blockwise_int4_hand_values_and_partial_block():
    w = np.array([[0.7, -0.35, 0.1, 0.0, 1.4]], np.float32)
    b = ref.quantize_blockwise_ref(w, axis=1, block_size=4, bits=4)
    # block 0: absmax 0.7 -> scale 0.1; codes 7, -3.5->-4, 1, 0; block 1 (partial): 1.4/7 = 0.2 -> 7
    np.testing.assert_allclose(b.scale, [[0.1, 0.2]], rtol=1e-6)
    np.testing.assert_array_equal(b.q, [[7, -4, 1, 0, 7]])
    assert b.zero_point is None and b.dtype == "int4"
    np.testing.assert_allclose(ref.dequantize_blockwise_ref(b), [[0.7, -0.4, 0.1, 0.0, 1.4]], rtol=1e-6)


def test_blockwise_asymmetric_uint4():
    w = np.array([[0.0, 1.5, 0.3, 0.6]], np.float32)
    b = ref.quantize_blockwise_ref(w, axis=1, block_size=4, bits=4, symmetric=False)
    # range [0, 1.5] over 15 codes: scale 0.1, zero point 0
    np.testing.assert_allclose(b.scale, [[0.1]], rtol=1e-6)
    np.testing.assert_array_equal(b.zero_point, [[0]])
    np.testing.assert_array_equal(b.q, [[0, 15, 3, 6]])


def test_pack_nibbles_low_first_and_crumbs():
    assert ref.pack_nibbles_ref(np.array([1, -1, 7])) == bytes([0xF1, 0x07])
    assert ref.pack_crumbs_ref(np.array([1, -1, 0, -2, 1])) == bytes([0b10001101, 0x01])
