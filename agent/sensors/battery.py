"""A battery as an energy store: drained by the device's power draw, filled by a charger.

State of charge (percent) changes by  100 * (charge_w - draw_w) * dt / (capacity_wh * 3600)
where draw_w comes from the power model (`PowerModel`): a constant idle draw plus a draw
per busy CPU core. So the drain is proportional to the CPU work of the running variant
plus an idle drain. Charging is net of the device's draw (the charger powers the device) and
tapers linearly above `taper_above_percent`, like the constant-voltage phase of Li-ion.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PowerModel:
    """Device power draw in watts: idle_w + core_w * busy_cores."""

    idle_w: float = 0.8            # W drawn doing nothing (SoC idle, radio, sensors)
    core_w: float = 1.6            # W per fully busy CPU core, above idle

    def draw_w(self, busy_cores: float) -> float:
        return self.idle_w + self.core_w * max(0.0, busy_cores)


@dataclass(frozen=True)
class BatteryConfig:
    capacity_wh: float = 2.0               # Wh stored at 100 % (2 Wh = 540 mAh at 3.7 V)
    start_percent: float = 100.0
    charge_w: float = 5.0                  # W into the battery when plugged (net of the device)
    taper_above_percent: float = 80.0      # charge power falls linearly to 0 at 100 %

    def __post_init__(self) -> None:
        if not self.capacity_wh > 0:
            raise ValueError("battery capacity_wh must be > 0")
        if not 0.0 <= self.start_percent <= 100.0:
            raise ValueError("battery start_percent must be within 0..100")


class BatteryModel:
    def __init__(self, config: BatteryConfig) -> None:
        self.config = config
        self.percent = float(config.start_percent)

    def step(self, dt: float, draw_w: float, plugged: bool) -> float:
        """Advance dt seconds at draw_w watts; returns the new state of charge in percent."""
        cfg = self.config
        joules_per_percent = cfg.capacity_wh * 3600.0 / 100.0
        if plugged:
            taper = 1.0
            if self.percent > cfg.taper_above_percent:
                taper = max(0.0, (100.0 - self.percent) / (100.0 - cfg.taper_above_percent))
            self.percent += cfg.charge_w * taper * dt / joules_per_percent
        else:
            self.percent -= draw_w * dt / joules_per_percent
        self.percent = min(100.0, max(0.0, self.percent))
        return self.percent

    @property
    def empty(self) -> bool:
        return self.percent <= 0.0
