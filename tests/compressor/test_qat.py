"""Quantization-aware training: fake-quant numerics, export equivalence, bad input."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import kernels

from compressor import CompressionError, EmptyCalibrationError, Fp32Config, LatencyConfig, compress
from compressor.configs import Int8QatConfig
from compressor.evaluate import run
from compressor.quant import reference as ref
from compressor.quant.qat import (WeightFakeQuant, activation_fake_quant,
                                  prepare_qat, quantization_aware_training, set_range, train_qat)
from compressor.quant.qdq import QdqOptions, quantize_static_qdq
from compressor.train import TrainConfig

FAST = LatencyConfig(warmup=1, repeats=3)
TRAIN_ROWS = 256          # a slice of the training split keeps each QAT run to seconds


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_fake_quant_equals_numpy_reference(per_channel):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 3, 3, 3)).astype(np.float32)
    w[3] = 0.0                                           # an all-zero channel keeps scale 1
    w[5] *= 40.0                                         # one wide channel
    got = WeightFakeQuant(per_channel)(torch.from_numpy(w)).numpy()
    q, scale = ref.quantize_symmetric_ref(w, 0 if per_channel else None)
    want = ref.dequantize_affine_ref(q, scale.reshape(-1, 1, 1, 1) if per_channel else scale)
    np.testing.assert_array_equal(got, want)
    if per_channel:
        assert np.all(got[3] == 0) and np.abs(got[5]).max() == np.abs(w[5]).max()


def test_weight_fake_quant_straight_through_gradient():
    w = torch.randn(8, 5, requires_grad=True)
    (WeightFakeQuant(True)(w) * torch.arange(5.0)).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.tile(np.arange(5.0, dtype=np.float32), (8, 1)))


def test_activation_fake_quant_equals_numpy_reference_with_straight_through_gradient():
    lo, hi = -0.7, 3.1
    fq = activation_fake_quant()
    set_range(fq, lo, hi)
    fq.disable_observer()
    x = torch.linspace(-2.0, 5.0, 1001, requires_grad=True)
    y = fq(x)
    scale, zp = ref.affine_params_ref(lo, hi, "uint8")
    want = ref.dequantize_affine_ref(ref.quantize_affine_ref(x.detach().numpy(), scale, zp, "uint8"),
                                     scale, zp)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=0, atol=1e-6)
    y.sum().backward()
    # straight-through: gradient 1 where the rounded code is inside [0, 255], else 0
    code = np.rint(x.detach().numpy() / scale) + zp
    inside = (code >= 0) & (code <= 255)
    np.testing.assert_array_equal(x.grad.numpy(), inside.astype(np.float32))
    assert inside.any() and not inside.all()


def test_activation_observer_starts_from_calibration_and_follows_training(digits, digits_fp32_onnx):
    calib = digits.calibration[0]
    qm = prepare_qat(digits.model, digits_fp32_onnx, calib, momentum=0.5)
    _, report = quantize_static_qdq(digits_fp32_onnx, calib, QdqOptions())
    start = {t: qm.range_of(fq) for t, fq in qm.act_quant.items()}
    for t, (lo, hi) in start.items():               # the ranges static PTQ would use
        np.testing.assert_allclose((lo, hi), report["ranges"][t], rtol=1e-6)
    train_qat(qm, *(a[:64] for a in digits.train), TrainConfig(epochs=1, lr=1e-4, batch_size=32))
    assert any(qm.range_of(fq) != start[t] for t, fq in qm.act_quant.items())
    # the fake-quant model has one activation quantizer per source tensor of the plan and
    # one weight quantizer per Conv/Gemm (digits CNN: input, 3 conv ReLUs, fc1 ReLU, logits)
    assert qm.details == {"activation_fake_quant": 6, "weight_fake_quant": 5, "calibration": "minmax"}


@pytest.fixture(scope="module")
def qat_result(digits, digits_fp32_onnx):
    cfg = Int8QatConfig(epochs=1, lr=1e-4)
    train = tuple(a[:TRAIN_ROWS] for a in digits.train)
    return quantization_aware_training(digits.model, digits_fp32_onnx, digits.calibration[0],
                                       train, cfg)


def test_qat_export_is_the_static_qdq_format_and_checks(qat_result, digits_fp32_onnx, digits):
    q, details, _ = qat_result
    onnx.checker.check_model(q, full_check=True)
    ptq, _ = quantize_static_qdq(digits_fp32_onnx, digits.calibration[0], QdqOptions())
    assert sorted(n.op_type for n in q.graph.node) == sorted(n.op_type for n in ptq.graph.node)
    int8_weights = [t for t in q.graph.initializer
                    if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8_weights) == 5
    assert details["train_samples"] == TRAIN_ROWS and details["epochs"] == 1


def test_qat_onnx_matches_the_pytorch_fake_quant_model(qat_result, digits):
    q, _, qm = qat_result
    x = np.array(digits.heldout[0])
    with torch.no_grad():
        want = qm.module(torch.from_numpy(x)).numpy()
    out_scale = float(qm.act_quant["logits"].scale)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # QDQ as written
    opts.intra_op_num_threads = 1
    unfused = run(ort.InferenceSession(q.SerializeToString(), opts, providers=["CPUExecutionProvider"]), x)
    # same grid: a logit may land one output step away (float summation order, int32 bias)
    diff = np.abs(unfused - want)
    assert diff.max() <= out_scale * 1.001
    assert (diff < 1e-5).mean() >= 0.95
    assert (unfused.argmax(1) == digits.heldout[1]).mean() >= 0.95
    if kernels.int8_dot_saturates():
        return      # onnxruntime's fused int8 kernels saturate on this CPU: nothing to compare
    fused_opts = ort.SessionOptions()
    fused_opts.intra_op_num_threads = 1
    fused = run(ort.InferenceSession(q.SerializeToString(), fused_opts,
                                     providers=["CPUExecutionProvider"]), x)
    assert np.abs(fused - want).max() <= 2.001 * out_scale
    assert (fused.argmax(1) == want.argmax(1)).mean() >= 0.99
    assert (fused.argmax(1) == digits.heldout[1]).mean() >= 0.95


def test_qat_fine_tunes_the_weights(qat_result, digits):
    _, _, qm = qat_result
    trained = qm.fp32_model().state_dict()
    before = digits.model.state_dict()
    assert not torch.equal(trained["fc1.weight"], before["fc1.weight"])
    assert set(trained) == set(before)                   # plain structure, no fake-quant left


def test_compress_builds_a_qat_variant_with_metadata(digits):
    r = compress(digits.model, [Fp32Config(), Int8QatConfig(epochs=1)],
                 calib_data=digits.calibration[0], eval_data=digits.heldout,
                 train_data=tuple(a[:TRAIN_ROWS] for a in digits.train), latency=FAST)
    fp32, qat = r.manifest.variants
    assert qat.method == "qat-int8" and qat.weight_bits == 8 and qat.activation_bits == 8
    assert qat.parent == "fp32" and qat.size_bytes < fp32.size_bytes / 3
    assert qat.quality >= fp32.quality - 0.02
    d = qat.details
    assert d["config"]["_type"] == "Int8QatConfig" and d["train_samples"] == TRAIN_ROWS
    assert d["activation_fake_quant"] == 6 and d["calibration_samples"] == len(digits.calibration[0])


@pytest.mark.parametrize("train", [None, (np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64))])
def test_qat_without_training_data_is_a_clear_error(digits, train):
    with pytest.raises(CompressionError, match="train_data"):
        compress(digits.model, [Int8QatConfig(epochs=1)], calib_data=digits.calibration[0],
                 eval_data=digits.heldout, train_data=train, latency=FAST)


def test_qat_mismatched_labels_and_empty_calibration(digits, digits_fp32_onnx):
    x, y = digits.train
    with pytest.raises(CompressionError, match="as many labels"):
        quantization_aware_training(digits.model, digits_fp32_onnx, digits.calibration[0],
                                    (x[:10], y[:9]), Int8QatConfig(epochs=1))
    with pytest.raises(EmptyCalibrationError):
        quantization_aware_training(digits.model, digits_fp32_onnx, np.zeros((0, 1, 8, 8), np.float32),
                                    (x[:10], y[:10]), Int8QatConfig(epochs=1))


def test_qat_config_rejects_nonsense():
    with pytest.raises(ValueError, match="epochs"):
        Int8QatConfig(epochs=0)
    with pytest.raises(ValueError, match="observer_momentum"):
        Int8QatConfig(observer_momentum=1.5)
    assert Int8QatConfig(per_channel=False).id == "int8-qat-pt"
