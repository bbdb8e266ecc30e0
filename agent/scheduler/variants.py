"""What the scheduler knows about each variant it can run."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class VariantOption:
    """One installed variant, as profiled on this device (or, before that, by the compressor).

    quality is in the bundle's metric, higher is better. Latencies are seconds per inference
    unloaded; cpu_seconds_per_inference is CPU time (all threads) per inference and is the
    scheduler's measure of cost: battery drain and heat both follow it. Zero means unknown.
    """

    variant_id: str
    quality: float
    latency_p50_seconds: float = 0.0
    latency_p95_seconds: float = 0.0
    cpu_seconds_per_inference: float = 0.0
    size_bytes: int = 0
    weight_bits: int = 32
    sparsity: float = 0.0

    def __post_init__(self) -> None:
        if not self.variant_id:
            raise ValueError("variant_id must not be empty")
        if not math.isfinite(self.quality):
            raise ValueError(f"variant {self.variant_id}: quality must be finite")
        for name in ("latency_p50_seconds", "latency_p95_seconds", "cpu_seconds_per_inference"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"variant {self.variant_id}: {name} must be >= 0, got {v}")

    @property
    def cost(self) -> float:
        """CPU seconds per inference; unknown falls back to p50 latency, then to size."""
        if self.cpu_seconds_per_inference > 0:
            return self.cpu_seconds_per_inference
        if self.latency_p50_seconds > 0:
            return self.latency_p50_seconds
        return self.size_bytes * 1e-9

    def describe_cost(self) -> str:
        ms = self.cost * 1e3
        return f"{ms:.2g} ms cpu" if ms < 10 else f"{ms:.0f} ms cpu"
