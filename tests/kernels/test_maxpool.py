"""Max pooling (kernels maxpool_qs8 and maxpool_f32, NHWC, no padding): bit-exact against a
numpy definition for every ISA, over kernel sizes, strides, dilations and channel counts around
the vector steps (32 int8, 8 fp32), with NaN, signed zeros and infinities for fp32; bad input
raises; the digits CNN's int8 and fp32 plans use them."""

import numpy as np
import pytest

import kernels
from kernels import _kernels

from .tester import assert_bitexact, isa_params


def _reference(x, kh, kw, sh, sw, dh, dw):
    """np.maximum over the taps in window order (ky, then kx), starting from the first tap: the
    kernels' definition, NaN and signed-zero rules included (maxpool.h)."""
    n, h, w, c = x.shape
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    y = None
    for ky in range(kh):
        for kx in range(kw):
            tap = x[:, ky * dh:ky * dh + (oh - 1) * sh + 1:sh, kx * dw:kx * dw + (ow - 1) * sw + 1:sw, :]
            y = tap.copy() if y is None else np.maximum(y, tap)
    return y


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("geometry", [(2, 2, 2, 2, 1, 1), (3, 3, 1, 1, 1, 1), (3, 2, 2, 1, 1, 2), (1, 1, 1, 1, 1, 1),
                                      (2, 3, 3, 2, 2, 1)])
@pytest.mark.parametrize("c", [1, 31, 32, 33, 70])
def test_matches_reference(isa, geometry, c):
    rng = np.random.default_rng(c)
    x = rng.integers(-128, 128, (2, 9, 8, c), dtype=np.int8)
    x[0, ::2, ::3, ::2] = 127                     # extremes in some windows
    x[1, 1::2] = -128
    want = _reference(x, *geometry)
    y = np.zeros(want.shape, np.int8)
    with kernels.use_isa(isa):
        _kernels.maxpool_qs8(x, y, *geometry)
    assert_bitexact(y, want, isa)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("geometry", [(2, 2, 2, 2, 1, 1), (3, 3, 1, 1, 1, 1), (3, 2, 2, 1, 1, 2), (1, 1, 1, 1, 1, 1),
                                      (2, 3, 3, 2, 2, 1)])
@pytest.mark.parametrize("c", [1, 7, 8, 9, 33])
def test_f32_matches_numpy_bit_for_bit(isa, geometry, c):
    rng = np.random.default_rng(100 + c)
    x = rng.standard_normal((2, 9, 8, c)).astype(np.float32)
    x[0, ::3, ::2, ::2] = np.nan                   # NaN in some windows, at various taps
    x[0, 1::4, 1::3] = np.float32(np.nan) * -1     # a second NaN payload (sign bit set)
    x[1, ::2, :, ::3] = -0.0                        # signed zeros against each other
    x[1, 1::2, :, ::3] = 0.0
    x[1, :, ::4, 1::4] = -np.inf
    x[1, 2::5, ::3, 2::4] = np.inf
    want = _reference(x, *geometry)
    y = np.zeros(want.shape, np.float32)
    with kernels.use_isa(isa):
        _kernels.maxpool_f32(x, y, *geometry)
    assert_bitexact(y, want, f"{isa} fp32")


def test_bad_input_raises():
    x = np.zeros((1, 4, 4, 8), np.int8)
    with pytest.raises(ValueError):
        _kernels.maxpool_qs8(x, np.zeros((1, 3, 2, 8), np.int8), 2, 2, 2, 2, 1, 1)     # out shape
    with pytest.raises(ValueError):
        _kernels.maxpool_qs8(x, np.zeros((1, 1, 1, 8), np.int8), 5, 1, 1, 1, 1, 1)     # window past H
    with pytest.raises(ValueError):
        _kernels.maxpool_qs8(x, np.zeros((1, 2, 2, 8), np.int8), 2, 2, 0, 2, 1, 1)     # stride 0
    with pytest.raises(TypeError):
        _kernels.maxpool_qs8(x.astype(np.float32), np.zeros((1, 2, 2, 8), np.int8), 2, 2, 2, 2, 1, 1)
    with pytest.raises(ValueError):
        _kernels.maxpool_qs8(np.zeros((1, 4, 8, 8), np.int8)[:, :, ::2], np.zeros((1, 2, 2, 8), np.int8),
                             2, 2, 2, 2, 1, 1)                                          # not contiguous
    with pytest.raises(TypeError):
        _kernels.maxpool_qs8(x, np.zeros((1, 2, 2, 8), np.int8), 2, 2, 2, 2)             # argument count
    xf = np.zeros((1, 4, 4, 8), np.float32)
    with pytest.raises(ValueError, match="maxpool_f32: a 5x1 window"):
        _kernels.maxpool_f32(xf, np.zeros((1, 1, 1, 8), np.float32), 5, 1, 1, 1, 1, 1)  # window past H
    with pytest.raises(ValueError):
        _kernels.maxpool_f32(xf, np.zeros((1, 2, 3, 8), np.float32), 2, 2, 2, 2, 1, 1)  # out shape
    with pytest.raises(TypeError):
        _kernels.maxpool_f32(xf, np.zeros((1, 2, 2, 8), np.int8), 2, 2, 2, 2, 1, 1)     # out dtype
    with pytest.raises(TypeError):
        _kernels.maxpool_f32(xf.astype(np.float64), np.zeros((1, 2, 2, 8), np.float32), 2, 2, 2, 2, 1, 1)
    ro = np.zeros((1, 2, 2, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises((ValueError, TypeError, BufferError)):
        _kernels.maxpool_f32(xf, ro, 2, 2, 2, 2, 1, 1)                                  # read-only out


def test_digits_int8_plan_uses_it():
    from benchmarks.engine_models import digits_variants
    from kernels.engine import Model
    from kernels.engine.nhwc import MaxPoolNHWC
    models, inputs = digits_variants()
    model = Model(models["int8"])
    x = {"input": np.ascontiguousarray(inputs[:4])}
    np.testing.assert_array_equal(model.run(x)["logits"], model.run_reference(x)["logits"])
    key, plan = model._take_plan(model._check(x))
    calls = [step.func for step, i in zip(plan.steps, plan.step_ops) if isinstance(plan.ops[i], MaxPoolNHWC)]
    assert calls and all(f is _kernels.maxpool_qs8 for f in calls)


def test_digits_fp32_plan_uses_it():
    from benchmarks.engine_models import digits_variants
    from kernels.engine import Model
    from kernels.engine.nhwc import MaxPoolNHWC
    models, inputs = digits_variants()
    model = Model(models["fp32"])
    x = {"input": np.ascontiguousarray(inputs[:4])}
    np.testing.assert_allclose(model.run(x)["logits"], model.run_reference(x)["logits"], rtol=1e-4, atol=1e-4)
    key, plan = model._take_plan(model._check(x))
    calls = [step.func for step, i in zip(plan.steps, plan.step_ops) if isinstance(plan.ops[i], MaxPoolNHWC)]
    assert calls and all(f is _kernels.maxpool_f32 for f in calls)
