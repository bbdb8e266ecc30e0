"""Device sensors for the scheduler: real (psutil), simulated, or replayed from CSV.

    source = make_sensor_source("psutil")            # the device's own sensors
    source = make_sensor_source("sim:drain", speed=DEMO_SPEED, seed=0)   # profiles tuned for 10x
    source = make_sensor_source("replay:/path/trace.csv")
    reading = source.read()                           # SensorReading, fields may be None
    source.record_work(cpu_seconds)                   # after each inference

Only stdlib and psutil here: this ships to devices.
"""

from __future__ import annotations

import time
from typing import Callable

from agent.sensors.battery import BatteryConfig, BatteryModel, PowerModel
from agent.sensors.clock import ManualClock, ScaledClock
from agent.sensors.profiles import DEMO_SPEED, PROFILES
from agent.sensors.reading import SensorReading, SensorSource
from agent.sensors.replay import ReplaySource, TraceError
from agent.sensors.schedule import StepSchedule, Window
from agent.sensors.simulated import NoiseConfig, SimConfig, SimulatedSource
from agent.sensors.thermal import ThermalConfig, ThermalModel

__all__ = [
    "BatteryConfig", "BatteryModel", "DEMO_SPEED", "ManualClock", "NoiseConfig", "PROFILES", "PowerModel",
    "ReplaySource", "ScaledClock", "SensorReading", "SensorSource", "SimConfig", "SimulatedSource",
    "StepSchedule", "ThermalConfig", "ThermalModel", "TraceError", "Window", "make_sensor_source",
]

SPECS = ("psutil", *(f"sim:{name}" for name in PROFILES), "replay:<csv path>")


def make_sensor_source(spec: str, *, speed: float = 1.0, seed: int | None = None,
                       clock: Callable[[], float] = time.monotonic) -> SensorSource:
    """Build the source named by `spec`: "psutil", "sim:drain", "sim:heat", "sim:mains" or
    "replay:<csv path>".

    `speed` is simulated seconds per second of `clock` (simulated and replayed sources
    only); `seed` seeds the simulated sensor noise. Raises ValueError for an unknown spec
    and TraceError (a ValueError) for an unreadable trace.
    """
    if not speed > 0:
        raise ValueError(f"speed must be > 0, got {speed!r}")
    if spec == "psutil":
        from agent.sensors.psutil_source import PsutilSource   # psutil only when asked for
        return PsutilSource(clock=clock)
    kind, _, arg = spec.partition(":")
    if kind == "sim" and arg in PROFILES:
        return SimulatedSource(PROFILES[arg], clock=clock, speed=speed, seed=seed)
    if kind == "replay" and arg:
        return ReplaySource(arg, clock=clock, speed=speed)
    raise ValueError(f"unknown sensor source {spec!r}; expected one of {', '.join(SPECS)}")
