"""Connected device streams: one outbound queue per device, so a change reaches it at once.

The database stays the source of truth; a session only holds "something changed, re-read
your desired state" notifications and heartbeat acks waiting to be sent. A second stream
from the same device closes the first (the newest connection is the real one, e.g. after a
NAT rebinding the old TCP connection may linger half-open for minutes).

With several replicas (PostgreSQL) the hub's `peers` (server/notify.py NotifySender) carry
notify_desired and disconnect to the other replicas, whose listeners call the *_here methods.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Protocol

from proto import fleet_pb2

# Queue items: a ServerMessage to send, or one of these markers.
DESIRED_CHANGED = "desired-changed"
CLOSE = "close"


class DeviceSession:
    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.outbox: queue.Queue = queue.Queue()
        self.closed = threading.Event()

    def send(self, message: fleet_pb2.ServerMessage) -> None:
        if not self.closed.is_set():
            self.outbox.put(message)

    def notify_desired(self) -> None:
        if not self.closed.is_set():
            self.outbox.put(DESIRED_CHANGED)

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.outbox.put(CLOSE)


class Peers(Protocol):
    """The other server replicas, told of what changed here."""

    def desired_changed(self, device_ids: list[str]) -> None: ...

    def removed(self, device_id: str) -> None: ...


class SessionHub:
    def __init__(self, peers: Peers | None = None) -> None:
        """peers: None when this process is the only replica (SQLite)."""
        self._lock = threading.Lock()
        self._sessions: dict[str, DeviceSession] = {}
        self.peers = peers

    def register(self, device_id: str) -> DeviceSession:
        session = DeviceSession(device_id)
        with self._lock:
            previous = self._sessions.get(device_id)
            self._sessions[device_id] = session
        if previous is not None:
            previous.close()
        return session

    def unregister(self, session: DeviceSession) -> None:
        with self._lock:
            if self._sessions.get(session.device_id) is session:
                del self._sessions[session.device_id]
        session.close()

    def notify_desired(self, device_ids: Iterable[str]) -> None:
        """The devices' desired state changed (committed): their streams here and on every
        other replica re-read it."""
        device_ids = list(device_ids)
        self.notify_desired_here(device_ids)
        if self.peers is not None and device_ids:
            self.peers.desired_changed(device_ids)

    def disconnect(self, device_id: str) -> None:
        """The device was removed (committed): end its stream here and on every other replica."""
        self.disconnect_here(device_id)
        if self.peers is not None:
            self.peers.removed(device_id)

    def notify_desired_here(self, device_ids: Iterable[str]) -> None:
        with self._lock:
            sessions = [self._sessions[d] for d in device_ids if d in self._sessions]
        for s in sessions:
            s.notify_desired()

    def notify_all_here(self) -> None:
        """Every stream on this replica re-reads (changes may have been missed)."""
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.notify_desired()

    def disconnect_here(self, device_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(device_id, None)
        if session is not None:
            session.close()

    def connected(self) -> set[str]:
        with self._lock:
            return set(self._sessions)

    def close_all(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for s in sessions:
            s.close()
