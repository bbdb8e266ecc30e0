"""Real sensors through psutil, sampled at most once per `min_interval_seconds`.

Every psutil call is wrapped: a sensor that is absent (psutil returns None or an empty
dict), unimplemented on this platform (AttributeError, NotImplementedError) or failing
(OSError, FileNotFoundError when /sys/class/power_supply or /sys/class/thermal is missing)
yields None for that field. `read()` never raises because of a sensor.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Callable

import psutil

from agent.sensors.reading import SensorReading

log = logging.getLogger(__name__)

# psutil.sensors_temperatures() groups readings by driver. Where the CPU temperature lives,
# best first: Intel package/core sensors, AMD Tctl/Tdie, common ARM SoC zones, then the
# ACPI zone (often the CPU on laptops, but sometimes the chassis, hence last).
CPU_TEMPERATURE_DRIVERS = (
    "coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "soc_thermal",
    "x86_pkg_temp", "cpu", "acpitz",
)
# Within a driver, labels that name the whole package beat per-core labels.
_PACKAGE_LABEL = re.compile(r"^(package id \d+|tctl|tdie|cpu)$", re.IGNORECASE)
# Anything outside this range is a broken sensor (e.g. -273 or 255), not a temperature.
_PLAUSIBLE_CELSIUS = (-40.0, 150.0)


def _guarded(fn: Callable[[], Any], what: str, failed: set[str]) -> Any:
    """Call fn; on any exception return None and log once per sensor (not every second)."""
    try:
        return fn()
    except Exception as exc:  # psutil raises many kinds; a sensor must never crash the agent
        if what not in failed:
            failed.add(what)
            log.info("sensor %s unavailable: %s: %s", what, type(exc).__name__, exc)
        return None


def pick_cpu_temperature(temps: dict[str, list[Any]] | None) -> float | None:
    """The CPU temperature from psutil.sensors_temperatures() output, or None.

    Chooses the first known CPU driver present; within it, the package sensor if there is
    one, else the hottest core (the hottest core is what throttles).
    """
    if not temps:
        return None
    drivers = [d for d in CPU_TEMPERATURE_DRIVERS if temps.get(d)]
    if not drivers:
        # An unknown driver: only trust it if it is the only one (e.g. a single SoC zone).
        if len(temps) != 1:
            return None
        drivers = list(temps)
    entries = [e for e in temps[drivers[0]] if _plausible(getattr(e, "current", None))]
    if not entries:
        return None
    package = [e for e in entries if _PACKAGE_LABEL.match(getattr(e, "label", "") or "")]
    chosen = package or entries
    return float(max(e.current for e in chosen))


def _plausible(value: Any) -> bool:
    return isinstance(value, (int, float)) and _PLAUSIBLE_CELSIUS[0] < value < _PLAUSIBLE_CELSIUS[1]


class PsutilSource:
    """The device's own sensors. `record_work` is a no-op: the hardware measures itself."""

    source_name = "psutil"

    def __init__(self, *, min_interval_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval_seconds = float(min_interval_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: SensorReading | None = None
        self._cached_at = float("-inf")
        self._failed: set[str] = set()
        # cpu_percent(interval=None) measures since the previous call; the first call only
        # primes the counters (and returns a meaningless 0.0), so make it here.
        _guarded(lambda: psutil.cpu_percent(interval=None), "cpu_percent", self._failed)

    def read(self) -> SensorReading:
        with self._lock:
            now = self._clock()
            if self._cached is None or now - self._cached_at >= self.min_interval_seconds:
                self._cached = self._sample()
                self._cached_at = now
            return self._cached

    def record_work(self, cpu_seconds: float) -> None:
        return None

    def _sample(self) -> SensorReading:
        failed = self._failed
        battery = _guarded(lambda: psutil.sensors_battery(), "battery", failed)
        percent = plugged = None
        if battery is not None:
            percent = _float_or_none(getattr(battery, "percent", None))
            raw_plugged = getattr(battery, "power_plugged", None)
            plugged = bool(raw_plugged) if raw_plugged is not None else None
        temps = _guarded(lambda: psutil.sensors_temperatures(), "temperature", failed)
        temperature = _guarded(lambda: pick_cpu_temperature(temps), "temperature_pick", failed)
        load = _float_or_none(_guarded(lambda: psutil.cpu_percent(interval=None), "cpu_percent", failed))
        memory = _guarded(lambda: psutil.virtual_memory().available, "memory", failed)
        freq = _guarded(lambda: psutil.cpu_freq(), "cpu_freq", failed)
        mhz = _float_or_none(getattr(freq, "current", None)) if freq is not None else None
        return SensorReading(
            battery_percent=percent,
            power_plugged=plugged,
            temperature_celsius=temperature,
            cpu_load_percent=load,
            memory_available_bytes=int(memory) if isinstance(memory, (int, float)) else None,
            cpu_frequency_mhz=mhz if mhz else None,   # some VMs report 0.0: that is unknown
            source=self.source_name,
        )


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value == value else None   # NaN is unknown too
