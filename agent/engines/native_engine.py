"""The native engine (kernels.engine) behind the agent's Engine interface, and "auto", which
measures a variant on both engines when it first loads it and keeps the faster.

- "native": every variant on kernels.engine; a graph it cannot run raises (UnsupportedGraph
  names the op), so profiling skips that variant.
- "auto": native when the variant compiles and is faster on this device, else onnxruntime. A
  graph the native engine cannot run goes to onnxruntime with one log line naming the op(s).
  While timing, both engines' outputs on the test input are compared; when they differ by
  more than AGREEMENT_RTOL, the native engine's numpy reference of the graph decides which
  one is right, whatever the speed (onnxruntime's fused int8 kernels saturate on x86-64
  without VNNI, QDQ graphs included; kernels.int8_dot_saturates).
  The choice is made once per variant file (profiling on arrival loads each variant first)
  and remembered for later loads of the same file (serving, hot swaps), so it is not
  re-measured on every switch. Sessions say which engine they run on (`engine_name`).

kernels.engine is imported on first use, so registering these engines costs nothing when
the agent runs onnxruntime only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Mapping

import numpy as np

from agent.engines.base import IOSpec
from agent.engines.onnxruntime_engine import OnnxRuntimeEngine

log = logging.getLogger(__name__)


def _spec(v) -> IOSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in v.shape)
    return IOSpec(v.name, shape, np.dtype(v.dtype).name)


class NativeSession:
    engine_name = "native"

    def __init__(self, path: str | os.PathLike):
        from kernels.engine import Model  # lazy: kernels' C extension only when used

        self.model = Model(path)
        self.input_specs = [_spec(v) for v in self.model.inputs]
        self.output_specs = [_spec(v) for v in self.model.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Model.run is thread-safe (one plan per concurrent caller). Callers may hand us
        # views (e.g. a row of a batch): make them contiguous rather than refuse them.
        feeds = {k: np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v for k, v in feeds.items()}
        return self.model.run(feeds)


class NativeEngine:
    """kernels.engine; `intra_op_threads` sets the kernels' thread count (process-wide)."""

    name = "native"

    def __init__(self, intra_op_threads: int = 1):
        self.intra_op_threads = intra_op_threads

    def load(self, path: str | os.PathLike) -> NativeSession:
        import kernels

        kernels.set_num_threads(self.intra_op_threads)
        return NativeSession(path)


# Relative L2 error above which two engines' outputs count as different computations, not
# rounding: int8 variants differ by about one quantization step between engines (~0.5% of
# the output's norm), a saturating int8 dot product by several percent.
AGREEMENT_RTOL = 0.02


def _relative_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """Largest ||got - want|| / ||want|| over the outputs (inf on a missing or mis-shaped one)."""
    worst = 0.0
    for name, w in want.items():
        g = got.get(name)
        if g is None or np.shape(g) != np.shape(w):
            return float("inf")
        w64, g64 = np.asarray(w, np.float64), np.asarray(g, np.float64)
        err = float(np.linalg.norm(g64 - w64))
        worst = max(worst, err / max(float(np.linalg.norm(w64)), 1e-30) if err else 0.0)
    return worst


def _p50(session, feeds, runs: int) -> float:
    session.run(feeds)                                   # warm: builds the plan / arenas
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


class AutoEngine:
    """Per variant file: the faster of native and onnxruntime (onnxruntime when native can't)."""

    name = "auto"
    accepts_session_config = True

    def __init__(self, intra_op_threads: int = 1, runs: int = 10):
        self.intra_op_threads = intra_op_threads
        self.runs = runs
        self._ort = OnnxRuntimeEngine(intra_op_threads=intra_op_threads)
        self._native = NativeEngine(intra_op_threads=intra_op_threads)
        self._choice: dict[tuple, str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(path) -> tuple:
        st = os.stat(path)
        return (os.path.abspath(path), st.st_size, st.st_mtime_ns)

    def load(self, path: str | os.PathLike, session_config: Mapping[str, str] | None = None):
        key = self._key(path)
        with self._lock:
            choice = self._choice.get(key)
        if choice == "onnxruntime":
            return self._tag(self._ort.load(path, session_config=session_config), "onnxruntime")
        try:
            native = self._native.load(path)
        except Exception as exc:
            from kernels.engine import UnsupportedGraph

            if isinstance(exc, UnsupportedGraph):
                ops = ", ".join(f"{op} (node {node!r})" for op, node in exc.ops) or str(exc)
                log.warning("variant %s: native engine cannot run %s; using onnxruntime",
                            os.path.basename(str(path)), ops)
            else:
                log.warning("variant %s: native engine failed to load (%s: %s); using onnxruntime",
                            os.path.basename(str(path)), type(exc).__name__, exc)
            self._remember(key, "onnxruntime")
            return self._tag(self._ort.load(path, session_config=session_config), "onnxruntime")
        if choice == "native":
            return native
        from kernels import FUSED_INT8_OPS, int8_dot_saturates

        inexact = sorted(native.model.source_op_types & FUSED_INT8_OPS)
        if inexact and int8_dot_saturates():
            log.info("variant %s: onnxruntime's %s saturate on this CPU (no VNNI); using native",
                     os.path.basename(str(path)), ", ".join(inexact))
            self._remember(key, "native")
            return native
        ort_session = self._ort.load(path, session_config=session_config)
        winner = self._measure(path, native, ort_session)
        self._remember(key, winner)
        return native if winner == "native" else self._tag(ort_session, "onnxruntime")

    def _measure(self, path, native: NativeSession, ort_session) -> str:
        from agent.profiling import representative_inputs

        feeds = representative_inputs(native.input_specs)
        try:
            t_native = _p50(native, feeds, self.runs)
        except Exception as exc:
            log.warning("variant %s: native engine failed on a test input (%s: %s); using onnxruntime",
                        os.path.basename(str(path)), type(exc).__name__, exc)
            return "onnxruntime"
        t_ort = _p50(ort_session, feeds, self.runs)
        winner = "native" if t_native <= t_ort else "onnxruntime"
        log.info("variant %s: native p50 %.3f ms, onnxruntime p50 %.3f ms -> %s",
                 os.path.basename(str(path)), t_native * 1e3, t_ort * 1e3, winner)
        ours, theirs = native.run(feeds), ort_session.run(feeds)
        apart = _relative_error(ours, theirs)
        if apart <= AGREEMENT_RTOL:
            return winner
        ref = native.model.run_reference(feeds)
        e_native, e_ort = _relative_error(ours, ref), _relative_error(theirs, ref)
        right = "native" if e_native <= e_ort else "onnxruntime"
        log.warning("variant %s: native and onnxruntime outputs differ (relative error %.3g); against the "
                    "graph's reference native %.3g, onnxruntime %.3g -> %s, whatever the speed",
                    os.path.basename(str(path)), apart, e_native, e_ort, right)
        return right

    def _remember(self, key, choice: str) -> None:
        with self._lock:
            self._choice[key] = choice

    @staticmethod
    def _tag(session, name: str):
        try:
            session.engine_name = name
        except AttributeError:
            pass
        return session
