"""The agent ships to devices: importing it (and everything the daemon imports) must not pull
in torch, onnx, the server or the compressor. Checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT

FORBIDDEN = ("torch", "onnx", "server", "compressor")


def test_agent_imports_stay_light():
    code = (
        "import json, sys\n"
        "import agent, agent.main, agent.daemon, agent.sensors, agent.scheduler, agent.engines\n"
        "from agent.daemon import Daemon\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] in %r)\n"
        "print(json.dumps(mods))\n" % (FORBIDDEN,))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
