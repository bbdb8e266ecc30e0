"""Structured channel (filter) pruning that really removes channels.

A model describes which channels must go together with `channel_groups()`: for each group,
the modules whose OUTPUT channels are that set (a Conv and its BatchNorm, a depthwise conv
that maps channel c to channel c) and the modules that READ them as input channels (the next
conv, or a Linear after a flatten, where each channel feeds `inp_repeat` consecutive
features). Pruning slices those weights into new, smaller modules: the exported ONNX is
smaller and does fewer MACs; nothing is left as zeros.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ChannelGroup:
    name: str
    out: tuple[str, ...]          # modules whose output channels are this set (first: scores)
    inp: tuple[str, ...]          # modules that read this set as input channels
    inp_repeat: int = 1           # features per channel in the readers (flatten of C x H x W)


def _slice_out(mod: nn.Module, keep: torch.Tensor) -> nn.Module:
    if isinstance(mod, nn.Conv2d):
        depthwise = mod.groups == mod.in_channels == mod.out_channels and mod.groups > 1
        new = nn.Conv2d(len(keep) if depthwise else mod.in_channels, len(keep), mod.kernel_size,
                        mod.stride, mod.padding, mod.dilation,
                        groups=len(keep) if depthwise else mod.groups,
                        bias=mod.bias is not None, padding_mode=mod.padding_mode)
        new.weight.data = mod.weight.data[keep].clone()
    elif isinstance(mod, nn.Linear):
        new = nn.Linear(mod.in_features, len(keep), bias=mod.bias is not None)
        new.weight.data = mod.weight.data[keep].clone()
    elif isinstance(mod, nn.BatchNorm2d):
        new = nn.BatchNorm2d(len(keep), mod.eps, mod.momentum, mod.affine, mod.track_running_stats)
        new.running_mean.data = mod.running_mean.data[keep].clone()
        new.running_var.data = mod.running_var.data[keep].clone()
        if mod.affine:
            new.weight.data = mod.weight.data[keep].clone()
            new.bias.data = mod.bias.data[keep].clone()
        return new
    else:
        raise TypeError(f"cannot remove output channels of {type(mod).__name__}")
    if mod.bias is not None:
        new.bias.data = mod.bias.data[keep].clone()
    return new


def _slice_in(mod: nn.Module, keep: torch.Tensor, repeat: int) -> nn.Module:
    if repeat > 1:
        keep = (keep[:, None] * repeat + torch.arange(repeat)[None, :]).reshape(-1)
    if isinstance(mod, nn.Conv2d):
        if mod.groups != 1:
            raise TypeError("input channels of a grouped conv are pruned with its output (list it in `out`)")
        new = nn.Conv2d(len(keep), mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                        mod.dilation, bias=mod.bias is not None, padding_mode=mod.padding_mode)
        new.weight.data = mod.weight.data[:, keep].clone()
    elif isinstance(mod, nn.Linear):
        new = nn.Linear(len(keep), mod.out_features, bias=mod.bias is not None)
        new.weight.data = mod.weight.data[:, keep].clone()
    else:
        raise TypeError(f"cannot remove input channels of {type(mod).__name__}")
    if mod.bias is not None:
        new.bias.data = mod.bias.data.clone()
    return new


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def channel_scores_magnitude(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    w = model.get_submodule(group.out[0]).weight.detach()
    return w.reshape(w.shape[0], -1).norm(dim=1)


def prune_channels(model: nn.Module, groups: list[ChannelGroup], sparsity: float,
                   scores: dict[str, torch.Tensor]) -> tuple[nn.Module, dict]:
    """Return a smaller copy keeping the (1 - sparsity) highest-scoring channels per group."""
    new = copy.deepcopy(model)
    report = {}
    for g in groups:
        s = scores[g.name]
        c = len(s)
        n_keep = max(1, int(round(c * (1.0 - sparsity))))
        keep = torch.sort(torch.argsort(s, descending=True, stable=True)[:n_keep]).values
        for name in g.out:
            _set(new, name, _slice_out(new.get_submodule(name), keep))
        for name in g.inp:
            _set(new, name, _slice_in(new.get_submodule(name), keep, g.inp_repeat))
        report[g.name] = {"channels": c, "kept": n_keep}
    return new, report


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
