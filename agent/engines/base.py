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
    """`load(path)` compiles/opens one ONNX variant. An engine that sets
    `accepts_session_config = True` also takes `load(path, session_config={...})`: the
    variant's onnxruntime session config from its manifest (see load_variant)."""

    name: str

    def load(self, path: str | os.PathLike) -> Session:
        ...


SESSION_CONFIG_DETAIL = "onnxruntime_session_config"


def variant_session_config(variant) -> dict:
    """The raw `details["onnxruntime_session_config"]` of a manifest Variant ({} if none).
    The engine filters it against its allow-list."""
    details = getattr(variant, "details", None) or {}
    raw = details.get(SESSION_CONFIG_DETAIL) if isinstance(details, dict) else None
    return raw if raw is not None else {}


def load_variant(engine: Engine, path: str | os.PathLike, variant=None) -> Session:
    """Load one variant on `engine`, with the variant's session config where the engine takes one
    (profiling and serving both go through here, so they measure and run the same session)."""
    config = variant_session_config(variant) if variant is not None else {}
    if config and getattr(engine, "accepts_session_config", False):
        return engine.load(path, session_config=config)
    return engine.load(path)


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
