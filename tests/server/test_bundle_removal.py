"""RemoveBundle over real gRPC on SQLite and PostgreSQL: what it refuses, what it frees, and that
no interleaving with an upload or a crash leaves a bundle naming a file that is gone."""

from __future__ import annotations

import os
import threading
import time

import grpc
import pytest
from sqlalchemy import select

from proto import fleet_pb2, fleet_pb2_grpc
from proto.manifest import Manifest, sha256_digest
from server.admin_client import AdminClient
from server.artifacts import TEMP_ABANDONED_SECONDS
from server.models import BundleArtifact
from tests.server.conftest import (DeviceStream, auth, enroll, make_bundle, start_server, store_lock_is_free,
                                  wait_until)

Code = grpc.StatusCode
Phase = fleet_pb2.ReportedState.Phase
State = fleet_pb2.Deployment.State


@pytest.fixture
def server(tmp_path, publisher_key, db_url):
    running = start_server(tmp_path / "server", publisher_key, db_url=db_url)
    yield running
    running.stop(grace=0)


def _error(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _stored(server) -> set[str]:
    """Digests whose data file is in the store."""
    return {"sha256:" + p.name for p in server.store.dir.iterdir()
            if not p.name.startswith(".") and not p.name.endswith(".chunks")}


def _dangling(server) -> list[str]:
    """Files some bundle row lists that the store no longer holds: must always be empty."""
    with server.db._read() as s:
        listed = set(s.scalars(select(BundleArtifact.digest)).all())
    return sorted(d for d in listed if not server.store.has(d))


def _shared_pair(tmp_path, key):
    """Bundles A and B whose second files are the same bytes."""
    shared = os.urandom(5000)
    a = make_bundle(tmp_path / "a", key, payloads=(os.urandom(3000), shared))
    b = make_bundle(tmp_path / "b", key, payloads=(os.urandom(4000), shared))
    return a, b, a[1].variants[1].digest


def _snapshot(server, admin):
    return ([b.bundle_id for b in admin.list_bundles()], sorted(_stored(server)),
            [(d.deployment_id, d.state) for d in admin.list_deployments()])


def test_removal_frees_the_bundles_files(server, admin, bundle):
    folder, manifest, files = bundle
    uploaded = admin.upload_bundle(folder)
    removed = admin.remove_bundle(uploaded.bundle_id)
    assert removed.bundle.bundle_id == uploaded.bundle_id and list(removed.bundle.variant_ids) == ["v0", "v1"]
    assert sorted(removed.removed_digests) == sorted(v.digest for v in manifest.variants)
    assert removed.freed_bytes == sum(len(d) for d in files.values())
    assert admin.list_bundles() == [] and admin.fleet_status().bundles_total == 0
    assert list(server.store.dir.iterdir()) == []
    assert all(server.db.get_artifact(v.digest) is None for v in manifest.variants)
    assert _error(lambda: admin.remove_bundle(uploaded.bundle_id))[0] == Code.NOT_FOUND
    assert admin.upload_bundle(folder).bundle_id == uploaded.bundle_id     # and it can come back
    assert _stored(server) == {v.digest for v in manifest.variants}


def test_shared_file_survives_removing_one_of_its_bundles(server, admin, tmp_path, publisher_key):
    a, b, shared = _shared_pair(tmp_path, publisher_key)
    a_id = admin.upload_bundle(a[0]).bundle_id
    b_id = admin.upload_bundle(b[0]).bundle_id
    removed = admin.remove_bundle(a_id)
    assert list(removed.removed_digests) == [a[1].variants[0].digest]
    assert removed.freed_bytes == 3000
    assert _stored(server) == {shared, b[1].variants[0].digest}
    assert b"".join(d for _, d in server.store.read_chunks(shared)) == b[2]["v1.onnx"]
    assert _dangling(server) == []
    assert list(admin.remove_bundle(b_id).removed_digests) == sorted([shared, b[1].variants[0].digest])
    assert list(server.store.dir.iterdir()) == []


def test_bundle_a_device_or_deployment_needs_is_refused(server, admin, device_channel, bundle, tmp_path,
                                                        publisher_key):
    """Refused while a deployment of it is in progress, while a device desires it, and while a
    deployment could roll devices back to it; each refusal names what holds it and changes
    nothing. Once none holds, it goes, with its finished deployment."""
    old = admin.upload_bundle(bundle[0]).bundle_id
    device = enroll(admin, device_channel)
    stream = DeviceStream(device_channel, device.credential)
    try:
        dep_old = admin.deploy(old, device_ids=[device.device_id]).deployment_id
        before = _snapshot(server, admin)
        code, details = _error(lambda: admin.remove_bundle(old))
        assert code == Code.FAILED_PRECONDITION
        assert device.device_id in details and f"in progress {dep_old}" in details
        assert _snapshot(server, admin) == before

        stream.next("desired")
        stream.send(state=fleet_pb2.ReportedState(bundle_id=old, deployment_id=dep_old, phase=Phase.INSTALLED))
        assert admin.wait_deployment(dep_old, timeout=30).state == State.SUCCEEDED
        code, details = _error(lambda: admin.remove_bundle(old))
        assert code == Code.FAILED_PRECONDITION
        assert f"desired bundle of device(s) {device.device_id}" in details and "in progress" not in details

        new = admin.upload_bundle(make_bundle(tmp_path / "new", publisher_key)[0]).bundle_id
        dep_new = admin.deploy(new, device_ids=[device.device_id], rollback_on_failure=True).deployment_id
        before = _snapshot(server, admin)
        code, details = _error(lambda: admin.remove_bundle(old))
        assert code == Code.FAILED_PRECONDITION
        assert f"deployment(s) {dep_new} roll devices back" in details and device.device_id not in details
        assert _snapshot(server, admin) == before

        assert stream.next("desired").bundle_id == new
        stream.send(state=fleet_pb2.ReportedState(bundle_id=new, deployment_id=dep_new, phase=Phase.INSTALLED))
        assert admin.wait_deployment(dep_new, timeout=30).state == State.SUCCEEDED
        removed = admin.remove_bundle(old)        # a finished deployment no longer rolls back
        assert list(removed.removed_deployment_ids) == [dep_old]
        assert [d.deployment_id for d in admin.list_deployments()] == [dep_new]
        assert [b.bundle_id for b in admin.list_bundles()] == [new]
        assert _stored(server) == {v.digest for v in Manifest.from_bytes(admin.list_bundles()[0].manifest).variants}
    finally:
        stream.close()


def test_bad_requests(server, admin, bundle):
    uploaded = admin.upload_bundle(bundle[0])
    code, details = _error(lambda: admin.remove_bundle("f" * 64))
    assert code == Code.NOT_FOUND and "unknown bundle" in details
    assert _error(lambda: admin.remove_bundle(""))[0] == Code.INVALID_ARGUMENT
    for token in ("wrong", ""):
        with AdminClient(server.address, token, timeout=10) as client:
            assert _error(lambda: client.remove_bundle(uploaded.bundle_id))[0] == Code.UNAUTHENTICATED
    assert [b.bundle_id for b in admin.list_bundles()] == [uploaded.bundle_id]
    assert _stored(server) == {v.digest for v in bundle[1].variants}


def _upload_without(server, folder, manifest, skip: str):
    """UploadBundle that leaves out the data of `skip` (allowed while the store holds it)."""
    header = fleet_pb2.BundleHeader(manifest=(folder / "manifest.json").read_bytes(),
                                    signature=(folder / "manifest.sig").read_bytes(),
                                    publisher_key=(folder / "publisher.pub").read_bytes())
    messages = [fleet_pb2.UploadBundleRequest(header=header)] + [
        fleet_pb2.UploadBundleRequest(chunk=fleet_pb2.FileChunk(digest=v.digest, data=(folder / v.file).read_bytes()))
        for v in manifest.variants if v.digest != skip]
    with grpc.insecure_channel(server.address) as channel:
        return fleet_pb2_grpc.AdminServiceStub(channel).UploadBundle(
            iter(messages), timeout=30, metadata=auth(server.operator_token))


def test_upload_reusing_a_file_removed_meanwhile_is_refused(server, admin, tmp_path, publisher_key,
                                                           monkeypatch):
    """B leaves out the file it shares with A, which the store holds when B's upload checks; A is
    removed (and the file swept) before B's rows are written. B must be refused, not recorded
    naming a file that is gone."""
    a, b, shared = _shared_pair(tmp_path, publisher_key)
    a_id = admin.upload_bundle(a[0]).bundle_id
    real_add_bundle = server.db.add_bundle
    removals = []

    def remove_a_first(*args, **kwargs):       # between B's checks and B's transaction
        removals.append(admin.remove_bundle(a_id))
        return real_add_bundle(*args, **kwargs)

    monkeypatch.setattr(server.db, "add_bundle", remove_a_first)
    code, details = _error(lambda: _upload_without(server, b[0], b[1], skip=shared))
    assert len(removals) == 1 and shared in removals[0].removed_digests
    assert code == Code.FAILED_PRECONDITION and shared in details and "no longer stored" in details
    assert admin.list_bundles() == [] and _dangling(server) == []
    assert os.listdir(server.store.dir) == []     # B's own file was not published either

    monkeypatch.setattr(server.db, "add_bundle", real_add_bundle)
    b_id = admin.upload_bundle(b[0]).bundle_id     # sending the file makes it whole again
    assert [x.bundle_id for x in admin.list_bundles()] == [b_id] and _dangling(server) == []


def test_removal_during_an_upload_that_reuses_its_file(server, admin, db_url, tmp_path, publisher_key,
                                                      monkeypatch):
    """B's upload is stopped after publishing its files (the shared one included) and before its
    rows commit, and A is removed then. The upload holds the store lock at that point (checked
    without waiting), so the removal's sweep runs after B's rows exist and keeps the shared file."""
    a, b, shared = _shared_pair(tmp_path, publisher_key)
    a_id = admin.upload_bundle(a[0]).bundle_id
    placed, go = threading.Event(), threading.Event()
    real_place = server.store.place

    def place_then_wait(*args, **kwargs):
        real_place(*args, **kwargs)
        placed.set()
        assert go.wait(60)

    monkeypatch.setattr(server.store, "place", place_then_wait)
    results: dict[str, object] = {}

    def run(name, call):
        try:
            results[name] = call()
        except Exception as exc:          # surfaced by the asserts below
            results[name] = exc

    upload = threading.Thread(target=run, args=("upload", lambda: admin.upload_bundle(b[0])))
    removal = threading.Thread(target=run, args=("removal", lambda: admin.remove_bundle(a_id)))
    upload.start()
    try:
        assert placed.wait(60)
        assert not store_lock_is_free(db_url)
        removal.start()
    finally:
        go.set()                                   # never leave the server's thread parked
    for thread in (upload, removal):
        thread.join(60)
        assert not thread.is_alive()
    assert isinstance(results["upload"], fleet_pb2.Bundle), results["upload"]
    assert isinstance(results["removal"], fleet_pb2.RemoveBundleResponse), results["removal"]
    assert list(results["removal"].removed_digests) == [a[1].variants[0].digest]
    assert [x.bundle_id for x in admin.list_bundles()] == [results["upload"].bundle_id]
    assert _dangling(server) == [] and shared in _stored(server)


def _age(path, seconds: float) -> None:
    """Make `path` look untouched for `seconds`."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def _leave_orphans(server) -> set[str]:
    """What a server killed mid-way leaves: a published file whose upload never committed, and
    a sidecar whose data file never arrived."""
    data = os.urandom(2000)
    upload = server.store.begin(sha256_digest(data), len(data))
    upload.write(data)
    upload.commit()
    half = sha256_digest(b"half")
    server.store.sidecar_path(half).write_text("{}")
    return {upload.digest, half}


def test_start_up_sweeps_what_a_crash_left(server, admin, tmp_path, publisher_key, db_url):
    a, b, shared = _shared_pair(tmp_path, publisher_key)
    a_id = admin.upload_bundle(a[0]).bundle_id
    b_id = admin.upload_bundle(b[0]).bundle_id
    server.db.remove_bundle(a_id)              # killed after the rows went, before the sweep
    orphans = _leave_orphans(server) | {a[1].variants[0].digest}
    assert a[1].variants[0].digest in _stored(server)
    server.stop(grace=0)

    again = start_server(server.config.data_dir, publisher_key, db_url=db_url)
    try:
        left = {"sha256:" + p.name.removesuffix(".chunks") for p in again.store.dir.iterdir()}
        assert left == {shared, b[1].variants[0].digest} and not left & orphans
        assert [x.id for x in again.db.list_bundles()] == [b_id] and _dangling(again) == []
        assert again.db.get_artifact(a[1].variants[0].digest) is None
    finally:
        again.stop(grace=0)


def test_next_removal_sweeps_earlier_orphans(server, admin, bundle, tmp_path, publisher_key):
    keep = admin.upload_bundle(make_bundle(tmp_path / "keep", publisher_key)[0]).bundle_id
    gone = admin.upload_bundle(bundle[0]).bundle_id
    orphans = _leave_orphans(server)
    removed = admin.remove_bundle(gone)
    assert set(removed.removed_digests) == orphans | {v.digest for v in bundle[1].variants}
    assert [x.bundle_id for x in admin.list_bundles()] == [keep] and _dangling(server) == []
    assert len(_stored(server)) == 2


# -- two replicas sharing one artifact volume ------------------------------------------------
PIECE = 1000              # bytes per upload message: many messages, so the client can stop half-way


class PausedUpload:
    """UploadBundle of `folder` from a thread, whose client stops half-way through the bundle's
    last file until `go` is set."""

    def __init__(self, server, folder, manifest) -> None:
        self.paused, self.go = threading.Event(), threading.Event()
        self.result: object = None
        header = fleet_pb2.BundleHeader(manifest=(folder / "manifest.json").read_bytes(),
                                        signature=(folder / "manifest.sig").read_bytes(),
                                        publisher_key=(folder / "publisher.pub").read_bytes())
        self._before, self._after = [fleet_pb2.UploadBundleRequest(header=header)], []
        for i, v in enumerate(manifest.variants):
            data = (folder / v.file).read_bytes()
            pieces = [fleet_pb2.UploadBundleRequest(chunk=fleet_pb2.FileChunk(digest=v.digest, data=data[j:j + PIECE]))
                      for j in range(0, len(data), PIECE)]
            if i < len(manifest.variants) - 1:
                self._before += pieces
            else:
                self._before += pieces[:len(pieces) // 2]
                self._after = pieces[len(pieces) // 2:]
        self._server = server
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _messages(self):
        yield from self._before
        self.paused.set()
        if not self.go.wait(60):
            raise TimeoutError("the test never let the upload go on")
        yield from self._after

    def _run(self) -> None:
        with grpc.insecure_channel(self._server.address) as channel:
            try:
                self.result = fleet_pb2_grpc.AdminServiceStub(channel).UploadBundle(
                    self._messages(), timeout=120, metadata=auth(self._server.operator_token))
            except grpc.RpcError as exc:
                self.result = exc

    def finish(self):
        self.go.set()
        self._thread.join(120)
        assert not self._thread.is_alive()
        return self.result


def _temp_files(store) -> list:
    return sorted(p for p in store.dir.iterdir() if p.name.startswith(".tmp-"))


@pytest.mark.postgres
def test_an_upload_on_one_replica_survives_another_replicas_start_up(tmp_path, publisher_key, pg_url):
    """Replicas A and B share PostgreSQL and the data dir (one ReadWriteMany volume, as in
    deploy/k8s). B starts while A is receiving a two-file bundle whose first file arrived
    "two hours ago": B's start-up sweep deletes a crashed upload's old leftovers, leaves A's temp
    files alone, and A's upload completes with the right bytes."""
    data_dir = tmp_path / "shared"
    a = start_server(data_dir, publisher_key, db_url=pg_url)
    b = None
    a.store.touch_interval_seconds = 0.05       # A's keeper touches its uploads' temp files this often
    folder, manifest, files = make_bundle(tmp_path / "bundle", publisher_key, sizes=(30_000, 20_000))
    leftovers = [a.store.dir / ".tmp-0123456789ab-crashed", a.store.dir / ".tmp-0123456789ab-crashed.chunks"]
    for leftover in leftovers:                  # what a replica killed mid-upload an hour ago left
        leftover.write_bytes(b"half an upload")
        _age(leftover, TEMP_ABANDONED_SECONDS + 60)
    upload = PausedUpload(a, folder, manifest)
    try:
        assert upload.paused.wait(60)
        # The server has begun the second file, so the whole first one is in its temp file.
        wait_until(lambda: len([p for p in _temp_files(a.store) if p not in leftovers]) == 2,
                   "A's temp files of both variants")
        live = [p for p in _temp_files(a.store) if p not in leftovers]
        for path in live:                       # an upload running for two hours: only the keeper
            _age(path, 2 * TEMP_ABANDONED_SECONDS)   # has touched the first file since
        wait_until(lambda: all(time.time() - p.stat().st_mtime < TEMP_ABANDONED_SECONDS for p in live),
                   "A's keeper touching its temp files")

        b = start_server(data_dir, publisher_key, db_url=pg_url)
        assert not any(p.exists() for p in leftovers)
        assert all(p.exists() for p in live)

        result = upload.finish()
        assert isinstance(result, fleet_pb2.Bundle), result
        assert [x.id for x in b.db.list_bundles()] == [result.bundle_id]
        for v in manifest.variants:             # B serves the bytes A received
            assert b"".join(d for _, d in b.store.read_chunks(v.digest)) == files[v.file]
        assert _temp_files(a.store) == [] and _dangling(b) == []
    finally:
        upload.go.set()
        for running in (a, b):
            if running is not None:
                running.stop(grace=0)
