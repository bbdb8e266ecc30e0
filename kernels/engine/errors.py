"""Exceptions of the native engine. Every failure to load or run a variant is one of these
(a Python exception with a message that names the file problem, op, node or input), never a
crash: the agent catches EngineError and falls back to onnxruntime."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of everything the native engine raises on purpose."""


class InvalidModel(EngineError, ValueError):
    """The bytes are not a well-formed ONNX model (truncated, corrupt, inconsistent)."""


class UnsupportedGraph(EngineError):
    """A well-formed model the engine cannot run: unsupported ops, dtypes or features.

    `ops` lists (op_type, node_name) of every unsupported node found, so one log line can
    name them all; `op_type`/`node_name` are those of the first.
    """

    def __init__(self, message: str, ops: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.ops = list(ops or [])
        self.op_type = self.ops[0][0] if self.ops else None
        self.node_name = self.ops[0][1] if self.ops else None


class InputError(EngineError, ValueError):
    """Feeds that do not match the model: missing/unknown names, dtype, shape, layout."""
