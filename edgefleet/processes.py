"""Start and stop real server and agent processes on this machine (demo and tests).

Each process announces its ports by atomically writing a JSON file into its data
directory (server.json / agent.json); we wait for that file rather than sleeping.
Children are asked to die with us (PR_SET_PDEATHSIG on Linux, set by the child itself: see
edgefleet/child.py for why not in a preexec_fn), so a demo killed at any moment leaves no process
behind.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

@dataclass
class ManagedProcess:
    """A child process plus the runtime info it published."""

    name: str
    popen: subprocess.Popen
    data_dir: pathlib.Path
    log_path: pathlib.Path
    info: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, then SIGKILL if it does not go. Returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def popen_module(module: str, args: list[str], *, stdout, env: dict | None = None) -> subprocess.Popen:
    """`python -m MODULE ARGS...` as a child that dies with us, stderr into `stdout`.

    No preexec_fn: it would make subprocess fork() instead of vfork() (see edgefleet/child.py)."""
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "edgefleet.child", str(os.getpid()), module, *args],
                            stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env)


def _spawn(name: str, module: str, args: list[str], data_dir: pathlib.Path, info_file: str,
           timeout: float, env: dict | None) -> ManagedProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    info_path = data_dir / info_file
    info_path.unlink(missing_ok=True)     # a stale file from a previous run must not count
    log_path = data_dir / f"{name}.log"
    log = open(log_path, "ab")
    popen = popen_module(module, args, stdout=log, env=env)
    log.close()
    proc = ManagedProcess(name, popen, data_dir, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited with code {popen.returncode} before it was ready:\n"
                               f"{proc.log_tail()}")
        if info_path.exists():
            try:
                info = json.loads(info_path.read_text())
            except json.JSONDecodeError:
                info = None               # written atomically, but be tolerant anyway
            if info and info.get("pid") == popen.pid:
                proc.info = info
                return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{name} did not publish {info_file} within {timeout:.0f} s:\n{proc.log_tail()}")


def start_server(data_dir: str | os.PathLike, *, trust_keys: list[str] = (), db_url: str | None = None,
                 port: int = 0, extra_args: list[str] = (), timeout: float = 60.0,
                 env: dict | None = None) -> ManagedProcess:
    """Run `python -m server` (on free ports unless `port` is given: a restart reuses its port so
    agents find it again); info has grpc_port, metrics_port, address."""
    data_dir = pathlib.Path(data_dir)
    args = ["--data-dir", str(data_dir), "--port", str(port), "--metrics-port", "0"]
    for key in trust_keys:
        args += ["--trust-key", str(key)]
    if db_url:
        args += ["--db-url", db_url]
    return _spawn("server", "server", args + list(extra_args), data_dir, "server.json", timeout, env)


def start_agent(data_dir: str | os.PathLike, *, server: str, token: str | None, sensors: str = "psutil",
                sim_speed: float = 1.0, name: str = "agent", extra_args: list[str] = (),
                timeout: float = 60.0, env: dict | None = None) -> ManagedProcess:
    """Run `python -m agent` with its local inference endpoint on a free port."""
    data_dir = pathlib.Path(data_dir)
    args = ["--server", server, "--data-dir", str(data_dir), "--sensors", sensors,
            "--sim-speed", str(sim_speed), "--local-port", "0"]
    if token:
        args.append(f"--token={token}")      # "=": a value may start with "-"
    return _spawn(name, "agent", args + list(extra_args), data_dir, "agent.json", timeout, env)
