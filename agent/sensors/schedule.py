"""Piecewise-constant signals of simulated time: background load, ambient temperature,
plugged/unplugged. A base value, overridden inside windows, optionally repeating."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    start_seconds: float
    end_seconds: float
    value: float

    def __post_init__(self) -> None:
        if not self.end_seconds > self.start_seconds:
            raise ValueError(f"window end {self.end_seconds} must be after start {self.start_seconds}")


@dataclass(frozen=True)
class StepSchedule:
    """`base` everywhere except inside `windows` (the first window containing t wins).

    With `period_seconds`, the pattern repeats: t is taken modulo the period, so windows
    describe one cycle (e.g. a 30 s burst every 5 minutes).
    """

    base: float
    windows: tuple[Window, ...] = ()
    period_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.period_seconds is not None and not self.period_seconds > 0:
            raise ValueError("period_seconds must be > 0")

    @classmethod
    def constant(cls, value: float) -> "StepSchedule":
        return cls(base=value)

    @classmethod
    def bursts(cls, base: float, level: float, *, start_seconds: float, duration_seconds: float,
               period_seconds: float | None = None) -> "StepSchedule":
        """`level` for `duration_seconds` from `start_seconds` (every period, if given)."""
        return cls(base, (Window(start_seconds, start_seconds + duration_seconds, level),),
                   period_seconds)

    def value_at(self, t: float) -> float:
        if self.period_seconds is not None:
            t = t % self.period_seconds
        for w in self.windows:
            if w.start_seconds <= t < w.end_seconds:
                return w.value
        return self.base

    def next_change_after(self, t: float) -> float:
        """The first time > t at which the value may change (for exact sub-stepping)."""
        offset = 0.0
        local = t
        if self.period_seconds is not None:
            offset = t - (t % self.period_seconds)
            local = t - offset
        edges = sorted({e for w in self.windows for e in (w.start_seconds, w.end_seconds)})
        for e in edges:
            if e > local:
                return offset + e
        if self.period_seconds is not None:
            return offset + self.period_seconds
        return float("inf")
