"""The scheduling policy: thresholds, budgets and timings, loaded from TOML.

Every field has a default, so an empty file (or no file) is a valid policy. Unknown keys,
wrong types and inconsistent thresholds are rejected with `PolicyError` naming the key:
a typo in a trip point must not silently fall back to a default. See
agent/scheduler/policy.example.toml for a commented example with every key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from typing import Any

from agent.scheduler.reasons import Reason

POLICY_VERSION = 1


class PolicyError(ValueError):
    """A policy file or value that cannot be used."""


@dataclass(frozen=True)
class LatencyPolicy:
    budget_p95_seconds: float = 0.100     # p95 inference latency the application can accept
    upgrade_margin: float = 0.8           # a better variant must be predicted <= margin * budget
    window_samples: int = 64              # latency observations kept per variant
    window_seconds: float = 30.0          # observations older than this are forgotten
    min_samples: int = 8                  # fewer fresh observations than this = no measurement
    # Held below a better variant only because its *predicted* p95 is over budget: after this
    # long, run the better one and let its own measurement decide (a prediction is a model of
    # the load, and can stay wrong). Each failed probe doubles the wait, up to 16x. 0 = never.
    probe_seconds: float = 120.0

    def check(self) -> None:
        _positive("latency.budget_p95_seconds", self.budget_p95_seconds)
        _fraction("latency.upgrade_margin", self.upgrade_margin)
        _positive("latency.window_seconds", self.window_seconds)
        _non_negative("latency.probe_seconds", self.probe_seconds)
        if self.min_samples < 1:
            raise PolicyError("latency.min_samples must be >= 1")
        if self.window_samples < self.min_samples:
            raise PolicyError("latency.window_samples must be >= latency.min_samples")


@dataclass(frozen=True)
class BatteryPolicy:
    low_trip_percent: float = 20.0
    low_clear_percent: float = 25.0
    critical_trip_percent: float = 10.0
    critical_clear_percent: float = 13.0
    # Unplugged, a reading above a clear level must hold this long before the trip clears
    # (a discharging battery does not really recover: short excursions are gauge noise).
    # Plugging in clears at once.
    clear_hold_seconds: float = 60.0
    low_max_cost_fraction: float = 0.5    # when low: cost <= this x the costliest variant's
    # On battery (no trip): take the cheapest variant whose quality is at most this fraction
    # of the best variant's quality below it (0.01 = 1 %, 0.7 points at 72 % top-1).
    # 0 disables the battery saver.
    saver_max_quality_loss: float = 0.01

    def check(self) -> None:
        ct, cc, lt, lc = (self.critical_trip_percent, self.critical_clear_percent,
                          self.low_trip_percent, self.low_clear_percent)
        for name, v in (("critical_trip_percent", ct), ("critical_clear_percent", cc),
                        ("low_trip_percent", lt), ("low_clear_percent", lc)):
            if not 0.0 <= v <= 100.0:
                raise PolicyError(f"battery.{name} = {v} is outside 0..100")
        if not ct < cc:
            raise PolicyError(f"battery.critical_clear_percent ({cc}) must be above critical_trip_percent ({ct})")
        if not lt < lc:
            raise PolicyError(f"battery.low_clear_percent ({lc}) must be above low_trip_percent ({lt})")
        if not ct < lt:
            raise PolicyError(f"battery.critical_trip_percent ({ct}) must be below low_trip_percent ({lt})")
        _non_negative("battery.clear_hold_seconds", self.clear_hold_seconds)
        _fraction("battery.low_max_cost_fraction", self.low_max_cost_fraction)
        if not 0.0 <= self.saver_max_quality_loss < 1.0:
            raise PolicyError("battery.saver_max_quality_loss must be within [0, 1)")


@dataclass(frozen=True)
class ThermalPolicy:
    trip_celsius: float = 80.0
    clear_celsius: float = 72.0
    clear_hold_seconds: float = 30.0      # must read <= clear this long before clearing
    max_cost_fraction: float = 0.4        # when hot: cost <= this x the costliest variant's

    def check(self) -> None:
        if not self.clear_celsius < self.trip_celsius:
            raise PolicyError(f"thermal.clear_celsius ({self.clear_celsius}) must be below "
                              f"thermal.trip_celsius ({self.trip_celsius})")
        _non_negative("thermal.clear_hold_seconds", self.clear_hold_seconds)
        _fraction("thermal.max_cost_fraction", self.max_cost_fraction)


@dataclass(frozen=True)
class LoadPolicy:
    high_percent: float = 90.0            # whole-device CPU load, all cores
    clear_percent: float = 75.0
    clear_hold_seconds: float = 10.0
    max_cost_fraction: float = 0.6

    def check(self) -> None:
        if not 0.0 <= self.clear_percent < self.high_percent <= 100.0:
            raise PolicyError(f"cpu_load: need 0 <= clear_percent ({self.clear_percent}) < "
                              f"high_percent ({self.high_percent}) <= 100")
        _non_negative("cpu_load.clear_hold_seconds", self.clear_hold_seconds)
        _fraction("cpu_load.max_cost_fraction", self.max_cost_fraction)


@dataclass(frozen=True)
class PolicyConfig:
    """Everything the scheduler needs to know about what matters on this device.

    Args:
        version: policy format version (1).
        min_dwell_seconds: no switch within this time of the previous one, except a
            downward switch for a reason in `dwell_exempt` or a new bundle.
        dwell_exempt: reasons urgent enough to override the dwell time.
        stale_after_seconds: a reading missing for longer than this is unknown, and the
            constraint it drove is lifted (until then the last state holds).
        history_size: decisions kept in Scheduler.history.
    """

    version: int = POLICY_VERSION
    min_dwell_seconds: float = 15.0
    dwell_exempt: tuple[Reason, ...] = (Reason.BATTERY_CRITICAL, Reason.THERMAL_TRIP)
    stale_after_seconds: float = 30.0
    history_size: int = 256
    latency: LatencyPolicy = field(default_factory=LatencyPolicy)
    battery: BatteryPolicy = field(default_factory=BatteryPolicy)
    thermal: ThermalPolicy = field(default_factory=ThermalPolicy)
    cpu_load: LoadPolicy = field(default_factory=LoadPolicy)   # [cpu_load] (`load` is the loader)

    def __post_init__(self) -> None:
        if self.version != POLICY_VERSION:
            raise PolicyError(f"policy version {self.version!r} is not supported (expected {POLICY_VERSION})")
        _non_negative("min_dwell_seconds", self.min_dwell_seconds)
        _positive("stale_after_seconds", self.stale_after_seconds)
        if self.history_size < 1:
            raise PolicyError("history_size must be >= 1")
        for part in (self.latency, self.battery, self.thermal, self.cpu_load):
            part.check()

    # -- loading ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | None) -> "PolicyConfig":
        """The policy in the TOML file at `path`; None gives the defaults."""
        if path is None:
            return cls()
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"policy file {path} is not valid TOML: {exc}") from None
        try:
            return cls.from_dict(raw)
        except PolicyError as exc:
            raise PolicyError(f"policy file {path}: {exc}") from None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "PolicyConfig":
        sections = {"latency": LatencyPolicy, "battery": BatteryPolicy,
                    "thermal": ThermalPolicy, "cpu_load": LoadPolicy}
        kwargs: dict[str, Any] = {}
        top = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in raw.items():
            if key not in top:
                raise PolicyError(f"unknown key {key!r} (known: {', '.join(sorted(top))})")
            if key in sections:
                if not isinstance(value, dict):
                    raise PolicyError(f"[{key}] must be a table")
                kwargs[key] = _section(sections[key], key, value)
            elif key == "dwell_exempt":
                kwargs[key] = _reasons(value)
            else:
                kwargs[key] = _typed(key, value, top[key].type)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dwell_exempt"] = [r.value for r in self.dwell_exempt]
        return d


def _section(kind: type, name: str, raw: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(kind)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise PolicyError(f"unknown key {name}.{key!r} (known: {', '.join(sorted(fields))})")
        kwargs[key] = _typed(f"{name}.{key}", value, fields[key].type)
    return kind(**kwargs)


def _typed(key: str, value: Any, annotation: Any) -> Any:
    # Annotations are strings under `from __future__ import annotations`.
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if isinstance(value, bool):
        raise PolicyError(f"{key} must be a number, not a boolean")
    if kind == "int":
        if not isinstance(value, int):
            raise PolicyError(f"{key} must be an integer, got {value!r}")
        return value
    if kind == "float":
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PolicyError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    raise PolicyError(f"{key} cannot be set from a file")


def _reasons(value: Any) -> tuple[Reason, ...]:
    if not isinstance(value, list):
        raise PolicyError("dwell_exempt must be a list of reason names")
    out = []
    for item in value:
        try:
            out.append(Reason(item))
        except ValueError:
            raise PolicyError(f"dwell_exempt: unknown reason {item!r} "
                              f"(known: {', '.join(r.value for r in Reason)})") from None
    return tuple(out)


def _positive(key: str, v: float) -> None:
    if not v > 0:
        raise PolicyError(f"{key} must be > 0, got {v}")


def _non_negative(key: str, v: float) -> None:
    if not v >= 0:
        raise PolicyError(f"{key} must be >= 0, got {v}")


def _fraction(key: str, v: float) -> None:
    if not 0.0 < v <= 1.0:
        raise PolicyError(f"{key} must be within (0, 1], got {v}")
