"""How long one Scheduler.decide() takes (issue 5: well under a millisecond).

    python -m benchmarks.scheduler_decide [--decisions 20000]

Each case builds a scheduler, feeds it 20 latency observations between decisions (as a
device serving 20 inferences a second with one decision a second would), and times
decide() alone with time.perf_counter_ns. Readings alternate around the trip points with
noise so the hysteresis code paths run, not just the fast path. Prints the median and p99
microseconds per decision, and the ratio to the 1 ms bound. Also times observe_latency().
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from agent.scheduler import PolicyConfig, Scheduler, VariantOption
from agent.sensors import ManualClock, SensorReading

BOUND_US = 1000.0


def variants(n: int) -> list[VariantOption]:
    out = []
    for i in range(n):
        cost = 0.030 / (1 + i * 0.4)
        out.append(VariantOption(f"v{i}", quality=72.0 - 0.35 * i, latency_p50_seconds=cost,
                                 latency_p95_seconds=cost * 1.2, cpu_seconds_per_inference=cost,
                                 size_bytes=int(14e6 / (1 + i)), weight_bits=32 if i == 0 else 8))
    return out


def readings(kind: str, rng: random.Random) -> SensorReading:
    if kind == "none":
        return SensorReading(source="psutil")
    return SensorReading(battery_percent=20 + rng.gauss(0, 3), power_plugged=rng.random() < 0.1,
                         temperature_celsius=78 + rng.gauss(0, 3), cpu_load_percent=85 + rng.gauss(0, 8),
                         memory_available_bytes=1 << 31, cpu_frequency_mhz=2000.0, source="simulated:bench")


def time_case(n_variants: int, kind: str, decisions: int) -> tuple[float, float, float]:
    rng = random.Random(0)
    clock = ManualClock()
    s = Scheduler(PolicyConfig(), clock=clock)
    vs = variants(n_variants)
    s.set_variants(vs)
    pre = [readings(kind, rng) for _ in range(decisions)]
    samples = []
    observe_ns = 0
    for r in pre:
        current = s.current or vs[0].variant_id
        t0 = time.perf_counter_ns()
        for _ in range(20):
            s.observe_latency(current, 0.02 * rng.lognormvariate(0, 0.3))
        observe_ns += time.perf_counter_ns() - t0
        clock.advance(1.0)
        t0 = time.perf_counter_ns()
        s.decide(r)
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return (statistics.median(samples) / 1e3, samples[int(0.99 * len(samples))] / 1e3,
            observe_ns / (20 * decisions) / 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--decisions", type=int, default=20000)
    args = ap.parse_args()
    print(f"{'case':<34} {'median us':>10} {'p99 us':>8} {'x of 1 ms':>10} {'observe us':>11}")
    for n in (4, 16, 64):
        for kind in ("all sensors, noisy", "none"):
            med, p99, obs = time_case(n, kind, args.decisions)
            label = f"{n} variants, {kind if kind != 'none' else 'no sensors (VM)'}"
            print(f"{label:<34} {med:>10.1f} {p99:>8.1f} {med / BOUND_US:>10.4f} {obs:>11.2f}")


if __name__ == "__main__":
    main()
