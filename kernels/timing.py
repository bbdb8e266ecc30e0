"""Pick the fastest of several ways to compute the same thing, by timing them here.

Used where the candidates give identical results (two packings of the same integers), so the
choice changes speed only. The candidates take turns, round after round, and each keeps its
best time: timed one block per candidate, a few-microsecond call is picked by whichever block
a noisy moment on a shared machine happened to spare.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence


def fastest_index(candidates: Sequence[Callable[[], object]], rounds: int = 7, calls: int = 1,
                  warm: int = 0) -> int:
    """Index of the candidate with the lowest best-of-`rounds` time for `calls` calls, after
    one untimed warm-up call each (first touch of buffers and packed weights). `warm` untimed
    calls before every timed block time each candidate with its data back in cache as far as
    it fits, as when it runs call after call, rather than just after the other candidates'
    blocks evicted it (megabytes of weights take a few calls to settle: seen on Zen 4)."""
    for run in candidates:
        run()
    best = [float("inf")] * len(candidates)
    for _ in range(rounds):
        for i, run in enumerate(candidates):
            for _ in range(warm):
                run()
            start = time.perf_counter()
            for _ in range(calls):
                run()
            best[i] = min(best[i], time.perf_counter() - start)
    return best.index(min(best))
