"""`edgefleet demo` runs to completion and a device switches variant because of its simulated
temperature or battery (the foundation's last acceptance point), leaving no process behind."""

import subprocess
import sys

import psutil
import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_and_a_device_adapts(tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    # 60 s of traffic covers the heat device's trip (~40 s in at the default 10x sensor speed).
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "demo", "--duration", "60", "--plain", "--epochs", "5",
         "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "deployment SUCCEEDED" in out
    assert "thermal_trip" in out                      # the heat device stepped down ...
    assert "driven by battery or temperature; demo finished" in out
    assert " 0 failed" in out                         # ... without a failed request
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not left, f"demo left processes behind: {left}"
