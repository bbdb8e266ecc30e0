"""The repository: every read and write of control-plane state goes through `Database`.

Works unchanged on SQLite (the embedded default) and PostgreSQL (several replicas):

* SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
  BEGIN IMMEDIATE: writers queue on the database lock up front instead of failing with
  "database is locked" when two deferred transactions both try to upgrade to writing.
* PostgreSQL rows that decide an outcome are locked with SELECT ... FOR UPDATE, always in
  the order bundles -> devices -> deployments (sorted by id) so concurrent writers cannot
  deadlock.
* One-time enrollment tokens are consumed by a single conditional UPDATE
  (`... WHERE used_at IS NULL AND expires_at > now`): whichever transaction changes the row
  wins; everyone else sees rowcount 0.

Artifact garbage collection. Files live outside the database, so no transaction alone can make
"delete the file" and "a new bundle row references it" exclusive. Every transaction that puts
files into the artifact store (add_bundle, in its place_files step) or takes them out
(sweep_artifacts) first locks the one artifact_store_lock row (SELECT ... FOR UPDATE on
PostgreSQL, so it holds across replicas; on SQLite BEGIN IMMEDIATE already holds the database's
write lock) and keeps it until it commits. An upload checks that the files it reuses are still
stored and publishes its own while holding it, and its bundle_artifacts rows commit before it
lets go; a sweep reads which digests bundle_artifacts references and deletes every other file
while holding it. So a sweep runs wholly before an upload (which then finds a reused file gone
and is refused, or publishes its own copy) or wholly after it (and sees its references): a
bundle row never names a file the sweep deleted. Crashes: bundle rows are deleted in their own,
earlier transaction (remove_bundle), so a crash before the sweep only leaves unreferenced files,
which the sweep at start-up (server/app.py) or after the next removal deletes. The sweep deletes
files before it commits, so a crash there leaves artifact rows of unreferenced digests without
files: no bundle lists them, uploads check the file itself, and the next sweep deletes the rows.

Methods return ORM rows detached from their session (expire_on_commit=False); callers read
them, never write through them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

from sqlalchemy import and_, create_engine, delete, event, func, or_, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateColumn

from proto import fleet_pb2
from proto.manifest import Manifest
from server.tokens import new_token
from server.models import (NOT_STARTED, RELEASED, SCHEMA_VERSION, UPGRADE_COLUMNS, WAITING, Artifact,
                           ArtifactStoreLock, Base, Bundle, BundleArtifact, Deployment, DeploymentRollback,
                           DeploymentTarget, Device, DeviceCertificate, EnrollmentToken, SchemaInfo)

Phase = fleet_pb2.ReportedState.Phase
State = fleet_pb2.Deployment.State

PHASE_PENDING = Phase.Name(Phase.PHASE_UNSPECIFIED)   # target created, device not heard from yet
PHASE_INSTALLED = Phase.Name(Phase.INSTALLED)
PHASE_FAILED = Phase.Name(Phase.FAILED)
_PROGRESS_PHASES = {Phase.DOWNLOADING, Phase.VERIFYING, Phase.INSTALLING}
_TERMINAL_PHASES = {PHASE_INSTALLED, PHASE_FAILED}

IN_PROGRESS = State.Name(State.IN_PROGRESS)
SUCCEEDED = State.Name(State.SUCCEEDED)
FAILED = State.Name(State.FAILED)
TIMED_OUT = State.Name(State.TIMED_OUT)
ROLLED_BACK = State.Name(State.ROLLED_BACK)

# The rollback_reason create_schema gives deployments that rolled back before version 5 (which
# did not record one; the failing target's own error still says what went wrong).
ROLLBACK_REASON_BEFORE_5 = "a target reported FAILED"

MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 253
MAX_NAMED_HOLDERS = 10     # ids a BundleInUse message names before it says "and N more"

T = TypeVar("T")


class NotFound(LookupError):
    """An id or digest the database does not know."""


class InvalidArgument(ValueError):
    """A request the database refuses as malformed (bad selector, empty target set...)."""


class BundleInUse(Exception):
    """A bundle a device or an unfinished deployment still needs (the message says which)."""


class EnrollmentRefused(PermissionError):
    """A wrong, expired or already-used enrollment token (message says which)."""


class CertificateInUse(PermissionError):
    """Mutual TLS: the client certificate's name is already bound to another device."""


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_selector(selector: str) -> dict[str, str]:
    """"key=value[,key2=value2]" -> {key: value}; every pair must match (AND)."""
    wanted: dict[str, str] = {}
    for part in selector.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"label selector {selector!r}: expected key=value[,key=value]")
        wanted[key.strip()] = value.strip()
    return wanted


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"{len(labels)} labels, at most {MAX_LABELS} allowed")
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY or "=" in key or "," in key:
            raise InvalidArgument(f"label key {key!r} must be 1..{MAX_LABEL_KEY} chars without '=' or ','")
        if len(value) > MAX_LABEL_VALUE or "," in value:
            raise InvalidArgument(f"label {key}: value must be at most {MAX_LABEL_VALUE} chars without ','")
    return dict(labels)


def labels_match(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


@dataclass
class DeploymentView:
    """A deployment with its targets, read in one transaction."""

    deployment: Deployment
    targets: list[DeploymentTarget]
    # rollback_on_failure: device id -> the bundle it goes back to (None: it ran none);
    # None when the deployment was created without rollback
    rollback: dict[str, str | None] | None = None


@dataclass
class ReportOutcome:
    """What one device report changed beyond the device's own row."""

    ended: tuple[str, str] | None = None     # (deployment id, its new state) when it ended one
    released: list[str] = field(default_factory=list)   # phased rollout: devices whose desired state it moved


@dataclass
class RemovedBundle:
    bundle: Bundle
    deployment_ids: list[str]      # its finished deployments, deleted with it


@dataclass
class DesiredView:
    bundle_id: str
    deployment_id: str
    manifest: bytes
    signature: bytes
    publisher_key: bytes


@dataclass
class FleetSnapshot:
    """What the metrics exporter and GetFleetStatus need, read in one transaction."""

    devices: list[Device]
    bundles_total: int
    deployments_by_state: dict[str, int]
    targets_waiting: int = 0        # targets of in-progress phased rollouts not yet released


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = create_engine(url, echo=echo,
                                        connect_args={"timeout": 30, "check_same_thread": False})
            _configure_sqlite(self.engine)
        else:
            self.engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10,
                                        max_overflow=20)
        # Reads on SQLite start with a plain (deferred) BEGIN so they never queue behind writers.
        self._read_engine = self.engine.execution_options(edgefleet_read_only=True)

    def create_schema(self) -> None:
        """Create missing tables and rows (idempotent: restarts keep every row; a database of an
        older version gains what it lacks, in one transaction with the version bump)."""
        Base.metadata.create_all(self.engine)
        try:
            with self._write() as s:
                # FOR UPDATE: replicas starting together upgrade one after the other, and the
                # second reads the version the first committed (SQLite: BEGIN IMMEDIATE already
                # serializes them).
                info = s.get(SchemaInfo, 1, with_for_update=True)
                if info is None:
                    s.add(SchemaInfo(id=1, version=SCHEMA_VERSION))
                elif info.version < SCHEMA_VERSION:
                    _upgrade(s, info.version)
                    info.version = SCHEMA_VERSION
                if s.get(ArtifactStoreLock, 1) is None:
                    s.add(ArtifactStoreLock(id=1))
        except IntegrityError:
            pass        # another replica starting at the same time inserted the same rows

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._read_engine, expire_on_commit=False) as session, session.begin():
            yield session

    # -- enrollment and credentials ---------------------------------------------------
    def create_enrollment_token(self, ttl_seconds: float, labels: dict[str, str] | None = None,
                                now: float | None = None) -> tuple[str, float]:
        now = time.time() if now is None else now
        token = new_token(24)
        expires = now + ttl_seconds
        with self._write() as s:
            s.add(EnrollmentToken(token_hash=sha256_hex(token), created_at=now, expires_at=expires,
                                  labels=check_labels(labels or {})))
        return token, expires

    def enroll(self, token: str, hostname: str, labels: dict[str, str], info: bytes,
               now: float | None = None, certificate_name: str | None = None) -> tuple[str, str]:
        """Consume `token` and create a device. Returns (device_id, credential).

        certificate_name (mutual TLS): the client certificate's common name, bound to the new
        device; CertificateInUse if another device holds it (the token stays unused)."""
        now = time.time() if now is None else now
        token_hash = sha256_hex(token)
        device_id = "dev-" + secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self._write() as s:
            consumed = s.execute(
                update(EnrollmentToken)
                .where(EnrollmentToken.token_hash == token_hash, EnrollmentToken.used_at.is_(None),
                       EnrollmentToken.expires_at > now)
                .values(used_at=now, used_by=device_id))
            if consumed.rowcount != 1:
                row = s.get(EnrollmentToken, token_hash)
                if row is None:
                    raise EnrollmentRefused("enrollment token is not valid")
                if row.used_at is not None:
                    raise EnrollmentRefused("enrollment token was already used")
                raise EnrollmentRefused("enrollment token has expired")
            row = s.get(EnrollmentToken, token_hash)
            # The operator's labels (on the token) win over what the device says about itself.
            merged = check_labels({**labels, **(row.labels or {})})
            s.add(Device(id=device_id, hostname=hostname[:255], labels=merged, info=info,
                         credential_hash=sha256_hex(secret), enrolled_at=now, last_seen=None))
            if certificate_name is not None:
                _claim_certificate(s, device_id, certificate_name, now)
        return device_id, f"{device_id}.{secret}"

    def certificate_name(self, device_id: str) -> str | None:
        """The client certificate CN `device_id` is bound to (mutual TLS), None if unbound."""
        with self._read() as s:
            return s.scalar(select(DeviceCertificate.common_name).where(DeviceCertificate.device_id == device_id))

    def certificate_names(self) -> dict[str, str]:
        """device id -> the client certificate CN it is bound to, for every bound device (one
        query, for the admin API's device listings)."""
        with self._read() as s:
            return dict(s.execute(select(DeviceCertificate.device_id, DeviceCertificate.common_name)).all())

    def bind_certificate(self, device_id: str, common_name: str, now: float | None = None) -> str:
        """The certificate name `device_id` is bound to. A device without one (enrolled before
        mutual TLS was switched on) is bound to `common_name` now, on its first call over
        mutual TLS; CertificateInUse if another device holds that name. A device that already
        has a name keeps it: nothing is written, whatever `common_name` is."""
        bound_name = self.certificate_name(device_id)
        if bound_name is not None:
            return bound_name
        now = time.time() if now is None else now
        with self._write() as s:
            bound = s.get(DeviceCertificate, device_id)
            if bound is not None:            # bound by a concurrent call of the same device
                return bound.common_name
            _claim_certificate(s, device_id, common_name, now)
        return common_name

    def authenticate(self, credential: str) -> str | None:
        """The device id a "<device_id>.<secret>" credential belongs to, else None."""
        device_id, sep, secret = credential.partition(".")
        if not sep or not device_id or not secret or len(device_id) > 64:
            return None
        with self._read() as s:
            stored = s.scalar(select(Device.credential_hash).where(Device.id == device_id))
        if stored is None:
            # Still hash and compare so unknown ids take about as long as wrong secrets.
            hmac.compare_digest(sha256_hex(secret), "0" * 64)
            return None
        return device_id if hmac.compare_digest(sha256_hex(secret), stored) else None

    # -- devices ----------------------------------------------------------------------
    def get_device(self, device_id: str) -> Device | None:
        with self._read() as s:
            return s.get(Device, device_id)

    def list_devices(self, selector: str = "") -> list[Device]:
        wanted = parse_selector(selector)
        with self._read() as s:
            rows = s.scalars(select(Device).order_by(Device.id)).all()
        return [d for d in rows if labels_match(d.labels or {}, wanted)]

    def set_labels(self, device_id: str, labels: dict[str, str]) -> Device:
        labels = check_labels(labels)
        with self._write() as s:
            device = s.get(Device, device_id, with_for_update=True)
            if device is None:
                raise NotFound(f"unknown device {device_id!r}")
            device.labels = labels
        return device

    def remove_device(self, device_id: str, now: float | None = None) -> tuple[Device, list[str]]:
        """Delete the device, its credential and its deployment records; returns the device as it
        was and the ids of the deployments this ended. A deployment the device was the last
        unfinished target of is settled on the targets left (FAILED when none is left)."""
        now = time.time() if now is None else now
        with self._write() as s:
            device = s.get(Device, device_id, with_for_update=True)
            if device is None:
                raise NotFound(f"unknown device {device_id!r}")
            dep_ids = sorted(s.scalars(select(DeploymentTarget.deployment_id)
                                       .where(DeploymentTarget.device_id == device_id)).all())
            s.execute(delete(DeploymentTarget).where(DeploymentTarget.device_id == device_id))
            s.execute(delete(DeploymentRollback).where(DeploymentRollback.device_id == device_id))
            s.execute(delete(DeviceCertificate).where(DeviceCertificate.device_id == device_id))
            open_deps = s.scalars(select(Deployment)
                                  .where(Deployment.id.in_(dep_ids), Deployment.state == IN_PROGRESS)
                                  .order_by(Deployment.id).with_for_update()).all() if dep_ids else []
            ended = []
            for dep in open_deps:
                left = s.scalar(select(func.count()).select_from(DeploymentTarget)
                                .where(DeploymentTarget.deployment_id == dep.id))
                if left == 0:
                    dep.state, dep.finished_at = FAILED, now
                    ended.append(dep.id)
                elif self._settle(s, dep, now):
                    ended.append(dep.id)
            s.delete(device)
            return device, ended

    def touch(self, device_id: str, now: float | None = None, info: bytes | None = None) -> None:
        """Record that the device was heard from (and, from a Hello, what it runs on)."""
        now = time.time() if now is None else now
        values: dict = {"last_seen": now}
        if info is not None:
            values["info"] = info
        with self._write() as s:
            s.execute(update(Device).where(Device.id == device_id).values(**values))

    def desired_state(self, device_id: str) -> DesiredView | None:
        with self._read() as s:
            device = s.get(Device, device_id)
            if device is None or not device.desired_bundle_id:
                return None
            bundle = s.get(Bundle, device.desired_bundle_id)
            return DesiredView(bundle.id, device.desired_deployment_id or "", bundle.manifest,
                               bundle.signature, bundle.publisher_key)

    def record_report(self, device_id: str, report: fleet_pb2.ReportedState,
                      now: float | None = None) -> tuple[str, str] | None:
        """Store the device's reported state and move its deployment target along.

        Returns (deployment_id, new deployment state) when this report ended a deployment.
        """
        return self.apply_report(device_id, report, now).ended

    def apply_report(self, device_id: str, report: fleet_pb2.ReportedState,
                     now: float | None = None) -> ReportOutcome:
        """record_report, also saying which devices a phased rollout released because of it (in
        the same transaction: an INSTALLED report frees a slot of its deployment's max_in_flight).
        The caller wakes their streams."""
        now = time.time() if now is None else now
        with self._write() as s:
            device = s.get(Device, device_id, with_for_update=True)
            if device is None:
                return ReportOutcome()
            device.reported = report.SerializeToString()
            device.reported_at = now
            device.last_seen = now
            dep_id = device.desired_deployment_id
            if not dep_id:
                return ReportOutcome()
            # The deployment's row lock serializes every report (and release pass) of one rollout:
            # the second of two concurrent INSTALLED reports counts the slots after the first's
            # release committed, so the rollout never has more than max_in_flight in flight.
            dep = s.get(Deployment, dep_id, with_for_update=True)
            if dep is None or dep.state != IN_PROGRESS:
                return ReportOutcome()
            target = s.get(DeploymentTarget, (dep_id, device_id))
            if target is None or target.phase in _TERMINAL_PHASES:
                return ReportOutcome()
            new_phase, error = _phase_from_report(report, dep)
            if new_phase is None:
                return ReportOutcome()
            target.phase, target.error, target.updated_at = new_phase, error, now
            s.flush()
            ended = self._settle(s, dep, now)
            if ended and dep.state == FAILED and self._decide_rollback(s, dep, device_id, now):
                dep.state, dep.rollback_reason = ROLLED_BACK, f"{device_id} reported FAILED: {error}"
            released = self._release_next(s, dep, now) if new_phase == PHASE_INSTALLED else []
            return ReportOutcome((dep.id, dep.state) if ended else None, released)

    # -- bundles and artifacts --------------------------------------------------------
    def add_bundle(self, manifest_bytes: bytes, signature: bytes, publisher_key: bytes,
                   manifest: Manifest, artifact_paths: dict[str, str],
                   now: float | None = None,
                   place_files: Callable[[], None] = lambda: None) -> tuple[Bundle, bool]:
        """Record a verified bundle. `place_files` runs in the transaction, holding the artifact
        store lock, before any row is written: it publishes the upload's files and raises if a
        file the bundle reuses is gone (nothing is recorded then); see the module docstring.

        Returns (bundle, created); uploading the same bundle again returns created=False and
        places nothing.
        """
        from proto.manifest import bundle_id_of

        now = time.time() if now is None else now
        bundle_id = bundle_id_of(manifest_bytes)
        for attempt in range(2):
            try:
                with self._write() as s:
                    _lock_artifact_store(s)
                    existing = s.get(Bundle, bundle_id)
                    if existing is not None:
                        return existing, False
                    place_files()
                    for v in manifest.variants:
                        if s.get(Artifact, v.digest) is None:
                            s.add(Artifact(digest=v.digest, size=v.size_bytes,
                                           path=artifact_paths[v.digest], created_at=now))
                    bundle = Bundle(id=bundle_id, model=manifest.model, version=manifest.version,
                                    manifest=manifest_bytes, signature=signature,
                                    publisher_key=publisher_key, total_bytes=manifest.total_bytes,
                                    created_at=now)
                    s.add(bundle)
                    s.flush()
                    for v in manifest.variants:
                        s.add(BundleArtifact(bundle_id=bundle_id, variant_id=v.id, digest=v.digest,
                                             file_name=v.file))
                    return bundle, True
            except IntegrityError:
                # A concurrent upload of the same bundle or artifact won the race: read again.
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def get_bundle(self, bundle_id: str) -> Bundle | None:
        with self._read() as s:
            return s.get(Bundle, bundle_id)

    def remove_bundle(self, bundle_id: str) -> RemovedBundle:
        """Delete a bundle, its file list and its finished deployments (with their targets and
        rollback records). Its files stay until sweep_artifacts. Raises NotFound, or BundleInUse
        while a device desires it, a deployment of it is in progress, or a device's deployment
        may still roll back to it; then nothing changes."""
        with self._write() as s:
            # Locked before the checks: create_deployment reads it FOR SHARE, so no deployment
            # of it can appear between the checks and the delete (PostgreSQL; SQLite writers
            # are serialized anyway).
            bundle = s.get(Bundle, bundle_id, with_for_update=True)
            if bundle is None:
                raise NotFound(f"unknown bundle {bundle_id!r}")
            holders = _bundle_holders(s, bundle_id)
            if holders:
                raise BundleInUse(f"bundle {bundle_id} is still needed: it is {'; '.join(holders)}")
            dep_ids = sorted(s.scalars(select(Deployment.id).where(Deployment.bundle_id == bundle_id)).all())
            if dep_ids:
                s.execute(delete(DeploymentTarget).where(DeploymentTarget.deployment_id.in_(dep_ids)))
                s.execute(delete(DeploymentRollback).where(DeploymentRollback.deployment_id.in_(dep_ids)))
                s.execute(delete(Deployment).where(Deployment.id.in_(dep_ids)))
            s.execute(delete(BundleArtifact).where(BundleArtifact.bundle_id == bundle_id))
            s.delete(bundle)
            return RemovedBundle(bundle, dep_ids)

    def sweep_artifacts(self, remove_files: Callable[[set[str]], T]) -> T:
        """Garbage-collect the artifact store, holding its lock: delete the artifact rows no
        bundle references, then call remove_files(referenced digests), which deletes every
        stored file not among them, and commit last (module docstring). Returns its result."""
        with self._write() as s:
            _lock_artifact_store(s)
            referenced = select(BundleArtifact.digest)
            s.execute(delete(Artifact).where(Artifact.digest.not_in(referenced)))
            return remove_files(set(s.scalars(referenced.distinct()).all()))

    def list_bundles(self) -> list[Bundle]:
        with self._read() as s:
            return list(s.scalars(select(Bundle).order_by(Bundle.created_at, Bundle.id)).all())

    def get_artifact(self, digest: str) -> Artifact | None:
        with self._read() as s:
            return s.get(Artifact, digest)

    def artifact_assigned(self, device_id: str, digest: str) -> bool:
        """True if `digest` is a file of the bundle the device is asked to hold."""
        with self._read() as s:
            hit = s.scalar(
                select(BundleArtifact.digest)
                .join(Device, Device.desired_bundle_id == BundleArtifact.bundle_id)
                .where(Device.id == device_id, BundleArtifact.digest == digest)
                .limit(1))
        return hit is not None

    # -- deployments ------------------------------------------------------------------
    def create_deployment(self, bundle_id: str, device_ids: list[str] | None = None,
                          selector: str = "", timeout_seconds: float = 900.0,
                          now: float | None = None, rollback_on_failure: bool = False,
                          rollback_on_timeout: bool = False, max_in_flight: int = 0) -> DeploymentView:
        """Point every target device at `bundle_id`; supersede their older deployments.
        With `rollback_on_failure`, remember the bundle each device runs now (see
        apply_rollbacks); `rollback_on_timeout` (which needs it) also rolls back when the
        deadline passes (time_out_expired).

        max_in_flight > 0 (phased rollout): only the first that many targets in device id order
        are released (pointed at the bundle, their older deployments superseded); the others are
        WAITING and keep their desired state until a released one installs (apply_report) or the
        reaper finds a free slot (release_waiting). The view's RELEASED targets are the devices
        whose desired state changed."""
        now = time.time() if now is None else now
        if max_in_flight < 0:
            raise InvalidArgument("max_in_flight must not be negative (0 = every target at once)")
        if device_ids and selector:
            raise InvalidArgument("give either device ids or a label selector, not both")
        if rollback_on_timeout and not rollback_on_failure:
            # Required rather than implied: proto3 cannot tell an explicit rollback_on_failure=false
            # from an unset one, so implying it would override a caller who said "no rollback".
            raise InvalidArgument("rollback_on_timeout needs rollback_on_failure: a timeout rolls back "
                                  "the way a failure does, so ask for both")
        if timeout_seconds <= 0:
            raise InvalidArgument("deployment timeout must be positive")
        wanted = parse_selector(selector) if selector else None
        with self._write() as s:
            # FOR SHARE: remove_bundle, which locks it FOR UPDATE, waits for this deployment.
            if s.get(Bundle, bundle_id, with_for_update={"read": True}) is None:
                raise NotFound(f"unknown bundle {bundle_id!r}")
            if device_ids:
                ids = sorted(set(device_ids))
            elif wanted is not None:
                candidates = s.scalars(select(Device).order_by(Device.id)).all()
                ids = [d.id for d in candidates if labels_match(d.labels or {}, wanted)]
                if not ids:
                    raise InvalidArgument(f"label selector {selector!r} matches no device")
            else:
                raise InvalidArgument("a deployment needs device ids or a label selector")
            devices = s.scalars(select(Device).where(Device.id.in_(ids)).order_by(Device.id)
                                .with_for_update()).all()
            missing = sorted(set(ids) - {d.id for d in devices})
            if missing:
                raise NotFound(f"unknown device(s): {', '.join(missing)}")
            if wanted is not None:   # labels may have changed before the lock was taken
                devices = [d for d in devices if labels_match(d.labels or {}, wanted)]
                if not devices:
                    raise InvalidArgument(f"label selector {selector!r} matches no device")

            dep = Deployment(id="dep-" + secrets.token_hex(6), bundle_id=bundle_id,
                             state=IN_PROGRESS, created_at=now, deadline=now + timeout_seconds,
                             rollback_on_timeout=rollback_on_timeout, rollback_reason="",
                             max_in_flight=max_in_flight)
            s.add(dep)
            # Older deployments: those the devices desire, and phased ones still holding one of
            # them WAITING (else that rollout would release it later, over this deployment).
            waiting_in = set(s.scalars(
                select(DeploymentTarget.deployment_id)
                .join(Deployment, Deployment.id == DeploymentTarget.deployment_id)
                .where(DeploymentTarget.device_id.in_(ids), DeploymentTarget.release == WAITING,
                       Deployment.state == IN_PROGRESS)).all())
            old_ids = sorted({d.desired_deployment_id for d in devices if d.desired_deployment_id} | waiting_in)
            old_deps = s.scalars(select(Deployment).where(Deployment.id.in_(old_ids))
                                 .order_by(Deployment.id).with_for_update()).all() if old_ids else []
            for old in old_deps:
                if old.state != IN_PROGRESS:
                    continue
                for d in devices:
                    target = s.get(DeploymentTarget, (old.id, d.id))
                    if target is None:
                        continue
                    if target.release == WAITING:
                        target.release = NOT_STARTED
                    elif d.desired_deployment_id != old.id or target.phase in _TERMINAL_PHASES:
                        continue
                    target.phase = PHASE_FAILED
                    target.error = f"superseded by deployment {dep.id}"
                    target.updated_at = now
                s.flush()
                self._settle(s, old, now)
            rollback = {d.id: _running_bundle(s, d) for d in devices} if rollback_on_failure else None
            targets = []
            for i, d in enumerate(devices):      # sorted by id: the release order
                release = RELEASED if not max_in_flight or i < max_in_flight else WAITING
                if release == RELEASED:
                    d.desired_bundle_id = bundle_id
                    d.desired_deployment_id = dep.id
                targets.append(DeploymentTarget(deployment_id=dep.id, device_id=d.id, phase=PHASE_PENDING,
                                                error="", updated_at=now, release=release))
            s.add_all(targets)
            if rollback is not None:
                s.add_all(DeploymentRollback(deployment_id=dep.id, device_id=d, bundle_id=b)
                          for d, b in rollback.items())
            return DeploymentView(dep, targets, rollback)

    def get_deployment(self, deployment_id: str) -> DeploymentView | None:
        with self._read() as s:
            dep = s.get(Deployment, deployment_id)
            if dep is None:
                return None
            targets = s.scalars(select(DeploymentTarget)
                                .where(DeploymentTarget.deployment_id == deployment_id)
                                .order_by(DeploymentTarget.device_id)).all()
            return DeploymentView(dep, list(targets), _rollback_of(s, [deployment_id]).get(deployment_id))

    def list_deployments(self) -> list[DeploymentView]:
        with self._read() as s:
            deps = s.scalars(select(Deployment).order_by(Deployment.created_at, Deployment.id)).all()
            targets = s.scalars(select(DeploymentTarget)
                                .order_by(DeploymentTarget.deployment_id, DeploymentTarget.device_id)).all()
            rollbacks = _rollback_of(s, None)
        by_dep: dict[str, list[DeploymentTarget]] = {}
        for t in targets:
            by_dep.setdefault(t.deployment_id, []).append(t)
        return [DeploymentView(d, by_dep.get(d.id, []), rollbacks.get(d.id)) for d in deps]

    def time_out_expired(self, now: float | None = None) -> dict[str, str]:
        """End the IN_PROGRESS deployments past their deadline: TIMED_OUT, which moves no device,
        or, when created with rollback_on_timeout, ROLLED_BACK like a failure (apply_rollbacks then
        moves the devices). Returns {deployment id: TIMED_OUT or ROLLED_BACK}."""
        now = time.time() if now is None else now
        with self._write() as s:
            expired = s.scalars(select(Deployment)
                                .where(Deployment.state == IN_PROGRESS, Deployment.deadline <= now)
                                .order_by(Deployment.id)
                                .with_for_update(skip_locked=True)).all()
            for dep in expired:
                targets = s.scalars(select(DeploymentTarget).where(DeploymentTarget.deployment_id == dep.id)
                                    .order_by(DeploymentTarget.device_id)).all()
                late = [t for t in targets if t.phase not in _TERMINAL_PHASES]
                # No rollback rows left (their devices were removed): nothing to roll back to.
                roll_back = dep.rollback_on_timeout and _has_rollback(s, dep.id)
                for t in targets:
                    if t.release == WAITING:       # never moved: nothing to roll back either
                        t.release, t.updated_at = NOT_STARTED, now
                        t.error = "not started: the deployment timed out before releasing it"
                    elif t.phase not in _TERMINAL_PHASES:
                        t.error = (f"{'rolled back: the ' if roll_back else ''}deployment timed out "
                                   f"(device was at {t.phase})")
                        t.updated_at = now
                    elif roll_back:        # installed in time; goes back with the others
                        t.error, t.updated_at = "rolled back: the deployment timed out", now
                if roll_back:
                    dep.state, dep.rollback_reason = ROLLED_BACK, _timeout_reason(dep, late, len(targets))
                else:
                    dep.state = TIMED_OUT
                dep.finished_at = now
            return {d.id: d.state for d in expired}

    @staticmethod
    def _decide_rollback(s: Session, dep: Deployment, failed_device: str, now: float) -> bool:
        """A device's failure just ended `dep`: if it was created with rollback_on_failure, mark
        every other target's row with why (apply_rollbacks moves the devices) and say so."""
        if not _has_rollback(s, dep.id):
            return False
        for t in s.scalars(select(DeploymentTarget).where(DeploymentTarget.deployment_id == dep.id)).all():
            if t.phase != PHASE_FAILED and t.release != NOT_STARTED:   # those were never moved
                t.error, t.updated_at = f"rolled back: the deployment failed on {failed_device}", now
        return True

    def apply_rollbacks(self, deployment_id: str | None = None) -> list[str]:
        """Send the devices still desired on a ROLLED_BACK deployment back to the bundle they ran
        when it was created (or to no desired bundle when they ran none); returns their ids.

        A separate transaction from the report that decided the rollback, so the devices are
        locked before the deployment like everywhere else (devices -> deployments); the reaper
        calls it too, so a server that stopped in between finishes the rollback on restart."""
        with self._write() as s:
            query = (select(Device.id).join(Deployment, Device.desired_deployment_id == Deployment.id)
                     .where(Deployment.state == ROLLED_BACK))
            if deployment_id is not None:
                query = query.where(Deployment.id == deployment_id)
            ids = sorted(s.scalars(query).all())
            if not ids:
                return []
            devices = s.scalars(select(Device).where(Device.id.in_(ids)).order_by(Device.id)
                                .with_for_update()).all()
            back = {(r.deployment_id, r.device_id): r.bundle_id for r in s.scalars(
                select(DeploymentRollback).where(DeploymentRollback.device_id.in_(ids))).all()}
            moved = []
            for d in devices:
                dep = s.get(Deployment, d.desired_deployment_id) if d.desired_deployment_id else None
                if dep is None or dep.state != ROLLED_BACK:
                    continue             # given a new deployment since the query above
                d.desired_bundle_id = back.get((dep.id, d.id))
                d.desired_deployment_id = None
                moved.append(d.id)
            return moved

    @staticmethod
    def _settle(s: Session, dep: Deployment, now: float) -> bool:
        """End an IN_PROGRESS deployment once its outcome is decided; True if it ended."""
        if dep.state != IN_PROGRESS:
            return False
        phases = s.scalars(select(DeploymentTarget.phase)
                           .where(DeploymentTarget.deployment_id == dep.id)).all()
        if any(p == PHASE_FAILED for p in phases):
            dep.state = FAILED          # every target must install, so one failure decides it
            _stop_waiting(s, dep, now)
        elif phases and all(p == PHASE_INSTALLED for p in phases):
            dep.state = SUCCEEDED
        else:
            return False
        dep.finished_at = now
        return True

    def release_waiting(self, now: float | None = None) -> list[str]:
        """Fill every phased rollout's free slots (the safety net behind apply_report: a slot a
        removed device freed, a release skipped because the next device's row was locked);
        returns the devices released, whose streams the caller wakes."""
        now = time.time() if now is None else now
        with self._write() as s:
            deps = s.scalars(select(Deployment)
                             .where(Deployment.state == IN_PROGRESS, Deployment.max_in_flight > 0)
                             .order_by(Deployment.id).with_for_update(skip_locked=True)).all()
            released: list[str] = []
            for dep in deps:
                released += self._release_next(s, dep, now)
            return released

    @staticmethod
    def _release_next(s: Session, dep: Deployment, now: float) -> list[str]:
        """Release WAITING targets of a phased rollout, in device id order, while fewer than
        max_in_flight released targets have not installed; the caller holds the deployment's row
        lock. Returns the device ids released.

        The devices are taken with SKIP LOCKED: everywhere else a device is locked before its
        deployments, so waiting here for a device while holding the deployment could deadlock
        (with a deployment or removal of that device). A locked next device ends this round
        (keeping the order); the reaper's release_waiting fills the slot on its next pass."""
        if dep.state != IN_PROGRESS or not dep.max_in_flight:
            return []
        # Counted and picked in SQL: this runs on every INSTALLED report of a phased rollout, and
        # loading all its targets each time would cost the whole fleet's rows per report.
        in_flight = s.scalar(select(func.count()).select_from(DeploymentTarget)
                             .where(DeploymentTarget.deployment_id == dep.id, DeploymentTarget.release == RELEASED,
                                    DeploymentTarget.phase != PHASE_INSTALLED)) or 0
        free = dep.max_in_flight - in_flight
        if free <= 0:
            return []
        waiting = s.scalars(select(DeploymentTarget)
                            .where(DeploymentTarget.deployment_id == dep.id, DeploymentTarget.release == WAITING)
                            .order_by(DeploymentTarget.device_id).limit(free)).all()
        released = []
        for t in waiting:
            device = s.scalar(select(Device).where(Device.id == t.device_id)
                              .with_for_update(skip_locked=True))
            if device is None:
                break
            rollback = s.get(DeploymentRollback, (dep.id, device.id))
            if rollback is not None:       # what it runs now is what it goes back to
                rollback.bundle_id = _running_bundle(s, device)
            device.desired_bundle_id, device.desired_deployment_id = dep.bundle_id, dep.id
            t.release, t.updated_at = RELEASED, now
            released.append(device.id)
        return released

    # -- fleet ------------------------------------------------------------------------
    def fleet_snapshot(self) -> FleetSnapshot:
        with self._read() as s:
            devices = list(s.scalars(select(Device).order_by(Device.id)).all())
            bundles_total = s.scalar(select(func.count()).select_from(Bundle)) or 0
            by_state = dict(s.execute(select(Deployment.state, func.count())
                                      .group_by(Deployment.state)).all())
            waiting = s.scalar(select(func.count()).select_from(DeploymentTarget)
                               .join(Deployment, Deployment.id == DeploymentTarget.deployment_id)
                               .where(DeploymentTarget.release == WAITING, Deployment.state == IN_PROGRESS)) or 0
        return FleetSnapshot(devices, int(bundles_total), {k: int(v) for k, v in by_state.items()}, int(waiting))


def _upgrade(s: Session, from_version: int) -> None:
    """Bring a database of `from_version` up to SCHEMA_VERSION in the caller's transaction (DDL is
    transactional on both SQLite and PostgreSQL, so a crash leaves the old version whole).
    Tables added since were created by create_all; columns added to existing tables are added
    here from their model definitions, their server defaults filling the rows already there."""
    dialect = s.get_bind().dialect
    for version in sorted(v for v in UPGRADE_COLUMNS if v > from_version):
        for table, column in UPGRADE_COLUMNS[version]:
            definition = CreateColumn(Base.metadata.tables[table].c[column]).compile(dialect=dialect)
            s.execute(text(f"ALTER TABLE {table} ADD COLUMN {definition}"))
    if from_version < 5:
        # Before version 5 only a FAILED report could roll a deployment back.
        s.execute(update(Deployment).where(Deployment.state == ROLLED_BACK)
                  .values(rollback_reason=ROLLBACK_REASON_BEFORE_5))


def _claim_certificate(s: Session, device_id: str, common_name: str, now: float) -> None:
    owner = s.scalar(select(DeviceCertificate.device_id).where(DeviceCertificate.common_name == common_name))
    if owner is not None:
        raise CertificateInUse(f"client certificate CN={common_name!r} is already bound to device {owner}; "
                               "give this device its own certificate, or remove that device first")
    s.add(DeviceCertificate(device_id=device_id, common_name=common_name, bound_at=now))
    try:
        s.flush()       # a concurrent claim of the same name (PostgreSQL) fails here, on the unique index
    except IntegrityError:
        raise CertificateInUse(f"client certificate CN={common_name!r} was just bound to another device") from None


def _lock_artifact_store(s: Session) -> None:
    """Take the artifact store lock for the rest of this transaction (module docstring)."""
    if s.scalar(select(ArtifactStoreLock.id).where(ArtifactStoreLock.id == 1).with_for_update()) is None:
        # FOR UPDATE on no row locks nothing: refuse rather than run unprotected.
        raise RuntimeError("artifact_store_lock has no row: Database.create_schema() was not run")


def _bundle_holders(s: Session, bundle_id: str) -> list[str]:
    """What still needs the bundle, as phrases for an error message; empty when nothing does."""
    # Rollbacks are read before desired bundles: apply_rollbacks moves a device from "desires a
    # ROLLED_BACK deployment that goes back to this bundle" to "desires this bundle" in one
    # commit, and with the reads in this order (READ COMMITTED) one of them sees it either way.
    rollbacks = sorted(set(s.scalars(
        select(DeploymentRollback.deployment_id)
        .join(Device, and_(Device.id == DeploymentRollback.device_id,
                           Device.desired_deployment_id == DeploymentRollback.deployment_id))
        .join(Deployment, Deployment.id == DeploymentRollback.deployment_id)
        .where(DeploymentRollback.bundle_id == bundle_id,
               Deployment.state.in_((IN_PROGRESS, ROLLED_BACK)))).all()))
    of_bundle = select(Deployment.id).where(Deployment.bundle_id == bundle_id)
    devices = sorted(s.scalars(select(Device.id).where(
        or_(Device.desired_bundle_id == bundle_id, Device.desired_deployment_id.in_(of_bundle)))).all())
    in_progress = sorted(s.scalars(of_bundle.where(Deployment.state == IN_PROGRESS)).all())
    phrases = []
    if devices:
        phrases.append(f"the desired bundle of device(s) {_some(devices)}")
    if in_progress:
        phrases.append(f"the bundle of deployment(s) in progress {_some(in_progress)}")
    if rollbacks:
        phrases.append(f"where deployment(s) {_some(rollbacks)} roll devices back to on failure")
    return phrases


def _some(ids: list[str]) -> str:
    shown = ", ".join(ids[:MAX_NAMED_HOLDERS])
    return shown + (f" and {len(ids) - MAX_NAMED_HOLDERS} more" if len(ids) > MAX_NAMED_HOLDERS else "")


def _running_bundle(s: Session, device: Device) -> str | None:
    """The bundle the device last reported active, if this server knows it. Read FOR SHARE, like
    the deployment's own bundle: a concurrent remove_bundle either waits for the rollback record
    naming it (and is then refused) or has already deleted it (and none is recorded)."""
    if not device.reported:
        return None
    bundle_id = fleet_pb2.ReportedState.FromString(device.reported).bundle_id
    known = bundle_id and s.get(Bundle, bundle_id, with_for_update={"read": True}) is not None
    return bundle_id if known else None


def _has_rollback(s: Session, deployment_id: str) -> bool:
    """Whether the deployment was created with rollback_on_failure (and has a target left)."""
    return bool(s.scalar(select(func.count()).select_from(DeploymentRollback)
                         .where(DeploymentRollback.deployment_id == deployment_id)))


def _stop_waiting(s: Session, dep: Deployment, now: float) -> None:
    """A phased rollout failed: its WAITING targets will never be released; say so on each."""
    waiting = s.scalars(select(DeploymentTarget).where(DeploymentTarget.deployment_id == dep.id,
                                                       DeploymentTarget.release == WAITING)).all()
    if not waiting:
        return
    failed = sorted(s.scalars(select(DeploymentTarget.device_id)
                              .where(DeploymentTarget.deployment_id == dep.id,
                                     DeploymentTarget.phase == PHASE_FAILED)).all())
    for t in waiting:
        t.release, t.updated_at = NOT_STARTED, now
        t.error = f"not started: the deployment failed on {_some(failed)}"


def _timeout_reason(dep: Deployment, late: list[DeploymentTarget], targets_total: int) -> str:
    """The rollback_reason of a deployment whose deadline rolled it back."""
    where = [f"{t.device_id} at {'WAITING' if t.release != RELEASED else 'PENDING' if t.phase == PHASE_PENDING else t.phase}"
             for t in late]
    return (f"timed out after {dep.deadline - dep.created_at:g} s: {len(late)} of {targets_total} "
            f"target(s) had not installed by the deadline ({_some(where)})")


def _rollback_of(s: Session, deployment_ids: list[str] | None) -> dict[str, dict[str, str | None]]:
    """deployment id -> {device id: rollback bundle} for deployments created with rollback."""
    query = select(DeploymentRollback)
    if deployment_ids is not None:
        query = query.where(DeploymentRollback.deployment_id.in_(deployment_ids))
    out: dict[str, dict[str, str | None]] = {}
    for r in s.scalars(query).all():
        out.setdefault(r.deployment_id, {})[r.device_id] = r.bundle_id
    return out


def _phase_from_report(report: fleet_pb2.ReportedState, dep: Deployment) -> tuple[str | None, str]:
    """Which phase a report puts this deployment's target in (None = the report is not about it)."""
    if report.bundle_id == dep.bundle_id and report.phase in (Phase.INSTALLED, Phase.IDLE):
        return PHASE_INSTALLED, ""            # the device holds what it was asked to hold
    about_this = (report.deployment_id == dep.id
                  or (not report.deployment_id and report.target_bundle_id == dep.bundle_id))
    if not about_this:
        return None, ""
    if report.phase == Phase.FAILED:
        return PHASE_FAILED, report.error or "device reported a failure without a reason"
    if report.phase in _PROGRESS_PHASES:
        return Phase.Name(report.phase), ""
    return None, ""


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001 - DB-API objects
        # Take transaction control away from the sqlite3 module; "begin" below issues BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        read_only = conn.get_execution_options().get("edgefleet_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
