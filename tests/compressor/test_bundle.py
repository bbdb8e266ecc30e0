"""compress() end to end: a signed bundle whose signature and digests verify."""

import json

import numpy as np
import pytest
import torch

from compressor import (CompressionError, EmptyCalibrationError, Fp32Config,
                        Int4WeightOnlyConfig, Int8StaticConfig, UnsupportedLayerError, compress,
                        config_from_dict, config_to_dict, read_bundle)
from compressor.evaluate import LatencyConfig
from proto import signing
from proto.manifest import Manifest, ManifestError, sha256_digest

FAST = LatencyConfig(warmup=2, repeats=5)


@pytest.fixture(scope="module")
def bundle(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bundle"
    key = signing.generate_private_key()
    result = compress(digits.model, [Fp32Config(), Int8StaticConfig(), Int4WeightOnlyConfig(group_size=32)],
                      calib_data=digits.calibration[0], eval_data=digits.heldout, out_dir=out,
                      signing_key=key, model_name="digits-cnn", latency=FAST)
    return out, key, result


def test_bundle_signature_and_digests_verify(bundle):
    out, key, result = bundle
    data = (out / "manifest.json").read_bytes()
    pub = (out / "publisher.pub").read_bytes()
    assert pub == signing.public_key_bytes(key) and len(pub) == 32
    manifest = signing.verify(data, (out / "manifest.sig").read_bytes(), pub, [pub])
    assert data == manifest.to_bytes()                          # canonical bytes
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "manifest.sig", "publisher.pub"] + [v.file for v in manifest.variants])
    for v in manifest.variants:
        blob = (out / v.file).read_bytes()
        assert sha256_digest(blob) == v.digest and len(blob) == v.size_bytes
    assert read_bundle(out).bundle_id == result.bundle_id
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]   # no temp left


def test_manifest_contents(bundle):
    _, _, result = bundle
    m = result.manifest
    assert [v.id for v in m.variants] == ["fp32", "int8", "int4"]
    fp32, int8, int4 = m.variants
    assert (fp32.weight_bits, int8.weight_bits, int8.activation_bits, int4.weight_bits) == (32, 8, 8, 4)
    assert int8.parent == "fp32" and int4.parent == "fp32" and fp32.parent is None
    assert int8.method == "ptq-static" and int4.method == "weight-only-int4"
    assert int4.size_bytes < int8.size_bytes < fp32.size_bytes
    assert int8.quality >= fp32.quality - 0.005 and fp32.quality > 0.97
    assert all(v.latency_p50_seconds > 0 and v.latency_p95_seconds >= v.latency_p50_seconds
               and v.memory_bytes > 0 for v in m.variants)
    assert int8.layer_groups[0].weight_bits == 8 and int8.layer_groups[0].activation_bits == 8
    assert m.inputs[0].name == "input" and m.inputs[0].shape == (None, 1, 8, 8)
    assert config_from_dict(int4.details["config"]) == Int4WeightOnlyConfig(group_size=32)


def test_tampered_bundle_is_rejected(bundle, tmp_path):
    import shutil
    out, _, _ = bundle
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    blob = bytearray((copy / "int8.onnx").read_bytes())
    blob[-1] ^= 1
    (copy / "int8.onnx").write_bytes(bytes(blob))
    with pytest.raises(ManifestError, match="digest"):
        read_bundle(copy)
    raw = json.loads((copy / "manifest.json").read_bytes())
    raw["variants"][0]["quality"] = 1.0
    (copy / "manifest.json").write_bytes(Manifest.from_dict(raw).to_bytes())
    with pytest.raises(ManifestError, match="signature"):
        read_bundle(copy)


def test_rewriting_a_bundle_replaces_it(digits, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "stale.onnx").write_bytes(b"old")
    compress(digits.model, [Int4WeightOnlyConfig()], eval_data=digits.heldout, out_dir=out,
             signing_key=tmp_path / "k.pem", latency=FAST)
    assert not (out / "stale.onnx").exists() and (out / "int4.onnx").exists()
    assert (tmp_path / "k.pem").exists()


def test_empty_calibration_is_an_error_not_an_fp32_copy(digits, tmp_path):
    with pytest.raises(EmptyCalibrationError, match="int8"):
        compress(digits.model, [Fp32Config(), Int8StaticConfig()],
                 calib_data=np.zeros((0, 1, 8, 8), np.float32), eval_data=digits.heldout,
                 out_dir=tmp_path / "b", signing_key=signing.generate_private_key(), latency=FAST)
    assert not (tmp_path / "b").exists()


def test_unsupported_layer_is_a_clear_error(digits):
    class WithLSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(8, 8, batch_first=True)
            self.head = torch.nn.Linear(8, 10)

        def forward(self, x):
            return self.head(self.rnn(x.flatten(1, 2))[0][:, -1])

    with pytest.raises(UnsupportedLayerError, match="'rnn' is a LSTM"):
        compress(WithLSTM(), [Int8StaticConfig()], calib_data=digits.calibration[0],
                 eval_data=digits.heldout)


def test_bad_configs_and_arguments(digits):
    with pytest.raises(ValueError, match="group_size"):
        Int4WeightOnlyConfig(group_size=12)
    with pytest.raises(ValueError, match="percentile"):
        Int8StaticConfig(percentile=20)
    with pytest.raises(ValueError, match="signed"):
        Int8StaticConfig(symmetric_activations=True)
    with pytest.raises(CompressionError, match="unique"):
        compress(digits.model, [Fp32Config(), Fp32Config()], eval_data=digits.heldout)
    with pytest.raises(CompressionError, match="signing_key"):
        compress(digits.model, [Fp32Config()], eval_data=digits.heldout, out_dir="x")
    with pytest.raises(CompressionError, match="no variant handler"):
        from compressor.configs import VariantConfig
        from dataclasses import dataclass

        @dataclass
        class Unknown(VariantConfig):
            def default_id(self):
                return "unknown"
        compress(digits.model, [Unknown()], eval_data=digits.heldout)


def test_config_json_round_trip():
    for cfg in (Fp32Config(), Int8StaticConfig(calibration="percentile", percentile=99.9,
                                                activation_type="int8", exclude=("fc2",)),
                Int4WeightOnlyConfig(group_size=64, symmetric=False)):
        d = json.loads(json.dumps(config_to_dict(cfg)))
        assert config_from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown config type"):
        config_from_dict({"_type": "os.system", "_version": 1, "_data": {}})


def _sparse_bundle(tmp_path, key):
    """A bundle with one dense-looking and one 75 %-zero variant file (the writer only checks
    digests, not ONNX validity)."""
    from compressor.bundle import write_bundle
    from proto.manifest import TensorSpec, Variant

    rng = np.random.default_rng(0)
    dense = rng.integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    sparse = np.where(rng.random(40_000) < 0.75, 0, rng.integers(1, 256, 40_000)).astype(np.uint8).tobytes()
    variants = tuple(Variant(id=i, file=f"{i}.onnx", digest=sha256_digest(b), size_bytes=len(b), method="m",
                             weight_bits=8, activation_bits=8, quality=0.9, sparsity=s,
                             sparsity_pattern="unstructured" if s else "none")
                     for i, b, s in (("dense", dense, 0.0), ("sparse", sparse, 0.75)))
    manifest = Manifest(model="m", version="1", quality_metric="accuracy", inputs=(TensorSpec("x", (1, 4)),),
                        outputs=(TensorSpec("y", (1, 2)),), variants=variants)
    out = tmp_path / "bundle"
    write_bundle(out, manifest, {"dense.onnx": dense, "sparse.onnx": sparse}, key)
    return out, dense, sparse


def test_sparse_variants_are_stored_deflated(tmp_path):
    key = signing.generate_private_key()
    out, dense, sparse = _sparse_bundle(tmp_path, key)
    stored = {v.id: v for v in read_bundle(out).manifest.variants}
    assert stored["dense"].encoding == "" and stored["dense"].file == "dense.onnx"
    s = stored["sparse"]
    assert (s.encoding, s.file, s.model_file) == ("zlib", "sparse.onnx.zlib", "sparse.onnx")
    assert s.size_bytes < 0.6 * len(sparse) and (out / s.file).stat().st_size == s.size_bytes
    assert (s.decoded_size, s.decoded_digest) == (len(sparse), sha256_digest(sparse))
    assert read_bundle(out).files == {"dense.onnx": dense, "sparse.onnx": sparse}   # ONNX bytes back


def test_a_deflated_file_that_lies_is_refused(tmp_path):
    import dataclasses
    import zlib

    from proto.manifest import decode_variant

    key = signing.generate_private_key()
    out, _, sparse = _sparse_bundle(tmp_path, key)
    v = next(v for v in read_bundle(out).manifest.variants if v.encoding)
    packed = (out / v.file).read_bytes()
    # inflates to other bytes than the manifest names
    with pytest.raises(ManifestError, match="does not inflate to"):
        decode_variant(dataclasses.replace(v, decoded_digest=sha256_digest(b"x")), packed)
    # a bomb: far more than decoded_size once inflated; only decoded_size + 1 bytes are produced
    bomb = zlib.compress(bytes(50_000_000))
    with pytest.raises(ManifestError, match="does not inflate to"):
        decode_variant(dataclasses.replace(v, decoded_size=100), bomb)
    with pytest.raises(ManifestError, match="does not inflate"):
        decode_variant(v, b"not zlib at all")
    # manifests that mix the fields up are rejected before anything is read
    base = json.loads((out / "manifest.json").read_bytes())
    for change in ({"encoding": "gzip"}, {"file": "sparse.onnx"}, {"decoded_size": 0},
                   {"encoding": "", "file": "sparse.onnx"}):
        raw = json.loads(json.dumps(base))
        entry = next(e for e in raw["variants"] if e["id"] == "sparse")
        entry.update(change)
        with pytest.raises(ManifestError):
            Manifest.from_bytes(json.dumps(raw).encode())
