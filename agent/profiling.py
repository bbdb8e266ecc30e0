"""On-device benchmark of each variant on arrival, cached in data_dir/profiles/<bundle_id>.json.

The figures on the manifest come from the machine that compressed the model; the scheduler
needs this device's numbers (latency p50/p95, CPU seconds per inference, peak memory).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time

import numpy as np
import psutil

from agent.engines.base import Engine, IOSpec, Session, load_variant
from agent.fsutil import atomic_write_json
from proto import fleet_pb2
from proto.manifest import Manifest

log = logging.getLogger(__name__)


def representative_inputs(specs: list[IOSpec], manifest: Manifest | None = None,
                          seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the right shape and type; dynamic axes become 1.

    The manifest's input spec wins over the session's where it pins an axis the session
    leaves dynamic (e.g. a batch axis exported as symbolic).
    """
    rng = np.random.default_rng(seed)
    declared = {t.name: t for t in manifest.inputs} if manifest else {}
    feeds = {}
    for spec in specs:
        shape = list(spec.shape)
        if spec.name in declared and len(declared[spec.name].shape) == len(shape):
            shape = [s if s is not None else d for s, d in zip(shape, declared[spec.name].shape)]
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = rng.integers(0, 2, dims).astype(bool)
        else:
            feeds[spec.name] = rng.integers(0, 8, dims).astype(dtype)
    return feeds


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def profile_session(session: Session, feeds: dict[str, np.ndarray], variant_id: str, engine: str,
                    *, warmup: int = 2, runs: int = 10, rss_before: int | None = None
                    ) -> fleet_pb2.VariantProfile:
    proc = psutil.Process()
    if rss_before is None:
        rss_before = proc.memory_info().rss
    for _ in range(warmup):
        session.run(feeds)
    latencies = []
    peak = proc.memory_info().rss
    cpu_start = time.process_time()
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(feeds)
        latencies.append(time.perf_counter() - t0)
        peak = max(peak, proc.memory_info().rss)
    cpu = (time.process_time() - cpu_start) / runs
    return fleet_pb2.VariantProfile(
        variant_id=variant_id, engine=engine,
        latency_p50_seconds=_percentile(latencies, 50), latency_p95_seconds=_percentile(latencies, 95),
        cpu_seconds_per_inference=cpu, peak_memory_bytes=max(0, peak - rss_before), runs=runs)


def profile_variant(engine: Engine, path: str | os.PathLike, variant_id: str, manifest: Manifest | None,
                    *, warmup: int = 2, runs: int = 10) -> fleet_pb2.VariantProfile:
    """Load the variant (with its session config, as it will serve), benchmark it and release
    it (peak RSS delta includes the load)."""
    rss_before = psutil.Process().memory_info().rss
    variant = None
    if manifest is not None:
        try:
            variant = manifest.variant(variant_id)
        except KeyError:
            variant = None
    session = load_variant(engine, path, variant)
    feeds = representative_inputs(session.input_specs, manifest)
    # "auto" runs each variant on the engine it measured faster: record that one.
    return profile_session(session, feeds, variant_id, getattr(session, "engine_name", engine.name),
                           warmup=warmup, runs=runs,
                           rss_before=rss_before)


class ProfileCache:
    """profiles/<bundle_id>.json: {"profiles": [...]} so a restart doesn't re-benchmark."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = pathlib.Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, bundle_id: str) -> pathlib.Path:
        return self.folder / f"{bundle_id}.json"

    def load(self, bundle_id: str) -> list[fleet_pb2.VariantProfile] | None:
        try:
            raw = json.loads(self._path(bundle_id).read_text(encoding="utf-8"))
            return [fleet_pb2.VariantProfile(**p) for p in raw["profiles"]]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable profile cache for %s: %s", bundle_id, exc)
            return None

    def save(self, bundle_id: str, profiles: list[fleet_pb2.VariantProfile]) -> None:
        rows = [{"variant_id": p.variant_id, "engine": p.engine,
                 "latency_p50_seconds": p.latency_p50_seconds, "latency_p95_seconds": p.latency_p95_seconds,
                 "cpu_seconds_per_inference": p.cpu_seconds_per_inference,
                 "peak_memory_bytes": p.peak_memory_bytes, "runs": p.runs} for p in profiles]
        atomic_write_json(self._path(bundle_id), {"bundle_id": bundle_id, "profiles": rows})


def profile_bundle(engine: Engine, bundle, cache: ProfileCache, *, warmup: int = 2, runs: int = 10
                   ) -> list[fleet_pb2.VariantProfile]:
    """Cached profiles of an InstalledBundle, benchmarking only when none are cached.

    A variant that fails to load gets no profile (logged); the scheduler then never picks it.
    """
    cached = cache.load(bundle.bundle_id)
    wanted = {v.id for v in bundle.manifest.variants}
    if cached is not None and {p.variant_id for p in cached} >= wanted:
        return [p for p in cached if p.variant_id in wanted]
    profiles = []
    for v in bundle.manifest.variants:
        try:
            profiles.append(profile_variant(engine, bundle.variant_path(v.id), v.id, bundle.manifest,
                                            warmup=warmup, runs=runs))
        except Exception as exc:          # a variant the engine can't run: skip it, keep the rest
            log.error("variant %s failed to load/run on %s: %s", v.id, engine.name, exc)
    cache.save(bundle.bundle_id, profiles)
    return profiles
