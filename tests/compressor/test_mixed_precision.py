"""Mixed precision from a measured per-layer sensitivity analysis."""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from compressor import (BudgetError, EmptyCalibrationError, Fp32Config, LatencyConfig, compress)
from compressor.configs import MixedPrecisionConfig, config_from_dict, config_to_dict
from compressor.evaluate import accuracy_fn, run
from compressor.export import export_onnx
from compressor.quant.mixed import MixedBuilder, layer_sensitivity

FAST = LatencyConfig(warmup=1, repeats=3)
FRAGILE = "fc2.weight"


@pytest.fixture(scope="module")
def fragile(digits):
    """The digits CNN with fc2 made fragile under int8 and the function unchanged: hidden
    unit 5 of fc1 never fires (zero weights, bias -1), and every row of fc2 gets a weight of
    1000 on that unit. fc2's per-channel scales become 1000/127, so its real weights (~0.1)
    round to 0 in int8, while the fp32 output is what it was without unit 5."""
    m = copy.deepcopy(digits.model)
    with torch.no_grad():
        m.fc1.weight[5] = 0.0
        m.fc1.bias[5] = -1.0
        m.fc2.weight[:, 5] = 1000.0
    return m.eval()


@pytest.fixture(scope="module")
def fragile_onnx(fragile, digits):
    return export_onnx(fragile, digits.calibration[0][:2])


def test_sensitivity_ranks_the_fragile_layer_first(fragile_onnx, digits):
    b = MixedBuilder(fragile_onnx, digits.calibration[0], accuracy_fn(*digits.heldout))
    ranked = layer_sensitivity(b)
    assert [r.weight for r in ranked][0] == FRAGILE
    assert ranked[0].drop > 0.5                          # int8 fc2 alone: near chance
    assert all(abs(r.drop) < 0.02 for r in ranked[1:])   # the others barely move
    assert ranked[0].output_error > 100 * max(r.output_error for r in ranked[1:])
    assert sorted(r.weight for r in ranked) == sorted(b.weights) and len(ranked) == 5


def _precisions(variant) -> dict[str, str]:
    return {l["weight"]: l["precision"] for l in variant.details["layers"]}


def test_mixed_precision_keeps_the_fragile_layer_and_meets_the_budget(fragile, digits):
    max_drop = 0.01
    r = compress(fragile, [Fp32Config(), MixedPrecisionConfig(max_drop=max_drop)],
                 calib_data=digits.calibration[0], eval_data=digits.heldout, latency=FAST)
    fp32, mixed = r.manifest.variants
    assert mixed.method == "mixed-precision"
    assert mixed.quality >= fp32.quality - max_drop
    assert _precisions(mixed) == {"conv1.weight": "int8", "conv2.weight": "int8",
                                  "conv3.weight": "int8", "fc1.weight": "int8", FRAGILE: "fp32"}
    d = mixed.details
    assert d["all_int8_quality"] < fp32.quality - 0.5           # why it was needed
    assert d["selected_quality"] == pytest.approx(mixed.quality, abs=1e-6)
    assert [s.get("promoted") for s in d["steps"]] == [None, FRAGILE]   # nothing to give back
    frag = next(l for l in d["layers"] if l["weight"] == FRAGILE)
    assert frag["rank"] == 0 and frag["drop"] > 0.5
    by_bits = {g.weight_bits: g.layers for g in mixed.layer_groups}
    assert set(by_bits) == {8, 32} and by_bits[32] == "node_linear_1"
    # the file: checks, loads in onnxruntime, and holds int8 weights for the other four layers
    proto = onnx.load_from_string(r.files[mixed.file])
    onnx.checker.check_model(proto, full_check=True)
    sess = ort.InferenceSession(r.files[mixed.file], providers=["CPUExecutionProvider"])
    acc = float((run(sess, digits.heldout[0]).argmax(1) == digits.heldout[1]).mean())
    assert acc == pytest.approx(mixed.quality, abs=1e-6)
    int8 = [t.name for t in proto.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8) == 4 and FRAGILE in {t.name for t in proto.graph.initializer}


def test_int16_is_tried_before_fp32(fragile, digits):
    r = compress(fragile, [MixedPrecisionConfig(max_drop=0.01, candidates=("int8", "int16", "fp32"))],
                 calib_data=digits.calibration[0], eval_data=digits.heldout, latency=FAST)
    (mixed,) = r.manifest.variants
    steps = mixed.details["steps"]
    assert steps[1] == {"promoted": FRAGILE, "to": "int16", "quality": steps[1]["quality"]}
    assert mixed.quality >= mixed.details["fp32_quality"] - 0.01
    got = _precisions(mixed)
    assert got[FRAGILE] in ("int16", "fp32")
    # promotions that did not help were given back: the robust layers end at int8
    assert all(p == "int8" for w, p in got.items() if w != FRAGILE), got
    onnx.checker.check_model(onnx.load_from_string(r.files[mixed.file]), full_check=True)


def test_a_budget_nothing_can_meet_is_a_clear_error(digits):
    # quality = -(mean |logit error| vs fp32): any quantized layer costs something, so a zero
    # budget is met only by leaving everything fp32, which is refused
    fp32 = export_onnx(digits.model, digits.calibration[0][:2])
    ref_logits = run(ort.InferenceSession(fp32.SerializeToString(),
                                          providers=["CPUExecutionProvider"]), digits.heldout[0])

    def closeness(sess):
        return -float(np.abs(run(sess, digits.heldout[0]) - ref_logits).mean())

    with pytest.raises(BudgetError, match="within 0 while quantizing any layer"):
        compress(digits.model, [MixedPrecisionConfig(max_drop=0.0)],
                 calib_data=digits.calibration[0], eval_fn=closeness,
                 example_input=digits.calibration[0][:2], latency=FAST)


def test_mixed_precision_needs_calibration_data(digits):
    with pytest.raises(EmptyCalibrationError):
        compress(digits.model, [MixedPrecisionConfig()], calib_data=np.zeros((0, 1, 8, 8), np.float32),
                 eval_data=digits.heldout, example_input=digits.calibration[0][:2], latency=FAST)


def test_config_checks_and_round_trips():
    for bad in [dict(max_drop=-0.1), dict(candidates=("fp32", "int8")), dict(candidates=("int8",)),
                dict(candidates=("int8", "fp16")), dict(candidates=("int8", "fp32", "int16"))]:
        with pytest.raises(ValueError):
            MixedPrecisionConfig(**bad)
    c = MixedPrecisionConfig(max_drop=0.02, candidates=("int8", "int16"))
    assert config_from_dict(config_to_dict(c)) == c and c.id == "mixed-20"
