"""Per-input-shape plans: shapes resolved, buffers preallocated and reused, steps bound.

A Plan is built from the lowered ops for one set of input shapes:
1. trace: the ops' numpy references run once on zero inputs, giving every tensor's shape and
   dtype; tensors that depend only on constants and input *shapes* (Shape -> Gather -> Concat
   -> Reshape chains) are static and become constants of this plan;
2. buffers: each remaining tensor gets a slice of a reusable block (a block returns to the pool
   after the last op reading it), and view-only ops (Reshape, Flatten, ...) alias their input;
3. steps: every op binds itself to its buffers, giving a flat list of zero-argument callables.

Running is then: copy the feeds in, call each step, copy the outputs out. A Plan is not
thread-safe; Model keeps a small pool of them per shape.
"""

from __future__ import annotations

import numpy as np

from kernels.engine.errors import EngineError, InputError
from kernels.engine.irops import Generic
from kernels.engine.lower import Lowered
from kernels.engine.ops import SHAPE_ONLY

_ALIGN = 64


def trace(lowered: Lowered, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], set[str]]:
    """Run every op's numpy reference; returns (all values, names of static tensors)."""
    values = dict(lowered.consts)
    static = set(lowered.consts)
    values.update(feeds)
    for op in lowered.ops:
        args = [values[x] if x else None for x in op.inputs]
        try:
            outs = op.ref(*args)
        except EngineError:
            raise
        except Exception as exc:
            shapes = {k: v.shape for k, v in feeds.items()}
            raise InputError(f"inputs with shapes {shapes} do not fit the model: {op.describe()} failed: {exc}") from exc
        for name, y in zip(op.outputs, outs):
            if name:
                values[name] = np.ascontiguousarray(y)
        shape_only = isinstance(op, Generic) and op.node.op_type in SHAPE_ONLY
        if shape_only or all(x in static for x in op.inputs if x):
            static.update(y for y in op.outputs if y)
    return values, static


class _Pool:
    """Blocks of raw bytes handed out best-fit and returned when their tensor is dead."""

    def __init__(self):
        self.free: list[np.ndarray] = []
        self.total = 0

    def take(self, nbytes: int) -> np.ndarray:
        fits = [i for i, b in enumerate(self.free) if b.nbytes >= nbytes]
        if fits:
            return self.free.pop(min(fits, key=lambda i: self.free[i].nbytes))
        block = np.empty(max(_ALIGN, -(-nbytes // _ALIGN) * _ALIGN), np.uint8)
        self.total += block.nbytes
        return block

    def give(self, block: np.ndarray) -> None:
        self.free.append(block)


class Plan:
    def __init__(self, lowered: Lowered, shapes: dict[str, tuple[int, ...]]):
        dummy = {v.name: np.zeros(shapes[v.name], v.dtype) for v in lowered.inputs}
        values, static = trace(lowered, dummy)
        self.output_names = list(lowered.outputs)
        ops = [op for op in lowered.ops if not all(y in static for y in op.outputs if y)]
        self.ops = ops

        # Where each tensor's bytes live: inputs and outputs own theirs for the plan's lifetime.
        arrays: dict[str, np.ndarray] = {}
        root: dict[str, str] = {}
        pinned = set(self.output_names) | {v.name for v in lowered.inputs}
        for v in lowered.inputs:
            arrays[v.name] = np.empty(shapes[v.name], v.dtype)
            root[v.name] = v.name
        last_use: dict[str, int] = {}
        for i, op in enumerate(ops):
            if op.alias and op.inputs[0] not in static:
                for y in op.outputs:
                    root[y] = root[op.inputs[0]]
            else:
                for y in op.outputs:
                    root.setdefault(y, y)
            for x in list(op.inputs) + list(op.outputs):
                if x and x in root:
                    last_use[root[x]] = i
        for name in pinned:
            if name in root:
                pinned = pinned | {root[name]}

        pool, blocks = _Pool(), {}
        self.steps = []
        self.step_ops: list[int] = []      # index into self.ops of each step (profiling)
        for i, op in enumerate(ops):
            aliased = op.alias and op.inputs[0] not in static
            for y in op.outputs:
                if not y:
                    continue
                v = values[y]
                if aliased:
                    arrays[y] = arrays[op.inputs[0]].reshape(v.shape)
                elif y in pinned:
                    arrays[y] = np.empty(v.shape, v.dtype)
                else:
                    block = pool.take(max(v.nbytes, 1))
                    blocks[y] = block
                    arrays[y] = block[:v.nbytes].view(v.dtype).reshape(v.shape)
            if not aliased:
                ins = [None if not x else (values[x] if x in static else arrays[x]) for x in op.inputs]
                outs = [arrays[y] if y else None for y in op.outputs]
                bound = op.bind(ins, outs)
                self.steps.extend(bound)
                self.step_ops.extend([i] * len(bound))
            for r, last in last_use.items():
                if last == i and r in blocks and r not in pinned:
                    pool.give(blocks.pop(r))

        self.input_buffers = [(v.name, arrays[v.name]) for v in lowered.inputs]
        self.outputs = [(arrays[n] if n in arrays else values[n]) for n in self.output_names]
        self.buffer_bytes = pool.total
        self.shapes = dict(shapes)

    def profile(self, feeds: dict[str, np.ndarray], runs: int) -> dict[str, float]:
        """Median seconds per run spent in each op kind (steps timed one by one)."""
        import time

        per_run = np.zeros((runs, len(self.ops)))
        for r in range(runs):
            for name, buf in self.input_buffers:
                np.copyto(buf, feeds[name])
            for step, i in zip(self.steps, self.step_ops):
                t0 = time.perf_counter()
                step()
                per_run[r, i] += time.perf_counter() - t0
        kinds: dict[str, np.ndarray] = {}
        for i, op in enumerate(self.ops):
            kinds[op.kind] = kinds.get(op.kind, 0.0) + per_run[:, i]
        medians = {k: float(np.median(v)) for k, v in kinds.items()}
        return dict(sorted(medians.items(), key=lambda kv: -kv[1]))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, buf in self.input_buffers:
            np.copyto(buf, feeds[name])
        for step in self.steps:
            step()
        return {n: y.copy() for n, y in zip(self.output_names, self.outputs)}
