"""The repository layer on both databases it must run on (SQLite file and real PostgreSQL)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy import inspect, text, update

from proto import fleet_pb2, signing
from proto.manifest import Manifest
from server.db import (FAILED, IN_PROGRESS, PHASE_FAILED, PHASE_PENDING, ROLLBACK_REASON_BEFORE_5, ROLLED_BACK,
                       SUCCEEDED, TIMED_OUT, Database, EnrollmentRefused, InvalidArgument, NotFound)
from server.models import (SCHEMA_VERSION, UPGRADE_COLUMNS, Artifact, ArtifactStoreLock, Base, DeploymentRollback,
                           DeploymentTarget, Device, SchemaInfo)
from server.notify import listener_conninfo
from server.reaper import DeploymentReaper
from tests.server.conftest import make_bundle, store_lock_is_free, wait_until

Phase = fleet_pb2.ReportedState.Phase


@pytest.fixture
def db(db_url):
    database = Database(db_url)
    database.create_schema()
    yield database
    database.dispose()


def _enroll(db, labels=None):
    token, _ = db.create_enrollment_token(60, labels or {})
    return db.enroll(token, "host", {}, b"")


def _bundle(db, tmp_path, key, place_files=lambda: None):
    folder, manifest, _ = make_bundle(tmp_path / f"b{time.monotonic_ns()}", key)
    raw = (folder / "manifest.json").read_bytes()
    bundle, created = db.add_bundle(raw, (folder / "manifest.sig").read_bytes(),
                                    signing.public_key_bytes(key), Manifest.from_bytes(raw),
                                    {v.digest: f"sha256/{v.digest[7:]}" for v in manifest.variants},
                                    place_files=place_files)
    assert created
    return bundle, manifest


def test_token_is_one_time_and_labels_merge(db):
    token, expires = db.create_enrollment_token(60, {"site": "lab"})
    assert expires > time.time()
    device_id, credential = db.enroll(token, "h1", {"site": "home", "power": "battery"}, b"")
    assert credential.startswith(device_id + ".")
    assert db.get_device(device_id).labels == {"site": "lab", "power": "battery"}  # operator wins
    with pytest.raises(EnrollmentRefused, match="already used"):
        db.enroll(token, "h2", {}, b"")
    with pytest.raises(EnrollmentRefused, match="not valid"):
        db.enroll("no-such-token", "h3", {}, b"")
    assert len(db.list_devices()) == 1


def test_expired_token_is_refused(db):
    token, _ = db.create_enrollment_token(60, now=time.time() - 3600)
    with pytest.raises(EnrollmentRefused, match="expired"):
        db.enroll(token, "h", {}, b"")
    assert db.list_devices() == []


def test_concurrent_enrollments_consume_a_token_once(db):
    token, _ = db.create_enrollment_token(60)
    results, errors = [], []
    barrier = threading.Barrier(6)

    def attempt():
        barrier.wait()
        try:
            results.append(db.enroll(token, "h", {}, b""))
        except EnrollmentRefused as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1 and len(errors) == 5
    assert [d.id for d in db.list_devices()] == [results[0][0]]


def test_credentials(db):
    device_id, credential = _enroll(db)
    assert db.authenticate(credential) == device_id
    assert db.authenticate(credential + "x") is None
    assert db.authenticate("dev-unknown.secret") is None
    assert db.authenticate("no-dot") is None
    assert db.authenticate("") is None


def test_label_selector(db):
    a, _ = _enroll(db, {"site": "lab", "power": "battery"})
    b, _ = _enroll(db, {"site": "lab"})
    assert {d.id for d in db.list_devices("site=lab")} == {a, b}
    assert [d.id for d in db.list_devices("site=lab,power=battery")] == [a]
    db.set_labels(b, {"site": "home"})
    assert [d.id for d in db.list_devices("site=home")] == [b]
    with pytest.raises(InvalidArgument):
        db.list_devices("site")
    with pytest.raises(NotFound):
        db.set_labels("dev-nope", {})


def test_bundle_is_idempotent(db, tmp_path, publisher_key):
    bundle, manifest = _bundle(db, tmp_path, publisher_key)
    again, created = db.add_bundle(bundle.manifest, bundle.signature, bundle.publisher_key, manifest,
                                   {v.digest: "x" for v in manifest.variants})
    assert not created and again.id == bundle.id
    assert [b.id for b in db.list_bundles()] == [bundle.id]
    assert db.get_artifact(manifest.variants[0].digest).size == manifest.variants[0].size_bytes


def test_deployment_succeeds_when_every_target_installs(db, tmp_path, publisher_key):
    bundle, manifest = _bundle(db, tmp_path, publisher_key)
    a, _ = _enroll(db, {"ring": "1"})
    b, _ = _enroll(db, {"ring": "1"})
    view = db.create_deployment(bundle.id, selector="ring=1", timeout_seconds=60)
    dep_id = view.deployment.id
    assert sorted(t.device_id for t in view.targets) == sorted([a, b])
    assert db.artifact_assigned(a, manifest.variants[0].digest)
    assert db.desired_state(a).deployment_id == dep_id

    db.record_report(a, fleet_pb2.ReportedState(deployment_id=dep_id, target_bundle_id=bundle.id,
                                                phase=Phase.DOWNLOADING))
    assert {t.device_id: t.phase for t in db.get_deployment(dep_id).targets}[a] == "DOWNLOADING"
    assert db.record_report(a, fleet_pb2.ReportedState(bundle_id=bundle.id, deployment_id=dep_id,
                                                       phase=Phase.INSTALLED)) is None
    assert db.get_deployment(dep_id).deployment.state == IN_PROGRESS
    ended = db.record_report(b, fleet_pb2.ReportedState(bundle_id=bundle.id, deployment_id=dep_id,
                                                        phase=Phase.INSTALLED))
    assert ended == (dep_id, SUCCEEDED)
    done = db.get_deployment(dep_id).deployment
    assert done.state == SUCCEEDED and done.finished_at is not None


def test_failed_target_fails_deployment(db, tmp_path, publisher_key):
    bundle, _ = _bundle(db, tmp_path, publisher_key)
    a, _ = _enroll(db)
    b, _ = _enroll(db)
    dep_id = db.create_deployment(bundle.id, device_ids=[a, b], timeout_seconds=60).deployment.id
    db.record_report(a, fleet_pb2.ReportedState(deployment_id=dep_id, target_bundle_id=bundle.id,
                                                phase=Phase.FAILED, error="digest mismatch"))
    view = db.get_deployment(dep_id)
    assert view.deployment.state == FAILED
    assert {t.device_id: t.error for t in view.targets}[a] == "digest mismatch"


def _running(db, device_id, bundle_id):
    """The device reports it runs `bundle_id` (no deployment involved)."""
    db.record_report(device_id, fleet_pb2.ReportedState(bundle_id=bundle_id, phase=Phase.IDLE))


def test_failure_rolls_every_target_back_when_asked(db, tmp_path, publisher_key):
    old, _ = _bundle(db, tmp_path, publisher_key)
    new, _ = _bundle(db, tmp_path, publisher_key)
    a, _ = _enroll(db)
    b, _ = _enroll(db)
    c, _ = _enroll(db)                    # runs nothing yet
    _running(db, a, old.id)
    _running(db, b, old.id)
    view = db.create_deployment(new.id, device_ids=[a, b, c], timeout_seconds=60, rollback_on_failure=True)
    dep_id = view.deployment.id
    assert view.rollback == {a: old.id, b: old.id, c: None}
    db.record_report(a, fleet_pb2.ReportedState(bundle_id=new.id, deployment_id=dep_id, phase=Phase.INSTALLED))
    ended = db.record_report(b, fleet_pb2.ReportedState(deployment_id=dep_id, target_bundle_id=new.id,
                                                        phase=Phase.FAILED, error="disk full"))
    assert ended == (dep_id, ROLLED_BACK)
    assert db.desired_state(a).bundle_id == new.id        # moved by apply_rollbacks, not before
    assert db.apply_rollbacks(dep_id) == sorted([a, b, c])
    for device in (a, b):
        desired = db.desired_state(device)
        assert (desired.bundle_id, desired.deployment_id) == (old.id, "")
    assert db.desired_state(c) is None    # ran nothing: is sent nothing more
    assert db.apply_rollbacks() == []     # done once
    view = db.get_deployment(dep_id)
    errors = {t.device_id: t.error for t in view.targets}
    assert errors[b] == "disk full" and errors[a] == errors[c] == f"rolled back: the deployment failed on {b}"
    assert view.deployment.rollback_reason == f"{b} reported FAILED: disk full"
    assert view.rollback == {a: old.id, b: old.id, c: None}
    # A late report about the rolled-back deployment changes nothing.
    assert db.record_report(c, fleet_pb2.ReportedState(deployment_id=dep_id, target_bundle_id=new.id,
                                                       phase=Phase.FAILED, error="late")) is None
    assert db.get_deployment(dep_id).deployment.state == ROLLED_BACK


def test_reaper_finishes_a_rollback_the_server_stopped_in(db, tmp_path, publisher_key):
    old, _ = _bundle(db, tmp_path, publisher_key)
    new, _ = _bundle(db, tmp_path, publisher_key)
    a, _ = _enroll(db)
    b, _ = _enroll(db)
    _running(db, a, old.id)
    dep_id = db.create_deployment(new.id, device_ids=[a, b], timeout_seconds=60,
                                  rollback_on_failure=True).deployment.id
    db.record_report(b, fleet_pb2.ReportedState(deployment_id=dep_id, target_bundle_id=new.id,
                                                phase=Phase.FAILED, error="bad"))
    # the process ends here, before apply_rollbacks; the next reaper pass moves the devices
    moved = []
    DeploymentReaper(db, on_desired_changed=moved.extend).reap_once()
    assert sorted(moved) == sorted([a, b])
    assert db.desired_state(a).bundle_id == old.id and db.desired_state(b) is None


def test_without_rollback_or_when_superseded_nothing_rolls_back(db, tmp_path, publisher_key):
    old, _ = _bundle(db, tmp_path, publisher_key)
    new, _ = _bundle(db, tmp_path, publisher_key)
    newer, _ = _bundle(db, tmp_path, publisher_key)
    a, _ = _enroll(db)
    b, _ = _enroll(db)
    _running(db, a, old.id)
    _running(db, b, old.id)
    plain = db.create_deployment(new.id, device_ids=[a], timeout_seconds=60)
    assert plain.rollback is None
    db.record_report(a, fleet_pb2.ReportedState(deployment_id=plain.deployment.id, target_bundle_id=new.id,
                                                phase=Phase.FAILED, error="bad"))
    assert db.get_deployment(plain.deployment.id).deployment.state == FAILED
    # a newer deployment superseding one target is not a device failure: no rollback
    first = db.create_deployment(new.id, device_ids=[a, b], timeout_seconds=60, rollback_on_failure=True)
    db.create_deployment(newer.id, device_ids=[a], timeout_seconds=60)
    assert db.get_deployment(first.deployment.id).deployment.state == FAILED
    assert db.apply_rollbacks() == []
    assert db.desired_state(b).bundle_id == new.id and db.desired_state(a).bundle_id == newer.id


def test_removed_device_loses_credential_and_records(db, tmp_path, publisher_key):
    bundle, _ = _bundle(db, tmp_path, publisher_key)
    a, cred_a = _enroll(db)
    b, _ = _enroll(db)
    c, _ = _enroll(db)
    both = db.create_deployment(bundle.id, device_ids=[a, b], timeout_seconds=60).deployment.id
    db.record_report(b, fleet_pb2.ReportedState(bundle_id=bundle.id, deployment_id=both, phase=Phase.INSTALLED))
    alone = db.create_deployment(bundle.id, device_ids=[c], timeout_seconds=60,
                                 rollback_on_failure=True).deployment.id
    assert db.authenticate(cred_a) == a
    removed, ended = db.remove_device(a)
    assert removed.id == a and ended == [both]     # b, the target left, had installed it
    assert db.authenticate(cred_a) is None and db.get_device(a) is None
    assert sorted(d.id for d in db.list_devices()) == sorted([b, c])
    view = db.get_deployment(both)
    assert view.deployment.state == SUCCEEDED and [t.device_id for t in view.targets] == [b]
    # the last target of a deployment: it ends FAILED with nobody left
    assert db.remove_device(c)[1] == [alone]
    assert db.get_deployment(alone).deployment.state == FAILED
    assert db.get_deployment(alone).targets == [] and db.get_deployment(alone).rollback is None
    with pytest.raises(NotFound, match="unknown device"):
        db.remove_device(a)


def test_newer_deployment_supersedes_older_target(db, tmp_path, publisher_key):
    first, _ = _bundle(db, tmp_path, publisher_key)
    second, _ = _bundle(db, tmp_path, publisher_key)
    a, _ = _enroll(db)
    old = db.create_deployment(first.id, device_ids=[a], timeout_seconds=60).deployment.id
    new = db.create_deployment(second.id, device_ids=[a], timeout_seconds=60).deployment.id
    old_view = db.get_deployment(old)
    assert old_view.deployment.state == FAILED               # ended, not left in progress
    assert "superseded by deployment " + new in old_view.targets[0].error
    assert db.desired_state(a).bundle_id == second.id
    # A late report about the old deployment does not touch the new one.
    db.record_report(a, fleet_pb2.ReportedState(deployment_id=old, target_bundle_id=first.id,
                                                phase=Phase.FAILED, error="late"))
    assert db.get_deployment(new).deployment.state == IN_PROGRESS


def test_create_deployment_errors(db, tmp_path, publisher_key):
    bundle, _ = _bundle(db, tmp_path, publisher_key)
    a, _ = _enroll(db, {"site": "lab"})
    with pytest.raises(NotFound, match="bundle"):
        db.create_deployment("0" * 64, device_ids=[a])
    with pytest.raises(NotFound, match="dev-missing"):
        db.create_deployment(bundle.id, device_ids=[a, "dev-missing"])
    with pytest.raises(InvalidArgument, match="matches no device"):
        db.create_deployment(bundle.id, selector="site=mars")
    with pytest.raises(InvalidArgument):
        db.create_deployment(bundle.id)
    assert db.list_deployments() == []
    assert db.desired_state(a) is None


def test_reaper_times_out_past_deadline(db, tmp_path, publisher_key):
    bundle, _ = _bundle(db, tmp_path, publisher_key)
    a, _ = _enroll(db)
    now = time.time()
    dep_id = db.create_deployment(bundle.id, device_ids=[a], timeout_seconds=5, now=now).deployment.id
    assert db.time_out_expired(now + 1) == {}
    assert db.time_out_expired(now + 6) == {dep_id: TIMED_OUT}
    view = db.get_deployment(dep_id)
    assert view.deployment.state == TIMED_OUT and "timed out" in view.targets[0].error
    assert db.time_out_expired(now + 7) == {}                 # ended once


def test_timeout_rolls_every_target_back_with_rollback_on_timeout(db, tmp_path, publisher_key):
    """The reaper ends a rollback_on_timeout deployment whose targets did not all install by the
    deadline ROLLED_BACK, says why, and sends every target back as after a FAILED report."""
    old, _ = _bundle(db, tmp_path, publisher_key)
    new, _ = _bundle(db, tmp_path, publisher_key)
    a, _ = _enroll(db)
    b, _ = _enroll(db)
    c, _ = _enroll(db)                    # runs nothing yet, never reports
    _running(db, a, old.id)
    _running(db, b, old.id)
    now = time.time() - 60                # created a minute ago with a 5 s deadline
    dep_id = db.create_deployment(new.id, device_ids=[a, b, c], timeout_seconds=5, now=now,
                                  rollback_on_failure=True, rollback_on_timeout=True).deployment.id
    assert db.get_deployment(dep_id).deployment.rollback_on_timeout is True
    db.record_report(a, fleet_pb2.ReportedState(bundle_id=new.id, deployment_id=dep_id, phase=Phase.INSTALLED))
    db.record_report(b, fleet_pb2.ReportedState(bundle_id=old.id, deployment_id=dep_id, target_bundle_id=new.id,
                                                phase=Phase.DOWNLOADING))
    assert db.time_out_expired(now + 1) == {}                 # not before the deadline

    moved = []
    assert DeploymentReaper(db, on_desired_changed=moved.extend).reap_once() == [dep_id]
    assert sorted(moved) == sorted([a, b, c])
    for device in (a, b):
        desired = db.desired_state(device)
        assert (desired.bundle_id, desired.deployment_id) == (old.id, "")
    assert db.desired_state(c) is None    # ran nothing: is sent nothing more
    view = db.get_deployment(dep_id)
    assert view.deployment.state == ROLLED_BACK
    late = ", ".join(f"{d} at {phase}" for d, phase in sorted([(b, "DOWNLOADING"), (c, "PENDING")]))
    assert view.deployment.rollback_reason == (
        f"timed out after 5 s: 2 of 3 target(s) had not installed by the deadline ({late})")
    errors = {t.device_id: t.error for t in view.targets}
    assert errors == {a: "rolled back: the deployment timed out",
                      b: "rolled back: the deployment timed out (device was at DOWNLOADING)",
                      c: "rolled back: the deployment timed out (device was at PHASE_UNSPECIFIED)"}
    # once: a later pass and a late report change nothing
    moved.clear()
    assert DeploymentReaper(db, on_desired_changed=moved.extend).reap_once() == [] and moved == []
    assert db.record_report(b, fleet_pb2.ReportedState(bundle_id=new.id, deployment_id=dep_id,
                                                       phase=Phase.INSTALLED)) is None
    assert db.get_deployment(dep_id).deployment.state == ROLLED_BACK


def test_timeout_without_rollback_on_timeout_moves_nobody(db, tmp_path, publisher_key):
    """rollback_on_failure alone keeps its documented meaning: a timeout is not a failure."""
    old, _ = _bundle(db, tmp_path, publisher_key)
    new, _ = _bundle(db, tmp_path, publisher_key)
    a, _ = _enroll(db)
    _running(db, a, old.id)
    dep_id = db.create_deployment(new.id, device_ids=[a], timeout_seconds=5, now=time.time() - 60,
                                  rollback_on_failure=True).deployment.id
    moved = []
    assert DeploymentReaper(db, on_desired_changed=moved.extend).reap_once() == [dep_id]
    assert moved == []
    view = db.get_deployment(dep_id)
    assert view.deployment.state == TIMED_OUT
    assert view.deployment.rollback_on_timeout is False and view.deployment.rollback_reason == ""
    assert view.targets[0].error == "deployment timed out (device was at PHASE_UNSPECIFIED)"
    assert db.desired_state(a).bundle_id == new.id             # still asked to install it


def test_a_failure_under_rollback_on_timeout_rolls_back_as_a_failure(db, tmp_path, publisher_key):
    old, _ = _bundle(db, tmp_path, publisher_key)
    new, _ = _bundle(db, tmp_path, publisher_key)
    a, _ = _enroll(db)
    _running(db, a, old.id)
    dep_id = db.create_deployment(new.id, device_ids=[a], timeout_seconds=60, rollback_on_failure=True,
                                  rollback_on_timeout=True).deployment.id
    assert db.record_report(a, fleet_pb2.ReportedState(deployment_id=dep_id, target_bundle_id=new.id,
                                                       phase=Phase.FAILED, error="disk full")) == (dep_id, ROLLED_BACK)
    assert db.get_deployment(dep_id).deployment.rollback_reason == f"{a} reported FAILED: disk full"
    assert db.apply_rollbacks(dep_id) == [a] and db.desired_state(a).bundle_id == old.id


def test_rollback_on_timeout_needs_rollback_on_failure(db, tmp_path, publisher_key):
    bundle, _ = _bundle(db, tmp_path, publisher_key)
    a, _ = _enroll(db)
    with pytest.raises(InvalidArgument, match="rollback_on_timeout needs rollback_on_failure"):
        db.create_deployment(bundle.id, device_ids=[a], rollback_on_timeout=True)
    assert db.list_deployments() == [] and db.desired_state(a) is None


def test_everything_survives_reopening(db_url, tmp_path, publisher_key):
    first = Database(db_url)
    first.create_schema()
    device_id, credential = _enroll(first)
    bundle, _ = _bundle(first, tmp_path, publisher_key)
    dep_id = first.create_deployment(bundle.id, device_ids=[device_id]).deployment.id
    first.dispose()

    second = Database(db_url)
    second.create_schema()                                    # idempotent on an existing schema
    try:
        assert second.authenticate(credential) == device_id
        assert [b.id for b in second.list_bundles()] == [bundle.id]
        assert second.get_deployment(dep_id).deployment.state == IN_PROGRESS
        assert second.fleet_snapshot().deployments_by_state == {IN_PROGRESS: 1}
    finally:
        second.dispose()


def test_upload_places_files_and_sweep_removes_them_holding_the_store_lock(db, db_url, tmp_path,
                                                                          publisher_key):
    """Both sides of artifact GC run inside a transaction that holds the store lock, so they can
    never interleave (server/db.py, "Artifact garbage collection")."""
    seen = []
    _, manifest = _bundle(db, tmp_path, publisher_key, place_files=lambda: seen.append(store_lock_is_free(db_url)))
    assert seen == [False]
    lock_free, referenced = db.sweep_artifacts(lambda keep: (store_lock_is_free(db_url), keep))
    assert lock_free is False
    assert referenced == {v.digest for v in manifest.variants}
    assert store_lock_is_free(db_url)               # and both let go when they commit


def test_sweep_deletes_only_unreferenced_artifact_rows(db, tmp_path, publisher_key):
    _, manifest = _bundle(db, tmp_path, publisher_key)
    with db._write() as s:           # a row an interrupted sweep left behind
        s.add(Artifact(digest="sha256:" + "a" * 64, size=1, path="sha256/" + "a" * 64, created_at=0.0))
    db.sweep_artifacts(lambda keep: None)
    assert db.get_artifact("sha256:" + "a" * 64) is None
    assert all(db.get_artifact(v.digest) is not None for v in manifest.variants)


def _create_old_schema(database: Database, version: int) -> None:
    """The tables a release at schema `version` (3, 4 or 5) created, with their one-row tables: today's
    tables without those added later (artifact_store_lock in 4), and without the columns later
    versions added to existing tables (models.UPGRADE_COLUMNS)."""
    tables = [t for t in Base.metadata.sorted_tables if version >= 4 or t.name != ArtifactStoreLock.__tablename__]
    Base.metadata.create_all(database.engine, tables=tables)
    later = [(table, column) for v, columns in UPGRADE_COLUMNS.items() if v > version for table, column in columns]
    with database.engine.begin() as conn:
        for table, column in later:
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    with database._write() as s:
        s.add(SchemaInfo(id=1, version=version))
        if version >= 4:
            s.add(ArtifactStoreLock(id=1))
    names = {c["name"] for c in inspect(database.engine).get_columns("deployments")}
    assert names.isdisjoint(c for _, c in later)        # what the upgrade must add is really missing


def _columns(database: Database, table: str) -> list[str]:
    return [c["name"] for c in inspect(database.engine).get_columns(table)]


def _upgrade(db_url: str) -> Database:
    """Open an old database and upgrade it, twice (the second finds the current version and
    adds nothing); the caller disposes of it."""
    upgraded = Database(db_url)
    upgraded.create_schema()
    upgraded.create_schema()
    with upgraded._read() as s:
        assert s.get(SchemaInfo, 1).version == SCHEMA_VERSION == 6
    return upgraded


def _insert_targets(conn, rows) -> None:
    """deployment_targets rows with the columns every version since 3 has, no more (the ORM
    would also write columns the old schema lacks): (deployment, device, phase, error, time)."""
    for dep_id, device_id, phase, error, now in rows:
        conn.execute(text("INSERT INTO deployment_targets (deployment_id, device_id, phase, error, updated_at) "
                          "VALUES (:dep, :device, :phase, :error, :now)"),
                     dict(dep=dep_id, device=device_id, phase=phase, error=error, now=now))


def test_version_3_database_gains_the_store_lock(db_url, tmp_path, publisher_key):
    """A database the previous release created (no artifact_store_lock, version 3) is upgraded in
    place by create_schema, keeping its rows, and uploads work on it."""
    old = Database(db_url)
    _create_old_schema(old, 3)
    device_id, credential = _enroll(old)
    old.dispose()

    upgraded = _upgrade(db_url)
    try:
        with upgraded._read() as s:
            assert s.get(ArtifactStoreLock, 1) is not None
        assert upgraded.authenticate(credential) == device_id
        bundle, _ = _bundle(upgraded, tmp_path, publisher_key)
        assert [b.id for b in upgraded.list_bundles()] == [bundle.id]
    finally:
        upgraded.dispose()


def test_version_4_database_keeps_its_rows_and_gains_rollback_on_timeout(db_url, tmp_path, publisher_key):
    """A version-4 database (deployments without rollback_on_timeout and rollback_reason) is upgraded
    in place by create_schema: every row stays, the new columns read false and "" (but a deployment
    that rolled back then did so because a target failed: the only cause there was), its deployments
    time out as before, and new ones can use the option."""
    old = Database(db_url)
    _create_old_schema(old, 4)
    a, credential = _enroll(old)
    b, _ = _enroll(old)
    bundle, _ = _bundle(old, tmp_path, publisher_key)
    prev, _ = _bundle(old, tmp_path, publisher_key)
    now = time.time()
    rows = {"dep-open": (IN_PROGRESS, now - 60, now - 30, None),      # past its deadline
            "dep-back": (ROLLED_BACK, now - 600, now + 300, now - 500),
            "dep-late": (TIMED_OUT, now - 900, now - 800, now - 799)}
    with old.engine.begin() as conn:            # the columns version 4 had, no more
        for dep_id, (state, created, deadline, finished) in rows.items():
            conn.execute(text("INSERT INTO deployments (id, bundle_id, state, created_at, deadline, finished_at) "
                              "VALUES (:id, :bundle, :state, :created, :deadline, :finished)"),
                         dict(id=dep_id, bundle=bundle.id, state=state, created=created, deadline=deadline,
                              finished=finished))
        _insert_targets(conn, [
            ("dep-open", a, "DOWNLOADING", "", now), ("dep-back", b, PHASE_FAILED, "disk full", now),
            ("dep-late", b, PHASE_PENDING, "deployment timed out (device was at PHASE_UNSPECIFIED)", now)])
    with old._write() as s:
        s.add_all([DeploymentRollback(deployment_id="dep-open", device_id=a, bundle_id=prev.id),
                   DeploymentRollback(deployment_id="dep-back", device_id=b, bundle_id=prev.id)])
        s.execute(update(Device).where(Device.id == a).values(desired_bundle_id=bundle.id,
                                                                desired_deployment_id="dep-open"))
    old.dispose()

    upgraded = _upgrade(db_url)
    try:
        assert _columns(upgraded, "deployments").count("rollback_on_timeout") == 1
        assert upgraded.authenticate(credential) == a
        views = {v.deployment.id: v for v in upgraded.list_deployments()}
        assert {i: (v.deployment.state, v.deployment.created_at, v.deployment.deadline, v.deployment.finished_at)
                for i, v in views.items()} == rows
        assert all(v.deployment.rollback_on_timeout is False for v in views.values())
        assert {i: v.deployment.rollback_reason for i, v in views.items()} == {
            "dep-open": "", "dep-back": ROLLBACK_REASON_BEFORE_5, "dep-late": ""}
        assert {i: [(t.device_id, t.phase, t.error) for t in v.targets] for i, v in views.items()} == {
            "dep-open": [(a, "DOWNLOADING", "")], "dep-back": [(b, PHASE_FAILED, "disk full")],
            "dep-late": [(b, PHASE_PENDING, "deployment timed out (device was at PHASE_UNSPECIFIED)")]}
        assert {i: v.rollback for i, v in views.items()} == {
            "dep-open": {a: prev.id}, "dep-back": {b: prev.id}, "dep-late": None}

        # rollback_on_failure without the new option, as every version-4 deployment: times out, moves nobody
        moved = []
        assert DeploymentReaper(upgraded, on_desired_changed=moved.extend).reap_once() == ["dep-open"]
        assert moved == [] and upgraded.desired_state(a).bundle_id == bundle.id
        assert upgraded.get_deployment("dep-open").deployment.state == TIMED_OUT
        dep = upgraded.create_deployment(bundle.id, device_ids=[b], rollback_on_failure=True,
                                         rollback_on_timeout=True).deployment.id
        assert upgraded.get_deployment(dep).deployment.rollback_on_timeout is True
    finally:
        upgraded.dispose()


def test_version_5_database_keeps_its_rows_and_gains_phased_rollouts(db_url, tmp_path, publisher_key):
    """A version-5 database (no deployments.max_in_flight, no deployment_targets.release_state) is
    upgraded in place: every row stays, every deployment reads unlimited and every target
    released (what they were), its deployment in progress still ends on a report, and new
    deployments can be phased."""
    old = Database(db_url)
    _create_old_schema(old, 5)
    assert "release_state" not in _columns(old, "deployment_targets")
    a, credential = _enroll(old)
    b, _ = _enroll(old)
    bundle, _ = _bundle(old, tmp_path, publisher_key)
    prev, _ = _bundle(old, tmp_path, publisher_key)
    now = time.time()
    deps = {"dep-open": (IN_PROGRESS, now + 600, False, ""),
            "dep-back": (ROLLED_BACK, now - 100, True, f"{b} reported FAILED: disk full")}
    targets = {("dep-open", a): (PHASE_PENDING, ""), ("dep-open", b): ("INSTALLED", ""),
               ("dep-back", b): (PHASE_FAILED, "disk full")}
    with old.engine.begin() as conn:            # the columns version 5 had, no more
        for dep_id, (state, deadline, on_timeout, reason) in deps.items():
            conn.execute(text("INSERT INTO deployments (id, bundle_id, state, created_at, deadline, finished_at, "
                              "rollback_on_timeout, rollback_reason) VALUES (:id, :bundle, :state, :created, "
                              ":deadline, NULL, :on_timeout, :reason)"),
                         dict(id=dep_id, bundle=bundle.id, state=state, created=now - 200, deadline=deadline,
                              on_timeout=on_timeout, reason=reason))
        _insert_targets(conn, [(dep_id, device_id, phase, error, now)
                               for (dep_id, device_id), (phase, error) in targets.items()])
    with old._write() as s:
        s.add(DeploymentRollback(deployment_id="dep-back", device_id=b, bundle_id=prev.id))
        s.execute(update(Device).where(Device.id == a).values(desired_bundle_id=bundle.id,
                                                                desired_deployment_id="dep-open"))
    old.dispose()

    upgraded = _upgrade(db_url)
    try:
        assert _columns(upgraded, "deployments").count("max_in_flight") == 1
        assert _columns(upgraded, "deployment_targets").count("release_state") == 1
        assert upgraded.authenticate(credential) == a
        views = {v.deployment.id: v for v in upgraded.list_deployments()}
        assert {i: (v.deployment.state, v.deployment.deadline, v.deployment.rollback_on_timeout,
                    v.deployment.rollback_reason) for i, v in views.items()} == deps
        assert {i: v.deployment.max_in_flight for i, v in views.items()} == {"dep-open": 0, "dep-back": 0}
        assert {(t.deployment_id, t.device_id): (t.phase, t.error) for v in views.values()
                for t in v.targets} == targets
        assert {t.release for v in views.values() for t in v.targets} == {"RELEASED"}
        assert views["dep-back"].rollback == {b: prev.id}

        outcome = upgraded.apply_report(a, fleet_pb2.ReportedState(bundle_id=bundle.id, deployment_id="dep-open",
                                                                   phase=Phase.INSTALLED))
        assert (outcome.ended, outcome.released) == (("dep-open", SUCCEEDED), [])
        phased = upgraded.create_deployment(prev.id, device_ids=[a, b], max_in_flight=1)
        assert [t.release for t in phased.targets] == ["RELEASED", "WAITING"]
        assert upgraded.get_deployment(phased.deployment.id).deployment.max_in_flight == 1
    finally:
        upgraded.dispose()


@pytest.mark.postgres
def test_replicas_upgrading_at_once_add_the_columns_once(pg_url):
    """Two replicas start on one version-4 PostgreSQL together. The first is held inside its upgrade
    (its ALTER TABLE waits on a lock another session holds on deployments); the second must wait
    for the first's schema_info row lock and then find version 5, not add the columns again."""
    old = Database(pg_url)
    _create_old_schema(old, 4)
    old.dispose()
    replicas = [Database(pg_url), Database(pg_url)]
    errors: list[BaseException] = []

    def start(database):
        try:
            database.create_schema()
        except BaseException as exc:        # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(r,)) for r in replicas]
    blocker = psycopg.connect(listener_conninfo(pg_url), connect_timeout=3)
    watcher = psycopg.connect(listener_conninfo(pg_url), autocommit=True, connect_timeout=3)

    def waiting(pattern: str) -> bool:
        return watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND wait_event_type = 'Lock' AND query ILIKE %s", (pattern,)).fetchone()[0] > 0

    try:
        blocker.execute("LOCK TABLE deployments IN ACCESS EXCLUSIVE MODE")
        threads[0].start()
        wait_until(lambda: waiting("ALTER TABLE deployments%"), "the first replica's ALTER TABLE to wait")
        threads[1].start()
        wait_until(lambda: waiting("%FROM schema_info%FOR UPDATE%"), "the second replica to wait for the first")
        blocker.rollback()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads) and errors == []
        with replicas[1]._read() as s:
            assert s.get(SchemaInfo, 1).version == SCHEMA_VERSION
        assert _columns(replicas[1], "deployments").count("rollback_reason") == 1
    finally:
        blocker.close()
        watcher.close()
        for t in threads:
            t.join(timeout=60)
        for r in replicas:
            r.dispose()
