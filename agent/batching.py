"""Request batching: concurrent requests for the same variant coalesce into one run.

Opt-in (AgentConfig.batch_max_rows > 0). There is no timer and no added wait: while a
batch runs, requests that arrive queue up, and the next free runner takes as many queued
rows as fit, so an idle device answers a lone request exactly as before and a busy one runs
fewer, larger calls. At most `max_inflight` batches run at once per variant (one per core),
and a batch holds at most as many rows as its predicted latency allows within the latency
budget (per-row seconds measured on this device, times rows; per-row cost falls as batches
grow, so the prediction errs long).

Batching must not change answers. A variant qualifies only if every input and output has a
dynamic leading (batch) axis and a probe at load gives bit-identical rows run alone and in
batches (row_independent). Plain fp32 graphs and static-QDQ int8 / weight-only int4 pass on
onnxruntime's CPU kernels; dynamically quantized int8 (DynamicQuantizeLinear picks one
activation scale for the whole batch, so a row's answer depends on its neighbours) fails
and is served unbatched.

When it pays (benchmarks/agent_batching.py, 8 client threads, 2 shared cores): weight-heavy
variants whose single call is memory-bound gain (fp32 MLP 512->1024->1024: 2.3x requests/s,
p99 43 -> 9 ms); tiny variants (a call of ~50 us: the digits CNN, narrow students) lose
(0.5-0.8x), because waking the waiting threads costs more than the calls saved. Hence opt-in,
per device and model.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from agent.engines.base import Session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchConfig:
    """max_rows: rows per batch at most (>= 2 to batch at all); budget_seconds: predicted batch
    latency must stay within it; max_inflight: batches of one variant running at once."""

    max_rows: int = 16
    budget_seconds: float = 0.1
    max_inflight: int = 2

    def __post_init__(self) -> None:
        if self.max_rows < 2 or self.max_inflight < 1 or not self.budget_seconds > 0:
            raise ValueError("batching needs max_rows >= 2, max_inflight >= 1, budget_seconds > 0")


def has_batch_axis(session: Session) -> bool:
    specs = list(session.input_specs) + list(session.output_specs)
    return bool(specs) and all(len(s.shape) >= 1 and s.shape[0] is None for s in specs)


def row_independent(session: Session, make_feeds, rows: int) -> tuple[bool, str]:
    """Probe: `rows` distinct single-row feeds (make_feeds(seed)) run alone and batched (sizes 2,
    3 and `rows`) must give bit-identical rows. Returns (ok, why not)."""
    singles = [make_feeds(seed) for seed in range(rows)]
    alone = [session.run(f) for f in singles]
    names = list(alone[0])
    for n in sorted({2, 3, rows} & set(range(2, rows + 1))):
        feeds = {k: np.concatenate([f[k] for f in singles[:n]]) for k in singles[0]}
        out = session.run(feeds)
        for name in names:
            want = np.concatenate([a[name] for a in alone[:n]])
            if out[name].shape != want.shape:
                return False, f"output {name!r} has shape {list(out[name].shape)} for a batch of {n}"
            if not np.array_equal(out[name], want):
                diff = float(np.max(np.abs(out[name].astype(np.float64) - want.astype(np.float64))))
                return False, f"output {name!r} differs by up to {diff:.3g} in a batch of {n}"
    return True, ""


class _Pending:
    __slots__ = ("feeds", "rows", "key", "done", "wake", "promoted", "outputs", "error", "cpu", "batch_rows")

    def __init__(self, feeds: dict[str, np.ndarray]):
        self.feeds = feeds
        self.rows = int(next(iter(feeds.values())).shape[0])
        # Requests batch together only with the same input names, trailing shapes and types.
        self.key = tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(feeds.items()))
        self.done = threading.Event()        # outputs or error are set
        self.wake = threading.Event()        # done, or promoted to run batches
        self.promoted = False
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.cpu = 0.0
        self.batch_rows = 0


class Coalescer:
    """Runs one variant's session, coalescing concurrent requests (see the module docstring)."""

    def __init__(self, session: Session, config: BatchConfig, per_row_seconds: float = 0.0):
        self.session = session
        self.config = config
        self._lock = threading.Lock()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._inflight = 0
        self._per_row = per_row_seconds
        self.batches = 0
        self.rows = 0

    def max_batch_rows(self) -> int:
        per_row = self._per_row
        if per_row <= 0:
            return self.config.max_rows
        return max(1, min(self.config.max_rows, int(self.config.budget_seconds / per_row)))

    def submit(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, int]:
        """Run `feeds` (checked arrays, leading axis = rows), alone or in a batch.
        Returns (outputs for these rows, CPU seconds attributed to them, rows in the batch)."""
        item = _Pending(feeds)
        with self._lock:
            self._queue.append(item)
            lead = self._inflight < self.config.max_inflight
            if lead:
                self._inflight += 1
        if not lead:
            item.wake.wait()
            if not item.promoted:
                return self._result(item)
        # This thread holds one in-flight slot: run batches until its own request is done,
        # then pass the slot to a queued request (or give it back when nothing waits).
        while True:
            with self._lock:
                if not self._queue:
                    self._inflight -= 1
                    break
                if item.done.is_set():
                    for nxt in self._queue:
                        if not nxt.promoted:
                            nxt.promoted = True
                            nxt.wake.set()
                            break
                    else:
                        self._inflight -= 1
                    break
                batch = self._take_locked()
            self._run(batch)
        item.done.wait()          # taken by another runner's batch: wait for it
        return self._result(item)

    @staticmethod
    def _result(item: _Pending) -> tuple[dict[str, np.ndarray], float, int]:
        if item.error is not None:
            raise item.error
        return item.outputs, item.cpu, item.batch_rows

    def _take_locked(self) -> list[_Pending]:
        head = self._queue[0]
        limit = max(self.max_batch_rows(), head.rows)
        batch, rest, rows = [], collections.deque(), 0
        for p in self._queue:
            if p.key == head.key and rows + p.rows <= limit:
                batch.append(p)
                rows += p.rows
            else:
                rest.append(p)
        self._queue = rest
        return batch

    def _run(self, batch: list[_Pending]) -> None:
        rows = sum(p.rows for p in batch)
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            if len(batch) == 1:
                outs = [self.session.run(batch[0].feeds)]
            else:
                feeds = {k: np.concatenate([p.feeds[k] for p in batch]) for k in batch[0].feeds}
                merged = self.session.run(feeds)
                for name, arr in merged.items():
                    if arr.shape[:1] != (rows,):
                        raise RuntimeError(f"output {name!r} of a batch of {rows} rows has shape {list(arr.shape)}")
                offsets = np.cumsum([0] + [p.rows for p in batch])
                outs = [{k: v[offsets[i]:offsets[i + 1]] for k, v in merged.items()} for i in range(len(batch))]
        except BaseException as exc:          # every request of the batch gets the error
            for p in batch:
                p.error = exc
                p.done.set()
                p.wake.set()
            return
        seconds, cpu = time.perf_counter() - t0, time.thread_time() - c0
        # Per-row cost, smoothed: what the next batch size is predicted from.
        sample = seconds / rows
        self._per_row = sample if self._per_row <= 0 else 0.8 * self._per_row + 0.2 * sample
        self.batches += 1
        self.rows += rows
        for p, out in zip(batch, outs):
            p.outputs, p.cpu, p.batch_rows = out, cpu * p.rows / rows, rows
            p.done.set()
            p.wake.set()
