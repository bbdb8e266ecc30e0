"""Per-variant windows of observed inference latency, and their p50 and p95."""

from __future__ import annotations

import math
from collections import deque


class LatencyWindow:
    """The last `max_samples` latencies of one variant, each with the time it was seen.

    p50/p95 are over the samples younger than `max_age_seconds`, and None with fewer than
    `min_samples` of them (too few to judge). The sorted samples are cached until a sample
    arrives or expires.
    """

    __slots__ = ("_samples", "max_age_seconds", "min_samples", "_sorted", "_dirty")

    def __init__(self, max_samples: int, max_age_seconds: float, min_samples: int) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self.max_age_seconds = max_age_seconds
        self.min_samples = min_samples
        self._sorted: list[float] = []
        self._dirty = False

    def add(self, at: float, seconds: float) -> None:
        self._samples.append((at, seconds))
        self._dirty = True

    def clear(self) -> None:
        """Forget every sample (they describe conditions that no longer hold)."""
        self._samples.clear()
        self._sorted = []
        self._dirty = False

    def __len__(self) -> int:
        return len(self._samples)

    def quantile(self, now: float, q: float) -> float | None:
        samples = self._samples
        horizon = now - self.max_age_seconds
        while samples and samples[0][0] < horizon:
            samples.popleft()
            self._dirty = True
        if self._dirty:
            self._dirty = False
            self._sorted = sorted(s for _, s in samples)
        values = self._sorted
        if len(values) < self.min_samples:
            return None
        return values[max(0, math.ceil(q * len(values)) - 1)]

    def p50(self, now: float) -> float | None:
        return self.quantile(now, 0.50)

    def p95(self, now: float) -> float | None:
        return self.quantile(now, 0.95)
