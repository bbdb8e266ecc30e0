"""DeviceService over real gRPC on loopback: enrollment, the stream, downloads."""

from __future__ import annotations

import hashlib
import time

import grpc
import pytest

from proto import fleet_pb2
from server.artifacts import CHUNK_SIZE
from tests.server.conftest import DeviceStream, auth, device_stub, enroll, make_bundle

Code = grpc.StatusCode


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_enroll_happy_path(server, admin, device_channel):
    reply = enroll(admin, device_channel, labels={"site": "lab"}, hostname="pi-1")
    assert reply.device_id and reply.credential.startswith(reply.device_id + ".")
    assert list(reply.trusted_publisher_keys) == server.trusted_keys
    device = admin.get_device(reply.device_id)
    assert device.hostname == "pi-1" and dict(device.labels) == {"site": "lab"}
    assert server.db.authenticate(reply.credential) == reply.device_id


def test_enroll_refusals(server, admin, device_channel):
    stub = device_stub(device_channel)
    code, details = _code(lambda: stub.Enroll(fleet_pb2.EnrollRequest(token="wrong"), timeout=10))
    assert code == Code.UNAUTHENTICATED and "not valid" in details

    token = admin.create_enrollment_token(ttl=60).token
    stub.Enroll(fleet_pb2.EnrollRequest(token=token), timeout=10)
    code, details = _code(lambda: stub.Enroll(fleet_pb2.EnrollRequest(token=token), timeout=10))
    assert code == Code.UNAUTHENTICATED and "already used" in details

    expired, _ = server.db.create_enrollment_token(60, now=time.time() - 3600)
    code, details = _code(lambda: stub.Enroll(fleet_pb2.EnrollRequest(token=expired), timeout=10))
    assert code == Code.UNAUTHENTICATED and "expired" in details
    assert len(admin.list_devices()) == 1


def test_unknown_credential_is_unauthenticated(server, device_channel):
    stub = device_stub(device_channel)
    stream = stub.Connect(iter([fleet_pb2.AgentMessage(hello=fleet_pb2.Hello())]),
                          metadata=auth("dev-000000000000.forged"), timeout=10)
    code, _ = _code(lambda: list(stream))
    assert code == Code.UNAUTHENTICATED
    download = stub.Download(fleet_pb2.DownloadRequest(digest="sha256:" + "0" * 64),
                             metadata=auth("dev-000000000000.forged"), timeout=10)
    code, _ = _code(lambda: list(download))
    assert code == Code.UNAUTHENTICATED
    code, _ = _code(lambda: list(stub.Download(fleet_pb2.DownloadRequest(digest="x"), timeout=10)))
    assert code == Code.UNAUTHENTICATED


def test_deploy_reaches_connected_device_and_acks_heartbeats(server, admin, device_channel, bundle):
    folder, manifest, _ = bundle
    device = enroll(admin, device_channel)
    stream = DeviceStream(device_channel, device.credential)
    try:
        stream.send(hello=fleet_pb2.Hello(agent_version="1.0", info=fleet_pb2.DeviceInfo(cpu_count=4)))
        stream.send(heartbeat=fleet_pb2.Heartbeat(sequence=7))
        assert stream.next("ack").sequence == 7
        uploaded = admin.upload_bundle(folder)
        deployment = admin.deploy(uploaded.bundle_id, device_ids=[device.device_id])
        desired = stream.next("desired", timeout=10)
        assert desired.bundle_id == uploaded.bundle_id
        assert desired.deployment_id == deployment.deployment_id
        assert desired.manifest == (folder / "manifest.json").read_bytes()
        assert desired.signature == (folder / "manifest.sig").read_bytes()
        got = admin.get_device(device.device_id)
        assert got.online and got.info.cpu_count == 4
    finally:
        stream.close()


def test_desired_state_is_sent_on_connect_and_second_stream_replaces_first(server, admin, device_channel,
                                                                           bundle):
    folder, _, _ = bundle
    device = enroll(admin, device_channel)
    uploaded = admin.upload_bundle(folder)
    admin.deploy(uploaded.bundle_id, device_ids=[device.device_id])
    first = DeviceStream(device_channel, device.credential)
    second = None
    try:
        assert first.next("desired").bundle_id == uploaded.bundle_id
        second = DeviceStream(device_channel, device.credential)
        assert second.next("desired").bundle_id == uploaded.bundle_id
        assert first.ended.wait(10)             # the older stream was ended by the server
        second.send(heartbeat=fleet_pb2.Heartbeat(sequence=1))
        assert second.next("ack").sequence == 1
    finally:
        first.close()
        if second is not None:
            second.close()


@pytest.fixture
def assigned(server, admin, device_channel, bundle):
    """A device with a bundle deployed to it: (device, manifest, files by name)."""
    folder, manifest, files = bundle
    device = enroll(admin, device_channel)
    uploaded = admin.upload_bundle(folder)
    admin.deploy(uploaded.bundle_id, device_ids=[device.device_id])
    return device, manifest, files


def _download(channel, credential, digest, offset=0):
    return list(device_stub(channel).Download(fleet_pb2.DownloadRequest(digest=digest, offset=offset),
                                              metadata=auth(credential), timeout=10))


def test_download_and_resume(server, device_channel, assigned):
    device, manifest, files = assigned
    variant = manifest.variants[1]
    data = files[variant.file]
    chunks = _download(device_channel, device.credential, variant.digest)
    assert b"".join(c.data for c in chunks) == data
    assert all(c.total_size == len(data) and c.sha256 == hashlib.sha256(c.data).hexdigest() for c in chunks)
    resumed = _download(device_channel, device.credential, variant.digest, offset=12_345)
    assert resumed[0].offset == 12_345
    assert b"".join(c.data for c in resumed) == data[12_345:]
    assert _download(device_channel, device.credential, variant.digest, offset=len(data)) == []


def test_download_refusals(server, admin, device_channel, assigned, tmp_path, publisher_key):
    device, manifest, _ = assigned
    call = lambda digest, offset=0: _code(  # noqa: E731
        lambda: _download(device_channel, device.credential, digest, offset))
    assert call("sha256:" + "ab" * 32)[0] == Code.NOT_FOUND
    assert call("md5:abc")[0] == Code.INVALID_ARGUMENT
    assert call(manifest.variants[0].digest, offset=-1)[0] == Code.INVALID_ARGUMENT
    assert call(manifest.variants[0].digest, offset=10 ** 9)[0] == Code.INVALID_ARGUMENT
    # A file of a bundle stored on the server but assigned to no device of ours.
    other_folder, other_manifest, _ = make_bundle(tmp_path / "other", publisher_key)
    admin.upload_bundle(other_folder)
    code, details = call(other_manifest.variants[0].digest)
    assert code == Code.PERMISSION_DENIED and "not part of the bundle assigned" in details


def test_corrupted_artifact_is_data_loss(server, device_channel, tmp_path, admin, publisher_key):
    folder, manifest, _ = make_bundle(tmp_path / "big", publisher_key, sizes=(3 * CHUNK_SIZE,))
    device = enroll(admin, device_channel)
    uploaded = admin.upload_bundle(folder)
    admin.deploy(uploaded.bundle_id, device_ids=[device.device_id])
    digest = manifest.variants[0].digest
    path = server.store.path(digest)
    with open(path, "r+b") as f:
        f.seek(CHUNK_SIZE + 100)
        byte = f.read(1)
        f.seek(CHUNK_SIZE + 100)
        f.write(bytes([byte[0] ^ 0x55]))
    code, details = _code(lambda: _download(device_channel, device.credential, digest))
    assert code == Code.DATA_LOSS
    assert details == f"artifact {digest} is corrupted at offset {CHUNK_SIZE}"


def test_concurrent_enrollments_over_grpc_consume_the_token_once(server, admin, device_channel):
    import threading

    token = admin.create_enrollment_token(ttl=60).token
    stub = device_stub(device_channel)
    outcomes: list = []
    barrier = threading.Barrier(4)

    def attempt():
        barrier.wait()
        try:
            outcomes.append(stub.Enroll(fleet_pb2.EnrollRequest(token=token), timeout=10).device_id)
        except grpc.RpcError as exc:
            outcomes.append(exc.code())

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if isinstance(o, str)]
    assert len(winners) == 1
    assert sorted(o.name for o in outcomes if not isinstance(o, str)) == ["UNAUTHENTICATED"] * 3
    assert [d.device_id for d in admin.list_devices()] == winners
