"""int8 residual add (kernels qadd): bit-exact against the engine's Dequantize / Add / Quantize
composition in numpy, for every ISA, extreme values and odd lengths; bad input raises; the
engine fuses the QDQ residual Adds of the int8 MobileNetV2 into it."""

import numpy as np
import pytest

import kernels
from kernels import _kernels, quant

from .tester import assert_bitexact, isa_params

F32 = np.float32


def _reference(a, b, sa, za, sb, zb, so, zo):
    fa = (a.astype(F32) - F32(za)) * F32(sa)
    fb = (b.astype(F32) - F32(zb)) * F32(sb)
    return quant.requantize_ref(fa + fb, so, zo)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 1000])
@pytest.mark.parametrize("params", [(0.05, 3, 0.02, -7, 0.06, 1), (0.5, -128, 0.5, 127, 0.01, -128),
                                    (1e-3, 127, 2.0, -128, 0.7, 127), (0.1, 0, 0.1, 0, 0.2, 0)])
def test_matches_reference(isa, n, params):
    rng = np.random.default_rng(n)
    a = rng.integers(-128, 128, n, dtype=np.int8)
    b = rng.integers(-128, 128, n, dtype=np.int8)
    a[::3], b[::5] = -128, 127
    y = np.empty(n, np.int8)
    with kernels.use_isa(isa):
        _kernels.qadd(a, b, y, *params)
    assert_bitexact(y, _reference(a, b, *params), isa)


@pytest.mark.parametrize("isa", isa_params())
def test_ties_round_to_even(isa):
    """40 elements, so the ties go through the SIMD body (8 or 16 wide) as well as the tail."""
    a = np.tile(np.array([1, 3, 5, -1, -3], np.int8), 8)      # a * 0.5 = 0.5, 1.5, 2.5, ...: exact ties
    y = np.empty(a.size, np.int8)
    with kernels.use_isa(isa):
        _kernels.qadd(a, np.zeros(a.size, np.int8), y, 0.5, 0, 1.0, 0, 1.0, 0)
    assert y.tolist() == [0, 2, 2, 0, -2] * 8


@pytest.mark.parametrize("isa", isa_params())
def test_infinite_input_scale_clamps_and_nan_goes_low(isa):
    """qadd.h: the clamp maps NaN to the low bound. With a_scale = inf, a > 0 gives +inf (127),
    a < 0 gives -inf (-128) and a = 0 gives 0 * inf = NaN (-128, not an arbitrary int cast)."""
    a = np.arange(-128, 128, dtype=np.int8)
    b = np.resize(np.array([-128, 0, 127], np.int8), a.size)
    y = np.empty(a.size, np.int8)
    with kernels.use_isa(isa):
        _kernels.qadd(a, b, y, float("inf"), 0, 0.01, 0, 1.0, 0)
    assert_bitexact(y, np.where(a > 0, 127, -128).astype(np.int8), isa)


def test_bad_input_raises():
    a = np.zeros(8, np.int8)
    with pytest.raises(ValueError):
        _kernels.qadd(a, np.zeros(7, np.int8), np.empty(8, np.int8), 1.0, 0, 1.0, 0, 1.0, 0)
    with pytest.raises(TypeError):
        _kernels.qadd(a.astype(np.uint8), a, np.empty(8, np.int8), 1.0, 0, 1.0, 0, 1.0, 0)
    with pytest.raises(ValueError):
        _kernels.qadd(a, a, np.empty(8, np.int8), 1.0, 0, 1.0, 0, 0.0, 0)
    with pytest.raises(ValueError):
        _kernels.qadd(a, a, np.empty(8, np.int8), 1.0, 200, 1.0, 0, 1.0, 0)


def test_mobilenet_residual_adds_fused():
    from benchmarks.engine_models import mobilenet_variants
    from kernels.engine import Model
    models, inputs = mobilenet_variants(epochs=0)
    model = Model(models["int8"])
    kinds = model.op_kinds()
    assert kinds["qadd"] == 5          # every residual Add (op_kinds drops the @nhwc suffix)
    x = {"input": np.ascontiguousarray(inputs[:3])}
    np.testing.assert_array_equal(model.run(x)["logits"], model.run_reference(x)["logits"])
