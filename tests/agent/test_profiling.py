"""On-arrival benchmark: figures are sane, inputs follow the spec, the cache spares a re-run."""

from __future__ import annotations

import numpy as np

from agent.engines import IOSpec, get_engine
from agent.profiling import ProfileCache, profile_bundle, representative_inputs
from agent.store import Store
from tests.agent.helpers import IN_DIM, make_bundle


def test_representative_inputs_follow_specs():
    feeds = representative_inputs([IOSpec("a", (None, 3), "float32"), IOSpec("b", (2,), "int64")])
    assert feeds["a"].shape == (1, 3) and feeds["a"].dtype == np.float32
    assert feeds["b"].shape == (2,) and feeds["b"].dtype == np.int64


def test_profile_bundle_measures_every_variant_and_caches(tmp_path):
    bundle = make_bundle()
    store = Store(tmp_path)
    for digest, data in bundle.files.items():
        (store.artifacts / digest.removeprefix("sha256:")).write_bytes(data)
    installed = store.install(bundle.manifest_bytes, bundle.signature, bundle.publisher_key, bundle.manifest, "d")
    cache = ProfileCache(store.profiles)
    engine = get_engine("onnxruntime")
    profiles = profile_bundle(engine, installed, cache, warmup=1, runs=5)
    assert [p.variant_id for p in profiles] == ["fp32", "int8", "int4"]
    for p in profiles:
        assert p.engine == "onnxruntime" and p.runs == 5
        assert 0 < p.latency_p50_seconds <= p.latency_p95_seconds
        assert p.cpu_seconds_per_inference >= 0 and p.peak_memory_bytes >= 0

    class Refuses:
        name = "onnxruntime"

        def load(self, path):
            raise AssertionError("cached profiles must not be re-measured")

    again = profile_bundle(Refuses(), installed, cache)
    assert [(p.variant_id, p.latency_p50_seconds) for p in again] == \
        [(p.variant_id, p.latency_p50_seconds) for p in profiles]
    assert IN_DIM == installed.manifest.inputs[0].shape[1]
