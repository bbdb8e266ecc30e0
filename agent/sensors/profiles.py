"""The simulated devices behind "sim:drain", "sim:heat" and "sim:mains".

Demo devices, tuned for the demo's default speed, DEMO_SPEED = 10 simulated seconds per wall
second (`edgefleet demo --sim-speed 10`): something happens within about a minute of wall
time and a whole cycle takes 150 s of wall time (1500 simulated seconds), after which it
repeats, so a demo can run as long as it likes and still see events whenever it starts
watching. At speed 1 everything takes ten times longer. Times below are simulated seconds,
with the wall seconds at DEMO_SPEED in brackets.

Their batteries are deliberately small and their thermal time constants short; the one-hour
benchmark (benchmarks/scheduler_sim.py) uses realistic sizes. The thresholds they aim at are
the scheduler's defaults (agent/scheduler/policy.py): battery low 20 %, critical 10 %,
thermal trip 80 degC, clear 72 degC. All run on 4 simulated cores at 1 W idle + 1 W per busy
core.
"""

from __future__ import annotations

from agent.sensors.battery import BatteryConfig, PowerModel
from agent.sensors.schedule import StepSchedule, Window
from agent.sensors.simulated import NoiseConfig, SimConfig
from agent.sensors.thermal import ThermalConfig

DEMO_SPEED = 10.0
DEMO_CYCLE_SECONDS = 1500.0            # simulated; 150 s of wall time at DEMO_SPEED

_DEMO_POWER = PowerModel(idle_w=1.0, core_w=1.0)
_DEMO_NOISE = NoiseConfig(battery_percent_sd=0.2, temperature_celsius_sd=0.4, cpu_load_percent_sd=2.0)

# sim:drain — on battery from 60 %. The battery holds 0.463 Wh (1667 J, 1/40 of a phone's),
# so each watt drains 0.06 %/s. Idle (1 W + 5 % background on 4 cores = 1.2 W, 0.072 %/s) it
# crosses the 20 % low trip at ~560 s [56 s] and the 10 % critical trip at ~690 s [69 s];
# inference load makes it sooner (~400 s [40 s] with half a core busy). From 750 s [75 s]
# to 1500 s [150 s] a charger is plugged in (1.5 W net, 0.09 %/s); then the cycle repeats
# from wherever the charge got to (idle: ~6 % -> ~73 %, tripping again late in the next cycle).
DRAIN = SimConfig(
    name="drain",
    power=_DEMO_POWER,
    battery=BatteryConfig(capacity_wh=1.0 / (0.0006 * 3600.0), start_percent=60.0, charge_w=1.5),
    thermal=ThermalConfig(resistance_k_per_w=8.0, time_constant_seconds=200.0),
    ambient_celsius=StepSchedule.constant(25.0),
    background_load=StepSchedule.constant(0.05),
    plugged=StepSchedule(0.0, (Window(750.0, DEMO_CYCLE_SECONDS, 1.0),), DEMO_CYCLE_SECONDS),
    noise=_DEMO_NOISE,
)

# sim:heat — on mains (plugged, battery full), 30 degC ambient, R = 16 K/W, tau = 150 s.
# Background load is 10 % of the cores (1.4 W, idle steady state ~52 degC) except for a hot
# period from 200 s to 800 s [20-80 s] of each cycle at 70 % (3.8 W, steady state ~91 degC):
# it crosses the 80 degC trip ~190 s [19 s] into the hot period whatever the agent runs, and
# cools below the 72 degC clear ~60 s [6 s] after it ends. The load stays below the scheduler's
# 90 % load trip (it peaks near 77 % with the noise), so the step-down this device shows is the
# thermal one: at 85 % the load trip fired first in some runs, and a device already on its
# cheapest variant has nothing left to step down to when the heat arrives.
HEAT = SimConfig(
    name="heat",
    power=_DEMO_POWER,
    battery=BatteryConfig(capacity_wh=2.0, start_percent=100.0),
    thermal=ThermalConfig(resistance_k_per_w=16.0, time_constant_seconds=150.0),
    ambient_celsius=StepSchedule.constant(30.0),
    background_load=StepSchedule(0.10, (Window(200.0, 800.0, 0.70),), DEMO_CYCLE_SECONDS),
    plugged=StepSchedule.constant(1.0),
    noise=_DEMO_NOISE,
)

# sim:mains — plugged, full, 22 degC ambient, 15 % background load, R = 10 K/W, tau = 300 s:
# ~38 degC plus a few kelvin for inference, and steady.
MAINS = SimConfig(
    name="mains",
    power=_DEMO_POWER,
    battery=BatteryConfig(capacity_wh=2.0, start_percent=100.0),
    thermal=ThermalConfig(resistance_k_per_w=10.0, time_constant_seconds=300.0),
    ambient_celsius=StepSchedule.constant(22.0),
    background_load=StepSchedule.constant(0.15),
    plugged=StepSchedule.constant(1.0),
    noise=NoiseConfig(battery_percent_sd=0.1, temperature_celsius_sd=0.2, cpu_load_percent_sd=1.0),
)

PROFILES: dict[str, SimConfig] = {"drain": DRAIN, "heat": HEAT, "mains": MAINS}
