"""Cross-replica notifications: PostgreSQL LISTEN/NOTIFY tells every replica's device streams
that a device's desired state changed or that the device was removed.

Several replicas share one PostgreSQL; a device's stream lives on one of them, the change may
be made on another. The sender (NotifySender, the SessionHub's `peers`) sends one NOTIFY per
change on CHANNEL; every replica's NotifyListener hands it to its own hub, whose streams then
re-read the database (still the only source of truth: a notification says "look again", never
what to look at). The streams' periodic recheck (desired_recheck_seconds) stays the safety net
for a notification that never arrives (a replica died between commit and NOTIFY, a listener
was reconnecting). SQLite is one process: no sender, no listener.

Payload: JSON {"from": <replica id>, "desired": [device ids]} or {"from": ..., "removed": [ids]},
split into several NOTIFYs to stay under PostgreSQL's 8000-byte limit; a change too large for
MAX_NOTIFICATIONS payloads is sent as {"from": ..., "all": true} (every stream re-reads). A
listener skips what its own replica sent: the local hub was already told.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Iterable

import psycopg
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from server.sessions import SessionHub

log = logging.getLogger(__name__)

CHANNEL = "edgefleet_devices"
MAX_PAYLOAD_BYTES = 7900    # PostgreSQL refuses 8000 bytes or more (default build)
MAX_NOTIFICATIONS = 32      # one change split into more payloads than this becomes "all"
DESIRED, REMOVED, ALL = "desired", "removed", "all"


def new_replica_id() -> str:
    return secrets.token_hex(8)


# -- payloads --------------------------------------------------------------------------
def encode(replica_id: str, kind: str, device_ids: Iterable[str]) -> list[str]:
    """JSON payloads naming `device_ids` under `kind`, each under MAX_PAYLOAD_BYTES."""
    payloads: list[str] = []
    batch: list[str] = []
    # Sizes add up (compact separators, ASCII escapes): the empty payload, then each id's JSON
    # string and, after the first, a comma. Counting them keeps a large change linear instead
    # of re-encoding the growing batch for every id.
    empty = len(_payload(replica_id, kind, []))
    size = empty
    for device_id in device_ids:
        item = len(json.dumps(device_id))
        if batch and size + 1 + item > MAX_PAYLOAD_BYTES:
            payloads.append(_payload(replica_id, kind, batch))
            batch, size = [], empty
        size += item + (1 if batch else 0)
        batch.append(device_id)
    if batch:
        payloads.append(_payload(replica_id, kind, batch))
    too_large = any(len(p.encode()) > MAX_PAYLOAD_BYTES for p in payloads)   # an absurd id
    if len(payloads) > MAX_NOTIFICATIONS or too_large:
        return [json.dumps({"from": replica_id, ALL: True})]
    return payloads


def _payload(replica_id: str, kind: str, device_ids: list[str]) -> str:
    return json.dumps({"from": replica_id, kind: device_ids}, separators=(",", ":"))


@dataclass(frozen=True)
class Change:
    """One received notification; `everything`: every local stream re-reads."""

    sender: str = ""
    desired: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    everything: bool = False


def decode(payload: str) -> Change:
    """A payload another replica sent; anything malformed counts as "everything changed"
    (someone else NOTIFYing on the channel costs a re-read, never a missed change)."""
    try:
        data = json.loads(payload)
        sender = data.get("from", "")
        desired, removed = data.get(DESIRED, []), data.get(REMOVED, [])
        if not (isinstance(sender, str) and _ids(desired) and _ids(removed)):
            raise ValueError("unexpected field types")
    except (ValueError, AttributeError) as exc:
        log.warning("unreadable notification on %s (%s): %.200r; every stream re-reads", CHANNEL, exc, payload)
        return Change(everything=True)
    return Change(sender=sender, desired=tuple(desired), removed=tuple(removed),
                  everything=data.get(ALL) is True)


def _ids(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# -- sending ---------------------------------------------------------------------------
class NotifySender:
    """The SessionHub's `peers` on PostgreSQL: NOTIFYs the other replicas of a change.

    Sent right after the change committed, in a transaction of its own, not inside the
    change's transaction: the Database methods stay free of messaging, and a committing
    transaction that has NOTIFYs takes PostgreSQL's global notify-queue lock, which should not
    be held by deployment or removal transactions. Delivery after commit is what the same-
    transaction NOTIFY would give too (listeners read only committed data); the one thing lost
    is the NOTIFY of a replica that dies between the two commits, which the streams' periodic
    recheck covers. A failing NOTIFY is logged, never raised: the change itself is committed.
    """

    def __init__(self, engine: Engine, replica_id: str) -> None:
        self.engine = engine
        self.replica_id = replica_id

    def desired_changed(self, device_ids: Iterable[str]) -> None:
        self._send(encode(self.replica_id, DESIRED, device_ids))

    def removed(self, device_id: str) -> None:
        self._send(encode(self.replica_id, REMOVED, [device_id]))

    def _send(self, payloads: list[str]) -> None:
        try:
            with self.engine.begin() as conn:
                for payload in payloads:
                    conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                                 {"channel": CHANNEL, "payload": payload})
        except Exception:
            log.warning("NOTIFY on %s failed; other replicas see the change at their next recheck",
                        CHANNEL, exc_info=True)


# -- listening -------------------------------------------------------------------------
def listener_conninfo(db_url: str) -> str:
    """The libpq URL of a SQLAlchemy postgresql+psycopg URL (same host, user, database)."""
    return make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)


class NotifyListener:
    """One thread with its own connection LISTENing on CHANNEL, feeding this replica's hub.

    Waits for notifications at most `poll_seconds` at a time so stop() returns quickly. When the
    connection drops it reconnects with exponential backoff (up to `max_backoff_seconds`);
    after every (re)connect each local stream re-reads, since whatever was sent while nobody
    listened is lost.
    """

    def __init__(self, conninfo: str, hub: SessionHub, replica_id: str, poll_seconds: float = 0.5,
                 initial_backoff_seconds: float = 0.5, max_backoff_seconds: float = 30.0) -> None:
        self.conninfo = conninfo
        self.hub = hub
        self.replica_id = replica_id
        self.poll_seconds = poll_seconds
        self.initial_backoff_seconds = initial_backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.listening = threading.Event()      # set while LISTEN is in effect
        self.backend_pid: int | None = None     # of the listening connection (tests kill it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-notify-listener", daemon=True)

    def start(self, wait_seconds: float = 10.0) -> None:
        """Start listening; waits until LISTEN is in effect (or `wait_seconds`, then retries on)."""
        self._thread.start()
        if not self.listening.wait(wait_seconds):
            log.warning("notify listener not connected after %.0f s; still trying", wait_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.poll_seconds + 10)

    def _run(self) -> None:
        backoff = self.initial_backoff_seconds
        connected_before = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5,
                                     keepalives=1, keepalives_idle=10, keepalives_interval=5,
                                     keepalives_count=3) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    self.backend_pid = conn.info.backend_pid
                    self.listening.set()
                    log.info("notify listener %s on channel %s (backend pid %d)%s",
                             "reconnected" if connected_before else "connected", CHANNEL,
                             self.backend_pid, "; every local stream re-reads" if connected_before else "")
                    connected_before = True
                    self.hub.notify_all_here()
                    backoff = self.initial_backoff_seconds
                    while not self._stop.is_set():
                        for notification in conn.notifies(timeout=self.poll_seconds):
                            self._deliver(decode(notification.payload))
            except psycopg.Error as exc:
                self.listening.clear()
                if self._stop.is_set():
                    break
                log.warning("notify listener connection failed (%s); reconnecting in %.1f s",
                            str(exc).strip() or type(exc).__name__, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_seconds)
        self.listening.clear()

    def _deliver(self, change: Change) -> None:
        try:
            self._hand_to_hub(change)
        except Exception:       # a bug here must not end the listener for good
            log.exception("notify listener: handling a notification failed")

    def _hand_to_hub(self, change: Change) -> None:
        if change.sender == self.replica_id:
            return                  # this replica's own change: its hub was told directly
        if change.everything:
            self.hub.notify_all_here()
        self.hub.notify_desired_here(change.desired)
        for device_id in change.removed:
            self.hub.disconnect_here(device_id)
