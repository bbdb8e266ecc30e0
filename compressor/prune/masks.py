"""Unstructured and N:M (2:4) masks from scores; applying and re-applying them."""

from __future__ import annotations

import enum

import torch
from torch import nn

from compressor.prune.importance import prunable_layers


class Scope(str, enum.Enum):
    LAYER = "layer"
    """Every layer loses the same fraction of its weights."""
    GLOBAL = "global"
    """One threshold over all layers: layers with many unimportant weights lose more."""


def unstructured_masks(scores: dict[str, torch.Tensor], sparsity: float, scope: Scope
                       ) -> dict[str, torch.Tensor]:
    """mask = 1 keeps a weight. Exactly floor(sparsity * n) weights are removed per layer
    (layer scope) or over all layers (global scope); ties broken by position."""
    if Scope(scope) is Scope.LAYER:
        return {n: _keep_top(s.flatten(), sparsity).reshape(s.shape) for n, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = _keep_top(flat, sparsity)
    out, k = {}, 0
    for n, s in scores.items():
        out[n] = keep[k:k + s.numel()].reshape(s.shape)
        k += s.numel()
    return out


def _keep_top(v: torch.Tensor, sparsity: float) -> torch.Tensor:
    n_drop = int(sparsity * v.numel())
    mask = torch.ones_like(v)
    if n_drop:
        idx = torch.argsort(v, stable=True)[:n_drop]
        mask[idx] = 0.0
    return mask


def block_masks(scores: dict[str, torch.Tensor], sparsity: float, block: tuple[int, int]
                ) -> dict[str, torch.Tensor]:
    """Zero whole blocks of `block` = (rows, cols) weights: rows are output channels, cols
    consecutive inputs of the flattened [out, in*kh*kw] weight (the int8 kernels' K order for
    pointwise convs and Linear). A block's score is the sum of its weights' scores; per layer
    the floor(sparsity * n_blocks) lowest-scoring blocks are removed (edge blocks are partial;
    ties broken by position). (16, 4) matches the block-sparse int8 kernel (kernels bsr_qs8):
    a removed block is one skipped dot-product step for 16 output channels."""
    br, bc = int(block[0]), int(block[1])
    if br < 1 or bc < 1:
        raise ValueError(f"block must be two positive sizes, got {block}")
    out = {}
    for name, s in scores.items():
        rows = s.reshape(s.shape[0], -1)
        n, k = rows.shape
        gr, gc = -(-n // br), -(-k // bc)
        pad = torch.zeros(gr * br, gc * bc, dtype=rows.dtype)
        pad[:n, :k] = rows
        block_scores = pad.reshape(gr, br, gc, bc).sum(dim=(1, 3))
        keep = _keep_top(block_scores.flatten(), sparsity).reshape(gr, gc)
        full = keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:n, :k]
        out[name] = full.reshape(s.shape).to(s.dtype)
    return out


def n_m_masks(scores: dict[str, torch.Tensor], n: int = 2, m: int = 4) -> dict[str, torch.Tensor]:
    """Keep the n highest-scoring of every m consecutive weights along each output row's
    flattened input (I*kh*kw). Rows whose length is not a multiple of m keep their tail
    dense; layers with fewer than m inputs stay dense (reported as such)."""
    out = {}
    for name, s in scores.items():
        rows = s.reshape(s.shape[0], -1)
        k = rows.shape[1] - rows.shape[1] % m
        mask = torch.ones_like(rows)
        if k:
            groups = rows[:, :k].reshape(rows.shape[0], -1, m)
            order = torch.argsort(groups, dim=-1, stable=True)[..., : m - n]
            gm = torch.ones_like(groups).scatter_(-1, order, 0.0)
            mask[:, :k] = gm.reshape(rows.shape[0], k)
        out[name] = mask.reshape(s.shape)
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    layers = prunable_layers(model)
    for n, mk in masks.items():
        layers[n].weight.mul_(mk)


def sparsity_of(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over all Conv/Linear weights."""
    ws = [m.weight for m in prunable_layers(model).values()]
    total = sum(w.numel() for w in ws)
    return float(sum((w == 0).sum().item() for w in ws) / max(total, 1))
