"""float32 <-> int8 conversion (kernels quantize / dequantize): bit-exact against the numpy
definitions (quant.requantize_ref, (q - zp) * scale) for every ISA, odd lengths, ties, the
extremes, inf and NaN; bad input raises; the engine's Quantize / Dequantize ops use them."""

import numpy as np
import pytest

import kernels
from kernels import _kernels, quant

from .tester import assert_bitexact, isa_params

F32 = np.float32
PARAMS = [(0.05, 3), (0.5, -128), (1e-3, 127), (0.1, 0), (3.7e-2, -61)]


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 1001])
@pytest.mark.parametrize("scale, zp", PARAMS)
def test_quantize_matches_reference(isa, n, scale, zp):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 200 * scale).astype(F32)    # many values past either bound
    x[::7] = F32(scale) * 1e6
    x[1::7] = -F32(scale) * 1e6
    q = np.empty(n, np.int8)
    with kernels.use_isa(isa):
        _kernels.quantize(x, q, scale, zp)
    assert_bitexact(q, quant.requantize_ref(x, scale, zp), isa)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 1001])
@pytest.mark.parametrize("scale, zp", PARAMS)
def test_dequantize_matches_reference(isa, n, scale, zp):
    q = np.resize(np.arange(-128, 128, dtype=np.int8), n)
    y = np.full(n, np.nan, F32)
    with kernels.use_isa(isa):
        _kernels.dequantize(q, y, scale, zp)
    assert_bitexact(y, (q.astype(F32) - F32(zp)) * F32(scale), isa)


@pytest.mark.parametrize("isa", isa_params())
def test_quantize_ties_round_to_even_and_nan_goes_low(isa):
    """40 elements, so the ties go through the SIMD body as well as the tail; NaN takes the low
    bound (qconvert.h), where numpy's cast would give an arbitrary integer."""
    x = np.tile(np.array([0.5, 1.5, 2.5, -0.5, -1.5], F32), 8)
    q = np.empty(x.size, np.int8)
    with kernels.use_isa(isa):
        _kernels.quantize(x, q, 1.0, 0)
    assert q.tolist() == [0, 2, 2, 0, -2] * 8
    x = np.resize(np.array([np.nan, np.inf, -np.inf, 0.0], F32), 40)
    with kernels.use_isa(isa):
        _kernels.quantize(x, q, 1.0, 5)
    assert q.tolist() == [-128, 127, -128, 5] * 10


def test_bad_input_raises():
    x, q = np.zeros(8, F32), np.zeros(8, np.int8)
    with pytest.raises(ValueError):
        _kernels.quantize(x, np.empty(7, np.int8), 1.0, 0)
    with pytest.raises(TypeError):
        _kernels.quantize(x.astype(np.float64), q, 1.0, 0)
    with pytest.raises(TypeError):
        _kernels.dequantize(q.astype(np.uint8), x, 1.0, 0)
    with pytest.raises(ValueError):
        _kernels.quantize(x, q, 0.0, 0)
    with pytest.raises(ValueError):
        _kernels.dequantize(q, x, float("nan"), 0)
    with pytest.raises(ValueError):
        _kernels.quantize(x, q, 1.0, 128)
    with pytest.raises(ValueError):
        _kernels.quantize(np.zeros(16, F32)[::2], q, 1.0, 0)     # not contiguous
    with pytest.raises(TypeError):
        _kernels.quantize(x, q, 1.0)


def test_engine_quantize_and_dequantize_ops_use_them():
    """The MobileNetV2 int8 plan's Quantize / Dequantize ops run one kernel call each, and the
    plan still matches the numpy references of every op bit for bit."""
    from benchmarks.engine_models import mobilenet_variants
    from kernels.engine import Model
    from kernels.engine.irops import Dequantize, Quantize
    models, inputs = mobilenet_variants(epochs=0)
    model = Model(models["int8"])
    x = {"input": np.ascontiguousarray(inputs[:3])}
    np.testing.assert_array_equal(model.run(x)["logits"], model.run_reference(x)["logits"])
    key, plan = model._take_plan(model._check(x))
    calls = [step.func for step, i in zip(plan.steps, plan.step_ops) if isinstance(plan.ops[i], (Quantize, Dequantize))]
    assert calls and all(f in (_kernels.quantize, _kernels.dequantize) for f in calls)
