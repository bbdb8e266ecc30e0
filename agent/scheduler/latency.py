"""Per-variant windows of observed inference latency, and their p95."""

from __future__ import annotations

import math
from collections import deque


class LatencyWindow:
    """The last `max_samples` latencies of one variant, each with the time it was seen.

    p95 is over the samples younger than `max_age_seconds`, and None with fewer than
    `min_samples` of them (too few to judge). It is cached until a sample arrives or expires.
    """

    __slots__ = ("_samples", "max_age_seconds", "min_samples", "_cached", "_dirty")

    def __init__(self, max_samples: int, max_age_seconds: float, min_samples: int) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self.max_age_seconds = max_age_seconds
        self.min_samples = min_samples
        self._cached: float | None = None
        self._dirty = False

    def add(self, at: float, seconds: float) -> None:
        self._samples.append((at, seconds))
        self._dirty = True

    def __len__(self) -> int:
        return len(self._samples)

    def p95(self, now: float) -> float | None:
        samples = self._samples
        horizon = now - self.max_age_seconds
        while samples and samples[0][0] < horizon:
            samples.popleft()
            self._dirty = True
        if self._dirty:
            self._dirty = False
            if len(samples) < self.min_samples:
                self._cached = None
            else:
                values = sorted(s for _, s in samples)
                self._cached = values[max(0, math.ceil(0.95 * len(values)) - 1)]
        return self._cached
