"""A small CNN for the 8x8 digits: three 3x3 convolutions, two max-pools, two linear layers.

`width` scales every channel count, so the same code defines the teacher (width=1.0) and the
narrower students used by distillation.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 10, hidden: int | None = None):
        super().__init__()
        c1, c2, c3 = (max(4, int(round(c * width))) for c in (32, 64, 128))
        hidden = hidden if hidden is not None else max(16, int(round(128 * width)))
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.pool1 = nn.MaxPool2d(2)                     # 8x8 -> 4x4
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.pool2 = nn.MaxPool2d(2)                     # 4x4 -> 2x2
        self.fc1 = nn.Linear(c3 * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate activations (used by feature distillation)."""
        a = torch.relu(self.conv1(x))
        b = self.pool1(torch.relu(self.conv2(a)))
        c = self.pool2(torch.relu(self.conv3(b)))
        return [a, b, c]

    def channel_groups(self):
        """Channels that structured pruning may remove together (see prune/structured.py)."""
        from compressor.prune.structured import ChannelGroup
        return [ChannelGroup("conv1", ("conv1",), ("conv2",)),
                ChannelGroup("conv2", ("conv2",), ("conv3",)),
                ChannelGroup("conv3", ("conv3",), ("fc1",), inp_repeat=4),   # 2x2 after pool
                ChannelGroup("fc1", ("fc1",), ("fc2",))]

    def make_student(self, width: float) -> "DigitsCNN":
        """A narrower network of the same shape (distillation students)."""
        return DigitsCNN(width=width, num_classes=self.fc2.out_features)

    def head(self, c: torch.Tensor) -> torch.Tensor:
        """Logits from the last feature map (features(x)[-1])."""
        return self.fc2(torch.relu(self.fc1(torch.flatten(c, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[-1])
