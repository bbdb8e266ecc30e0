"""A MobileNetV2-style network (Sandler et al. 2018) sized for small images.

Inverted residual blocks: 1x1 expand -> 3x3 depthwise -> 1x1 linear project, with a
residual add when shapes match; BatchNorm + ReLU6 after every conv except the projection.
Depthwise convolutions are the classic quantization pain point (one 3x3 filter per channel:
per-tensor weight scales fail there, per-channel scales are needed).

The input is digits upsampled to 16x16 (compressor.data.digits.upsampled): three stride-2
stages take it to 2x2 before global average pooling.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2
DEFAULT_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 1, 1))


def _ch(c: float) -> int:
    return max(8, int(round(c / 8)) * 8)      # multiples of 8, as MobileNet does


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = cin * t
        self.use_res = stride == 1 and cin == cout
        self.expand = ConvBNAct(cin, hidden, 1) if t != 1 else None
        self.dw = ConvBNAct(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvBNAct(hidden, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        return x + y if self.use_res else y


class MobileNetV2(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 1,
                 setting=DEFAULT_SETTING, last_channels: int = 256):
        super().__init__()
        cin = _ch(16 * width)
        self.stem = ConvBNAct(in_channels, cin, 3)
        blocks = []
        for t, c, n, s in setting:
            cout = _ch(c * width)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(cin, _ch(last_channels * max(1.0, width)), 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.head.conv.out_channels, num_classes)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))

    def channel_groups(self):
        """The expanded (hidden) channels of each inverted residual: removing one drops a
        row of the expand conv, a depthwise filter, their BatchNorms, and a column of the
        projection. Block outputs are tied by residual adds and left whole."""
        from compressor.prune.structured import ChannelGroup
        groups = []
        for i, b in enumerate(self.blocks):
            if b.expand is None:
                continue
            p = f"blocks.{i}"
            groups.append(ChannelGroup(p, (f"{p}.expand.conv", f"{p}.expand.bn", f"{p}.dw.conv",
                                           f"{p}.dw.bn"), (f"{p}.project.conv",)))
        return groups

    def make_student(self, width: float) -> "MobileNetV2":
        return MobileNetV2(width=self.width * width, num_classes=self.classifier.out_features,
                           in_channels=self.stem.conv.in_channels)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with every ConvBNAct's BatchNorm folded into its conv (eval statistics):
    conv weights w * g / sqrt(var + eps), bias b' = beta - mean * g / sqrt(var + eps).
    Exporting the folded copy gives Conv -> Clip with no BatchNormalization in between, which
    the QDQ rewrite and onnxruntime's int8 fusion need."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, ConvBNAct) and isinstance(m.bn, nn.BatchNorm2d):
            conv, bn = m.conv, m.bn
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            # A channel whose running variance is below eps was constant in training (x == mean:
            # a dead ReLU, or fed by channels pruning removed); its exact output there is beta.
            # Folding g / sqrt(var + eps) would give weights ~300x larger that only amplify the
            # padding border and, in int8, the activation rounding error (75 % block-pruned
            # MobileNetV2: int8 accuracy 20 % with them, see docs/compressor.md), so such a
            # channel folds to weight 0 and bias beta.
            scale = torch.where(bn.running_var < bn.eps, torch.zeros_like(scale), scale)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.padding, conv.dilation, conv.groups, bias=True)
            fused.weight.data = conv.weight.detach() * scale.reshape(-1, 1, 1, 1)
            b0 = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
            fused.bias.data = bn.bias.detach() + (b0 - bn.running_mean) * scale
            m.conv, m.bn = fused, nn.Identity()
    return model
