"""One simulated hour on battery: our scheduler against always-largest and always-smallest.

    python -m benchmarks.scheduler_sim [--seeds 3] [--hours-cap 4]

The scenario (simulated time, one decision and 20 inferences per simulated second):
  * battery from 100 %, never plugged in; 2.0 Wh pack (540 mAh at 3.7 V, an edge camera);
  * device power 0.8 W idle + 1.6 W per busy core, 4 cores; RC thermal model R = 12 K/W,
    tau = 120 s; the thermal trip is the policy's 80 degC;
  * 25 degC ambient, except a hot period from minute 15 to 27 at 58 degC (enclosure in sun);
  * 5 % background CPU load, except a burst from minute 38 to 46 at 35 %, which slows every
    inference by 1 / (1 - background) (CPU contention);
  * sensor noise: battery sd 0.5 %, temperature sd 0.5 K, load sd 3 %; latency noise
    lognormal sd 0.12 around the profile p50;
  * the trace repeats after the hour, so a policy that outlives it keeps running until its
    battery is empty (capped at --hours-cap), which is its battery lifetime.

The variants are MODELLED by default, not measured: numbers in the range published for MobileNetV2 on
a 4-core ARM device (ImageNet top-1 %, single-thread latency = CPU seconds per inference).
They are not from this repository's compressor. What the benchmark measures is the policy,
given such a bundle. With --bundle DIR (a compressor-written bundle folder) the run is also
repeated with MEASURED variants: latency p50/p95 and CPU seconds per inference from real
onnxruntime sessions on this machine (agent.profiling, the agent's own on-arrival benchmark,
with each variant's session config), quality from the manifest (in percent); both tables are
printed. --rps sets the request rate (a tiny model at 20/s barely loads the device).

Rows: "ours" is the default policy (with the battery saver); "ours (saver off)" shows what
the trip/clear rules alone do; "ours (saver off, 4x noise)" the same with sensor noise sd
2 %, 2 K, 12 % to stress the hysteresis.

Figures, each over the time the device is alive: mean quality (time-weighted), battery
lifetime, % of time the true temperature is above the trip point, % of requests over the
50 ms p95 latency budget, switches per hour (the initial choice not counted).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from dataclasses import dataclass, replace

from agent.scheduler import BatteryPolicy, LatencyPolicy, PolicyConfig, Scheduler, VariantOption
from agent.sensors import (BatteryConfig, ManualClock, NoiseConfig, PowerModel, SimConfig, SimulatedSource,
                           StepSchedule, ThermalConfig, Window)

MS = 1e-3
HOUR = 3600.0
REQUESTS_PER_SECOND = 20
WARMUP_INFERENCES = 5            # a switch loads and warms the new variant: extra CPU work
LATENCY_SIGMA = 0.12
BUDGET_SECONDS = 50 * MS

VARIANTS = [
    VariantOption("fp32", quality=72.0, latency_p50_seconds=30 * MS, latency_p95_seconds=36 * MS,
                  cpu_seconds_per_inference=30 * MS, size_bytes=14_000_000, weight_bits=32),
    VariantOption("int8", quality=71.6, latency_p50_seconds=11 * MS, latency_p95_seconds=14 * MS,
                  cpu_seconds_per_inference=11 * MS, size_bytes=3_500_000, weight_bits=8),
    VariantOption("sparse-int8", quality=71.0, latency_p50_seconds=8.5 * MS, latency_p95_seconds=11 * MS,
                  cpu_seconds_per_inference=8.5 * MS, size_bytes=2_200_000, weight_bits=8, sparsity=0.5),
    VariantOption("int4", quality=69.5, latency_p50_seconds=7 * MS, latency_p95_seconds=9 * MS,
                  cpu_seconds_per_inference=7 * MS, size_bytes=2_000_000, weight_bits=4),
]

DEVICE = SimConfig(
    name="one-hour",
    cores=4,
    power=PowerModel(idle_w=0.8, core_w=1.6),
    battery=BatteryConfig(capacity_wh=2.0, start_percent=100.0),
    thermal=ThermalConfig(resistance_k_per_w=12.0, time_constant_seconds=120.0),
    ambient_celsius=StepSchedule(25.0, (Window(15 * 60, 27 * 60, 58.0),), HOUR),
    background_load=StepSchedule(0.05, (Window(38 * 60, 46 * 60, 0.35),), HOUR),
    plugged=StepSchedule.constant(0.0),
    noise=NoiseConfig(battery_percent_sd=0.5, temperature_celsius_sd=0.5, cpu_load_percent_sd=3.0),
)

NOISY_DEVICE = replace(DEVICE, noise=NoiseConfig(battery_percent_sd=2.0, temperature_celsius_sd=2.0,
                                                 cpu_load_percent_sd=12.0))

OURS = PolicyConfig(latency=LatencyPolicy(budget_p95_seconds=BUDGET_SECONDS))
OURS_NO_SAVER = replace(OURS, battery=BatteryPolicy(saver_max_quality_loss=0.0))


@dataclass
class Result:
    name: str
    lifetime_s: float
    survived_cap: bool
    mean_quality: float
    charge_at_hour: float | None
    above_trip_pct: float
    over_budget_pct: float
    switches: int
    switches_first_hour: int

    @property
    def switches_per_hour(self) -> float:
        return self.switches / (self.lifetime_s / HOUR)


def simulate(name: str, policy: PolicyConfig | None, fixed: str | None, seed: int, cap_hours: float,
             device_config: SimConfig = DEVICE, variants: list[VariantOption] | None = None,
             rps: int = REQUESTS_PER_SECOND) -> Result:
    variants = variants or VARIANTS
    by_id = {v.variant_id: v for v in variants}
    clock = ManualClock()
    device = SimulatedSource(device_config, clock=clock, seed=seed)
    rng = random.Random(seed + 1000)
    scheduler = None
    if policy is not None:
        scheduler = Scheduler(policy, clock=clock)
        scheduler.set_variants(variants)
    trip = (policy or OURS).thermal.trip_celsius
    current = fixed
    quality_sum = above = over_budget = requests = switches = switches_first_hour = 0
    charge_at_hour = None
    t = 0
    cap = int(cap_hours * HOUR)
    while t < cap:
        reading = device.read()
        if device.battery.empty:
            break
        if t == int(HOUR):
            charge_at_hour = device.battery_percent
        work = 0.0
        if scheduler is not None:
            decision = scheduler.decide(reading)
            if decision.changed and current is not None:
                switches += 1
                switches_first_hour += t < HOUR
                work += WARMUP_INFERENCES * by_id[decision.variant_id].cpu_seconds_per_inference
            current = decision.variant_id
        v = by_id[current]
        contention = 1.0 / (1.0 - device.background_load)
        for _ in range(rps):
            latency = v.latency_p50_seconds * contention * rng.lognormvariate(0.0, LATENCY_SIGMA)
            over_budget += latency > BUDGET_SECONDS
            if scheduler is not None:
                scheduler.observe_latency(current, latency)
        requests += rps
        work += rps * v.cpu_seconds_per_inference
        device.record_work(work)
        quality_sum += v.quality
        above += device.temperature_celsius > trip
        clock.advance(1.0)
        t += 1
    return Result(name, float(t), t >= cap, quality_sum / t, charge_at_hour, 100.0 * above / t,
                  100.0 * over_budget / requests, switches, switches_first_hour)


def run(seed: int, cap_hours: float, variants: list[VariantOption] | None = None,
        rps: int = REQUESTS_PER_SECOND) -> dict[str, Result]:
    variants = variants or VARIANTS
    largest, smallest = _extremes(variants)
    kw = dict(variants=variants, rps=rps)
    return {
        "ours": simulate("ours", OURS, None, seed, cap_hours, **kw),
        "ours (saver off)": simulate("ours (saver off)", OURS_NO_SAVER, None, seed, cap_hours, **kw),
        # Stress for the hysteresis: the trip-driven policy with four times the sensor noise.
        "ours (saver off, 4x noise)": simulate("ours (saver off, 4x noise)", OURS_NO_SAVER, None, seed,
                                               cap_hours, NOISY_DEVICE, **kw),
        "always-largest": simulate("always-largest", None, largest, seed, cap_hours, **kw),
        "always-smallest": simulate("always-smallest", None, smallest, seed, cap_hours, **kw),
    }


def _extremes(variants: list[VariantOption]) -> tuple[str, str]:
    """Largest and smallest by size (the file a device would hold)."""
    largest = max(variants, key=lambda v: (v.size_bytes, v.cost)).variant_id
    smallest = min(variants, key=lambda v: (v.size_bytes, v.cost)).variant_id
    return largest, smallest


def measured_variants(folder: str) -> list[VariantOption]:
    """The bundle's variants with this machine's onnxruntime figures (the agent's profiler)."""
    from agent.engines import get_engine
    from agent.profiling import profile_variant
    from benchmarks.agent_bundles import load_bundle_dir

    bundle = load_bundle_dir(folder)
    engine = get_engine("onnxruntime", intra_op_threads=1)
    out = []
    for v in bundle.manifest.variants:
        p = profile_variant(engine, bundle.variant_path(v.id), v.id, bundle.manifest, warmup=20, runs=300)
        quality = v.quality * 100.0 if v.quality <= 1.0 else v.quality       # fraction -> points
        out.append(VariantOption(v.id, quality=quality, latency_p50_seconds=p.latency_p50_seconds,
                                 latency_p95_seconds=p.latency_p95_seconds,
                                 cpu_seconds_per_inference=p.cpu_seconds_per_inference,
                                 size_bytes=v.model_size, weight_bits=v.weight_bits, sparsity=float(v.sparsity)))
    return out


def _fmt_life(r: Result) -> str:
    life = f"{r.lifetime_s / 60:.1f}"
    return f">{life}" if r.survived_cap else life


def print_table(results: dict[str, Result]) -> None:
    print(f"{'policy':<27} {'quality':>8} {'life min':>9} {'charge@60':>9} {'>trip %':>8} "
          f"{'>budget %':>9} {'sw/hour':>8} {'sw 1st h':>8}")
    for name, r in results.items():
        charge = "dead" if r.charge_at_hour is None else f"{r.charge_at_hour:.1f}%"
        print(f"{name:<27} {r.mean_quality:>8.2f} {_fmt_life(r):>9} {charge:>9} {r.above_trip_pct:>8.2f} "
              f"{r.over_budget_pct:>9.2f} {r.switches_per_hour:>8.2f} {r.switches_first_hour:>8d}")


def report(label: str, variants: list[VariantOption], seeds: int, cap_hours: float, rps: int) -> None:
    largest, smallest = _extremes(variants)
    print(f"== variants ({label}):")
    for v in variants:
        print(f"  {v.variant_id:<12} quality {v.quality:5.1f}  p50 {v.latency_p50_seconds / MS:7.3f} ms  "
              f"p95 {v.latency_p95_seconds / MS:7.3f} ms  cpu {v.cpu_seconds_per_inference / MS:7.3f} ms/inference  "
              f"{v.size_bytes / 1e6:6.3f} MB")
    print(f"latency budget p95 {BUDGET_SECONDS / MS:g} ms, {rps} inferences/s, "
          f"thermal trip {OURS.thermal.trip_celsius:g} degC; always-largest = {largest}, "
          f"always-smallest = {smallest}\n")
    checks: list[tuple[str, bool]] = []
    started = time.perf_counter()
    for seed in range(seeds):
        results = run(seed, cap_hours, variants, rps)
        print(f"seed {seed}")
        print_table(results)
        ours, big, small = results["ours"], results["always-largest"], results["always-smallest"]
        dq = big.mean_quality - ours.mean_quality
        life_ratio = ours.lifetime_s / big.lifetime_s
        print(f"ratios ours/largest: quality {ours.mean_quality / big.mean_quality:.4f} "
              f"({dq:+.2f} points below), lifetime x{life_ratio:.2f}, time above trip "
              f"{ours.above_trip_pct:.2f}% vs {big.above_trip_pct:.2f}%;  ours/smallest: quality "
              f"{ours.mean_quality / small.mean_quality:.4f}, lifetime x{ours.lifetime_s / small.lifetime_s:.2f}\n")
        checks += [
            (f"seed {seed}: mean quality within 1 point of always-largest ({dq:.2f})", dq <= 1.0),
            (f"seed {seed}: lifetime >= 1.30 x always-largest (x{life_ratio:.2f})", life_ratio >= 1.30),
            (f"seed {seed}: <= 1% of time above the thermal trip ({ours.above_trip_pct:.2f}%)",
             ours.above_trip_pct <= 1.0),
            (f"seed {seed}: <= 12 switches per hour ({ours.switches_per_hour:.2f}; "
             f"{ours.switches_first_hour} in the first hour)",
             ours.switches_per_hour <= 12.0 and ours.switches_first_hour <= 12),
        ]
    print(f"issue 5 targets, {label} variants (ours = default policy, latency budget 50 ms):")
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    print(f"\n{seeds} seeds x 5 policies simulated in {time.perf_counter() - started:.1f} s wall\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="noise seeds to run (targets checked on each)")
    ap.add_argument("--hours-cap", type=float, default=4.0, help="stop a run that outlives this")
    ap.add_argument("--bundle", help="also run with variants measured on this machine from this bundle folder")
    ap.add_argument("--rps", type=int, default=REQUESTS_PER_SECOND, help="inferences per simulated second")
    args = ap.parse_args(argv)
    report("modelled, see module docstring", VARIANTS, args.seeds, args.hours_cap, args.rps)
    if args.bundle:
        report(f"measured with onnxruntime on this machine, {args.bundle}", measured_variants(args.bundle),
               args.seeds, args.hours_cap, args.rps)


if __name__ == "__main__":
    main()
