"""Which function builds a variant for which config type (filled by decorators)."""

from __future__ import annotations

from typing import Callable

from compressor.errors import CompressionError

_HANDLERS: dict[type, Callable] = {}


def register_variant_handler(config_cls: type) -> Callable[[Callable], Callable]:
    """`@register_variant_handler(MyConfig)` on `def _build(config, ctx) -> Artifact`."""
    def deco(fn: Callable) -> Callable:
        if config_cls in _HANDLERS:
            raise ValueError(f"a handler for {config_cls.__name__} is already registered")
        _HANDLERS[config_cls] = fn
        return fn
    return deco


def handler_for(config) -> Callable:
    try:
        return _HANDLERS[type(config)]
    except KeyError:
        raise CompressionError(
            f"no variant handler for {type(config).__name__}; known configs: "
            f"{', '.join(sorted(c.__name__ for c in _HANDLERS))}") from None
