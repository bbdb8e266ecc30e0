"""Run-time choice of a variant from battery, temperature, load and measured latency.

    scheduler = Scheduler(PolicyConfig.load("policy.toml"))
    scheduler.set_variants([VariantOption("fp32", quality=72.0, ...), ...])
    scheduler.observe_latency("fp32", 0.031)           # after each inference
    decision = scheduler.decide(source.read())         # e.g. once a second
    if decision.changed: ...hot-swap to decision.variant_id...

Only stdlib here: this ships to devices.
"""

from agent.scheduler.policy import (BatteryPolicy, LatencyPolicy, LoadPolicy, PolicyConfig,
                                    PolicyError, ThermalPolicy)
from agent.scheduler.reasons import SEVERITY, Reason
from agent.scheduler.scheduler import Decision, NoVariantsError, Scheduler
from agent.scheduler.variants import VariantOption

__all__ = [
    "BatteryPolicy", "Decision", "LatencyPolicy", "LoadPolicy", "NoVariantsError", "PolicyConfig",
    "PolicyError", "Reason", "SEVERITY", "Scheduler", "ThermalPolicy", "VariantOption",
]
