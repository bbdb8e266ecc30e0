"""A simulated device behind the SensorSource interface: battery, RC thermal model,
background load, sensor noise.

Time: simulated seconds = speed * (clock() - clock() at creation). Tests and benchmarks pass
a `ManualClock` and step it; the daemon passes nothing (time.monotonic) and a `speed`.

Work: `record_work(cpu_seconds)` adds CPU work done by inference. When the model advances
over an interval it spreads the work recorded since the last advance evenly over it:
    busy_cores  = work_cpu_seconds / dt + background_load * cores     (capped at cores)
    utilisation = busy_cores / cores               -> cpu_load_percent
    power_w     = idle_w + core_w * busy_cores     -> battery drain and heat
Recorded work is multiplied by `speed`: at speed 10 a wall second stands for ten simulated
seconds of the same request stream, so the simulated device sees the same utilisation as
the real process does.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from agent.sensors.battery import BatteryConfig, BatteryModel, PowerModel
from agent.sensors.reading import SensorReading
from agent.sensors.schedule import StepSchedule
from agent.sensors.thermal import ThermalConfig, ThermalModel

GIB = 1 << 30


@dataclass(frozen=True)
class NoiseConfig:
    """Standard deviations of the Gaussian noise added to each reading (0 = exact)."""

    battery_percent_sd: float = 0.0       # percentage points
    temperature_celsius_sd: float = 0.0   # kelvin
    cpu_load_percent_sd: float = 0.0      # percentage points

    def __post_init__(self) -> None:
        if min(self.battery_percent_sd, self.temperature_celsius_sd, self.cpu_load_percent_sd) < 0:
            raise ValueError("noise standard deviations must be >= 0")


@dataclass(frozen=True)
class SimConfig:
    """One simulated device. `battery`/`thermal` None = the device has no such sensor."""

    name: str = "custom"
    cores: int = 4
    power: PowerModel = field(default_factory=PowerModel)
    battery: BatteryConfig | None = field(default_factory=BatteryConfig)
    thermal: ThermalConfig | None = field(default_factory=ThermalConfig)
    ambient_celsius: StepSchedule = StepSchedule.constant(25.0)
    background_load: StepSchedule = StepSchedule.constant(0.05)   # fraction of all cores, 0..1
    plugged: StepSchedule = StepSchedule.constant(0.0)            # 1 = on the charger
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    memory_available_bytes: int = 2 * GIB
    cpu_frequency_mhz: float = 2000.0
    throttle_celsius: float | None = 90.0     # above this the reported clock drops to 60 %
    max_step_seconds: float = 1.0             # integration step (schedule edges are exact)

    def __post_init__(self) -> None:
        if self.cores < 1:
            raise ValueError("cores must be >= 1")
        if not self.max_step_seconds > 0:
            raise ValueError("max_step_seconds must be > 0")


class SimulatedSource:
    def __init__(self, config: SimConfig, *, clock: Callable[[], float] = time.monotonic,
                 speed: float = 1.0, seed: int | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        self.config = config
        self.speed = float(speed)
        self._clock = clock
        self._t0 = clock()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._pending_work = 0.0
        self.sim_seconds = 0.0
        self.utilisation = config.background_load.value_at(0.0)
        self.work_cpu_seconds_total = 0.0
        self.battery = BatteryModel(config.battery) if config.battery is not None else None
        self.thermal: ThermalModel | None = None
        if config.thermal is not None:
            start = config.thermal.start_celsius
            if start is None:
                idle_power = config.power.draw_w(self.utilisation * config.cores)
                start = config.ambient_celsius.value_at(0.0) + config.thermal.resistance_k_per_w * idle_power
            self.thermal = ThermalModel(config.thermal, start)

    @property
    def source_name(self) -> str:
        return f"simulated:{self.config.name}"

    # -- the SensorSource interface ---------------------------------------------------
    def record_work(self, cpu_seconds: float) -> None:
        if cpu_seconds > 0:
            with self._lock:
                self._pending_work += cpu_seconds * self.speed

    def read(self) -> SensorReading:
        with self._lock:
            self._advance_locked(self._now())
            return self._reading_locked()

    # -- for benchmarks and tests: the noise-free state --------------------------------
    def advance(self) -> None:
        """Bring the model up to the clock's present without taking a reading."""
        with self._lock:
            self._advance_locked(self._now())

    @property
    def battery_percent(self) -> float | None:
        return self.battery.percent if self.battery is not None else None

    @property
    def temperature_celsius(self) -> float | None:
        return self.thermal.celsius if self.thermal is not None else None

    @property
    def plugged(self) -> bool:
        return self.config.plugged.value_at(self.sim_seconds) >= 0.5

    @property
    def background_load(self) -> float:
        return self.config.background_load.value_at(self.sim_seconds)

    # -- internals -------------------------------------------------------------------
    def _now(self) -> float:
        return (self._clock() - self._t0) * self.speed

    def _advance_locked(self, now: float) -> None:
        cfg = self.config
        total = now - self.sim_seconds
        if total <= 0:
            return
        work_rate = self._pending_work / total        # busy cores from inference
        self.work_cpu_seconds_total += self._pending_work
        self._pending_work = 0.0
        t = self.sim_seconds
        busy_sum = 0.0
        while t < now:
            edge = min(cfg.background_load.next_change_after(t), cfg.ambient_celsius.next_change_after(t),
                       cfg.plugged.next_change_after(t))
            t_next = min(now, t + cfg.max_step_seconds, edge)
            dt = t_next - t
            busy = min(float(cfg.cores), work_rate + cfg.background_load.value_at(t) * cfg.cores)
            power = cfg.power.draw_w(busy)
            if self.battery is not None:
                self.battery.step(dt, power, cfg.plugged.value_at(t) >= 0.5)
            if self.thermal is not None:
                self.thermal.step(dt, power, cfg.ambient_celsius.value_at(t))
            busy_sum += busy * dt
            t = t_next
        self.sim_seconds = now
        self.utilisation = busy_sum / total / cfg.cores

    def _reading_locked(self) -> SensorReading:
        cfg, noise, rng = self.config, self.config.noise, self._rng
        battery = plugged = temperature = None
        if self.battery is not None:
            battery = _clip(self.battery.percent + _gauss(rng, noise.battery_percent_sd), 0.0, 100.0)
            plugged = self.plugged
        if self.thermal is not None:
            temperature = self.thermal.celsius + _gauss(rng, noise.temperature_celsius_sd)
        load = _clip(100.0 * self.utilisation + _gauss(rng, noise.cpu_load_percent_sd), 0.0, 100.0)
        freq = cfg.cpu_frequency_mhz
        if cfg.throttle_celsius is not None and self.thermal is not None and self.thermal.celsius > cfg.throttle_celsius:
            freq *= 0.6
        return SensorReading(
            battery_percent=battery,
            power_plugged=plugged,
            temperature_celsius=temperature,
            cpu_load_percent=load,
            memory_available_bytes=cfg.memory_available_bytes,
            cpu_frequency_mhz=freq,
            source=self.source_name,
        )


def _gauss(rng: random.Random, sd: float) -> float:
    return rng.gauss(0.0, sd) if sd > 0 else 0.0


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x
