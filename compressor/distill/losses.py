"""Distillation losses and the training loop that uses them.

Hinton et al. 2015: the student matches the teacher's temperature-softened class
distribution; the KL term is scaled by T^2 so its gradients keep their size as T changes.
Feature distillation (FitNets, Romero et al. 2015): each of the student's intermediate maps,
through a learned 1x1 conv "adapter" to the teacher's channel count, regresses the teacher's
map (MSE). Models expose their maps with `features(x) -> list[Tensor]` and `head(map)`, or
are tapped at the end of each resolution stage by forward hooks (taps.py; MobileNetV2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from compressor.distill.taps import FeatureTaps
from compressor.train import TrainConfig, train


def hinton_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                   temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, y)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True)
    return alpha * t * t * kl + (1.0 - alpha) * F.cross_entropy(student_logits, y)


class Adapters(nn.Module):
    """1x1 convs mapping each student feature map to the teacher's channel count."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int]):
        super().__init__()
        self.maps = nn.ModuleList(nn.Conv2d(s, t, 1, bias=False)
                                  for s, t in zip(student_channels, teacher_channels))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [m(f) for m, f in zip(self.maps, feats)]


@dataclass
class DistillSettings:
    temperature: float = 4.0
    alpha: float = 0.9
    feature_weight: float = 0.0
    epochs: int = 15
    lr: float = 3e-3
    seed: int = 0


class _StudentWithAdapters(nn.Module):
    def __init__(self, student: nn.Module, adapters: Adapters | None):
        super().__init__()
        self.student, self.adapters = student, adapters


def distill(teacher: nn.Module, student: nn.Module, x: np.ndarray, y: np.ndarray,
            s: DistillSettings) -> nn.Module:
    """Train `student` in place against the frozen `teacher`; return it in eval mode."""
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    adapters = t_taps = s_taps = None
    if s.feature_weight > 0:
        probe = torch.from_numpy(np.array(x[:2], np.float32))
        t_taps, s_taps = FeatureTaps(teacher, probe), FeatureTaps(student, probe)
        tc, sc = t_taps.channels, s_taps.channels
        if len(tc) != len(sc):
            raise ValueError(f"teacher has {len(tc)} feature stages, student {len(sc)}: "
                             "feature distillation pairs them one to one")
        adapters = Adapters(sc, tc)
    wrapper = _StudentWithAdapters(student, adapters)

    def loss_fn(w: _StudentWithAdapters, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_feats, t_logits = t_taps(xb) if adapters is not None else (None, teacher(xb))
        if adapters is None:
            return hinton_kd_loss(w.student(xb), t_logits, yb, s.temperature, s.alpha)
        s_feats, logits = s_taps(xb)
        feat = sum(F.mse_loss(a, t) for a, t in zip(w.adapters(s_feats), t_feats)) / len(s_feats)
        return hinton_kd_loss(logits, t_logits, yb, s.temperature, s.alpha) + s.feature_weight * feat

    train(wrapper, x, y, TrainConfig(epochs=s.epochs, lr=s.lr, seed=s.seed), loss_fn=loss_fn)
    for p in teacher.parameters():
        p.requires_grad_(True)
    return student.eval()
