"""The command line: compress the example model; quantize an existing .onnx."""

import numpy as np
import onnx

from compressor import read_bundle
from compressor.cli import main
from compressor.evaluate import accuracy_fn, session


def test_cli_compress_writes_bundle_and_public_key(tmp_path, capsys):
    key = tmp_path / "keys" / "publisher.key"
    assert main(["compress", "--out", str(tmp_path / "bundle"), "--signing-key", str(key),
                 "--epochs", "3"]) == 0
    pub = (tmp_path / "keys" / "publisher.pub").read_bytes()
    b = read_bundle(tmp_path / "bundle", trusted_keys=[pub])
    assert [v.id for v in b.manifest.variants] == ["fp32", "int8", "int4"]
    out = capsys.readouterr().out
    assert "int8" in out and b.bundle_id in out


def test_cli_quantize_onnx(tmp_path, digits, digits_fp32_onnx, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(digits_fp32_onnx, str(src))
    np.savez(tmp_path / "calib.npz", input=digits.calibration[0])
    assert main(["quantize-onnx", str(src), "--calib", str(tmp_path / "calib.npz"),
                 "--out", str(tmp_path / "q.onnx"), "--method", "percentile"]) == 0
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert accuracy_fn(*digits.heldout)(session(q)) > 0.96
    assert (tmp_path / "q.onnx").stat().st_size < src.stat().st_size / 3
    np.save(tmp_path / "empty.npy", np.zeros((0, 1, 8, 8), np.float32))
    import pytest
    with pytest.raises(Exception, match="calibration"):
        main(["quantize-onnx", str(src), "--calib", str(tmp_path / "empty.npy"), "--out",
              str(tmp_path / "q2.onnx")])


def test_cli_quantize_onnx_int2(tmp_path, digits, digits_fp32_onnx, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(digits_fp32_onnx, str(src))
    out = tmp_path / "q2.onnx"
    assert main(["quantize-onnx", str(src), "--out", str(out), "--format", "int2", "--group-size", "64"]) == 0
    # int8 edges by default (as Int4WeightOnlyConfig(bits=2)); all-2-bit when asked
    assert accuracy_fn(*digits.heldout)(session(onnx.load(str(out)))) > 0.96
    assert out.stat().st_size < src.stat().st_size / 8
    all2 = tmp_path / "all2.onnx"
    assert main(["quantize-onnx", str(src), "--out", str(all2), "--format", "int2", "--group-size", "64",
                 "--edge-bits", "2"]) == 0
    assert all2.stat().st_size < out.stat().st_size
    import pytest
    with pytest.raises(Exception, match="group_size"):
        main(["quantize-onnx", str(src), "--out", str(tmp_path / "bad.onnx"), "--format", "int2",
              "--group-size", "16"])
