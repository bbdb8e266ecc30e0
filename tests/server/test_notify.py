"""Cross-replica notifications (server/notify.py): two real server replicas on one PostgreSQL
database, a device stream on replica B, changes made on replica A (its admin API, its device
service, its deployment reaper).

Both replicas re-read desired state only every hour (desired_recheck_seconds=3600), so whatever
reaches the stream on B within the hang-guard deadline came through LISTEN/NOTIFY.
"""

from __future__ import annotations

import json
import logging
import threading

import grpc
import psycopg
import pytest

from server.admin_client import AdminClient
from server.notify import (ALL, MAX_NOTIFICATIONS, MAX_PAYLOAD_BYTES, NotifyListener,
                           NotifySender, decode, encode, listener_conninfo)
from server.sessions import DESIRED_CHANGED, SessionHub
from tests.server.conftest import DeviceStream, enroll, make_bundle, start_server, wait_until

DEADLINE = 30.0          # hang guard, not a speed assertion
NO_RECHECK = 3600.0


def listener_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pg-notify-listener"]


# -- payloads (no database) ------------------------------------------------------------
def test_many_device_ids_are_split_under_the_payload_limit():
    ids = [f"dev-{i:032d}" for i in range(600)]
    payloads = encode("r1", "desired", ids)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= MAX_PAYLOAD_BYTES for p in payloads)
    received = [decode(p) for p in payloads]
    assert [d for change in received for d in change.desired] == ids
    assert all(c.sender == "r1" and not c.everything for c in received)


def test_a_change_too_large_to_split_becomes_everything():
    ids = [f"dev-{i:032d}" for i in range(MAX_NOTIFICATIONS * 300)]
    (payload,) = encode("r1", "desired", ids)
    assert json.loads(payload) == {"from": "r1", ALL: True}
    assert decode(payload).everything
    (payload,) = encode("r1", "removed", ["x" * 10_000])      # one id beyond the limit
    assert decode(payload).everything


@pytest.mark.parametrize("payload", ["", "not json", "[1, 2]", '{"desired": "dev-1"}',
                                     '{"from": 7}', '{"removed": [1]}'])
def test_an_unreadable_payload_means_everything_changed(payload):
    change = decode(payload)
    assert change.everything and not change.desired and not change.removed


def test_a_failing_notify_is_logged_not_raised(caplog):
    from sqlalchemy import create_engine

    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing?connect_timeout=2")
    with caplog.at_level(logging.WARNING, logger="server.notify"):
        NotifySender(engine, "r1").desired_changed(["dev-1"])
    assert "NOTIFY on" in caplog.text
    engine.dispose()


def test_sqlite_starts_no_listener(server):
    assert server.notify_listener is None
    assert server.hub.peers is None
    assert listener_threads() == []


# -- listener against a real PostgreSQL --------------------------------------------------
class Recorder:
    """A hub stand-in that records what the listener hands it."""

    def __init__(self) -> None:
        self.desired: list[str] = []
        self.removed: list[str] = []
        self.everything = 0

    def notify_desired_here(self, ids) -> None:
        self.desired += list(ids)

    def disconnect_here(self, device_id) -> None:
        self.removed.append(device_id)

    def notify_all_here(self) -> None:
        self.everything += 1


@pytest.mark.postgres
def test_listener_receives_split_payloads_and_skips_its_own(pg_url):
    from sqlalchemy import create_engine

    recorder = Recorder()
    listener = NotifyListener(listener_conninfo(pg_url), recorder, replica_id="b")
    listener.start()
    engine = create_engine(pg_url)
    try:
        assert listener.listening.is_set()
        assert recorder.everything == 1          # on (re)connect every local stream re-reads
        ids = [f"dev-{i:032d}" for i in range(600)]
        NotifySender(engine, "b").desired_changed(["own-change"])   # B's own: skipped
        NotifySender(engine, "a").desired_changed(ids)
        NotifySender(engine, "a").removed("gone-1")
        wait_until(lambda: recorder.removed == ["gone-1"], "the removal")
        assert recorder.desired == ids
    finally:
        listener.stop()
        engine.dispose()
    assert not listener._thread.is_alive()


def test_an_unreachable_database_is_retried_and_stops_cleanly(caplog):
    listener = NotifyListener("postgresql://postgres@127.0.0.1:1/nothing", Recorder(), "r1",
                              initial_backoff_seconds=0.05)
    with caplog.at_level(logging.WARNING, logger="server.notify"):
        listener.start(wait_seconds=0.5)
        wait_until(lambda: caplog.text.count("reconnecting in") >= 2, "two failed attempts")
        listener.stop()
    assert not listener.listening.is_set()
    assert not listener._thread.is_alive()


# -- two replicas --------------------------------------------------------------------------
def _two_replicas(tmp_path, publisher_key, pg_url, **a_options):
    """Replicas A and B on one PostgreSQL, desired-state rechecks an hour apart and B's reaper
    idle for an hour (so only a notification can deliver to B); a_options go to A's server."""
    a = start_server(tmp_path / "a", publisher_key, db_url=pg_url, desired_recheck_seconds=NO_RECHECK,
                     operator_token="operator", **a_options)
    b = start_server(tmp_path / "b", publisher_key, db_url=pg_url, desired_recheck_seconds=NO_RECHECK,
                     operator_token="operator", reaper_interval_seconds=NO_RECHECK)
    admin_a = AdminClient(a.address, a.operator_token, timeout=10)
    channel_b = grpc.insecure_channel(b.address)
    yield a, b, admin_a, channel_b
    channel_b.close()
    admin_a.close()
    a.stop(grace=0)
    b.stop(grace=0)
    assert listener_threads() == []          # shutdown leaves no listener behind


@pytest.fixture
def replicas(tmp_path, publisher_key, pg_url):
    yield from _two_replicas(tmp_path, publisher_key, pg_url)


@pytest.fixture
def reaping_replicas(tmp_path, publisher_key, pg_url):
    """The replicas with A's reaper running every 0.2 s (B's waits an hour)."""
    yield from _two_replicas(tmp_path, publisher_key, pg_url, reaper_interval_seconds=0.2)


def connect_on_b(b, admin_a, channel_b) -> tuple[str, DeviceStream]:
    """A device enrolled and streaming on B, past its first desired-state read."""
    enrolled = enroll(admin_a, channel_b)
    stream = DeviceStream(channel_b, enrolled.credential)
    wait_until(lambda: enrolled.device_id in b.hub.connected(), "the stream on B")
    # The ack comes through the stream's loop, i.e. after its first read of the desired state:
    # a deployment made from now on can reach the stream only through a notification.
    stream.send(heartbeat={"sequence": 1})
    assert stream.next("ack", timeout=DEADLINE).sequence == 1
    return enrolled.device_id, stream


def deploy_on_a(admin_a, tmp_path, publisher_key, device_id: str, name: str):
    folder, _manifest, _files = make_bundle(tmp_path / name, publisher_key)
    bundle = admin_a.upload_bundle(folder)
    admin_a.deploy(bundle.bundle_id, device_ids=[device_id])
    return bundle


@pytest.mark.postgres
def test_deployment_on_a_reaches_the_stream_on_b(replicas, tmp_path, publisher_key):
    a, b, admin_a, channel_b = replicas
    assert a.notify_listener.listening.is_set() and b.notify_listener.listening.is_set()
    device_id, stream = connect_on_b(b, admin_a, channel_b)
    try:
        bundle = deploy_on_a(admin_a, tmp_path, publisher_key, device_id, "bundle")
        assert stream.next("desired", timeout=DEADLINE).bundle_id == bundle.bundle_id
    finally:
        stream.close()


@pytest.mark.postgres
def test_removing_the_device_on_a_ends_its_stream_on_b(replicas):
    a, b, admin_a, channel_b = replicas
    device_id, stream = connect_on_b(b, admin_a, channel_b)
    try:
        admin_a.remove_device(device_id)
        assert stream.ended.wait(DEADLINE)
        assert device_id not in b.hub.connected()
    finally:
        stream.close()


@pytest.mark.postgres
def test_a_killed_listener_reconnects_and_still_delivers(replicas, tmp_path, publisher_key, pg_url, caplog):
    a, b, admin_a, channel_b = replicas
    device_id, stream = connect_on_b(b, admin_a, channel_b)
    try:
        killed = b.notify_listener.backend_pid
        with caplog.at_level(logging.INFO, logger="server.notify"), \
                psycopg.connect(listener_conninfo(pg_url), autocommit=True) as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (killed,)).fetchone()[0]
            wait_until(lambda: b.notify_listener.listening.is_set()
                       and b.notify_listener.backend_pid != killed, "the listener's reconnect")
        assert "notify listener connection failed" in caplog.text
        assert "notify listener reconnected" in caplog.text
        bundle = deploy_on_a(admin_a, tmp_path, publisher_key, device_id, "after-reconnect")
        assert stream.next("desired", timeout=DEADLINE).bundle_id == bundle.bundle_id
    finally:
        stream.close()


def test_a_reconnect_makes_every_local_stream_reread():
    hub = SessionHub()
    sessions = [hub.register(f"dev-{i}") for i in range(3)]
    hub.notify_all_here()
    assert all(s.outbox.get_nowait() == DESIRED_CHANGED for s in sessions)


@pytest.mark.postgres
def test_a_rollback_decided_on_a_reaches_the_stream_on_b(replicas, tmp_path, publisher_key):
    """A device on A fails a rollback_on_failure deployment; A applies the rollback (device
    service path) and the other target, streaming on B, is sent its old bundle again."""
    from proto import fleet_pb2

    a, b, admin_a, channel_b = replicas
    Phase = fleet_pb2.ReportedState.Phase
    old = admin_a.upload_bundle(make_bundle(tmp_path / "old", publisher_key)[0]).bundle_id
    new = admin_a.upload_bundle(make_bundle(tmp_path / "new", publisher_key)[0]).bundle_id
    channel_a = grpc.insecure_channel(a.address)
    on_b, stream_b = connect_on_b(b, admin_a, channel_b)
    enrolled_a = enroll(admin_a, channel_a, hostname="on-a")
    stream_a = DeviceStream(channel_a, enrolled_a.credential)
    try:
        for stream in (stream_a, stream_b):
            stream.send(state=fleet_pb2.ReportedState(bundle_id=old, phase=Phase.IDLE))
        for device_id in (on_b, enrolled_a.device_id):
            wait_until(lambda: admin_a.get_device(device_id).reported.bundle_id == old, "the IDLE report")
        admin_a.deploy(new, device_ids=[on_b, enrolled_a.device_id], rollback_on_failure=True)
        assert stream_b.next("desired", timeout=DEADLINE).bundle_id == new
        desired_a = stream_a.next("desired", timeout=DEADLINE)
        stream_a.send(state=fleet_pb2.ReportedState(target_bundle_id=new, deployment_id=desired_a.deployment_id,
                                                    phase=Phase.FAILED, error="model does not load"))
        back = stream_b.next("desired", timeout=DEADLINE)
        assert (back.bundle_id, back.deployment_id) == (old, "")
    finally:
        stream_a.close()
        stream_b.close()
        channel_a.close()


@pytest.mark.postgres
def test_a_rollback_the_reaper_finishes_on_a_reaches_the_stream_on_b(reaping_replicas, tmp_path, publisher_key,
                                                                    pg_url, caplog):
    """A rollback the reaper drives: device Y fails a rollback_on_failure deployment through a
    replica C that dies right after recording the failure (ROLLED_BACK committed, nobody moved
    yet). A's reaper moves the targets back; the other target, streaming on B, is sent its old
    bundle again. B's own reaper and recheck wait an hour, so only A's NOTIFY can deliver."""
    from proto import fleet_pb2
    from server.db import ROLLED_BACK, Database

    Phase = fleet_pb2.ReportedState.Phase
    a, b, admin_a, channel_b = reaping_replicas
    replica_c = Database(pg_url)                 # what C's device service wrote with before it died
    stream_b = None
    try:
        old = admin_a.upload_bundle(make_bundle(tmp_path / "old", publisher_key)[0]).bundle_id
        new = admin_a.upload_bundle(make_bundle(tmp_path / "new", publisher_key)[0]).bundle_id
        on_b, stream_b = connect_on_b(b, admin_a, channel_b)
        failing = enroll(admin_a, channel_b, hostname="fails-on-c").device_id
        stream_b.send(state=fleet_pb2.ReportedState(bundle_id=old, phase=Phase.IDLE))
        wait_until(lambda: admin_a.get_device(on_b).reported.bundle_id == old, "the IDLE report")
        dep = admin_a.deploy(new, device_ids=[on_b, failing], rollback_on_failure=True)
        assert stream_b.next("desired", timeout=DEADLINE).bundle_id == new

        with caplog.at_level(logging.WARNING, logger="server.reaper"):
            ended = replica_c.record_report(failing, fleet_pb2.ReportedState(
                deployment_id=dep.deployment_id, target_bundle_id=new, phase=Phase.FAILED,
                error="model does not load"))
            assert ended == (dep.deployment_id, ROLLED_BACK)     # decided; C dies before applying it
            back = stream_b.next("desired", timeout=DEADLINE)
        assert (back.bundle_id, back.deployment_id) == (old, "")
        assert "rolled back 2 device(s) left on a rolled-back deployment" in caplog.text
        assert admin_a.get_device(failing).desired_bundle_id == ""    # it ran nothing before
        assert admin_a.get_deployment(dep.deployment_id).state == fleet_pb2.Deployment.State.ROLLED_BACK
    finally:
        if stream_b is not None:
            stream_b.close()
        replica_c.dispose()


@pytest.mark.postgres
def test_a_timeout_the_reaper_on_a_rolls_back_reaches_the_stream_on_b(reaping_replicas, tmp_path, publisher_key,
                                                                     caplog):
    """rollback_on_timeout across replicas: the target streams on B and never reports success;
    A's reaper ends the deployment ROLLED_BACK at its deadline and moves the target back, and the
    stream on B is sent the old bundle again. B's own reaper and recheck wait an hour, so only
    A's NOTIFY can deliver."""
    from proto import fleet_pb2

    Phase = fleet_pb2.ReportedState.Phase
    a, b, admin_a, channel_b = reaping_replicas
    stream_b = None
    try:
        old = admin_a.upload_bundle(make_bundle(tmp_path / "old", publisher_key)[0]).bundle_id
        new = admin_a.upload_bundle(make_bundle(tmp_path / "new", publisher_key)[0]).bundle_id
        on_b, stream_b = connect_on_b(b, admin_a, channel_b)
        stream_b.send(state=fleet_pb2.ReportedState(bundle_id=old, phase=Phase.IDLE))
        wait_until(lambda: admin_a.get_device(on_b).reported.bundle_id == old, "the IDLE report")

        with caplog.at_level(logging.WARNING, logger="server.reaper"):
            dep = admin_a.deploy(new, device_ids=[on_b], timeout=1.0, rollback_on_failure=True,
                                 rollback_on_timeout=True)
            # `new` first (unless the rollback came before B's stream read it), then `old`
            while (desired := stream_b.next("desired", timeout=DEADLINE)).bundle_id != old:
                assert desired.bundle_id == new
        assert desired.deployment_id == ""
        assert f"deployment {dep.deployment_id} timed out; rolling its targets back" in caplog.text
        done = admin_a.get_deployment(dep.deployment_id)
        assert done.state == fleet_pb2.Deployment.State.ROLLED_BACK
        assert done.rollback_reason.startswith("timed out after 1 s: 1 of 1 target(s)")
        assert admin_a.get_device(on_b).desired_bundle_id == old
    finally:
        if stream_b is not None:
            stream_b.close()


@pytest.mark.postgres
def test_a_phased_rollout_release_decided_on_a_reaches_the_next_target_on_b(replicas, tmp_path, publisher_key):
    """max_in_flight=1 over two devices: the first in id order streams on A, the second on B. The
    first's INSTALLED report arrives on A, whose transaction releases the second; B's stream is
    sent the new bundle, which (no recheck for an hour) only the NOTIFY can have told it."""
    from proto import fleet_pb2

    a, b, admin_a, channel_b = replicas
    channel_a = grpc.insecure_channel(a.address)
    first, second = sorted((enroll(admin_a, channel_a, hostname=f"phased-{i}") for i in range(2)),
                           key=lambda e: e.device_id)
    stream_a = DeviceStream(channel_a, first.credential)
    stream_b = DeviceStream(channel_b, second.credential)
    try:
        wait_until(lambda: first.device_id in a.hub.connected() and second.device_id in b.hub.connected(),
                   "the streams on A and B")
        stream_b.send(heartbeat={"sequence": 1})          # B's stream is past its first read
        assert stream_b.next("ack", timeout=DEADLINE).sequence == 1
        bundle = admin_a.upload_bundle(make_bundle(tmp_path / "phased", publisher_key)[0]).bundle_id
        dep = admin_a.deploy(bundle, device_ids=[first.device_id, second.device_id], max_in_flight=1)
        Release = fleet_pb2.DeploymentTarget.Release
        assert [t.release for t in dep.targets] == [Release.RELEASED, Release.WAITING]
        assert stream_a.next("desired", timeout=DEADLINE).bundle_id == bundle
        stream_a.send(state=fleet_pb2.ReportedState(bundle_id=bundle, deployment_id=dep.deployment_id,
                                                    phase=fleet_pb2.ReportedState.INSTALLED))
        desired = stream_b.next("desired", timeout=DEADLINE)
        assert (desired.bundle_id, desired.deployment_id) == (bundle, dep.deployment_id)
        assert [t.release for t in admin_a.get_deployment(dep.deployment_id).targets] == [Release.RELEASED] * 2
    finally:
        stream_a.close()
        stream_b.close()
        channel_a.close()
