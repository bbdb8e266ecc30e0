"""Deterministic training on CPU: seeded init, seeded shuffling, deterministic kernels.

The same seed gives the same weights bit for bit on the same machine and thread count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn


@dataclass
class TrainConfig:
    """Args:
        epochs: passes over the training split.
        batch_size: mini-batch size.
        lr: Adam learning rate (cosine-decayed to 0 over the run).
        weight_decay: AdamW weight decay.
        seed: seeds init-independent randomness (shuffling); seed the model yourself.
        threads: torch intra-op threads while training. 1 by default: on a shared 2-core
            machine, OpenMP's spin-waiting made 2 threads 15x slower than 1 (MobileNetV2
            step: 5 s vs 0.34 s at load average 7); raise it on a dedicated machine.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError("threads must be >= 1")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"bad training config: {self}")


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig = TrainConfig(),
          loss_fn: LossFn = cross_entropy_loss,
          after_step: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Train in place and return the model in eval mode.

    `loss_fn(model, xb, yb)` lets distillation and QAT reuse the loop; `after_step(model)` runs
    after every optimizer step (pruning uses it to keep pruned weights at zero).
    """
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(model, x, y, cfg, loss_fn, after_step)
    finally:
        torch.set_num_threads(old_threads)


def _train(model, x, y, cfg: TrainConfig, loss_fn: LossFn, after_step) -> nn.Module:
    gen = torch.Generator().manual_seed(cfg.seed)
    xt, yt = torch.from_numpy(np.array(x, dtype=np.float32)), torch.from_numpy(np.array(y, dtype=np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, cfg.epochs * ((len(yt) + cfg.batch_size - 1) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(yt), generator=gen)
        for start in range(0, len(yt), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, xt[idx], yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step(model)
    return model.eval()


@torch.no_grad()
def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = model(torch.from_numpy(np.array(x, dtype=np.float32))).argmax(1).numpy()
    return float((pred == y).mean())
