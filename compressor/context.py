"""What a variant handler receives (CompressContext) and returns (Artifact)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from torch import nn

from proto.manifest import LayerGroup


@dataclass
class Artifact:
    """One built variant before measurement: its graph and what was done to it."""

    onnx: onnx.ModelProto
    method: str
    weight_bits: int
    activation_bits: int
    parent: str | None = None
    sparsity: float = 0.0
    sparsity_pattern: str = "none"
    layer_groups: tuple[LayerGroup, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    # onnxruntime session config entries this variant should run with (recorded in the
    # manifest details as "onnxruntime_session_config" and used when measuring it)
    session_config: dict[str, str] = field(default_factory=dict)


@dataclass
class CompressContext:
    """Everything a handler may use. `built` holds the variants made so far, by id, so a
    derived variant (pruned + int8) can start from an earlier one."""

    model: nn.Module
    fp32_onnx: onnx.ModelProto
    example_input: np.ndarray
    calib_data: np.ndarray | None = None
    train_data: tuple[np.ndarray, np.ndarray] | None = None
    eval_fn: Any = None
    built: dict[str, Artifact] = field(default_factory=dict)

    def parent_id(self, preferred: str = "fp32") -> str | None:
        return preferred if preferred in self.built else None


def layer_groups_from_report(layers: list[dict], activation_bits_of) -> tuple[LayerGroup, ...]:
    """One LayerGroup per (weight bits, activation bits); "*" when one group covers all."""
    groups: dict[tuple[int, int], list[str]] = {}
    for layer in layers:
        key = (int(layer["weight_bits"]), int(activation_bits_of(layer)))
        groups.setdefault(key, []).append(layer.get("node") or layer["weight"])
    if len(groups) == 1:
        (wb, ab), = groups
        return (LayerGroup(layers="*", weight_bits=wb, activation_bits=ab),)
    return tuple(LayerGroup(layers=",".join(names), weight_bits=wb, activation_bits=ab)
                 for (wb, ab), names in sorted(groups.items()))
