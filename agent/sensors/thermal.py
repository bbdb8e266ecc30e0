"""First-order RC thermal model of the CPU package.

    C dT/dt = P - (T - T_ambient) / R         tau = R * C

P is the device's power draw in watts (all of it ends up as heat), R the thermal resistance
to ambient in kelvin per watt, tau the time constant in seconds. At constant P the
temperature approaches the steady state  T_ss = T_ambient + R * P  exponentially; `step`
uses that exact solution over each interval, so large steps stay stable and accurate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ThermalConfig:
    resistance_k_per_w: float = 12.0      # K/W to ambient (small passively cooled enclosure)
    time_constant_seconds: float = 120.0  # tau = R*C
    start_celsius: float | None = None    # None: start at the idle steady state

    def __post_init__(self) -> None:
        if not self.resistance_k_per_w > 0 or not self.time_constant_seconds > 0:
            raise ValueError("thermal resistance and time constant must be > 0")


class ThermalModel:
    def __init__(self, config: ThermalConfig, start_celsius: float) -> None:
        self.config = config
        self.celsius = float(start_celsius)

    def steady_state(self, power_w: float, ambient_celsius: float) -> float:
        return ambient_celsius + self.config.resistance_k_per_w * power_w

    def step(self, dt: float, power_w: float, ambient_celsius: float) -> float:
        target = self.steady_state(power_w, ambient_celsius)
        decay = math.exp(-dt / self.config.time_constant_seconds)
        self.celsius = target + (self.celsius - target) * decay
        return self.celsius
