"""The deployment reaper: ends every deployment that is past its deadline as TIMED_OUT (or
ROLLED_BACK, when it was created with rollback_on_timeout), and moves the devices of every
ROLLED_BACK deployment back (Database.apply_rollbacks): those it just timed out, and those a
server stopped in the middle of rolling back. It also releases waiting targets of phased rollouts
into slots no report filled (Database.release_waiting).

It runs once at start (so deployments whose deadline passed while the server was down end
right after a restart) and then every `interval` seconds. Safe with several replicas: the
UPDATE is conditional on IN_PROGRESS and PostgreSQL rows are taken with SKIP LOCKED.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable

from server.db import ROLLED_BACK, Database

log = logging.getLogger(__name__)


class DeploymentReaper:
    def __init__(self, db: Database, interval_seconds: float = 1.0,
                 on_desired_changed: Callable[[Iterable[str]], None] | None = None) -> None:
        self.db = db
        self.on_desired_changed = on_desired_changed
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deployment-reaper", daemon=True)

    def reap_once(self) -> list[str]:
        """One pass; returns the ids of the deployments it timed out (rolled back or not)."""
        timed_out = self.db.time_out_expired()
        for dep_id, state in timed_out.items():
            if state == ROLLED_BACK:
                log.warning("deployment %s timed out; rolling its targets back (rollback_on_timeout)", dep_id)
            else:
                log.warning("deployment %s timed out", dep_id)
        # The same path as a rollback a FAILED report decided: the devices move, then the streams
        # here and (PostgreSQL) on every other replica are told through on_desired_changed.
        moved = self.db.apply_rollbacks()
        if moved:
            log.warning("rolled back %d device(s) left on a rolled-back deployment", len(moved))
            if self.on_desired_changed is not None:
                self.on_desired_changed(moved)
        # Phased rollouts: slots a report could not fill (a removed target, a locked device row).
        released = self.db.release_waiting()
        if released:
            log.info("released %d waiting target(s) of phased rollouts: %s", len(released), ", ".join(released))
            if self.on_desired_changed is not None:
                self.on_desired_changed(released)
        return list(timed_out)

    def start(self) -> None:
        self.reap_once()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.reap_once()
            except Exception:        # a DB hiccup must not end the reaper for good
                log.exception("deployment reaper pass failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
