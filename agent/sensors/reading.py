"""What a sensor source hands the scheduler: one reading, every field optional.

A field is None when the device cannot measure it (a VM has no battery, a container often
has no thermal zone, psutil may raise). None means *unknown*, never zero: the scheduler
drops the constraint that reading would drive and falls back to what it measures itself
(its own inference latency).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class SensorReading:
    """One sample of the device's condition. Units are in the field names."""

    battery_percent: float | None = None          # 0..100 state of charge
    power_plugged: bool | None = None             # True on mains/charger
    temperature_celsius: float | None = None      # CPU package (or hottest CPU zone)
    cpu_load_percent: float | None = None         # 0..100, all cores together
    memory_available_bytes: int | None = None
    cpu_frequency_mhz: float | None = None
    source: str = "unknown"                       # "psutil", "simulated:<profile>", "replay:<file>"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def known_fields(self) -> tuple[str, ...]:
        """Names of the readings that are present (for logs and status pages)."""
        return tuple(f.name for f in dataclasses.fields(self)
                     if f.name != "source" and getattr(self, f.name) is not None)


@runtime_checkable
class SensorSource(Protocol):
    """Anything the agent can poll for readings.

    `read()` never raises for a missing or failing sensor: the field is None instead.
    `record_work(cpu_seconds)` is called after each inference with the CPU seconds it cost;
    real sources ignore it, simulated ones turn it into battery drain and heat.
    """

    def read(self) -> SensorReading: ...

    def record_work(self, cpu_seconds: float) -> None: ...
