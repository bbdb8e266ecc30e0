"""Phased rollouts (CreateDeploymentRequest.max_in_flight) on both databases: release order,
what a success releases, what a failure and a timeout leave, the race of two concurrent
successes (PostgreSQL), and the same over real gRPC streams (tests/server/test_notify.py covers
the cross-replica wake-up)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from proto import fleet_pb2
from server.db import (FAILED, IN_PROGRESS, PHASE_FAILED, PHASE_INSTALLED, PHASE_PENDING, ROLLED_BACK,
                       SUCCEEDED, TIMED_OUT, Database, InvalidArgument)
from server.models import NOT_STARTED, RELEASED, WAITING
from server.notify import listener_conninfo
from server.reaper import DeploymentReaper
from tests.server.conftest import DeviceStream, enroll, make_bundle, start_server, wait_until
from tests.server.test_db import _bundle, _enroll, db  # noqa: F401 - the db fixture

Phase = fleet_pb2.ReportedState.Phase
DEADLINE = 30.0          # hang guard, not a speed assertion


def _installed(db, device_id, bundle_id, dep_id):
    return db.apply_report(device_id, fleet_pb2.ReportedState(bundle_id=bundle_id, deployment_id=dep_id,
                                                              phase=Phase.INSTALLED))


def _fleet_on_old(db, tmp_path, key, n):
    """n devices (sorted by id) that installed an old bundle: their desired state is (old, dep)."""
    devices = sorted(_enroll(db)[0] for _ in range(n))
    old, _ = _bundle(db, tmp_path, key)
    first = db.create_deployment(old.id, device_ids=devices).deployment.id
    for d in devices:
        _installed(db, d, old.id, first)
    assert db.get_deployment(first).deployment.state == SUCCEEDED
    new, _ = _bundle(db, tmp_path, key)
    return devices, old.id, first, new.id


def _releases(db, dep_id):
    return {t.device_id: t.release for t in db.get_deployment(dep_id).targets}


def test_one_in_flight_releases_the_targets_one_by_one_in_device_id_order(db, tmp_path, publisher_key):
    (a, b, c), old, old_dep, new = _fleet_on_old(db, tmp_path, publisher_key, 3)
    view = db.create_deployment(new, device_ids=[c, a, b], max_in_flight=1)
    dep = view.deployment.id
    assert view.deployment.max_in_flight == 1
    assert [(t.device_id, t.release) for t in view.targets] == [(a, RELEASED), (b, WAITING), (c, WAITING)]
    assert db.desired_state(a).bundle_id == new
    assert db.fleet_snapshot().targets_waiting == 2          # what edgefleet_deployment_targets_waiting exports
    for waiting in (b, c):           # untouched: the old bundle of the old deployment
        assert (db.desired_state(waiting).bundle_id, db.desired_state(waiting).deployment_id) == (old, old_dep)

    # progress reports release nobody; a waiting device's own report touches nothing here
    progress = fleet_pb2.ReportedState(bundle_id=old, deployment_id=dep, target_bundle_id=new,
                                       phase=Phase.DOWNLOADING)
    assert db.apply_report(a, progress).released == []
    assert db.apply_report(b, fleet_pb2.ReportedState(bundle_id=old, phase=Phase.IDLE)).released == []
    assert _releases(db, dep) == {a: RELEASED, b: WAITING, c: WAITING}

    outcome = _installed(db, a, new, dep)
    assert (outcome.ended, outcome.released) == (None, [b])
    assert db.fleet_snapshot().targets_waiting == 1
    assert db.desired_state(b).bundle_id == new and db.desired_state(c).bundle_id == old
    assert _installed(db, a, new, dep).released == []       # a repeated report frees nothing more
    outcome = _installed(db, b, new, dep)
    assert (outcome.ended, outcome.released) == (None, [c])
    outcome = _installed(db, c, new, dep)
    assert (outcome.ended, outcome.released) == ((dep, SUCCEEDED), [])
    assert db.fleet_snapshot().targets_waiting == 0
    assert _releases(db, dep) == {a: RELEASED, b: RELEASED, c: RELEASED}


def test_two_in_flight_and_unlimited(db, tmp_path, publisher_key):
    devices, old, _, new = _fleet_on_old(db, tmp_path, publisher_key, 4)
    dep = db.create_deployment(new, device_ids=devices, max_in_flight=2).deployment.id
    assert [_releases(db, dep)[d] for d in devices] == [RELEASED, RELEASED, WAITING, WAITING]
    assert _installed(db, devices[1], new, dep).released == [devices[2]]
    assert _installed(db, devices[2], new, dep).released == [devices[3]]   # devices[0] still in flight
    # max_in_flight=0 (the default): every target at once, as before
    again, _ = _bundle(db, tmp_path, publisher_key)
    view = db.create_deployment(again.id, device_ids=devices)
    assert view.deployment.max_in_flight == 0 and {t.release for t in view.targets} == {RELEASED}
    assert all(db.desired_state(d).bundle_id == again.id for d in devices)
    with pytest.raises(InvalidArgument, match="max_in_flight must not be negative"):
        db.create_deployment(again.id, device_ids=devices, max_in_flight=-1)


@pytest.mark.parametrize("rollback", [False, True])
def test_a_failure_stops_the_rollout(db, tmp_path, publisher_key, rollback):
    (a, b, c, d), old, old_dep, new = _fleet_on_old(db, tmp_path, publisher_key, 4)
    dep = db.create_deployment(new, device_ids=[a, b, c, d], max_in_flight=2,
                               rollback_on_failure=rollback).deployment.id
    assert _installed(db, a, new, dep).released == [c]
    outcome = db.apply_report(b, fleet_pb2.ReportedState(bundle_id=old, deployment_id=dep, target_bundle_id=new,
                                                         phase=Phase.FAILED, error="disk full"))
    assert outcome.ended == (dep, ROLLED_BACK if rollback else FAILED) and outcome.released == []
    view = db.get_deployment(dep)
    by_id = {t.device_id: t for t in view.targets}
    assert (by_id[d].release, by_id[d].phase) == (NOT_STARTED, PHASE_PENDING)
    assert by_id[d].error == f"not started: the deployment failed on {b}"
    assert db.fleet_snapshot().targets_waiting == 0          # not started is no longer waiting
    assert (by_id[b].phase, by_id[b].error) == (PHASE_FAILED, "disk full")
    # the waiting target never moved, and c installing now releases nothing
    assert (db.desired_state(d).bundle_id, db.desired_state(d).deployment_id) == (old, old_dep)
    assert _installed(db, c, new, dep).released == []
    moved = db.apply_rollbacks(dep)
    if rollback:
        assert moved == [a, b, c]                             # the released ones go back, d needs nothing
        assert all(db.desired_state(x).bundle_id == old for x in (a, b, c, d))
        assert by_id[a].error == f"rolled back: the deployment failed on {b}"
    else:
        assert moved == []
        assert [db.desired_state(x).bundle_id for x in (a, b, c, d)] == [new, new, new, old]


@pytest.mark.parametrize("rollback", [False, True])
def test_waiting_targets_at_the_deadline_count_as_not_installed(db, tmp_path, publisher_key, rollback):
    (a, b, c), old, old_dep, new = _fleet_on_old(db, tmp_path, publisher_key, 3)
    dep = db.create_deployment(new, device_ids=[a, b, c], max_in_flight=1, timeout_seconds=5,
                               rollback_on_failure=rollback, rollback_on_timeout=rollback).deployment.id
    assert _installed(db, a, new, dep).released == [b]
    assert db.time_out_expired(now=time.time() + 10) == {dep: ROLLED_BACK if rollback else TIMED_OUT}
    view = db.get_deployment(dep)
    by_id = {t.device_id: t for t in view.targets}
    assert by_id[c].release == NOT_STARTED
    assert by_id[c].error == "not started: the deployment timed out before releasing it"
    if rollback:
        assert view.deployment.rollback_reason.startswith("timed out after 5 s: 2 of 3 target(s)")
        assert f"{b} at PENDING, {c} at WAITING" in view.deployment.rollback_reason
    moved = db.apply_rollbacks()
    assert moved == ([a, b] if rollback else [])
    assert (db.desired_state(c).bundle_id, db.desired_state(c).deployment_id) == (old, old_dep)
    assert db.release_waiting() == []                         # an ended rollout releases nothing


def test_a_newer_deployment_takes_a_waiting_target_away(db, tmp_path, publisher_key):
    (a, b, c), old, _, new = _fleet_on_old(db, tmp_path, publisher_key, 3)
    dep = db.create_deployment(new, device_ids=[a, b, c], max_in_flight=1).deployment.id
    other, _ = _bundle(db, tmp_path, publisher_key)
    newer = db.create_deployment(other.id, device_ids=[c]).deployment.id
    view = db.get_deployment(dep)
    by_id = {t.device_id: t for t in view.targets}
    assert view.deployment.state == FAILED
    assert (by_id[c].release, by_id[c].phase, by_id[c].error) == (NOT_STARTED, PHASE_FAILED,
                                                                   f"superseded by deployment {newer}")
    assert by_id[b].release == NOT_STARTED                    # the rollout failed: b never starts either
    assert _installed(db, a, new, dep).released == []         # nor does a's success start anyone
    assert db.desired_state(c).bundle_id == other.id and db.desired_state(b).bundle_id == old


def test_the_reaper_fills_a_slot_a_removed_target_left(db, tmp_path, publisher_key):
    (a, b, c), _, _, new = _fleet_on_old(db, tmp_path, publisher_key, 3)
    dep = db.create_deployment(new, device_ids=[a, b, c], max_in_flight=1).deployment.id
    db.remove_device(a)
    woken: list[str] = []
    assert DeploymentReaper(db, on_desired_changed=woken.extend).reap_once() == []
    assert woken == [b] and db.desired_state(b).bundle_id == new
    assert db.release_waiting() == []                         # b is in flight: the slot is taken
    assert _installed(db, b, new, dep).released == [c]


@pytest.mark.postgres
def test_two_concurrent_successes_never_release_more_than_the_limit(pg_url, tmp_path, publisher_key,
                                                                    monkeypatch):
    """max_in_flight=2, a and b released. a's INSTALLED report is held inside its transaction
    right after it released c; b's arrives meanwhile and must wait for a's (the deployment row
    lock), then count the slots a's release took: d is released once, by b, and never more than
    two targets are in flight."""
    db = Database(pg_url)
    db.create_schema()
    watcher = psycopg.connect(listener_conninfo(pg_url), autocommit=True, connect_timeout=3)
    held, go = threading.Event(), threading.Event()
    original = Database._release_next

    def release_next(s, dep, now):
        out = original(s, dep, now)
        if threading.current_thread().name == "report-a":
            held.set()
            go.wait(DEADLINE)
        return out

    monkeypatch.setattr(Database, "_release_next", staticmethod(release_next))
    try:
        (a, b, c, d), _, _, new = _fleet_on_old(db, tmp_path, publisher_key, 4)
        dep = db.create_deployment(new, device_ids=[a, b, c, d], max_in_flight=2).deployment.id
        outcomes: dict[str, object] = {}

        def report(device_id):
            outcomes[device_id] = _installed(db, device_id, new, dep)

        ta = threading.Thread(target=report, args=(a,), name="report-a")
        tb = threading.Thread(target=report, args=(b,), name="report-b")
        ta.start()
        assert held.wait(DEADLINE)
        tb.start()

        def b_waits_on_a_lock() -> bool:
            return watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND wait_event_type = 'Lock'").fetchone()[0] > 0

        wait_until(lambda: b_waits_on_a_lock() or not tb.is_alive(), "b's report to wait or finish")
        go.set()
        ta.join(DEADLINE)
        tb.join(DEADLINE)
        assert not ta.is_alive() and not tb.is_alive()
        assert outcomes[a].released == [c] and outcomes[b].released == [d]
        view = db.get_deployment(dep)
        in_flight = [t.device_id for t in view.targets if t.release == RELEASED and t.phase != PHASE_INSTALLED]
        assert in_flight == [c, d] and view.deployment.state == IN_PROGRESS
    finally:
        go.set()
        watcher.close()
        db.dispose()


# -- over gRPC ---------------------------------------------------------------------------
def _no_desired_before_ack(stream: DeviceStream, sequence: int) -> None:
    """The stream received no desired state before the ack of `sequence` (the stream's loop
    handles a wake-up queued before the heartbeat first, so a release would show up first)."""
    stream.send(heartbeat={"sequence": sequence})
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        message = stream.received.get(timeout=DEADLINE)
        assert message.WhichOneof("kind") != "desired", f"unexpected desired state {message.desired}"
        if message.WhichOneof("kind") == "ack" and message.ack.sequence == sequence:
            return
    raise TimeoutError("no ack")


def test_streams_receive_the_bundle_as_their_turn_comes(tmp_path, publisher_key):
    """Three streaming devices, max_in_flight=1, a server that re-reads desired state only every
    hour: each device's stream gets the new bundle only after the previous one reported INSTALLED
    (so through the release, not a recheck), and the deployment ends SUCCEEDED."""
    import grpc

    from server.admin_client import AdminClient

    server = start_server(tmp_path / "server", publisher_key, desired_recheck_seconds=3600.0)
    admin = AdminClient(server.address, server.operator_token, timeout=10)
    channel = grpc.insecure_channel(server.address)
    streams: dict[str, DeviceStream] = {}
    try:
        for i in range(3):
            enrolled = enroll(admin, channel, hostname=f"dev{i}")
            streams[enrolled.device_id] = DeviceStream(channel, enrolled.credential)
        ids = sorted(streams)
        wait_until(lambda: set(ids) <= server.hub.connected(), "three streams")
        for i, device_id in enumerate(ids):
            _no_desired_before_ack(streams[device_id], i + 1)
        bundle = admin.upload_bundle(make_bundle(tmp_path / "bundle", publisher_key)[0]).bundle_id
        dep = admin.deploy(bundle, device_ids=ids, max_in_flight=1)
        Release = fleet_pb2.DeploymentTarget.Release
        assert dep.max_in_flight == 1
        assert [t.release for t in dep.targets] == [Release.RELEASED, Release.WAITING, Release.WAITING]
        for turn, device_id in enumerate(ids):
            for later in ids[turn + 1:]:
                _no_desired_before_ack(streams[later], 100 + turn)
            desired = streams[device_id].next("desired", timeout=DEADLINE)
            assert (desired.bundle_id, desired.deployment_id) == (bundle, dep.deployment_id)
            streams[device_id].send(state=fleet_pb2.ReportedState(bundle_id=bundle, deployment_id=dep.deployment_id,
                                                                  phase=Phase.INSTALLED))
        done = admin.wait_deployment(dep.deployment_id, timeout=DEADLINE, poll_seconds=0.1)
        assert done.state == fleet_pb2.Deployment.SUCCEEDED
        assert [t.release for t in done.targets] == [Release.RELEASED] * 3
    finally:
        for stream in streams.values():
            stream.close()
        channel.close()
        admin.close()
        server.stop(grace=0)
