"""Per-variant onnxruntime session config from the manifest: applied when serving and when
profiling, filtered through the allow-list (bad keys and values are logged and ignored), and
never passed to an engine that does not take one (the native-engine hook)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from agent.engines import OnnxRuntimeEngine, load_variant
from agent.engines.onnxruntime_engine import SAFE_SESSION_CONFIG, safe_session_config
from agent.profiling import profile_bundle, ProfileCache
from agent.runtime import Runner
from agent.store import Store
from tests.agent.helpers import IN_DIM, dequant_model_bytes, dequant_reference, make_bundle

FOLD = {"session.disable_quant_qdq": "1"}


class RecordingEngine(OnnxRuntimeEngine):
    """The real onnxruntime engine, noting which session config each load asked for."""

    def __init__(self):
        super().__init__()
        self.loads: list[tuple[str, dict | None]] = []

    def load(self, path, session_config=None):
        self.loads.append((str(path), session_config))
        return super().load(path, session_config)


class PathOnlyEngine:
    """An engine with the minimal interface (like a native engine may have): load(path) only."""

    name = "path-only"

    def __init__(self):
        self.inner = OnnxRuntimeEngine()
        self.paths = []

    def load(self, path):
        self.paths.append(str(path))
        return self.inner.load(path)


def _install(tmp_path, bundle):
    store = Store(tmp_path)
    for digest, data in bundle.files.items():
        (store.artifacts / digest.removeprefix("sha256:")).write_bytes(data)
    return store, store.install(bundle.manifest_bytes, bundle.signature, bundle.publisher_key,
                                bundle.manifest, "dep-1")


@pytest.fixture
def dq_bundle(tmp_path):
    """int4 is a weight-only DequantizeLinear model whose manifest asks for QDQ folding at load;
    int8 asks for a mix of allowed and forbidden entries."""
    bundle = make_bundle(models={"int4": dequant_model_bytes(7)},
                         details={"int4": {"onnxruntime_session_config": dict(FOLD)},
                                  "int8": {"onnxruntime_session_config": {
                                      "session.intra_op.allow_spinning": "0",
                                      "session.save_model_format": "ORT",          # writes files
                                      "session.disable_quant_qdq": "yes",          # bad value
                                      "session.qdq_matmulnbits_accuracy_level": 4,  # not a string
                                  }}})
    return _install(tmp_path, bundle)


def test_allow_list_filters_keys_and_values(caplog):
    with caplog.at_level(logging.WARNING, logger="agent.engines.onnxruntime_engine"):
        got = safe_session_config({"session.disable_quant_qdq": "1",
                                   "session.optimized_model_external_initializers_file_name": "/tmp/x",
                                   "session.use_ort_model_bytes_directly": "1",
                                   "session.intra_op.allow_spinning": "2",
                                   3: "1"}, "v1")
    assert got == {"session.disable_quant_qdq": "1"}
    text = caplog.text
    assert "external_initializers_file_name" in text and "use_ort_model_bytes_directly" in text
    assert "allow_spinning='2'" in text and "v1" in text
    assert safe_session_config(None) == {}
    assert safe_session_config(["session.disable_quant_qdq"]) == {}
    assert all(isinstance(v, frozenset) and v for v in SAFE_SESSION_CONFIG.values())


def test_runner_serves_variant_with_its_session_config(dq_bundle, caplog):
    _, installed = dq_bundle
    engine = RecordingEngine()
    runner = Runner(engine)
    runner.activate(installed, "int4")
    session = runner._session_for(None).session
    assert session.config_entry("session.disable_quant_qdq") == "1"
    x = np.random.default_rng(0).standard_normal((3, IN_DIM)).astype(np.float32)
    np.testing.assert_allclose(runner.run({"input": x}).outputs["logits"], dequant_reference(7, x),
                               rtol=1e-5, atol=1e-5)
    # A variant without a config gets a plain session.
    fp32 = runner.run({"input": x}, variant="fp32")
    assert fp32.variant == "fp32"
    assert runner._session_for("fp32").session.config_entry("session.disable_quant_qdq") is None
    # Forbidden keys and bad values are dropped (with a log line each); allowed ones applied.
    with caplog.at_level(logging.WARNING, logger="agent.engines.onnxruntime_engine"):
        runner.run({"input": x}, variant="int8")
    int8 = runner._session_for("int8").session
    assert int8.session_config == {"session.intra_op.allow_spinning": "0"}
    assert int8.config_entry("session.intra_op.allow_spinning") == "0"
    assert int8.config_entry("session.save_model_format") is None
    assert int8.config_entry("session.disable_quant_qdq") is None
    assert "save_model_format" in caplog.text and "'yes'" in caplog.text
    assert ("model-int4.onnx", FOLD) in [(p.rsplit("/", 1)[-1], c) for p, c in engine.loads]


def test_profiling_uses_the_same_session_config(dq_bundle, tmp_path):
    store, installed = dq_bundle
    engine = RecordingEngine()
    profiles = profile_bundle(engine, installed, ProfileCache(tmp_path / "profiles"), warmup=1, runs=2)
    assert {p.variant_id for p in profiles} == {"fp32", "int8", "int4"}
    by_file = {p.rsplit("/", 1)[-1]: c for p, c in engine.loads}
    assert by_file["model-int4.onnx"] == FOLD
    assert by_file["model-fp32.onnx"] is None


def test_engine_without_session_config_still_loads(dq_bundle):
    _, installed = dq_bundle
    engine = PathOnlyEngine()
    session = load_variant(engine, installed.variant_path("int4"), installed.manifest.variant("int4"))
    x = np.ones((1, IN_DIM), np.float32)
    np.testing.assert_allclose(session.run({"input": x})["logits"], dequant_reference(7, x), rtol=1e-5, atol=1e-5)
    runner = Runner(engine)
    runner.activate(installed, "int4")
    assert runner.run({"input": x}).variant == "int4"
    assert len(engine.paths) == 2
