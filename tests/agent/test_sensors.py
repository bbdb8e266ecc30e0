"""Sensors: psutil readings degrade to None, simulated battery and thermal physics, replay."""

from __future__ import annotations

import math
import subprocess
import sys

import psutil
import pytest

from agent.sensors import (DEMO_SPEED, BatteryConfig, ManualClock, NoiseConfig, PowerModel, ReplaySource,
                           SensorReading, SensorSource, SimConfig, SimulatedSource, StepSchedule,
                           ThermalConfig, TraceError, Window, make_sensor_source)
from agent.sensors.psutil_source import PsutilSource, pick_cpu_temperature
from tests.conftest import REPO_ROOT


# -- psutil ------------------------------------------------------------------------------
def test_psutil_source_reads_what_this_machine_has_and_none_for_the_rest():
    reading = make_sensor_source("psutil").read()
    assert isinstance(reading, SensorReading)
    assert reading.source == "psutil"
    # Whatever psutil says directly must be what we report: None where it has nothing.
    if psutil.sensors_battery() is None:
        assert reading.battery_percent is None and reading.power_plugged is None
    if not psutil.sensors_temperatures():
        assert reading.temperature_celsius is None
    assert reading.cpu_load_percent is not None and 0.0 <= reading.cpu_load_percent <= 100.0
    assert reading.memory_available_bytes is not None and reading.memory_available_bytes > 0


def test_psutil_source_turns_every_raising_sensor_into_none(monkeypatch):
    # The one place a mock is right: make each psutil call fail the way platforms do.
    def raiser(exc):
        def fn(*args, **kwargs):
            raise exc
        return fn
    monkeypatch.setattr(psutil, "sensors_battery", raiser(FileNotFoundError("/sys/class/power_supply")))
    monkeypatch.setattr(psutil, "sensors_temperatures", raiser(NotImplementedError()))
    monkeypatch.setattr(psutil, "cpu_percent", raiser(OSError("no /proc/stat")))
    monkeypatch.setattr(psutil, "virtual_memory", raiser(PermissionError("denied")))
    monkeypatch.setattr(psutil, "cpu_freq", raiser(AttributeError("cpu_freq")))
    reading = PsutilSource().read()
    assert reading == SensorReading(source="psutil")
    assert reading.known_fields() == ()


def test_psutil_source_when_psutil_lacks_the_functions(monkeypatch):
    # Some platforms' psutil has no sensors_* at all: attribute lookup itself fails.
    monkeypatch.delattr(psutil, "sensors_battery")
    monkeypatch.delattr(psutil, "sensors_temperatures")
    reading = PsutilSource().read()
    assert reading.battery_percent is None and reading.temperature_celsius is None
    assert reading.memory_available_bytes is not None


def test_psutil_source_samples_at_most_once_per_interval(monkeypatch):
    calls = []
    real = psutil.virtual_memory
    monkeypatch.setattr(psutil, "virtual_memory", lambda: calls.append(1) or real())
    clock = ManualClock()
    source = PsutilSource(clock=clock)
    first = source.read()
    clock.advance(0.5)
    assert source.read() is first and len(calls) == 1
    clock.advance(0.6)
    source.read()
    assert len(calls) == 2


class _T:
    def __init__(self, label, current):
        self.label, self.current = label, current


def test_cpu_temperature_prefers_the_package_sensor_then_the_hottest_core():
    temps = {"acpitz": [_T("", 40.0)],
             "coretemp": [_T("Package id 0", 61.0), _T("Core 0", 66.0), _T("Core 1", 58.0)]}
    assert pick_cpu_temperature(temps) == 61.0
    temps["coretemp"] = [_T("Core 0", 66.0), _T("Core 1", 58.0)]
    assert pick_cpu_temperature(temps) == 66.0
    assert pick_cpu_temperature({"k10temp": [_T("Tctl", 70.5), _T("Tccd1", 64.0)]}) == 70.5
    # Implausible values (broken sensors) and unknown drivers among several are ignored.
    assert pick_cpu_temperature({"coretemp": [_T("Core 0", -273.0)]}) is None
    assert pick_cpu_temperature({"nvme": [_T("Composite", 40.0)], "iwlwifi": [_T("", 45.0)]}) is None
    assert pick_cpu_temperature({"soc_dts0": [_T("", 52.0)]}) == 52.0
    assert pick_cpu_temperature({}) is None and pick_cpu_temperature(None) is None


def test_sources_satisfy_the_protocol_and_bad_specs_are_rejected(tmp_path):
    for spec in ("psutil", "sim:drain", "sim:heat", "sim:mains"):
        assert isinstance(make_sensor_source(spec), SensorSource)
    with pytest.raises(ValueError, match="unknown sensor source"):
        make_sensor_source("sim:volcano")
    with pytest.raises(TraceError):
        make_sensor_source(f"replay:{tmp_path / 'missing.csv'}")


def test_importing_sensors_and_scheduler_keeps_heavy_packages_out():
    # A fresh interpreter: this test process may have imported torch for other tests.
    code = ("import sys, agent.sensors, agent.scheduler; "
            "bad = [m for m in ('torch', 'onnx', 'server', 'compressor') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


# -- simulated battery -------------------------------------------------------------------
def _quiet_device(**overrides) -> SimConfig:
    base = dict(name="test", cores=4, power=PowerModel(idle_w=1.0, core_w=2.0),
                battery=BatteryConfig(capacity_wh=1.0, start_percent=80.0, charge_w=4.0),
                thermal=ThermalConfig(resistance_k_per_w=10.0, time_constant_seconds=50.0, start_celsius=25.0),
                ambient_celsius=StepSchedule.constant(25.0), background_load=StepSchedule.constant(0.0),
                plugged=StepSchedule.constant(0.0))
    base.update(overrides)
    return SimConfig(**base)


def _run(source: SimulatedSource, clock: ManualClock, seconds: int, work_per_second: float) -> SensorReading:
    for _ in range(seconds):
        source.record_work(work_per_second)
        clock.advance(1.0)
        reading = source.read()
    return reading


def test_battery_drains_in_proportion_to_recorded_work_plus_idle():
    drops = {}
    for work in (0.0, 1.0, 2.0):
        clock = ManualClock()
        cfg = _quiet_device(battery=BatteryConfig(capacity_wh=10.0, start_percent=80.0))
        source = SimulatedSource(cfg, clock=clock)
        reading = _run(source, clock, 600, work)
        drops[work] = 80.0 - reading.battery_percent
    # Idle drain is there, more work drains more, and linearly: P = 1 W + 2 W * busy cores.
    assert drops[0.0] > 0
    assert drops[0.0] < drops[1.0] < drops[2.0]
    expected_idle = 1.0 * 600 / 3600 / 10.0 * 100   # 1 W for 600 s from a 10 Wh battery, in %
    assert drops[0.0] == pytest.approx(expected_idle, rel=1e-6)
    assert drops[2.0] - drops[1.0] == pytest.approx(drops[1.0] - drops[0.0], rel=1e-6)
    assert drops[1.0] == pytest.approx(3.0 * expected_idle, rel=1e-6)


def test_battery_charges_when_plugged_and_follows_a_plug_schedule():
    clock = ManualClock()
    plug = StepSchedule(0.0, (Window(100.0, 400.0, 1.0),))
    source = SimulatedSource(_quiet_device(plugged=plug), clock=clock)
    at_100 = _run(source, clock, 99, 0.5)
    assert at_100.power_plugged is False and at_100.battery_percent < 80.0
    at_200 = _run(source, clock, 101, 0.5)
    assert at_200.power_plugged is True and at_200.battery_percent > at_100.battery_percent
    full = _run(source, clock, 200, 0.5)
    assert full.battery_percent <= 100.0
    after = _run(source, clock, 100, 0.5)
    assert after.power_plugged is False and after.battery_percent < full.battery_percent


def test_battery_never_goes_below_empty():
    clock = ManualClock()
    source = SimulatedSource(_quiet_device(battery=BatteryConfig(capacity_wh=0.01, start_percent=5.0)), clock=clock)
    assert _run(source, clock, 300, 4.0).battery_percent == 0.0
    assert source.battery.empty


def test_recorded_work_scales_with_speed():
    # At speed 10 a wall second is ten simulated seconds; the same work per wall second
    # must read as the same utilisation.
    loads = []
    for speed in (1.0, 10.0):
        clock = ManualClock()
        source = SimulatedSource(_quiet_device(), clock=clock, speed=speed)
        source.record_work(1.0)
        clock.advance(1.0)
        loads.append(source.read().cpu_load_percent)
        assert source.sim_seconds == pytest.approx(speed)
    assert loads[0] == pytest.approx(25.0) and loads[1] == pytest.approx(25.0)


# -- simulated thermal -------------------------------------------------------------------
def test_thermal_model_heats_monotonically_under_load_toward_the_steady_state():
    clock = ManualClock()
    source = SimulatedSource(_quiet_device(plugged=StepSchedule.constant(1.0)), clock=clock)
    temps = []
    for _ in range(400):
        source.record_work(4.0)          # all four cores busy
        clock.advance(1.0)
        temps.append(source.read().temperature_celsius)
    assert all(b > a for a, b in zip(temps, temps[1:]))
    steady = 25.0 + 10.0 * (1.0 + 2.0 * 4)        # T_amb + R * P = 115 degC
    # First order: after t seconds, T = T_ss - (T_ss - T0) exp(-t / tau).
    assert temps[49] == pytest.approx(steady - (steady - 25.0) * math.exp(-50 / 50.0), abs=1e-6)
    assert temps[-1] < steady and temps[-1] == pytest.approx(steady, abs=0.05)


def test_thermal_model_cools_toward_ambient_when_idle():
    clock = ManualClock()
    cfg = _quiet_device(power=PowerModel(idle_w=0.0, core_w=2.0),
                        thermal=ThermalConfig(resistance_k_per_w=10.0, time_constant_seconds=30.0, start_celsius=90.0))
    source = SimulatedSource(cfg, clock=clock)
    temps = [_run(source, clock, 1, 0.0).temperature_celsius for _ in range(300)]
    assert all(b < a for a, b in zip(temps, temps[1:]))
    assert temps[-1] > 25.0 and temps[-1] == pytest.approx(25.0, abs=0.01)


def test_big_steps_and_small_steps_agree():
    # The exact exponential step and schedule-edge sub-stepping make the step size irrelevant.
    def final(step: float) -> tuple[float, float]:
        clock = ManualClock()
        cfg = _quiet_device(background_load=StepSchedule(0.1, (Window(30.0, 90.0, 0.8),)))
        source = SimulatedSource(cfg, clock=clock)
        t = 0.0
        while t < 180.0:
            source.record_work(0.5 * step)
            clock.advance(step)
            t += step
            r = source.read()
        return r.battery_percent, r.temperature_celsius
    assert final(1.0) == pytest.approx(final(45.0), rel=1e-9)


def test_background_load_bursts_show_in_load_and_heat():
    clock = ManualClock()
    cfg = _quiet_device(background_load=StepSchedule.bursts(0.1, 0.9, start_seconds=60, duration_seconds=60,
                                                             period_seconds=300))
    source = SimulatedSource(cfg, clock=clock)
    before = _run(source, clock, 59, 0.0)
    during = _run(source, clock, 60, 0.0)
    after = _run(source, clock, 120, 0.0)
    again = _run(source, clock, 122, 0.0)   # t = 361: inside the next period's burst
    assert before.cpu_load_percent == pytest.approx(10.0)
    assert during.cpu_load_percent == pytest.approx(90.0)
    assert after.cpu_load_percent == pytest.approx(10.0)
    assert again.cpu_load_percent == pytest.approx(90.0)
    assert during.temperature_celsius > before.temperature_celsius > 25.0
    assert after.temperature_celsius < during.temperature_celsius


def test_noise_is_gaussian_seeded_and_configurable():
    def readings(seed):
        clock = ManualClock()
        cfg = _quiet_device(noise=NoiseConfig(battery_percent_sd=0.5, temperature_celsius_sd=1.0))
        source = SimulatedSource(cfg, clock=clock, seed=seed)
        out = []
        for _ in range(200):
            clock.advance(1.0)
            out.append(source.read().temperature_celsius - source.temperature_celsius)
        return out
    a, b, c = readings(1), readings(1), readings(2)
    assert a == b and a != c
    mean = sum(a) / len(a)
    sd = (sum((x - mean) ** 2 for x in a) / len(a)) ** 0.5
    assert abs(mean) < 0.3 and 0.8 < sd < 1.2


def test_a_device_without_battery_or_thermal_zone_reads_none():
    source = SimulatedSource(_quiet_device(battery=None, thermal=None), clock=ManualClock())
    reading = source.read()
    assert reading.battery_percent is None and reading.power_plugged is None
    assert reading.temperature_celsius is None and reading.cpu_load_percent is not None


def test_demo_profiles_do_what_they_promise_within_a_demo():
    # At the demo's speed, stepping the clock in wall seconds.
    # sim:drain crosses the 20 % low trip within ~1 minute (idle: no work recorded at all).
    clock = ManualClock()
    drain = make_sensor_source("sim:drain", clock=clock, seed=0, speed=DEMO_SPEED)
    first = drain.read()
    assert 55.0 < first.battery_percent < 65.0 and first.power_plugged is False
    crossed = None
    for t in range(1, 121):
        clock.advance(1.0)
        r = drain.read()
        if crossed is None and drain.battery_percent <= 20.0:
            crossed = t
    assert crossed is not None and crossed <= 70
    assert r.power_plugged is True      # the charger comes at 75 s
    # sim:heat crosses 80 degC within the first minute on mains, then cools.
    clock = ManualClock()
    heat = make_sensor_source("sim:heat", clock=clock, seed=0, speed=DEMO_SPEED)
    peak, hot_at = 0.0, None
    for t in range(1, 121):
        clock.advance(1.0)
        r = heat.read()
        assert r.power_plugged is True
        peak = max(peak, heat.temperature_celsius)
        if hot_at is None and heat.temperature_celsius >= 80.0:
            hot_at = t
    assert hot_at is not None and hot_at <= 60 and heat.temperature_celsius < 72.0
    # sim:mains is plugged, cool and steady.
    clock = ManualClock()
    mains = make_sensor_source("sim:mains", clock=clock, seed=0, speed=DEMO_SPEED)
    temps = []
    for _ in range(120):
        clock.advance(1.0)
        r = mains.read()
        temps.append(mains.temperature_celsius)
    assert r.power_plugged is True and r.battery_percent > 95.0
    assert max(temps) < 50.0 and max(temps) - min(temps) < 5.0


# -- replay ------------------------------------------------------------------------------
TRACE = """t_seconds,battery_percent,power_plugged,temperature_celsius,cpu_load_percent
0,80,0,40,10
10,70,0,,30
20,60,1,60,50
"""


def test_replay_interpolates_steps_and_keeps_gaps(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(TRACE)
    clock = ManualClock()
    source = make_sensor_source(f"replay:{path}", clock=clock)
    assert source.read() == SensorReading(80.0, False, 40.0, 10.0, source="replay:trace.csv")
    clock.advance(5.0)
    r = source.read()
    assert r.battery_percent == pytest.approx(75.0) and r.cpu_load_percent == pytest.approx(20.0)
    assert r.temperature_celsius is None            # the next row is missing: a gap stays a gap
    assert r.power_plugged is False
    clock.advance(10.0)
    r = source.read()
    assert r.battery_percent == pytest.approx(65.0) and r.temperature_celsius is None
    clock.advance(100.0)                             # past the end: the last row holds
    assert source.read().battery_percent == 60.0 and source.read().power_plugged is True

    step = ReplaySource(path, mode="step", clock=ManualClock(15.0))
    assert step.reading_at(15.0).battery_percent == 70.0
    looped = ReplaySource(path, loop=True)
    assert looped.reading_at(25.0).battery_percent == pytest.approx(75.0)


def test_replay_rejects_bad_traces_with_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("t_seconds,battery_percent\n0,50\n")
    with pytest.raises(TraceError, match="missing column"):
        ReplaySource(bad)
    bad.write_text(TRACE.replace("10,70", "0,70"))
    with pytest.raises(TraceError, match=r"bad.csv:3: t_seconds 0.0 is not after"):
        ReplaySource(bad)
    bad.write_text(TRACE.replace("70,0", "70,maybe"))
    with pytest.raises(TraceError, match="power_plugged 'maybe'"):
        ReplaySource(bad)
