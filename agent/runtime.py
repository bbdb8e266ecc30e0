"""The runner: holds the variant session that serves inference and hot-swaps it.

Hot swap: the next variant is loaded and warmed (one inference) before the pointer moves,
and a request takes a reference to the session under the lock and runs outside it, so a
request that started on a variant finishes on it and no request fails during a switch.

Loading a variant costs tens of milliseconds of CPU; on a two-core device that CPU comes out
of the requests being served. So loads run on one loader thread at a lower CPU priority
(Linux nice +`load_nice`, per thread): serving keeps its latency and a switch takes longer
instead (benchmarks/agent_hot_swap.py). This is only done when the engine runs each
inference on the calling thread (intra_op_threads == 1): a thread pool created by a niced
thread would inherit its priority and serve at it.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from agent.batching import BatchConfig, Coalescer, has_batch_axis, row_independent
from agent.engines.base import Engine, Session, load_variant
from agent.profiling import representative_inputs
from proto import fleet_pb2

log = logging.getLogger(__name__)


class NoBundleError(RuntimeError):
    """Nothing installed yet: the API answers 503."""


class UnknownVariantError(KeyError):
    """A forced variant id that the active bundle does not hold."""


class InputError(ValueError):
    """Feeds that do not match the session's inputs (names, shapes, types)."""


PRIORITIES = ("low", "normal")


class PausedError(RuntimeError):
    """A low-priority request while low-priority work is paused (too hot, battery critical).

    The local API answers 503 with Retry-After: rejecting at once keeps the device cool and
    the caller in charge of when to try again, where a queue would hold sockets and memory
    on a device that is already struggling.
    """

    def __init__(self, reason: str, retry_after_seconds: float):
        super().__init__(f"low-priority work is paused ({reason}); retry in {retry_after_seconds:.0f} s")
        self.reason = reason
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True)
class LoadedVariant:
    bundle_id: str
    variant_id: str
    session: Session
    coalescer: Coalescer | None = None        # set when batching is on and the variant qualifies
    batching: str = "off"                     # "on", "off", or "off: why"


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    variant: str
    latency_seconds: float
    cpu_seconds: float
    batch_rows: int = 0                       # rows of the batch it ran in (0: not batched)
    engine: str = ""                          # "native" or "onnxruntime": which one ran it


class _Counters:
    def __init__(self, window: int):
        self.inferences = 0
        self.errors = 0
        self.latency_sum = 0.0
        self.recent: collections.deque[float] = collections.deque(maxlen=window)


def check_feeds(session: Session, feeds: dict[str, object]) -> dict[str, np.ndarray]:
    """Convert and check feeds against the session's input specs; raise InputError with why."""
    expected = {s.name: s for s in session.input_specs}
    if set(feeds) != set(expected):
        missing = sorted(set(expected) - set(feeds))
        extra = sorted(set(feeds) - set(expected))
        raise InputError(f"inputs must be exactly {sorted(expected)}"
                         + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
    out = {}
    for name, spec in expected.items():
        try:
            arr = np.asarray(feeds[name], dtype=np.dtype(spec.dtype))
        except (ValueError, TypeError) as exc:
            raise InputError(f"input {name!r} is not a regular {spec.dtype} array: {exc}") from None
        if arr.ndim != len(spec.shape) or any(d is not None and d != a for d, a in zip(spec.shape, arr.shape)):
            shape = "x".join("?" if d is None else str(d) for d in spec.shape)
            raise InputError(f"input {name!r} has shape {list(arr.shape)}, expected [{shape}]")
        out[name] = arr
    return out


class _Loader:
    """One daemon thread, at lower CPU priority, that runs the loads it is handed."""

    def __init__(self, nice: int):
        self.nice = nice
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="agent-variant-loader", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.nice)
        except (OSError, AttributeError) as exc:
            log.debug("could not lower the loader thread's priority: %s", exc)
        while True:
            fn, done, box = self._jobs.get()
            try:
                box.append((True, fn()))
            except BaseException as exc:      # handed back to the caller
                box.append((False, exc))
            done.set()

    def call(self, fn):
        done, box = threading.Event(), []
        self._jobs.put((fn, done, box))
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value


class Runner:
    """Serves inference on the active variant of the active bundle.

    `on_work(cpu_seconds)` and `on_latency(variant, seconds)` are called after each successful
    inference (sensor work model, scheduler latency feedback); `metrics` is an AgentMetrics.
    """

    def __init__(self, engine: Engine, *, metrics=None,
                 on_work: Callable[[float], None] | None = None,
                 on_latency: Callable[[str, float], None] | None = None, window: int = 256,
                 load_nice: int = 10, batching: BatchConfig | None = None):
        self.engine = engine
        self.batching = batching              # None: every request runs alone
        # Low-priority loads only where safe (see the module docstring) and possible (Linux
        # threads have their own nice value; elsewhere setpriority would renice the process).
        low = (load_nice > 0 and sys.platform.startswith("linux")
               and getattr(engine, "intra_op_threads", None) == 1)
        self._loader = _Loader(load_nice) if low else None
        self.metrics = metrics
        self.on_work = on_work
        self.on_latency = on_latency
        self.window = window
        self._lock = threading.Lock()          # guards _bundle, _active, _pinned
        self._load_lock = threading.Lock()     # one load at a time (memory, CPU)
        self._bundle = None                    # InstalledBundle
        self._active: LoadedVariant | None = None
        self._pinned: dict[str, LoadedVariant] = {}
        self._counters_lock = threading.Lock()
        self._counters: dict[str, _Counters] = {}
        self._pause: tuple[str, float] | None = None     # (reason, retry after seconds)

    # -- state --------------------------------------------------------------------------
    @property
    def bundle(self):
        with self._lock:
            return self._bundle

    @property
    def active_variant(self) -> str | None:
        with self._lock:
            return self._active.variant_id if self._active else None

    def input_specs(self):
        with self._lock:
            return list(self._active.session.input_specs) if self._active else []

    # -- switching ----------------------------------------------------------------------
    def _load_warm(self, bundle, variant_id: str) -> LoadedVariant:
        try:
            path = bundle.variant_path(variant_id)
        except KeyError:
            raise UnknownVariantError(variant_id) from None

        def load() -> LoadedVariant:
            session = load_variant(self.engine, path, bundle.manifest.variant(variant_id))
            feeds = representative_inputs(session.input_specs, bundle.manifest)
            t0 = time.perf_counter()
            session.run(feeds)          # warm up
            first = time.perf_counter() - t0
            coalescer, state = self._batching_for(session, bundle.manifest, variant_id, first)
            return LoadedVariant(bundle.bundle_id, variant_id, session, coalescer, state)

        return self._loader.call(load) if self._loader else load()

    def _batching_for(self, session: Session, manifest, variant_id: str, first_run: float):
        config = self.batching
        if config is None:
            return None, "off"
        if not has_batch_axis(session):
            why = "off: not every input and output has a dynamic leading axis"
        else:
            ok, detail = row_independent(
                session, lambda seed: representative_inputs(session.input_specs, manifest, seed=seed + 1),
                config.max_rows)
            why = "" if ok else f"off: rows differ when batched ({detail})"
        if why:
            log.info("variant %s: batching %s", variant_id, why)
            return None, why
        return Coalescer(session, config, per_row_seconds=first_run), "on"

    def activate(self, bundle, variant_id: str) -> None:
        """Make `variant_id` of `bundle` the active variant (load + warm first, then swap).

        Raises if the new variant cannot load; the old one keeps serving in that case.
        """
        with self._lock:
            current = self._active
        if current and current.bundle_id == bundle.bundle_id and current.variant_id == variant_id:
            return
        with self._load_lock:
            with self._lock:
                reuse = self._pinned.get(variant_id) if self._bundle is bundle else None
            loaded = reuse or self._load_warm(bundle, variant_id)
            with self._lock:
                if self._bundle is None or self._bundle.bundle_id != bundle.bundle_id:
                    self._pinned = {}          # sessions of the old bundle: released when idle
                self._bundle = bundle
                self._active = loaded
        log.info("active variant: %s (bundle %s)", variant_id, bundle.bundle_id[:12])
        if self.metrics:
            self.metrics.set_active_variant(variant_id)

    def clear(self) -> None:
        with self._lock:
            self._bundle, self._active, self._pinned = None, None, {}
        if self.metrics:
            self.metrics.set_active_variant(None)

    def _session_for(self, variant: str | None) -> LoadedVariant:
        with self._lock:
            active, bundle = self._active, self._bundle
            if active is None:
                raise NoBundleError("no bundle installed yet")
            if variant is None or variant == active.variant_id:
                return active
            pinned = self._pinned.get(variant)
            if pinned is not None:
                return pinned
        if variant not in {v.id for v in bundle.manifest.variants}:
            raise UnknownVariantError(variant)
        # A forced (pinned) variant: load it once per bundle, outside the serving lock.
        with self._load_lock:
            with self._lock:
                if self._bundle is bundle and variant in self._pinned:
                    return self._pinned[variant]
            loaded = self._load_warm(bundle, variant)
            with self._lock:
                if self._bundle is bundle:          # not swapped meanwhile: keep it for next time
                    self._pinned[variant] = loaded
        return loaded

    # -- low-priority pause -------------------------------------------------------------
    def set_low_priority_pause(self, reason: str | None, retry_after_seconds: float = 0.0) -> None:
        """Pause (reason given) or resume (None) low-priority requests; the control loop calls it."""
        pause = None if reason is None else (str(reason), max(1.0, float(retry_after_seconds)))
        changed = pause != self._pause
        self._pause = pause                  # one reference assignment: readers need no lock
        if changed:
            if pause:
                log.info("low-priority requests paused: %s", pause[0])
            else:
                log.info("low-priority requests resumed")
            if self.metrics:
                self.metrics.low_priority_paused.set(1 if pause else 0)

    @property
    def low_priority_pause(self) -> tuple[str, float] | None:
        return self._pause

    # -- serving ------------------------------------------------------------------------
    def run(self, feeds: dict[str, object], variant: str | None = None, priority: str = "normal") -> RunResult:
        if priority not in PRIORITIES:
            raise InputError(f"priority must be one of {list(PRIORITIES)}, got {priority!r}")
        pause = self._pause
        if priority == "low" and pause is not None:
            if self.metrics:
                self.metrics.low_priority_rejected.labels(pause[0]).inc()
            raise PausedError(*pause)
        loaded = self._session_for(variant)          # reference taken under the lock
        arrays = check_feeds(loaded.session, feeds)
        t0 = time.perf_counter()
        c0 = time.thread_time()
        batch_rows = 0
        try:
            if loaded.coalescer is not None:
                # Latency is the caller's wait (queue + batch); CPU is this request's share.
                outputs, cpu, batch_rows = loaded.coalescer.submit(arrays)
            else:
                outputs = loaded.session.run(arrays)
        except Exception:
            self._count(loaded.variant_id, None)
            raise
        latency = time.perf_counter() - t0
        if loaded.coalescer is None:
            cpu = time.thread_time() - c0
        self._count(loaded.variant_id, latency)
        if self.on_work:
            self.on_work(cpu)
        if self.on_latency:
            self.on_latency(loaded.variant_id, latency)
        return RunResult(outputs, loaded.variant_id, latency, cpu, batch_rows,
                         getattr(loaded.session, "engine_name", self.engine.name))

    def batching_state(self) -> dict[str, dict]:
        """Per loaded variant: batching on/off (and why), batches run, mean rows per batch."""
        with self._lock:
            loaded = ([self._active] if self._active else []) + list(self._pinned.values())
        out = {}
        for lv in loaded:
            c = lv.coalescer
            out[lv.variant_id] = {"batching": lv.batching, "batches": c.batches if c else 0,
                                  "mean_rows": (c.rows / c.batches) if c and c.batches else 0.0}
        return out

    def _count(self, variant: str, latency: float | None) -> None:
        with self._counters_lock:
            c = self._counters.setdefault(variant, _Counters(self.window))
            c.inferences += 1
            if latency is None:
                c.errors += 1
            else:
                c.latency_sum += latency
                c.recent.append(latency)
        if self.metrics:
            self.metrics.observe_inference(variant, latency or 0.0, latency is not None)

    def counters(self) -> list[fleet_pb2.VariantCounters]:
        with self._counters_lock:
            rows = []
            for vid, c in sorted(self._counters.items()):
                recent = np.asarray(c.recent) if c.recent else None
                rows.append(fleet_pb2.VariantCounters(
                    variant_id=vid, inferences_total=c.inferences, errors_total=c.errors,
                    latency_seconds_sum=c.latency_sum,
                    latency_p50_seconds=float(np.percentile(recent, 50)) if recent is not None else 0.0,
                    latency_p95_seconds=float(np.percentile(recent, 95)) if recent is not None else 0.0))
            return rows
