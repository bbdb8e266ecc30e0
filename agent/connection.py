"""The long-lived Connect stream: Hello, heartbeats, reported state and metrics up;
desired state down. Reconnects with jittered exponential backoff.

Backoff resets once a connection proved healthy (the server answered on it). A rejected
credential (UNAUTHENTICATED), or a certificate the server does not accept for this device
(PERMISSION_DENIED, mutual TLS), is logged as such and retried only at the maximum backoff:
hammering the server will not make either valid.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable

import grpc

from agent import __version__
from agent.channel import auth_metadata
from agent.config import AgentConfig
from agent.state import ReportedStateHolder
from proto import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

_WAKE = 0.25          # longest the sender sleeps before re-checking whether the call ended


def backoff_delay(attempt: int, base: float, maximum: float, rng: random.Random = random) -> float:
    """Exponential backoff with jitter in [50 %, 100 %] of the capped value (no thundering herd
    when a server restarts under a whole fleet, never zero)."""
    capped = min(maximum, base * (2 ** min(attempt, 30)))
    return capped * rng.uniform(0.5, 1.0)


class Connection:
    def __init__(self, config: AgentConfig, channel: grpc.Channel, credential: str,
                 state: ReportedStateHolder, *, info: fleet_pb2.DeviceInfo,
                 metrics_message: Callable[[], fleet_pb2.DeviceMetrics],
                 on_desired: Callable[[fleet_pb2.DesiredState], None], agent_metrics=None):
        self.config = config
        self.stub = fleet_pb2_grpc.DeviceServiceStub(channel)
        self.metadata = auth_metadata(credential)
        self.state = state
        self.info = info
        self.metrics_message = metrics_message
        self.on_desired = on_desired
        self.agent_metrics = agent_metrics
        self.connected = threading.Event()
        self.last_error = ""
        self.attempts = 0              # consecutive failed attempts (drives the backoff)
        self._stop = threading.Event()
        self._call = None
        self._call_lock = threading.Lock()

    # -- outgoing -----------------------------------------------------------------------
    def _outgoing(self, done: threading.Event):
        yield fleet_pb2.AgentMessage(hello=fleet_pb2.Hello(agent_version=__version__, info=self.info))
        sent_version, state = self.state.snapshot()
        yield fleet_pb2.AgentMessage(state=state)
        sequence = 0
        now = time.monotonic()
        next_heartbeat = now + self.config.heartbeat_interval
        next_metrics = now + self.config.metrics_interval
        while not done.is_set() and not self._stop.is_set():
            now = time.monotonic()
            if now >= next_heartbeat:
                sequence += 1
                yield fleet_pb2.AgentMessage(heartbeat=fleet_pb2.Heartbeat(sequence=sequence, sent_unix=time.time()))
                next_heartbeat = now + self.config.heartbeat_interval
            version = self.state.version
            if version != sent_version:
                sent_version, state = self.state.snapshot()
                yield fleet_pb2.AgentMessage(state=state)
            if now >= next_metrics:
                yield fleet_pb2.AgentMessage(metrics=self.metrics_message())
                next_metrics = now + self.config.metrics_interval
            timeout = min(next_heartbeat, next_metrics) - time.monotonic()
            self.state.wait_changed(sent_version, max(0.0, min(timeout, _WAKE)))

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        """Connect, serve the stream, reconnect; returns after stop()."""
        while not self._stop.is_set():
            healthy = self._session()
            if self._stop.is_set():
                break
            if healthy:
                self.attempts = 0
            delay = backoff_delay(self.attempts, self.config.backoff_base, self.config.backoff_max)
            self.attempts += 1
            log.info("reconnecting in %.1fs", delay)
            self._stop.wait(delay)
        log.info("connection loop stopped")

    def _session(self) -> bool:
        """One Connect call. Returns True if the server answered on it (a healthy connection)."""
        done = threading.Event()
        healthy = False
        if self.agent_metrics:
            self.agent_metrics.reconnects.inc()
        call = self.stub.Connect(self._outgoing(done), metadata=self.metadata)
        with self._call_lock:
            self._call = call
        if self._stop.is_set():
            call.cancel()
        try:
            for message in call:
                if not healthy:
                    healthy = True
                    self.connected.set()
                    self.last_error = ""
                    if self.agent_metrics:
                        self.agent_metrics.connected.set(1)
                    log.info("connected to %s", self.config.server)
                kind = message.WhichOneof("kind")
                if kind == "desired":
                    self.on_desired(message.desired)
            self.last_error = "server closed the stream"
            log.warning("server %s closed the stream", self.config.server)
        except grpc.RpcError as exc:
            code = exc.code()
            if self._stop.is_set() and code == grpc.StatusCode.CANCELLED:
                return healthy
            self.last_error = f"{code.name}: {exc.details()}"
            if code == grpc.StatusCode.UNAUTHENTICATED:
                log.error("server %s rejected this device's credential (%s); the device may have been "
                          "removed. Retrying only every %.0fs; re-enroll with a new --token after deleting "
                          "identity.json if this persists", self.config.server, exc.details(),
                          self.config.backoff_max)
                self.attempts = max(self.attempts, 64)   # pin the backoff at its maximum
            elif code == grpc.StatusCode.PERMISSION_DENIED:
                log.error("server %s refused this device (%s); with mutual TLS the device must present "
                          "a certificate with the subject CN it enrolled with (--tls-cert). Retrying only "
                          "every %.0fs", self.config.server, exc.details(), self.config.backoff_max)
                self.attempts = max(self.attempts, 64)
            else:
                log.warning("connection to %s lost: %s", self.config.server, self.last_error)
        finally:
            done.set()
            self.connected.clear()
            if self.agent_metrics:
                self.agent_metrics.connected.set(0)
            with self._call_lock:
                self._call = None
        return healthy

    def stop(self) -> None:
        self._stop.set()
        with self._call_lock:
            if self._call is not None:
                self._call.cancel()
