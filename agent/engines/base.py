"""The small interface every inference engine implements, and the registry of engines.

An engine turns an ONNX file into a Session; a Session runs feeds to outputs. onnxruntime
is always registered (agent/engines/onnxruntime_engine.py). The native engine from
`kernels/` plugs in with `register_engine("native", factory)` — nothing else changes:
profiling, the runtime and the local API only see this interface.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class IOSpec:
    """One session input or output. `shape` uses None for a dynamic axis; dtype is numpy's name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"


@runtime_checkable
class Session(Protocol):
    input_specs: list[IOSpec]
    output_specs: list[IOSpec]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; must be safe to call from several threads at once."""
        ...


@runtime_checkable
class Engine(Protocol):
    name: str

    def load(self, path: str | os.PathLike) -> Session:
        ...


EngineFactory = Callable[..., Engine]
_REGISTRY: dict[str, EngineFactory] = {}


def register_engine(name: str, factory: EngineFactory) -> None:
    """Make an engine available by name; `factory(**options)` returns an Engine."""
    _REGISTRY[name] = factory


def available_engines() -> list[str]:
    return sorted(_REGISTRY)


def get_engine(name: str = "onnxruntime", **options) -> Engine:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; available: {', '.join(available_engines())}") from None
    return factory(**options)
