"""Calibration methods, dynamic quantization, 16-bit and per-tensor/asymmetric options."""

import numpy as np
import onnx
import pytest

from compressor import (Fp32Config, Int4WeightOnlyConfig, Int8DynamicConfig, Int8StaticConfig,
                        UnsupportedLayerError, compress)
from compressor.evaluate import LatencyConfig, accuracy_fn, session
from compressor.export import check_model
from compressor.quant.calibration import RANGE_FNS, CalibrationMethod
from compressor.quant.dynamic import quantize_dynamic_int8

FAST = LatencyConfig(warmup=1, repeats=3)


def _outlier_data():
    rng = np.random.default_rng(0)
    v = np.abs(rng.normal(size=200_000)).astype(np.float32)   # ReLU-like, half-normal
    v[:100_000:2] = 0.0                                        # a spike of exact zeros
    v[7] = 80.0                                                 # one outlier
    return v


def test_minmax_keeps_outlier_others_clip_it():
    v = _outlier_data()
    lo, hi = RANGE_FNS[CalibrationMethod.MINMAX](v)
    assert (lo, hi) == (0.0, 80.0)
    for m in (CalibrationMethod.PERCENTILE, CalibrationMethod.ENTROPY):
        lo, hi = RANGE_FNS[m](v, percentile=99.99, bits=8)
        assert lo == 0.0 and 3.0 < hi < 20.0, (m, hi)     # half-normal 99.99% ~ 3.9
    # MSE trades the outlier's clipping error against everyone's rounding error: it clips
    # less, but its threshold must give no more squared error than min-max's
    _, t = RANGE_FNS[CalibrationMethod.MSE](v, bits=8)

    def sq_err(t):
        s = t / 255
        return float(np.sum((np.clip(np.rint(v / s), 0, 255) * s - v) ** 2))
    assert t < 80.0 and sq_err(t) <= sq_err(80.0)


def test_percentile_matches_numpy():
    v = np.linspace(-1, 1, 10001, dtype=np.float32)
    lo, hi = RANGE_FNS[CalibrationMethod.PERCENTILE](v, percentile=99.0)
    assert lo == pytest.approx(-0.98, abs=1e-3) and hi == pytest.approx(0.98, abs=1e-3)


def test_two_sided_ranges_stay_two_sided():
    v = np.random.default_rng(1).normal(size=50_000).astype(np.float32)
    for m in CalibrationMethod:
        lo, hi = RANGE_FNS[m](v, percentile=99.99, bits=8)
        assert lo < -2.0 and hi > 2.0, (m, lo, hi)


def test_quantization_options_all_hold_accuracy(digits):
    configs = [Fp32Config()] + [
        Int8StaticConfig(id=f"int8-{m.value}", calibration=m) for m in CalibrationMethod] + [
        Int8StaticConfig(id="int8-signed-sym", activation_type="int8", symmetric_activations=True),
        Int8StaticConfig(id="int8-per-tensor", per_channel=False),
        Int8StaticConfig(id="w16a16", weight_bits=16, activation_type="int16"),
        Int8DynamicConfig(), Int4WeightOnlyConfig(id="int4-asym", symmetric=False)]
    r = compress(digits.model, configs, calib_data=digits.calibration[0],
                 eval_data=digits.heldout, latency=FAST)
    q = {v.id: v for v in r.manifest.variants}
    base = q["fp32"].quality
    for vid, v in q.items():
        allowed = 0.02 if v.weight_bits == 4 else 0.01   # 4-bit weights: 2 points on 360 images
        assert v.quality >= base - allowed, (vid, v.quality, base)
    assert (q["w16a16"].weight_bits, q["w16a16"].activation_bits) == (16, 16)
    assert q["w16a16"].quality >= base - 0.003                # 16 bits: near lossless
    assert q["int8-dynamic"].method == "ptq-dynamic"
    assert q["int8-dynamic"].weight_bits == 32                # convs stay fp32 by default
    w16 = onnx.load_from_string(r.files["w16a16.onnx"])
    assert any(t.data_type == onnx.TensorProto.INT16 for t in w16.graph.initializer)


def test_dynamic_rewrite_numerics_and_conv_opt_in(digits, digits_fp32_onnx):
    ref = session(digits_fp32_onnx).run(None, {"input": digits.heldout[0]})[0]
    for ops in (("Gemm", "MatMul"), ("Gemm", "MatMul", "Conv")):
        q, report = quantize_dynamic_int8(digits_fp32_onnx, ops=ops)
        check_model(q)
        out = session(q).run(None, {"input": digits.heldout[0]})[0]
        # logits stay close: relative error of a few percent of the logit range
        assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
        assert accuracy_fn(*digits.heldout)(session(q)) >= 0.97
        assert len(report["layers"]) == (2 if "Conv" not in ops else 5)
    types = {n.op_type for n in q.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"} <= types


def test_dynamic_with_nothing_to_quantize_is_an_error(digits):
    import torch
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.ReLU())
    with pytest.raises(UnsupportedLayerError, match="no Gemm/MatMul"):
        compress(model, [Int8DynamicConfig()], eval_fn=lambda s: 0.0,
                 example_input=digits.heldout[0][:2], latency=FAST)
