"""What the agent tells the server about the machine it runs on."""

from __future__ import annotations

import os
import platform

import psutil

from agent import __version__
from proto import fleet_pb2

# CPU flags that matter for choosing kernels; the full /proc/cpuinfo list is noise.
_INTERESTING_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
                      "avx512vl", "avx512_vnni", "avx_vnni", "neon", "asimd", "asimddp", "sve")


def cpu_features() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return [f for f in _INTERESTING_FLAGS if f in flags]


def device_info() -> fleet_pb2.DeviceInfo:
    try:
        memory = int(psutil.virtual_memory().total)
    except Exception:          # psutil can raise in odd containers; the field is informational
        memory = 0
    return fleet_pb2.DeviceInfo(
        platform=platform.platform(), machine=platform.machine(), cpu_count=os.cpu_count() or 1,
        cpu_features=cpu_features(), memory_bytes=memory, agent_version=__version__)
