"""Turns a DesiredState into an installed, active bundle — or a FAILED report with a reason.

    verify signature -> DOWNLOADING (progress) -> VERIFYING (every digest) -> INSTALLING
    (stage bundle folder, benchmark variants, load + warm the chosen one) -> switch
    current.json -> INSTALLED

Any failure leaves the previous bundle active. Runs in its own thread; the connection only
hands over the latest desired state (`submit`), which also cancels an older one in progress.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from agent.connection import backoff_delay
from agent.download import DownloadCancelled, DownloadError, Downloader
from agent.state import ReportedStateHolder
from agent.store import InstalledBundle, Store, StoreError
from proto import fleet_pb2, signing
from proto.manifest import ManifestError, bundle_id_of

log = logging.getLogger(__name__)
RS = fleet_pb2.ReportedState


class DeploymentFailed(RuntimeError):
    """Permanent failure of one desired state (retrying the same one will not help)."""


class Deployer:
    """`activate(bundle) -> None` must benchmark and load the bundle's chosen variant and raise
    if it cannot; only after it returns is current.json switched."""

    def __init__(self, store: Store, downloader: Downloader, state: ReportedStateHolder,
                 trusted_keys: list[bytes], activate: Callable[[InstalledBundle], None], *,
                 backoff_base: float = 0.5, backoff_max: float = 30.0):
        self.store = store
        self.downloader = downloader
        self.state = state
        self.trusted_keys = list(trusted_keys)
        self.activate = activate
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.active: InstalledBundle | None = None
        self._cond = threading.Condition()
        self._pending: fleet_pb2.DesiredState | None = None
        self._stop = False
        self._failed: dict[tuple[str, str], str] = {}    # permanent failures, not retried
        downloader.cancelled = threading.Event()
        downloader.progress = self._progress
        self._total_bytes = 0
        self._done_bytes: dict[str, int] = {}
        self._last_fraction = 0.0
        self._working_on: tuple[str, str] | None = None

    # -- hand-over from the connection --------------------------------------------------
    def submit(self, desired: fleet_pb2.DesiredState) -> None:
        with self._cond:
            self._pending = desired
            # A different target supersedes the one being worked on; the same one sent again
            # (e.g. after a reconnect) lets the work go on.
            if (desired.bundle_id, desired.deployment_id) != self._working_on:
                self.downloader.cancelled.set()
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self.downloader.cancelled.set()
            self._cond.notify_all()

    def run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._stop)
                if self._stop:
                    return
                desired, self._pending = self._pending, None
                self.downloader.cancelled.clear()
                self._working_on = (desired.bundle_id, desired.deployment_id)
            try:
                self.apply(desired)
            except Exception:          # never let the worker die: report and wait for the next
                log.exception("deployment worker error")
                self.state.update(phase=RS.FAILED, error="internal error in the agent (see its log)")
            finally:
                with self._cond:
                    self._working_on = None

    def _wait_or_superseded(self, seconds: float) -> bool:
        """Sleep before a retry; True if a new desired state (or stop) arrived meanwhile."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is not None or self._stop, seconds)

    # -- one desired state --------------------------------------------------------------
    def apply(self, desired: fleet_pb2.DesiredState) -> None:
        active_id = self.active.bundle_id if self.active else ""
        if not desired.bundle_id:
            self.state.update(phase=RS.IDLE, target_bundle_id="", error="", progress=0.0)
            return
        if desired.bundle_id == active_id:
            if desired.deployment_id != self.active.deployment_id:
                self.store.set_current(active_id, desired.deployment_id)
                self.active = InstalledBundle(active_id, desired.deployment_id, self.active.path,
                                              self.active.manifest)
            self.state.update(phase=RS.INSTALLED, bundle_id=active_id, deployment_id=desired.deployment_id,
                              target_bundle_id=active_id, error="", progress=1.0)
            return
        key = (desired.bundle_id, desired.deployment_id)
        if key in self._failed:
            self._report_failed(desired, self._failed[key])
            return
        attempt = 0
        while True:
            try:
                self._install(desired)
                return
            except DownloadCancelled:
                log.info("deployment %s superseded by a newer desired state", desired.deployment_id)
                return
            except (DeploymentFailed, StoreError) as exc:
                self._failed[key] = str(exc)
                self._report_failed(desired, str(exc))
                return
            except DownloadError as exc:
                if exc.permanent:
                    self._failed[key] = str(exc)
                    self._report_failed(desired, str(exc))
                    return
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_max)
                attempt += 1
                log.warning("%s; retrying in %.1fs", exc, delay)
                self.state.update(error=f"retrying: {exc}")
                if self._wait_or_superseded(delay):
                    return

    def _report_failed(self, desired: fleet_pb2.DesiredState, error: str) -> None:
        log.error("deployment %s of bundle %s FAILED: %s", desired.deployment_id, desired.bundle_id[:12], error)
        self.state.update(phase=RS.FAILED, error=error, deployment_id=desired.deployment_id,
                          target_bundle_id=desired.bundle_id, progress=0.0,
                          bundle_id=self.active.bundle_id if self.active else "")

    def _progress(self, digest: str, done: int, total: int) -> None:
        self._done_bytes[digest] = done
        fraction = sum(self._done_bytes.values()) / max(1, self._total_bytes)
        # Report in steps of ~5 %: each report is a message upstream.
        if int(fraction * 20) != int(self._last_fraction * 20) or fraction >= 1.0:
            self._last_fraction = fraction
            self.state.update(progress=round(min(1.0, fraction), 4))

    def _install(self, desired: fleet_pb2.DesiredState) -> None:
        self.state.update(phase=RS.VERIFYING, target_bundle_id=desired.bundle_id,
                          deployment_id=desired.deployment_id, error="", progress=0.0)
        try:
            manifest = signing.verify(desired.manifest, desired.signature, desired.publisher_key,
                                      self.trusted_keys)
        except ManifestError as exc:
            raise DeploymentFailed(f"manifest rejected: {exc}") from None
        if bundle_id_of(desired.manifest) != desired.bundle_id:
            raise DeploymentFailed("bundle id does not match the sha256 of the manifest")

        # DOWNLOADING: only what is not stored yet (content-addressed, shared across bundles).
        self._total_bytes = manifest.total_bytes
        self._done_bytes = {}
        self._last_fraction = 0.0
        missing = []
        for v in manifest.variants:
            if self.store.has_artifact(v.digest) and self.store.verify_artifact(v.digest, v.size_bytes):
                self._done_bytes[v.digest] = v.size_bytes
            else:
                missing.append(v)
        self.state.update(phase=RS.DOWNLOADING, progress=round(sum(self._done_bytes.values())
                                                                / max(1, self._total_bytes), 4))
        for v in missing:
            self.downloader.fetch(v.digest, v.size_bytes)

        # VERIFYING: every file, whether just downloaded or already here.
        self.state.update(phase=RS.VERIFYING, progress=1.0)
        for v in manifest.variants:
            if not self.store.verify_artifact(v.digest, v.size_bytes):
                raise DownloadError(f"artifact {v.digest} of variant {v.id} changed on disk; "
                                    "downloading it again", permanent=False)

        # INSTALLING: stage the folder, benchmark + load (may take a while), then switch.
        self.state.update(phase=RS.INSTALLING)
        bundle = self.store.stage(desired.manifest, desired.signature, desired.publisher_key,
                                  manifest, desired.deployment_id)
        try:
            self.activate(bundle)
        except Exception as exc:
            raise DeploymentFailed(f"no variant of bundle {desired.bundle_id[:12]} could be loaded: {exc}") from None
        self.store.set_current(bundle.bundle_id, desired.deployment_id)
        self.active = bundle
        self.state.update(phase=RS.INSTALLED, bundle_id=bundle.bundle_id, deployment_id=desired.deployment_id,
                          target_bundle_id=bundle.bundle_id, error="", progress=1.0)
        self.store.gc()
