"""Replay of a recorded sensor trace from CSV.

Columns (header required, order free, extra columns ignored):
    t_seconds, battery_percent, power_plugged, temperature_celsius, cpu_load_percent
An empty cell means the reading was missing at that time. `power_plugged` accepts
1/0, true/false, yes/no. Rows must have strictly increasing t_seconds.

Between rows, numeric readings are linearly interpolated ("interpolate", the default) or
held from the previous row ("step"); a reading missing on either side of the interval is
missing (a gap in the recording stays a gap). power_plugged always steps. Before the first
row the first row holds; after the last row the last row holds, or the trace repeats with
`loop=True`. `record_work` is ignored: a recording cannot react to the agent.
"""

from __future__ import annotations

import bisect
import csv
import os
import time
from typing import Callable

from agent.sensors.reading import SensorReading

COLUMNS = ("t_seconds", "battery_percent", "power_plugged", "temperature_celsius", "cpu_load_percent")
_NUMERIC = ("battery_percent", "temperature_celsius", "cpu_load_percent")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


class TraceError(ValueError):
    """A trace file that cannot be replayed."""


class ReplaySource:
    def __init__(self, path: str | os.PathLike[str], *, mode: str = "interpolate", loop: bool = False,
                 clock: Callable[[], float] = time.monotonic, speed: float = 1.0) -> None:
        if mode not in ("interpolate", "step"):
            raise ValueError(f"replay mode must be 'interpolate' or 'step', got {mode!r}")
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        self.path = os.fspath(path)
        self.mode = mode
        self.loop = loop
        self.speed = float(speed)
        self._clock = clock
        self._t0 = clock()
        self.times, self.columns = load_trace(self.path)
        self.work_cpu_seconds_total = 0.0

    @property
    def source_name(self) -> str:
        return f"replay:{os.path.basename(self.path)}"

    def record_work(self, cpu_seconds: float) -> None:
        self.work_cpu_seconds_total += max(0.0, cpu_seconds)

    def read(self) -> SensorReading:
        return self.reading_at((self._clock() - self._t0) * self.speed)

    def reading_at(self, t: float) -> SensorReading:
        times = self.times
        t = t + times[0]                 # trace time starts at its first row
        if self.loop and len(times) > 1 and t > times[-1]:
            t = times[0] + (t - times[0]) % (times[-1] - times[0])
        i = bisect.bisect_right(times, t) - 1      # last row at or before t
        i = max(0, i)
        values: dict[str, float | None] = {}
        for name in _NUMERIC:
            col = self.columns[name]
            lo = col[i]
            if self.mode == "step" or i + 1 >= len(times) or t <= times[i] or lo is None:
                values[name] = lo
                continue
            hi = col[i + 1]
            if hi is None:
                values[name] = None
                continue
            frac = (t - times[i]) / (times[i + 1] - times[i])
            values[name] = lo + (hi - lo) * frac
        plugged = self.columns["power_plugged"][i]
        return SensorReading(
            battery_percent=values["battery_percent"],
            power_plugged=None if plugged is None else bool(plugged),
            temperature_celsius=values["temperature_celsius"],
            cpu_load_percent=values["cpu_load_percent"],
            source=self.source_name,
        )


def load_trace(path: str) -> tuple[list[float], dict[str, list[float | None]]]:
    """Parse a trace file into (times, {column: values}); raises TraceError with the line."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise TraceError(f"{path}: missing column(s) {', '.join(missing)} (have {header})")
            times: list[float] = []
            columns: dict[str, list[float | None]] = {c: [] for c in COLUMNS[1:]}
            for row in reader:
                line = reader.line_num
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                t = _number(row["t_seconds"], path, line, "t_seconds")
                if t is None:
                    raise TraceError(f"{path}:{line}: t_seconds is empty")
                if times and t <= times[-1]:
                    raise TraceError(f"{path}:{line}: t_seconds {t} is not after {times[-1]}")
                times.append(t)
                for name in _NUMERIC:
                    columns[name].append(_number(row[name], path, line, name))
                columns["power_plugged"].append(_flag(row["power_plugged"], path, line))
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc}") from None
    if not times:
        raise TraceError(f"{path}: no rows")
    return times, columns


def _number(cell: str, path: str, line: int, name: str) -> float | None:
    if cell == "":
        return None
    try:
        value = float(cell)
    except ValueError:
        raise TraceError(f"{path}:{line}: {name} {cell!r} is not a number") from None
    if value != value:
        return None
    return value


def _flag(cell: str, path: str, line: int) -> float | None:
    low = cell.lower()
    if low == "":
        return None
    if low in _TRUE:
        return 1.0
    if low in _FALSE:
        return 0.0
    raise TraceError(f"{path}:{line}: power_plugged {cell!r} is not 1/0/true/false")
