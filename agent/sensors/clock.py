"""Clocks for simulated sources: a manual one for tests and benchmarks, a scaled one for demos.

A clock is any zero-argument callable returning seconds (like time.monotonic). Simulated
sources read *simulated* seconds from it; `ScaledClock` turns wall time into simulated time
at `speed` simulated seconds per wall second.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

Clock = Callable[[], float]


class ManualClock:
    """Time that moves only when told: `clock.advance(1.0)`. Thread-safe."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock does not run backwards")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        with self._lock:
            if now < self._now:
                raise ValueError("a clock does not run backwards")
            self._now = float(now)


class ScaledClock:
    """Simulated seconds since creation = speed x wall seconds since creation."""

    def __init__(self, speed: float = 1.0, wall: Clock = time.monotonic) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        self.speed = float(speed)
        self._wall = wall
        self._t0 = wall()

    def __call__(self) -> float:
        return (self._wall() - self._t0) * self.speed
