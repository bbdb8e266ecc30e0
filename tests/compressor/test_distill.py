"""Distillation: the KD loss by hand; a distilled student beats the same student alone."""

import math

import pytest
import torch

from compressor import CompressionError, DistillConfig, Fp32Config, compress
from compressor.distill.losses import DistillSettings, distill, hinton_kd_loss
from compressor.evaluate import LatencyConfig
from compressor.models.digits_cnn import DigitsCNN
from compressor.train import TrainConfig, torch_accuracy, train

FAST = LatencyConfig(warmup=1, repeats=3)


def test_kd_loss_hand_values():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])           # teacher p = (0.75, 0.25) at T = 1
    y = torch.tensor([0])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    ce = math.log(2.0)
    assert hinton_kd_loss(s, t, y, 1.0, 1.0).item() == pytest.approx(kl, rel=1e-5)
    assert hinton_kd_loss(s, t, y, 1.0, 0.0).item() == pytest.approx(ce, rel=1e-5)
    # T^2 scaling: at T = 2 the teacher is (sqrt3, 1)/(sqrt3 + 1)
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert hinton_kd_loss(s, t, y, 2.0, 0.5).item() == pytest.approx(0.5 * 4 * kl2 + 0.5 * ce, rel=1e-5)


def test_distilled_student_beats_student_trained_alone(digits):
    """Same narrow student, same inits, data order and epochs; only the teacher differs.

    digits is easy: a width-0.25 student alone reaches the teacher's 98.6% with a tuned
    learning rate, so the student here is width 0.125 (4/8/16 channels, 1/60 of the teacher's
    parameters) where capacity binds. Per seed the gap is noisy on 360 held-out images
    (measured: +1.7 and -0.8 points), so the claim is on the mean over two seeds.
    """
    width, epochs, lr = 0.125, 20, 1e-2
    alone, kd = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        a = DigitsCNN(width)
        train(a, *digits.train, TrainConfig(epochs=epochs, seed=seed, lr=lr))
        alone.append(torch_accuracy(a, *digits.heldout))
        torch.manual_seed(seed)
        s = DigitsCNN(width)
        distill(digits.model, s, *digits.train,
                DistillSettings(temperature=4.0, alpha=0.5, epochs=epochs, lr=lr, seed=seed))
        kd.append(torch_accuracy(s, *digits.heldout))
    teacher_params = sum(p.numel() for p in digits.model.parameters())
    assert sum(p.numel() for p in s.parameters()) < teacher_params / 20
    assert sum(kd) > sum(alone), (kd, alone)


def test_feature_distillation_trains_and_student_variant_exports(digits):
    r = compress(digits.model, [Fp32Config(), DistillConfig(width=0.5, feature_weight=0.1, epochs=6,
                                                            int8=True)],
                 calib_data=digits.calibration[0], eval_data=digits.heldout,
                 train_data=digits.train, latency=FAST)
    fp32, st = r.manifest.variants
    assert st.method == "kd-student+ptq-static" and st.parent == "fp32"
    assert st.details["params"] < st.details["teacher_params"] / 3
    assert st.size_bytes < fp32.size_bytes / 10
    assert st.quality > 0.9


def test_distillation_bad_input(digits):
    with pytest.raises(CompressionError, match="train_data"):
        compress(digits.model, [DistillConfig()], eval_data=digits.heldout, latency=FAST)
    with pytest.raises(ValueError, match="width"):
        DistillConfig(width=1.5)


def test_feature_taps_pair_mobilenet_stages_without_touching_batchnorm():
    """MobileNetV2 has no features()/head(): stage ends are tapped by hooks, one per
    resolution, and teacher/student maps pair up by resolution."""
    import numpy as np
    from torch import nn

    from compressor.distill.taps import FeatureTaps
    from compressor.models.mobilenet_v2 import MobileNetV2
    torch.manual_seed(0)
    teacher = MobileNetV2()
    student = teacher.make_student(0.5)
    x = torch.rand(2, 1, 16, 16)
    before = student.stem.bn.running_mean.clone()
    tt, st = FeatureTaps(teacher, x), FeatureTaps(student, x)
    assert torch.equal(student.stem.bn.running_mean, before) and student.training
    (tm, tl), (sm, sl) = tt(x), st(x)
    assert [m.shape[2:] for m in tm] == [m.shape[2:] for m in sm] == [
        (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert tt.channels == [m.shape[1] for m in tm] and st.channels == [m.shape[1] for m in sm]
    assert st.channels[0] < tt.channels[0]
    with torch.no_grad():
        torch.testing.assert_close(tl, teacher(x))          # taps do not change the output
    # one short feature-distillation run end to end on the hooked model
    rng = np.random.default_rng(0)
    xs = rng.random((64, 1, 16, 16), dtype=np.float32)
    ys = rng.integers(0, 10, 64)
    out = distill(teacher.eval(), student, xs, ys, DistillSettings(epochs=1, feature_weight=0.1))
    assert not out.training and out(x).shape == (2, 10)
    with pytest.raises(ValueError, match="no 4-D feature maps"):
        FeatureTaps(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.rand(2, 1, 2, 2))
