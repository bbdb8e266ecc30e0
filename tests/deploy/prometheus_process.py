"""A real Prometheus server (the distribution's `prometheus` binary) for tests.

Started on a free loopback port with its own config and storage in a temp dir; talks to
the HTTP API with urllib. The caller owns stop() (the fixtures call it in a finalizer).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from tests.conftest import free_port

BINARY = shutil.which("prometheus")

# Generous: the machine is shared; these bound a wait, they assert nothing about speed.
START_TIMEOUT_SECONDS = 90.0
WAIT_TIMEOUT_SECONDS = 120.0


class PrometheusProcess:
    def __init__(self, workdir: pathlib.Path, config: dict):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_path = workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config))      # JSON is YAML
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [BINARY, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.wait_for(self._ready, "Prometheus ready", START_TIMEOUT_SECONDS)
        except BaseException:
            self.stop()
            raise

    def _ready(self):
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def api(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=30) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def wait_for(self, predicate: Callable[[], object], what: str,
                 timeout: float = WAIT_TIMEOUT_SECONDS, interval: float = 0.5):
        """Poll until predicate() is truthy and return it; fail with the log if it never is."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}) waiting for "
                                     f"{what}:\n{self.log()}")
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.log()}")
            time.sleep(interval)

    def targets_up(self, job: str) -> bool:
        targets = self.api("targets", state="active")["activeTargets"]
        mine = [t for t in targets if t["labels"]["job"] == job]
        return bool(mine) and all(t["health"] == "up" for t in mine)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()
