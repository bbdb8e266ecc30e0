"""Why the scheduler chose what it chose: the bounded set of reasons.

These strings are metric label values (switches by reason) and go upstream in
DeviceState.switch_reason, so the set is closed: add a member here, nowhere else.
"""

from __future__ import annotations

import enum


class Reason(str, enum.Enum):
    INITIAL = "initial"
    """First choice after start (or after the scheduler had no variant)."""

    NEW_BUNDLE = "new_bundle"
    """The set of variants changed (a new bundle arrived or a profile was re-measured)."""

    BATTERY_CRITICAL = "battery_critical"
    """On battery at or below the critical trip: the cheapest variant, dwell time ignored."""

    BATTERY_LOW = "battery_low"
    """On battery at or below the low trip: only variants costing at most
    battery.low_max_cost_fraction of the most expensive one."""

    BATTERY_OK = "battery_ok"
    """The battery recovered above a clear level (without being plugged in)."""

    ON_BATTERY = "on_battery"
    """On battery with no trip: the cheapest variant whose quality is within
    battery.saver_max_quality_loss of the best variant's (battery saver)."""

    CHARGING = "charging"
    """Plugged in: battery constraints and the battery saver are lifted."""

    THERMAL_TRIP = "thermal_trip"
    """Temperature at or above the trip point: only variants costing at most
    thermal.max_cost_fraction of the most expensive one; dwell time ignored."""

    THERMAL_CLEAR = "thermal_clear"
    """Temperature stayed at or below the clear point for thermal.clear_hold_seconds."""

    LATENCY_BUDGET = "latency_budget"
    """The measured (or predicted, under the current load) p95 latency of the better
    variant exceeds the budget."""

    LATENCY_OK = "latency_ok"
    """A better variant's predicted p95 fits the budget again, with headroom."""

    LOAD_HIGH = "load_high"
    """CPU load at or above cpu_load.high_percent: only variants costing at most
    cpu_load.max_cost_fraction of the most expensive one."""

    LOAD_CLEAR = "load_clear"
    """CPU load stayed at or below cpu_load.clear_percent for cpu_load.clear_hold_seconds."""

    def __str__(self) -> str:
        return self.value


# Constraints in order of severity: when several bind, the first one names the decision.
SEVERITY = (
    Reason.BATTERY_CRITICAL, Reason.THERMAL_TRIP, Reason.BATTERY_LOW, Reason.LOAD_HIGH,
    Reason.LATENCY_BUDGET, Reason.ON_BATTERY,
)
