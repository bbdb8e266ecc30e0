"""edgefleet native engine: run an ONNX variant on the kernels in this package.

    from kernels.engine import Model
    model = Model("int8.onnx")                 # parse, check, fold, pack weights: once
    out = model.run({"input": x})              # per call: a flat list of bound kernel steps

Loading parses the file with google.protobuf and a subset of onnx.proto (no `onnx` import),
rejects malformed files (InvalidModel) and graphs it cannot run (UnsupportedGraph, naming
every such op and node), and lowers the graph once (lower.py). The first run for a new set
of input shapes builds a Plan (plan.py): shapes resolved, buffers preallocated; plans are
cached per shape. `run` is thread-safe (each concurrent caller gets its own plan).
"""

from __future__ import annotations

import collections
import os
import threading
from collections import Counter

import numpy as np

from kernels.engine.config import EngineConfig
from kernels.engine.errors import EngineError, InputError, InvalidModel, UnsupportedGraph
from kernels.engine.graph import ValueSpec, parse_model, read_model_bytes
from kernels.engine.lower import Lowered, lower
from kernels.engine.plan import Plan, trace

__all__ = ["Model", "EngineConfig", "EngineError", "InvalidModel", "UnsupportedGraph", "InputError",
           "ValueSpec", "load"]


class Model:
    """One compiled ONNX variant. `source`: bytes or a path."""

    def __init__(self, source: bytes | str | os.PathLike, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        graph = parse_model(read_model_bytes(source))
        self._lowered: Lowered = lower(graph, self.config)
        # the ONNX op types of the file as written (before lowering fuses them)
        self.source_op_types: frozenset[str] = frozenset(n.op_type for n in graph.nodes)
        self.inputs: list[ValueSpec] = list(graph.inputs)
        self.outputs: list[ValueSpec] = list(graph.outputs)
        self._plans: collections.OrderedDict[tuple, list[Plan]] = collections.OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ introspection

    def op_kinds(self, layout: bool = False) -> Counter:
        """How many ops of each kind the compiled model holds (e.g. 'qconv[qs8->int8]': 3);
        layout=True keeps the '@nhwc' mark of channels-last ops."""
        return Counter(op.kind if layout else op.kind.split("@")[0] for op in self._lowered.ops)

    def fallback_ops(self) -> list[str]:
        """Ops that run on the numpy fallback because no C kernel covers them yet."""
        return [op.describe() for op in self._lowered.ops if op.fallback]

    # ------------------------------------------------------------------ running

    def _check(self, feeds) -> dict[str, tuple[int, ...]]:
        if not isinstance(feeds, collections.abc.Mapping):
            raise InputError(f"feeds must be a dict of input name -> numpy array, got {type(feeds).__name__}")
        names = {v.name for v in self.inputs}
        unknown = sorted(set(feeds) - names)
        missing = sorted(names - set(feeds))
        if unknown or missing:
            raise InputError(f"feeds do not match the model inputs {sorted(names)}: "
                             f"missing {missing}, unknown {unknown}")
        shapes = {}
        symbols: dict[str, int] = {}
        for spec in self.inputs:
            x = feeds[spec.name]
            if not isinstance(x, np.ndarray):
                raise InputError(f"input {spec.name!r}: expected a numpy array, got {type(x).__name__}")
            if x.dtype != spec.dtype:
                raise InputError(f"input {spec.name!r}: expected dtype {spec.dtype}, got {x.dtype}")
            if spec.shape and x.ndim != len(spec.shape):
                raise InputError(f"input {spec.name!r}: expected {len(spec.shape)} dimensions {spec.shape}, "
                                 f"got shape {x.shape}")
            for axis, (want, got) in enumerate(zip(spec.shape, x.shape)):
                if isinstance(want, int) and want != got:
                    raise InputError(f"input {spec.name!r}: axis {axis} must be {want}, got shape {x.shape}")
                if isinstance(want, str):
                    if symbols.setdefault(want, got) != got:
                        raise InputError(f"input {spec.name!r}: axis {axis} ({want!r}) is {got}, but another "
                                         f"input has {want!r} = {symbols[want]}")
            if x.size == 0:
                raise InputError(f"input {spec.name!r}: empty array (shape {x.shape})")
            if not x.flags.c_contiguous:
                raise InputError(f"input {spec.name!r}: array is not C-contiguous (strides {x.strides}); "
                                 "pass np.ascontiguousarray(x)")
            shapes[spec.name] = x.shape
        return shapes

    def _take_plan(self, shapes: dict) -> tuple[tuple, Plan]:
        key = tuple(shapes[v.name] for v in self.inputs)
        with self._lock:
            idle = self._plans.get(key)
            if idle is not None:
                self._plans.move_to_end(key)
                if idle:
                    return key, idle.pop()
        return key, Plan(self._lowered, shapes)

    def _give_plan(self, key: tuple, plan: Plan) -> None:
        with self._lock:
            self._plans.setdefault(key, []).append(plan)
            self._plans.move_to_end(key)
            while len(self._plans) > self.config.max_cached_shapes:
                self._plans.popitem(last=False)

    def prepare(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Build (and cache) the plan for these input shapes ahead of the first run."""
        key, plan = self._take_plan({k: tuple(v) for k, v in shapes.items()})
        self._give_plan(key, plan)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns a fresh dict of output name -> array. Thread-safe."""
        shapes = self._check(feeds)
        key, plan = self._take_plan(shapes)
        try:
            result = plan.run(feeds)
        except EngineError:
            raise
        except Exception as exc:     # e.g. an out-of-range Gather index in the feeds
            raise InputError(f"inference failed: {type(exc).__name__}: {exc}") from exc
        self._give_plan(key, plan)
        return result

    def run_reference(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The same computation on the numpy references of every op (slow; for tests)."""
        self._check(feeds)
        values, _ = trace(self._lowered, dict(feeds))
        return {name: values[name] for name in self._lowered.outputs}

    def profile(self, feeds: dict[str, np.ndarray], runs: int = 20) -> dict[str, float]:
        """Seconds per run spent in each op kind, most expensive first (for benchmarks)."""
        key, plan = self._take_plan(self._check(feeds))
        try:
            return plan.profile(feeds, runs)
        finally:
            self._give_plan(key, plan)

    def plan_stats(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Steps and pooled buffer bytes of the plan for these shapes."""
        key, plan = self._take_plan({k: tuple(v) for k, v in shapes.items()})
        self._give_plan(key, plan)
        return {"steps": len(plan.steps), "ops": len(plan.ops), "buffer_bytes": plan.buffer_bytes}


def load(source, config: EngineConfig | None = None) -> Model:
    return Model(source, config)
