"""int8 max pooling (kernels maxpool_qs8, NHWC, no padding): bit-exact against a numpy
definition for every ISA, over kernel sizes, strides, dilations and channel counts around
the 32-wide step; bad input raises; the digits CNN's int8 plan uses it."""

import numpy as np
import pytest

import kernels
from kernels import _kernels

from .tester import assert_bitexact, isa_params


def _reference(x, kh, kw, sh, sw, dh, dw):
    n, h, w, c = x.shape
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    y = np.full((n, oh, ow, c), -128, np.int8)
    for ky in range(kh):
        for kx in range(kw):
            tap = x[:, ky * dh:ky * dh + (oh - 1) * sh + 1:sh, kx * dw:kx * dw + (ow - 1) * sw + 1:sw, :]
            y = np.maximum(y, tap)
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
