"""The on-device scheduler: which variant to run now, and why.

Each `decide(reading)`:
  1. updates the constraint flags from the reading, with trip/clear hysteresis and a clear
     hold (the reading must stay clear for a while before the flag clears); a reading that is missing leaves its flag as it was
     until it has been missing for `stale_after_seconds`, then the constraint is lifted;
  2. filters the variants: cost (CPU seconds per inference) under the tightest active cap
     (battery critical -> the cheapest; thermal trip, battery low, load high -> a fraction
     of the costliest), and predicted p95 latency within the budget;
  3. takes the highest quality among them (the cheapest, if none passes), or on battery the
     cheapest of them whose quality is within battery.saver_max_quality_loss of the best
     variant overall (the battery saver);
  4. switches only if the dwell time since the last switch has passed, unless the switch is
     downward for an emergency (`dwell_exempt`) or the variant set changed.

Latency prediction: the running variant's own measured p95 (observe_latency) if it has
enough fresh samples; any other variant's unloaded p95 (its profile) times the running
variant's slow-down (measured median / its profile median). So load that slows the running
variant is assumed to slow the others in proportion, which is what lets the policy adapt to
load on a device with no sensors at all. The slow-down is read off medians because a served
call's tail holds waits a profile of back-to-back calls never sees (another thread holding
the GIL, a cold cache after an idle gap): those add the same milliseconds to every variant,
so a tail ratio taken on a fast variant overstates what a slower one would suffer. A better
variant must fit within upgrade_margin x budget (hysteresis for latency).

A prediction is still a model and can stay wrong. Held below a better variant by its
prediction alone for latency.probe_seconds, and with the CPU load, if that was high at the
step-down, fallen to half, the scheduler probes: it runs the next better variant and lets that
variant's own measurement keep it or send it back down, waiting twice as long before the
next probe after each failure (up to 16x).

decide() is O(variants) with no allocation beyond the Decision; thread-safe.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from agent.scheduler.latency import LatencyWindow
from agent.scheduler.policy import PolicyConfig
from agent.scheduler.reasons import SEVERITY, Reason
from agent.scheduler.variants import VariantOption
from agent.sensors.reading import SensorReading

_INF = float("inf")
_LOAD_FACTOR_RANGE = (0.25, 50.0)   # ignore absurd slow-down estimates (clock glitches)
_PROBE_BACKOFF_MAX = 16.0            # a failed probe doubles the wait up to this x probe_seconds
# A CPU load reading of at least this much at a latency step-down is taken to be its cause,
# and a probe waits until the load is down to half of it (our own share shrinks with the
# smaller variant, so a small drop says nothing).
_PROBE_LOAD_CAUSE_PERCENT = 30.0
_PROBE_LOAD_FALL = 0.5


class NoVariantsError(LookupError):
    """decide() before set_variants() gave the scheduler anything to choose from."""


@dataclass(frozen=True, slots=True)
class Decision:
    variant_id: str
    reason: Reason
    detail: str
    at: float                       # the scheduler clock's time of the decision
    changed: bool                   # True when this decision switches variant
    previous_variant_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"variant_id": self.variant_id, "reason": self.reason.value, "detail": self.detail,
                "at": self.at, "changed": self.changed, "previous_variant_id": self.previous_variant_id}


class Scheduler:
    def __init__(self, policy: PolicyConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy if policy is not None else PolicyConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._variants: dict[str, VariantOption] = {}
        self._by_quality: list[VariantOption] = []     # best first; ties: cheaper first
        self._cheapest: VariantOption | None = None
        self._max_cost = 0.0
        self._latency: dict[str, LatencyWindow] = {}
        self._new_bundle = False
        self.current: str | None = None
        self.history: deque[Decision] = deque(maxlen=self.policy.history_size)
        self.switch_counts: dict[str, int] = {}
        self._last_switch_at = -_INF
        self._last_reason: Reason | None = None
        self._recorded_reason: Reason | None = None    # the reason history last showed
        self._active_since_switch: frozenset[Reason] = frozenset()
        self._probe_backoff = 1.0                      # x policy.latency.probe_seconds
        self._probing: tuple[str, float] | None = None  # (variant probed, when)
        self._load_at_latency_down: float | None = None  # CPU load read at the last latency step-down
        # Constraint state (hysteresis memory).
        self._on_battery = False
        self._battery_low = False
        self._battery_critical = False
        self._low_ok_since: float | None = None
        self._critical_ok_since: float | None = None
        self._hot = False
        self._cool_since: float | None = None
        self._load_high = False
        self._calm_since: float | None = None
        self._seen = {"battery": -_INF, "temperature": -_INF, "load": -_INF}
        self._last: dict[str, Any] = {"battery_percent": None, "power_plugged": None,
                                      "temperature_celsius": None, "cpu_load_percent": None}

    # -- inputs -----------------------------------------------------------------------
    def set_variants(self, variants: Iterable[VariantOption]) -> None:
        """Replace the set of variants to choose from (a new bundle, or new profiles)."""
        variants = list(variants)
        ids = [v.variant_id for v in variants]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate variant ids in {ids}")
        lat = self.policy.latency
        with self._lock:
            changed = {v.variant_id: v for v in variants} != self._variants
            self._variants = {v.variant_id: v for v in variants}
            self._by_quality = sorted(variants, key=lambda v: (-v.quality, v.cost))
            self._cheapest = min(variants, key=lambda v: (v.cost, -v.quality)) if variants else None
            self._max_cost = max((v.cost for v in variants), default=0.0)
            self._latency = {vid: self._latency.get(vid) or
                             LatencyWindow(lat.window_samples, lat.window_seconds, lat.min_samples)
                             for vid in ids}
            if changed and self.current is not None:
                self._new_bundle = True

    def observe_latency(self, variant_id: str, seconds: float) -> None:
        """One inference of `variant_id` took `seconds` (wall time, as the caller saw it)."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            return
        now = self._clock()
        with self._lock:
            window = self._latency.get(variant_id)
            if window is not None:
                window.add(now, seconds)

    # -- the decision -----------------------------------------------------------------
    def decide(self, reading: SensorReading) -> Decision:
        now = self._clock()
        with self._lock:
            if not self._by_quality:
                raise NoVariantsError("no variants to choose from: call set_variants() first")
            self._update_constraints(reading, now)
            return self._decide_locked(now)

    def _decide_locked(self, now: float) -> Decision:
        policy = self.policy
        caps = self._caps()
        cap = min((c for _, c in caps), default=_INF)
        current = self._variants.get(self.current) if self.current is not None else None
        cur_p95 = self._latency[current.variant_id].p95(now) if current is not None else None
        factor = self._load_factor(current, cur_p95, now)
        budget = policy.latency.budget_p95_seconds
        upgrade_budget = budget * policy.latency.upgrade_margin

        def predicted(v: VariantOption) -> float | None:
            if current is not None and v is current and cur_p95 is not None:
                return cur_p95
            base = self._baseline_p95(v, now)
            return None if base is None else base * factor

        def latency_ok(v: VariantOption) -> bool:
            p = predicted(v)
            if p is None:
                return True       # never measured and no profile: nothing says it is too slow
            better = current is not None and (v.quality, -v.cost) > (current.quality, -current.cost)
            return p <= (upgrade_budget if better else budget)

        top = self._by_quality[0]
        chosen = None
        for v in self._by_quality:      # best first, so the first feasible is the best feasible
            if v.cost <= cap * (1 + 1e-9) and latency_ok(v):
                chosen = v
                break
        if chosen is None:
            chosen = self._cheapest
        best_feasible = chosen
        saver = policy.battery.saver_max_quality_loss
        if self._on_battery and saver > 0 and not self._battery_critical:
            # The allowance is against the best variant of all, so it does not compound
            # with the quality other constraints already cost.
            floor = top.quality - saver * abs(top.quality)
            for v in self._by_quality:
                if v.quality < floor:
                    break
                if v.cost < chosen.cost and v.cost <= cap * (1 + 1e-9) and latency_ok(v):
                    chosen = v

        # Which constraints are active now (bind the top variant)?
        active = {r for r, c in caps if top.cost > c * (1 + 1e-9)}
        if not latency_ok(top):
            active.add(Reason.LATENCY_BUDGET)
        if chosen is not best_feasible:
            active.add(Reason.ON_BATTERY)
        active_set = frozenset(active)
        # Everything that bound since the last switch: an upgrade is named for what cleared.
        self._active_since_switch = self._active_since_switch | active_set

        # Switch or hold, and why.
        if self.current is None:
            return self._switch(now, chosen, None, Reason.INITIAL, self._binding_text(active, chosen, top), active_set)
        if self._new_bundle or current is None:
            self._new_bundle = False
            if chosen is not current:
                gone = " (no longer in the set)" if current is None else ""
                return self._switch(now, chosen, self.current, Reason.NEW_BUNDLE,
                                    f"new variant set ({len(self._variants)} variants): "
                                    f"{_describe(chosen)} replaces {self.current}{gone}", active_set)
        self._settle_probe(now)
        if chosen is current:
            # Not while the battery saver picks by cost: it would send a probe straight back.
            saving = self._on_battery and saver > 0 and not self._battery_critical
            probe = self._probe_target(now, current, cur_p95, cap, not saving, upgrade_budget)
            if probe is not None:
                return self._probe(now, current, probe, cur_p95, predicted(probe), upgrade_budget, active_set)
            reason = _first_in_severity(active) or self._last_reason or Reason.INITIAL
            detail = (self._binding_text(active, chosen, top) if active
                      else f"{chosen.variant_id} is the best variant and fits every constraint")
            return self._hold(now, current, reason, detail)
        down = (chosen.quality, -chosen.cost) < (current.quality, -current.cost)
        if down:
            reason = self._why_not(current, caps, latency_ok, chosen, best_feasible) or Reason.LATENCY_BUDGET
            detail = f"{self._condition(reason)}: {_describe(chosen)} instead of {current.variant_id}"
        else:
            cleared = [r for r in SEVERITY if r in self._active_since_switch and r not in active]
            reason = self._clear_reason(cleared[0]) if cleared else Reason.LATENCY_OK
            detail = f"{self._condition(reason)}: {_describe(chosen)} replaces {current.variant_id}"
        since = now - self._last_switch_at
        if since < policy.min_dwell_seconds and not (down and reason in policy.dwell_exempt):
            held_reason = _first_in_severity(active) or self._last_reason or reason
            return self._hold(now, current, held_reason,
                              f"holding {current.variant_id} for the dwell time ({since:.0f} s < "
                              f"{policy.min_dwell_seconds:g} s); next: {detail}")
        return self._switch(now, chosen, current.variant_id, reason, detail, active_set)

    def _switch(self, now: float, chosen: VariantOption, previous: str | None,
                reason: Reason, detail: str, active: frozenset[Reason]) -> Decision:
        if self._probing is not None and previous == self._probing[0]:
            # The probed variant is left before it proved itself: if its own latency sent it
            # back, the prediction was right; wait longer before trying again.
            if reason is Reason.LATENCY_BUDGET:
                self._probe_backoff = min(_PROBE_BACKOFF_MAX, 2 * self._probe_backoff)
            self._probing = None
        if reason is Reason.LATENCY_BUDGET:
            self._load_at_latency_down = self._last["cpu_load_percent"]
        decision = Decision(chosen.variant_id, reason, detail, now, True, previous)
        self.current = chosen.variant_id
        self._last_switch_at = now
        self._last_reason = reason
        self._active_since_switch = active
        self._recorded_reason = _first_in_severity(active) or reason
        self.switch_counts[reason.value] = self.switch_counts.get(reason.value, 0) + 1
        self.history.append(decision)
        return decision

    def _hold(self, now: float, current: VariantOption, reason: Reason, detail: str) -> Decision:
        decision = Decision(current.variant_id, reason, detail, now, False, current.variant_id)
        # The history keeps switches and changes of reason, not every unchanged tick (a
        # switch already names the constraint that binds after it).
        if reason is not self._recorded_reason:
            self._recorded_reason = reason
            self.history.append(decision)
        return decision

    # -- constraints ------------------------------------------------------------------
    def _update_constraints(self, r: SensorReading, now: float) -> None:
        p, stale = self.policy, self.policy.stale_after_seconds
        last = self._last
        if r.battery_percent is not None or r.power_plugged is not None:
            self._seen["battery"] = now
            last["battery_percent"], last["power_plugged"] = r.battery_percent, r.power_plugged
            # No plug information but a charge level: assume the battery is what powers us.
            self._on_battery = r.power_plugged is False or (r.power_plugged is None and r.battery_percent is not None)
            pct, b = r.battery_percent, p.battery
            if not self._on_battery:
                self._battery_low = self._battery_critical = False
                self._critical_ok_since = self._low_ok_since = None
            elif pct is not None:
                self._battery_critical, self._critical_ok_since = _trip_clear(
                    self._battery_critical, self._critical_ok_since, pct <= b.critical_trip_percent,
                    pct >= b.critical_clear_percent, now, b.clear_hold_seconds)
                self._battery_low, self._low_ok_since = _trip_clear(
                    self._battery_low, self._low_ok_since, pct <= b.low_trip_percent,
                    pct >= b.low_clear_percent, now, b.clear_hold_seconds)
        elif now - self._seen["battery"] > stale:
            self._on_battery = self._battery_low = self._battery_critical = False
            self._critical_ok_since = self._low_ok_since = None
            last["battery_percent"] = last["power_plugged"] = None

        t = r.temperature_celsius
        if t is not None:
            self._seen["temperature"] = now
            last["temperature_celsius"] = t
            self._hot, self._cool_since = _trip_clear(
                self._hot, self._cool_since, t >= p.thermal.trip_celsius, t <= p.thermal.clear_celsius,
                now, p.thermal.clear_hold_seconds)
        elif now - self._seen["temperature"] > stale:
            self._hot, self._cool_since = False, None
            last["temperature_celsius"] = None

        load = r.cpu_load_percent
        if load is not None:
            self._seen["load"] = now
            last["cpu_load_percent"] = load
            self._load_high, self._calm_since = _trip_clear(
                self._load_high, self._calm_since, load >= p.cpu_load.high_percent,
                load <= p.cpu_load.clear_percent, now, p.cpu_load.clear_hold_seconds)
        elif now - self._seen["load"] > stale:
            self._load_high, self._calm_since = False, None
            last["cpu_load_percent"] = None

    def _caps(self) -> list[tuple[Reason, float]]:
        """Active cost caps (CPU seconds per inference), most severe first."""
        p, m = self.policy, self._max_cost
        caps = []
        if self._battery_critical and self._cheapest is not None:
            caps.append((Reason.BATTERY_CRITICAL, self._cheapest.cost))
        if self._hot:
            caps.append((Reason.THERMAL_TRIP, p.thermal.max_cost_fraction * m))
        if self._battery_low:
            caps.append((Reason.BATTERY_LOW, p.battery.low_max_cost_fraction * m))
        if self._load_high:
            caps.append((Reason.LOAD_HIGH, p.cpu_load.max_cost_fraction * m))
        return caps

    def _why_not(self, v: VariantOption, caps: list[tuple[Reason, float]],
                 latency_ok: Callable[[VariantOption], bool], chosen: VariantOption,
                 best_feasible: VariantOption) -> Reason | None:
        """The most severe constraint that rules out variant v (the one we are leaving)."""
        for reason, cap in caps:
            if v.cost > cap * (1 + 1e-9):
                return reason
        if not latency_ok(v):
            return Reason.LATENCY_BUDGET
        if chosen is not best_feasible:
            return Reason.ON_BATTERY
        return None

    def _clear_reason(self, cleared: Reason) -> Reason:
        if cleared in (Reason.BATTERY_CRITICAL, Reason.BATTERY_LOW, Reason.ON_BATTERY):
            return Reason.CHARGING if not self._on_battery else Reason.BATTERY_OK
        return {Reason.THERMAL_TRIP: Reason.THERMAL_CLEAR, Reason.LOAD_HIGH: Reason.LOAD_CLEAR,
                Reason.LATENCY_BUDGET: Reason.LATENCY_OK}[cleared]

    # -- latency ----------------------------------------------------------------------
    def _baseline_p95(self, v: VariantOption, now: float) -> float | None:
        if v.latency_p95_seconds > 0:
            return v.latency_p95_seconds
        if v.latency_p50_seconds > 0:
            return v.latency_p50_seconds
        return self._latency[v.variant_id].p95(now)

    def _load_factor(self, current: VariantOption | None, cur_p95: float | None, now: float) -> float:
        """How much slower than its profile the running variant runs now: the ratio of
        medians when the profile has one (see the module docstring), else of p95s."""
        if current is None or cur_p95 is None:
            return 1.0
        observed, base = cur_p95, self._baseline_p95(current, now)
        if current.latency_p50_seconds > 0:
            p50 = self._latency[current.variant_id].p50(now)
            if p50 is not None:
                observed, base = p50, current.latency_p50_seconds
        if not base:
            return 1.0
        lo, hi = _LOAD_FACTOR_RANGE
        return min(hi, max(lo, observed / base))

    # -- probing ----------------------------------------------------------------------
    def _probe_target(self, now: float, current: VariantOption, cur_p95: float | None, cap: float,
                      unbiased: bool, upgrade_budget: float) -> VariantOption | None:
        """The next better variant to run on trial, if a probe is due; else None.

        Due when: probing is on; the current variant was chosen on latency alone (`unbiased`:
        the battery saver is off; the better one passes every cost cap), runs measurably
        within the upgrade budget itself, has run for probe_seconds x backoff since the last
        switch, and the CPU load, if it was high at the step-down, is down to half of that."""
        wait = self.policy.latency.probe_seconds * self._probe_backoff
        if (wait <= 0 or not unbiased or cur_p95 is None or cur_p95 > upgrade_budget
                or now - self._last_switch_at < max(wait, self.policy.min_dwell_seconds)):
            return None
        # Load that is still there is what the prediction models, and it is likely right.
        load, then = self._last["cpu_load_percent"], self._load_at_latency_down
        if (load is not None and then is not None and then >= _PROBE_LOAD_CAUSE_PERCENT
                and load > _PROBE_LOAD_FALL * then):
            return None
        rank = (current.quality, -current.cost)
        better = [v for v in self._by_quality if (v.quality, -v.cost) > rank and v.cost <= cap * (1 + 1e-9)]
        return better[-1] if better else None          # the nearest step up, not the top

    def _probe(self, now: float, current: VariantOption, target: VariantOption, cur_p95: float,
               predicted: float | None, upgrade_budget: float, active: frozenset[Reason]) -> Decision:
        # Its old samples describe the load that sent it down: measure it afresh.
        self._latency[target.variant_id].clear()
        self._probing = (target.variant_id, now)
        pred = "unknown" if predicted is None else f"{predicted * 1e3:.1f} ms"
        detail = (f"probing {_describe(target)}: predicted p95 {pred} vs {upgrade_budget * 1e3:.3g} ms, "
                  f"but {current.variant_id} runs at p95 {cur_p95 * 1e3:.1f} ms; measuring it instead")
        return self._switch(now, target, current.variant_id, Reason.LATENCY_OK, detail, active)

    def _settle_probe(self, now: float) -> None:
        """A probed variant that kept running for a full latency window and as long as the
        wait before its probe has proved itself: the next probe waits probe_seconds again.
        (Judged any sooner, a variant that just fits would be probed, dropped by noise and
        probed again at the shortest wait, over and over.)"""
        if self._probing is None:
            return
        vid, since = self._probing
        lat = self.policy.latency
        if self.current != vid:
            self._probing = None
        elif now - since >= max(lat.window_seconds, lat.probe_seconds * self._probe_backoff):
            self._probing = None
            self._probe_backoff = 1.0

    # -- words ------------------------------------------------------------------------
    def _condition(self, reason: Reason) -> str:
        p, last = self.policy, self._last
        pct, temp, load = last["battery_percent"], last["temperature_celsius"], last["cpu_load_percent"]
        if reason is Reason.BATTERY_CRITICAL:
            return f"battery {_num(pct)}% critical (trip {p.battery.critical_trip_percent:g}%)"
        if reason is Reason.BATTERY_LOW:
            return (f"battery {_num(pct)}% low (trip {p.battery.low_trip_percent:g}%, "
                    f"clears at {p.battery.low_clear_percent:g}%)")
        if reason is Reason.BATTERY_OK:
            return f"battery {_num(pct)}% recovered"
        if reason is Reason.ON_BATTERY:
            return (f"on battery {_num(pct)}%: saving power within "
                    f"{p.battery.saver_max_quality_loss * 100:g}% of the best quality")
        if reason is Reason.CHARGING:
            return "plugged in"
        if reason is Reason.THERMAL_TRIP:
            return (f"temperature {_num(temp, 1)}°C hot (trip {p.thermal.trip_celsius:g}°C, "
                    f"clears at {p.thermal.clear_celsius:g}°C)")
        if reason is Reason.THERMAL_CLEAR:
            return (f"temperature {_num(temp, 1)}°C at or below {p.thermal.clear_celsius:g}°C "
                    f"for {p.thermal.clear_hold_seconds:g} s")
        if reason is Reason.LOAD_HIGH:
            return f"cpu load {_num(load)}% high (trip {p.cpu_load.high_percent:g}%)"
        if reason is Reason.LOAD_CLEAR:
            return f"cpu load {_num(load)}% at or below {p.cpu_load.clear_percent:g}%"
        if reason is Reason.LATENCY_BUDGET:
            return self._latency_text()
        if reason is Reason.LATENCY_OK:
            return "predicted p95 fits the latency budget again"
        return reason.value

    def _latency_text(self) -> str:
        budget_ms = self.policy.latency.budget_p95_seconds * 1e3
        cur = self.current
        p95 = self._latency[cur].p95(self._clock()) if cur in self._latency else None
        if p95 is not None:
            return f"p95 {p95 * 1e3:.1f} ms of {cur} vs budget {budget_ms:g} ms"
        return f"predicted p95 over the {budget_ms:g} ms budget"

    def _binding_text(self, active: set[Reason] | frozenset[Reason], chosen: VariantOption,
                      top: VariantOption) -> str:
        reason = _first_in_severity(active)
        if reason is None or chosen is top:
            return f"{_describe(chosen)}: the best variant, fits every constraint"
        return f"{self._condition(reason)}: {_describe(chosen)} instead of {top.variant_id}"

    def low_priority_pause(self) -> tuple[Reason, float] | None:
        """Why low-priority work should pause now, and the earliest it could resume (seconds):
        while the thermal trip holds (it clears only after thermal.clear_hold_seconds at or
        below the clear point) or the battery is critical (battery.clear_hold_seconds)."""
        with self._lock:
            if self._battery_critical:
                return Reason.BATTERY_CRITICAL, self.policy.battery.clear_hold_seconds
            if self._hot:
                return Reason.THERMAL_TRIP, self.policy.thermal.clear_hold_seconds
            return None

    def history_snapshot(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The newest `limit` decisions of the history (switches and changes of reason), oldest first."""
        with self._lock:
            items = list(self.history)
        if limit is not None:
            items = items[-limit:]
        return [d.as_dict() for d in items]

    # -- for status pages -------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """A snapshot for the local API and reports: constraints, readings, latencies."""
        now = self._clock()
        with self._lock:
            return {
                "current": self.current,
                "last_reason": self._last_reason.value if self._last_reason else None,
                "on_battery": self._on_battery,
                "battery_low": self._battery_low,
                "battery_critical": self._battery_critical,
                "thermal_trip": self._hot,
                "load_high": self._load_high,
                "readings": dict(self._last),
                "observed_p95_seconds": {vid: w.p95(now) for vid, w in self._latency.items()},
                "switch_counts": dict(self.switch_counts),
            }


def _trip_clear(active: bool, ok_since: float | None, tripped: bool, clear: bool, now: float,
                hold: float) -> tuple[bool, float | None]:
    """One hysteresis step: trip at once; clear only after reading clear for `hold` seconds.

    Returns the new (active, ok_since). Between the trip and clear levels nothing changes
    except that the clear timer restarts.
    """
    if tripped:
        return True, None
    if not active:
        return False, None
    if not clear:
        return True, None
    if ok_since is None:
        ok_since = now
    if now - ok_since >= hold:
        return False, None
    return True, ok_since


def _first_in_severity(reasons: set[Reason] | frozenset[Reason]) -> Reason | None:
    for r in SEVERITY:
        if r in reasons:
            return r
    return None


def _describe(v: VariantOption) -> str:
    return f"{v.variant_id} ({v.describe_cost()})"


def _num(x: float | None, digits: int = 0) -> str:
    return "?" if x is None else f"{x:.{digits}f}"
