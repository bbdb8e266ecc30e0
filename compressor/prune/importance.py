"""Parameter and channel importance.

magnitude    |w| (unstructured) / L2 norm of a filter (channels). Needs no data.
activation   data-aware, from calibration inputs:
             unstructured: Wanda's |w_ij| * ||x_j||_2 (a weight matters if it is large AND
             its input is large; Sun et al. 2023);
             channels: what the channel adds to the next layer's input, mean |activation|
             (post-ReLU) times the L2 norm of the weights that read it (a channel that
             rarely fires, or that the next layer barely reads, contributes little).
"""

from __future__ import annotations

import enum

import numpy as np
import torch
from torch import nn


class Importance(str, enum.Enum):
    MAGNITUDE = "magnitude"
    """|w| or filter L2 norm; data-free."""
    ACTIVATION = "activation"
    """Data-aware: Wanda |w|*||x|| for weights; mean activation x reader weight norm for channels."""


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@torch.no_grad()
def input_norms(model: nn.Module, layers: dict[str, nn.Module], x: np.ndarray) -> dict[str, torch.Tensor]:
    """||x_j||_2 over calibration samples (and positions) for every input feature j of every
    layer, laid out like the layer's flattened weight columns."""
    sums: dict[str, torch.Tensor] = {}
    hooks = []

    def hook(name, mod):
        def fn(_m, inp, _out):
            a = inp[0]
            if isinstance(mod, nn.Conv2d):
                cols = nn.functional.unfold(a, mod.kernel_size, mod.dilation, mod.padding, mod.stride)
                # (N, C/g*kh*kw*g, L) -> per-column energy; for groups>1 take the group's slice
                energy = (cols ** 2).sum(dim=(0, 2))
                if mod.groups > 1:
                    k = mod.weight.shape[1] * mod.kernel_size[0] * mod.kernel_size[1]
                    energy = energy.reshape(mod.groups, k)     # one row per group/out channel set
            else:
                energy = (a.reshape(-1, a.shape[-1]) ** 2).sum(0)
            sums[name] = sums.get(name, 0) + energy
        return fn

    for n, m in layers.items():
        hooks.append(m.register_forward_hook(hook(n, m)))
    model.eval()
    xt = torch.from_numpy(np.array(x, np.float32))
    for s in range(0, len(xt), 128):
        model(xt[s:s + 128])
    for h in hooks:
        h.remove()
    return {n: v.sqrt() for n, v in sums.items()}


def weight_scores(model: nn.Module, importance: Importance, calib: np.ndarray | None
                  ) -> dict[str, torch.Tensor]:
    """A score per weight, shaped like each layer's weight."""
    layers = prunable_layers(model)
    scores = {n: m.weight.detach().abs().clone() for n, m in layers.items()}
    if Importance(importance) is Importance.ACTIVATION:
        norms = input_norms(model, layers, calib)
        for n, m in layers.items():
            w = scores[n]
            nm = norms[n]
            if isinstance(m, nn.Conv2d) and m.groups > 1:
                # depthwise/grouped: out channel o belongs to group o // (O/groups)
                per_out = nm.repeat_interleave(w.shape[0] // m.groups, dim=0)
                scores[n] = w * per_out.reshape(w.shape)
            else:
                scores[n] = w * nm.reshape((1,) + tuple(w.shape[1:]))
    return scores


@torch.no_grad()
def channel_activation(model: nn.Module, module_name: str, x: np.ndarray) -> torch.Tensor:
    """Mean ReLU'd output per channel of `module_name` on calibration data."""
    mod = dict(model.named_modules())[module_name]
    acc = []

    def fn(_m, _i, out):
        o = torch.relu(out)
        acc.append(o.mean(dim=tuple(d for d in range(o.dim()) if d != 1)))

    h = mod.register_forward_hook(fn)
    model.eval()
    xt = torch.from_numpy(np.array(x, np.float32))
    for s in range(0, len(xt), 128):
        model(xt[s:s + 128])
    h.remove()
    return torch.stack(acc).mean(0)


def reader_column_norms(model: nn.Module, readers: tuple[str, ...], n_channels: int,
                        repeat: int = 1) -> torch.Tensor:
    """Per input channel, the L2 norm of every reader's weights on it (Conv: w[:, c]; Linear
    after a flatten: the `repeat` consecutive columns of the channel)."""
    total = torch.zeros(n_channels)
    for name in readers:
        w = model.get_submodule(name).weight.detach()
        cols = w.transpose(0, 1).reshape(w.shape[1], -1)          # (in, rest)
        if repeat > 1:
            cols = cols.reshape(n_channels, -1)
        total += (cols ** 2).sum(1)
    return total.sqrt()


def channel_contribution(model: nn.Module, group, x: np.ndarray) -> torch.Tensor:
    """Data-aware channel score: mean post-ReLU activation of the group's last output module
    times the norm of the readers' weights on the channel, i.e. the channel's share of the
    next layer's input. The activation alone ranks a channel the projection scales to ~0 as
    important; the weight norm alone ignores BatchNorm's rescaling of the channel."""
    act = channel_activation(model, group.out[-1], x)
    if not group.inp:
        return act
    return act * reader_column_norms(model, group.inp, len(act), group.inp_repeat)
