"""The simulated devices behind "sim:drain", "sim:heat" and "sim:mains".

These are demo devices, tuned so that at speed 1.0 (wall time) something happens within
about a minute and a whole cycle plays out in about two and a half minutes; they repeat
after that, so a demo can run as long as it likes. Their batteries are deliberately tiny
and their thermal time constants short; the one-hour benchmark
(benchmarks/scheduler_sim.py) uses realistic sizes instead. Thresholds they aim at are the
scheduler's defaults (agent/scheduler/policy.py): battery low 20 %, critical 10 %, thermal
trip 80 degC, clear 72 degC. All on 4 simulated cores.
"""

from __future__ import annotations

from agent.sensors.battery import BatteryConfig, PowerModel
from agent.sensors.schedule import StepSchedule, Window
from agent.sensors.simulated import NoiseConfig, SimConfig
from agent.sensors.thermal import ThermalConfig

DEMO_CYCLE_SECONDS = 150.0

# 1 W idle, +1 W per busy core.
_DEMO_POWER = PowerModel(idle_w=1.0, core_w=1.0)
_DEMO_NOISE = NoiseConfig(battery_percent_sd=0.2, temperature_celsius_sd=0.4, cpu_load_percent_sd=2.0)

# sim:drain — on battery from 60 %. The battery holds 0.0463 Wh (about 167 J, 1/400 of a
# phone's), so each watt drains 0.6 %/s. Idle (1 W + 5 % background on 4 cores = 1.2 W,
# 0.72 %/s) it crosses the 20 % low trip at ~56 s and the 10 % critical trip at ~69 s;
# inference load makes it sooner (~40 s with half a core busy). From 75 s to 150 s a
# charger is plugged in (1.5 W net, 0.9 %/s); then the cycle repeats from wherever the
# charge got to (idle: ~6 % -> ~73 %, and it trips again late in the next cycle).
DRAIN = SimConfig(
    name="drain",
    power=_DEMO_POWER,
    battery=BatteryConfig(capacity_wh=1.0 / (0.006 * 3600.0), start_percent=60.0, charge_w=1.5),
    thermal=ThermalConfig(resistance_k_per_w=8.0, time_constant_seconds=20.0),
    ambient_celsius=StepSchedule.constant(25.0),
    background_load=StepSchedule.constant(0.05),
    plugged=StepSchedule(0.0, (Window(75.0, DEMO_CYCLE_SECONDS, 1.0),), DEMO_CYCLE_SECONDS),
    noise=_DEMO_NOISE,
)

# sim:heat — on mains (plugged, battery full), 30 degC ambient, R = 13 K/W, tau = 15 s.
# Background load is 10 % of the cores (1.4 W, idle steady state ~48 degC) except for a hot
# period from 20 s to 80 s of each cycle at 85 % (4.4 W, steady state ~87 degC, more with
# inference on top): it crosses the 80 degC trip ~25 s into the hot period (~45 s after
# start) whatever the agent runs, and cools below the 72 degC clear ~7 s after it ends.
HEAT = SimConfig(
    name="heat",
    power=_DEMO_POWER,
    battery=BatteryConfig(capacity_wh=2.0, start_percent=100.0),
    thermal=ThermalConfig(resistance_k_per_w=13.0, time_constant_seconds=15.0),
    ambient_celsius=StepSchedule.constant(30.0),
    background_load=StepSchedule(0.10, (Window(20.0, 80.0, 0.85),), DEMO_CYCLE_SECONDS),
    plugged=StepSchedule.constant(1.0),
    noise=_DEMO_NOISE,
)

# sim:mains — plugged, full, 22 degC ambient, 15 % background load: ~40 degC and steady.
MAINS = SimConfig(
    name="mains",
    power=_DEMO_POWER,
    battery=BatteryConfig(capacity_wh=2.0, start_percent=100.0),
    thermal=ThermalConfig(resistance_k_per_w=10.0, time_constant_seconds=30.0),
    ambient_celsius=StepSchedule.constant(22.0),
    background_load=StepSchedule.constant(0.15),
    plugged=StepSchedule.constant(1.0),
    noise=NoiseConfig(battery_percent_sd=0.1, temperature_celsius_sd=0.2, cpu_load_percent_sd=1.0),
)

PROFILES: dict[str, SimConfig] = {"drain": DRAIN, "heat": HEAT, "mains": MAINS}
