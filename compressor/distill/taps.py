"""Intermediate feature maps for feature distillation, from any CNN.

A model may define `features(x) -> list[Tensor]` and `head(last_map) -> logits` (the digits
CNN does). Others (MobileNetV2) are tapped with forward hooks: the model's children are
walked, descending into nn.Sequential containers, and the output of the *last* module at
each spatial resolution is kept (the end of every stage). Teacher and student built from
the same code at different widths then yield the same number of maps at the same
resolutions, paired in order; only the channel counts differ (adapters bridge those).
"""

from __future__ import annotations

import torch
from torch import nn


def _stages(model: nn.Module) -> list[nn.Module]:
    out = []
    for child in model.children():
        if isinstance(child, nn.Sequential):
            out.extend(_stages(child))
        else:
            out.append(child)
    return out


class FeatureTaps:
    """`taps(x) -> (maps, logits)` in one forward pass."""

    def __init__(self, model: nn.Module, probe: torch.Tensor):
        self.model = model
        self.explicit = hasattr(model, "features") and hasattr(model, "head") and callable(
            getattr(model, "head")) and not isinstance(getattr(model, "head"), nn.Module)
        self.modules: list[nn.Module] = []
        was_training = model.training
        model.eval()            # probing must not move a student's BatchNorm statistics
        try:
            with torch.no_grad():
                if self.explicit:
                    self.channels = [f.shape[1] for f in model.features(probe)]
                    return
                stages = _stages(model)
                shapes = self._shapes(stages, probe)
        finally:
            model.train(was_training)
        last_at: dict[tuple[int, ...], nn.Module] = {}
        for m, shape in zip(stages, shapes):
            if shape is not None and len(shape) == 4:
                last_at[tuple(shape[2:])] = m      # a later module at this resolution wins
        self.modules = [m for m in stages if any(m is v for v in last_at.values())]
        self.channels = [s[1] for m, s in zip(stages, shapes) if any(m is v for v in self.modules)]
        if not self.modules:
            raise ValueError(f"{type(model).__name__}: no 4-D feature maps to distill "
                             "(define features(x) and head(map))")

    def _shapes(self, stages, probe):
        shapes: list = [None] * len(stages)
        hooks = [m.register_forward_hook(
            lambda mod, inp, out, i=i: shapes.__setitem__(i, tuple(out.shape))
            if isinstance(out, torch.Tensor) else None) for i, m in enumerate(stages)]
        try:
            self.model(probe)
        finally:
            for h in hooks:
                h.remove()
        return shapes

    def __call__(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self.explicit:
            maps = self.model.features(x)
            return maps, self.model.head(maps[-1])
        maps: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: maps.append(out))
                 for m in self.modules]
        try:
            logits = self.model(x)
        finally:
            for h in hooks:
                h.remove()
        return maps, logits
