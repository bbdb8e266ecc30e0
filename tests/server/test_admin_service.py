"""AdminService over real gRPC: operator auth, bundle uploads (all-or-nothing), deployments."""

from __future__ import annotations

import json
import os
import time

import grpc
import pytest

from proto import fleet_pb2, fleet_pb2_grpc, signing
from server.admin_client import AdminClient
from tests.server.conftest import DeviceStream, enroll, make_bundle, start_server

Code = grpc.StatusCode
Phase = fleet_pb2.ReportedState.Phase
State = fleet_pb2.Deployment.State


def _error(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _nothing_stored(server) -> bool:
    leftovers = [p.name for p in server.store.dir.iterdir()]
    return server.db.list_bundles() == [] and leftovers == []


def test_operator_token_is_required(server):
    for token in ("wrong", ""):
        with AdminClient(server.address, token, timeout=10) as client:
            code, details = _error(client.list_devices)
            assert code == Code.UNAUTHENTICATED and "operator token" in details
    stub = fleet_pb2_grpc.AdminServiceStub(grpc.insecure_channel(server.address))
    code, _ = _error(lambda: stub.GetFleetStatus(fleet_pb2.GetFleetStatusRequest(), timeout=10))
    assert code == Code.UNAUTHENTICATED


def test_operator_token_file_is_private_and_stable(server):
    path = server.config.data_dir / "operator.token"
    assert path.read_text().strip() == server.operator_token
    assert (path.stat().st_mode & 0o777) == 0o600


def test_upload_is_idempotent(server, admin, bundle):
    folder, manifest, files = bundle
    first = admin.upload_bundle(folder)
    second = admin.upload_bundle(folder)
    assert first.bundle_id == second.bundle_id
    assert list(first.variant_ids) == [v.id for v in manifest.variants]
    assert first.total_bytes == sum(len(d) for d in files.values())
    assert [b.bundle_id for b in admin.list_bundles()] == [first.bundle_id]
    for v in manifest.variants:
        assert server.store.path(v.digest).read_bytes() == files[v.file]


def test_tampered_manifest_is_rejected(server, admin, bundle):
    folder, _, _ = bundle
    raw = json.loads((folder / "manifest.json").read_bytes())
    raw["variants"][0]["quality"] = 0.999
    (folder / "manifest.json").write_bytes(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode())
    code, details = _error(lambda: admin.upload_bundle(folder))
    assert code == Code.INVALID_ARGUMENT and "signature does not verify" in details
    assert _nothing_stored(server)


def test_untrusted_publisher_is_rejected(server, admin, tmp_path):
    folder, _, _ = make_bundle(tmp_path / "rogue", signing.generate_private_key())
    code, details = _error(lambda: admin.upload_bundle(folder))
    assert code == Code.PERMISSION_DENIED and "does not trust" in details
    assert _nothing_stored(server)


def test_wrong_file_is_rejected_and_nothing_stored(server, admin, bundle):
    folder, manifest, files = bundle
    # Same size, different bytes for the second file: its digest cannot match.
    (folder / "v1.onnx").write_bytes(os.urandom(len(files["v1.onnx"])))
    code, details = _error(lambda: admin.upload_bundle(folder))
    assert code == Code.INVALID_ARGUMENT and manifest.variants[1].digest in details
    assert _nothing_stored(server)          # not even the first, valid file


def test_short_and_missing_files_are_rejected(server, admin, bundle):
    folder, _, files = bundle
    (folder / "v1.onnx").write_bytes(files["v1.onnx"][:-1])
    code, details = _error(lambda: admin.upload_bundle(folder))
    assert code == Code.INVALID_ARGUMENT and "received" in details
    assert _nothing_stored(server)

    stub = fleet_pb2_grpc.AdminServiceStub(grpc.insecure_channel(server.address))
    header = fleet_pb2.BundleHeader(manifest=(folder / "manifest.json").read_bytes(),
                                    signature=(folder / "manifest.sig").read_bytes(),
                                    publisher_key=(folder / "publisher.pub").read_bytes())
    code, details = _error(lambda: stub.UploadBundle(
        iter([fleet_pb2.UploadBundleRequest(header=header)]), timeout=10,
        metadata=(("authorization", f"Bearer {server.operator_token}"),)))
    assert code == Code.FAILED_PRECONDITION and "incomplete" in details
    assert _nothing_stored(server)


def test_oversized_message_is_resource_exhausted(server, bundle):
    folder, manifest, _ = bundle
    stub = fleet_pb2_grpc.AdminServiceStub(grpc.insecure_channel(server.address))
    header = fleet_pb2.BundleHeader(manifest=(folder / "manifest.json").read_bytes(),
                                    signature=(folder / "manifest.sig").read_bytes(),
                                    publisher_key=(folder / "publisher.pub").read_bytes())
    too_big = fleet_pb2.FileChunk(digest=manifest.variants[0].digest,
                                  data=b"\0" * (server.config.max_receive_message_bytes + 1))
    code, _ = _error(lambda: stub.UploadBundle(
        iter([fleet_pb2.UploadBundleRequest(header=header), fleet_pb2.UploadBundleRequest(chunk=too_big)]),
        timeout=20, metadata=(("authorization", f"Bearer {server.operator_token}"),)))
    assert code == Code.RESOURCE_EXHAUSTED
    assert _nothing_stored(server)


def test_deployment_errors(server, admin, device_channel, bundle):
    folder, _, _ = bundle
    device = enroll(admin, device_channel, labels={"site": "lab"})
    uploaded = admin.upload_bundle(folder)
    assert _error(lambda: admin.deploy("f" * 64, device_ids=[device.device_id]))[0] == Code.NOT_FOUND
    assert _error(lambda: admin.deploy(uploaded.bundle_id, device_ids=["dev-nope"]))[0] == Code.NOT_FOUND
    assert _error(lambda: admin.deploy(uploaded.bundle_id, label_selector="site=moon"))[0] == \
        Code.INVALID_ARGUMENT
    assert _error(lambda: admin.deploy(uploaded.bundle_id))[0] == Code.INVALID_ARGUMENT
    assert _error(lambda: admin.get_deployment("dep-nope"))[0] == Code.NOT_FOUND
    assert _error(lambda: admin.get_device("dev-nope"))[0] == Code.NOT_FOUND
    assert admin.list_deployments() == []


def test_labels_and_selectors(server, admin, device_channel):
    a = enroll(admin, device_channel, labels={"site": "lab"})
    b = enroll(admin, device_channel, labels={"site": "home"})
    assert [d.device_id for d in admin.list_devices("site=lab")] == [a.device_id]
    updated = admin.set_labels(b.device_id, {"site": "lab", "power": "battery"})
    assert dict(updated.labels) == {"site": "lab", "power": "battery"}
    assert {d.device_id for d in admin.list_devices("site=lab")} == {a.device_id, b.device_id}
    assert _error(lambda: admin.list_devices("nonsense"))[0] == Code.INVALID_ARGUMENT


def test_all_installed_means_succeeded(server, admin, device_channel, bundle):
    folder, _, _ = bundle
    devices = [enroll(admin, device_channel, labels={"ring": "canary"}) for _ in range(2)]
    streams = [DeviceStream(device_channel, d.credential) for d in devices]
    try:
        uploaded = admin.upload_bundle(folder)
        deployment = admin.deploy(uploaded.bundle_id, label_selector="ring=canary", timeout=120)
        assert deployment.state == State.IN_PROGRESS and len(deployment.targets) == 2
        for stream in streams:
            desired = stream.next("desired")
            stream.send(state=fleet_pb2.ReportedState(target_bundle_id=desired.bundle_id,
                                                      deployment_id=desired.deployment_id,
                                                      phase=Phase.DOWNLOADING, progress=0.5))
            stream.send(state=fleet_pb2.ReportedState(bundle_id=desired.bundle_id,
                                                      deployment_id=desired.deployment_id,
                                                      phase=Phase.INSTALLED, active_variant="v0"))
        done = admin.wait_deployment(deployment.deployment_id, timeout=30)
        assert done.state == State.SUCCEEDED
        assert {t.phase for t in done.targets} == {Phase.INSTALLED}
        status = admin.fleet_status()
        assert (status.devices_total, status.devices_online, status.bundles_total,
                status.deployments_in_progress) == (2, 2, 1, 0)
        assert admin.get_device(devices[0].device_id).reported.active_variant == "v0"
    finally:
        for stream in streams:
            stream.close()


def test_device_failure_fails_deployment(server, admin, device_channel, bundle):
    folder, _, _ = bundle
    device = enroll(admin, device_channel)
    stream = DeviceStream(device_channel, device.credential)
    try:
        uploaded = admin.upload_bundle(folder)
        deployment = admin.deploy(uploaded.bundle_id, device_ids=[device.device_id])
        desired = stream.next("desired")
        stream.send(state=fleet_pb2.ReportedState(target_bundle_id=desired.bundle_id,
                                                  deployment_id=desired.deployment_id,
                                                  phase=Phase.FAILED, error="disk full"))
        done = admin.wait_deployment(deployment.deployment_id, timeout=30)
        assert done.state == State.FAILED and done.targets[0].error == "disk full"
    finally:
        stream.close()


def test_failure_with_rollback_sends_every_device_back(server, admin, device_channel, bundle, tmp_path,
                                                      publisher_key):
    """Over real gRPC: two devices run bundle `old`; `new` goes out with rollback_on_failure; one
    installs it, the other fails: both are sent `old` again at once, the deployment ends
    ROLLED_BACK and says where each target went."""
    old = admin.upload_bundle(bundle[0]).bundle_id
    new = admin.upload_bundle(make_bundle(tmp_path / "new", publisher_key)[0]).bundle_id
    devices = [enroll(admin, device_channel, hostname=f"d{i}") for i in range(2)]
    streams = [DeviceStream(device_channel, d.credential) for d in devices]
    try:
        for stream in streams:
            stream.send(state=fleet_pb2.ReportedState(bundle_id=old, phase=Phase.IDLE))
        # the reports are stored before the deployment reads them
        for d in devices:
            for _ in range(100):
                if admin.get_device(d.device_id).reported.bundle_id == old:
                    break
                time.sleep(0.05)
        deployment = admin.deploy(new, device_ids=[d.device_id for d in devices], rollback_on_failure=True)
        assert deployment.rollback_on_failure
        assert {t.rollback_bundle_id for t in deployment.targets} == {old}
        first, second = (stream.next("desired") for stream in streams)
        assert first.bundle_id == second.bundle_id == new
        streams[0].send(state=fleet_pb2.ReportedState(bundle_id=new, deployment_id=first.deployment_id,
                                                      phase=Phase.INSTALLED))
        streams[1].send(state=fleet_pb2.ReportedState(target_bundle_id=new, deployment_id=second.deployment_id,
                                                      phase=Phase.FAILED, error="model does not load"))
        done = admin.wait_deployment(deployment.deployment_id, timeout=30)
        assert done.state == State.ROLLED_BACK
        for stream in streams:
            back = stream.next("desired")
            assert (back.bundle_id, back.deployment_id) == (old, "")
        errors = {t.device_id: t.error for t in done.targets}
        assert errors[devices[1].device_id] == "model does not load"
        assert errors[devices[0].device_id].startswith("rolled back")
    finally:
        for stream in streams:
            stream.close()


def test_removed_device_is_cut_off(server, admin, device_channel):
    device = enroll(admin, device_channel)
    stream = DeviceStream(device_channel, device.credential)
    try:
        stream.send(heartbeat=fleet_pb2.Heartbeat(sequence=1))
        stream.next("ack")
        removed = admin.remove_device(device.device_id)
        assert removed.device_id == device.device_id
        assert stream.ended.wait(10)                   # its open stream is closed at once
        assert device.device_id not in {d.device_id for d in admin.list_devices("")}
        with pytest.raises(grpc.RpcError) as err:      # and its credential no longer works
            fleet_pb2_grpc.DeviceServiceStub(device_channel).Download(
                fleet_pb2.DownloadRequest(digest="sha256:" + "0" * 64),
                metadata=(("authorization", f"Bearer {device.credential}"),), timeout=10).next()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            admin.remove_device(device.device_id)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        stream.close()


def test_deadline_passed_means_timed_out(server, admin, device_channel, bundle):
    folder, _, _ = bundle
    device = enroll(admin, device_channel)
    uploaded = admin.upload_bundle(folder)
    deployment = admin.deploy(uploaded.bundle_id, device_ids=[device.device_id], timeout=0.5)
    done = admin.wait_deployment(deployment.deployment_id, timeout=30, poll_seconds=0.1)
    assert done.state == State.TIMED_OUT and done.finished_unix >= done.deadline_unix
    assert "timed out" in done.targets[0].error


def _report_running(admin, stream, device_id: str, bundle_id: str) -> None:
    """The device reports it runs `bundle_id`; returns once the server has stored it."""
    stream.send(state=fleet_pb2.ReportedState(bundle_id=bundle_id, phase=Phase.IDLE))
    for _ in range(200):
        if admin.get_device(device_id).reported.bundle_id == bundle_id:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{device_id}'s report of {bundle_id} not stored")


def test_timeout_with_rollback_on_timeout_sends_the_device_back(tmp_path, publisher_key):
    """Over real gRPC with the server's own reaper: a device runs `old`; `new` goes out with
    rollback_on_failure and rollback_on_timeout and a 1 s deadline; the device never reports
    success. The deployment ends ROLLED_BACK, says it timed out, and the stream is sent `old`.
    The streams re-read the database only hourly here, so `old` arrives because the reaper told
    the stream, not through the periodic recheck."""
    server = start_server(tmp_path / "server", publisher_key, desired_recheck_seconds=3600.0)
    admin = AdminClient(server.address, server.operator_token, timeout=10)
    device_channel = grpc.insecure_channel(server.address)
    old = admin.upload_bundle(make_bundle(tmp_path / "old", publisher_key)[0]).bundle_id
    new = admin.upload_bundle(make_bundle(tmp_path / "new", publisher_key)[0]).bundle_id
    device = enroll(admin, device_channel)
    stream = DeviceStream(device_channel, device.credential)
    try:
        _report_running(admin, stream, device.device_id, old)
        deployment = admin.deploy(new, device_ids=[device.device_id], timeout=1.0, rollback_on_failure=True,
                                  rollback_on_timeout=True)
        assert deployment.rollback_on_failure and deployment.rollback_on_timeout
        done = admin.wait_deployment(deployment.deployment_id, timeout=30, poll_seconds=0.1)
        assert done.state == State.ROLLED_BACK and done.rollback_on_timeout
        assert done.rollback_reason == (f"timed out after 1 s: 1 of 1 target(s) had not installed by the "
                                        f"deadline ({device.device_id} at PENDING)")
        assert done.targets[0].error == "rolled back: the deployment timed out (device was at PHASE_UNSPECIFIED)"
        # The stream sees `new` (unless the rollback came first), then `old` with no deployment.
        while (desired := stream.next("desired", timeout=30)).bundle_id != old:
            assert desired.bundle_id in ("", new)
        assert desired.deployment_id == ""
        assert admin.get_device(device.device_id).desired_bundle_id == old
    finally:
        stream.close()
        device_channel.close()
        admin.close()
        server.stop(grace=0)


def test_timeout_without_rollback_on_timeout_moves_nobody(server, admin, device_channel, bundle, tmp_path,
                                                          publisher_key):
    """rollback_on_failure alone: the deadline passing ends the deployment TIMED_OUT and the
    device stays asked for `new` (a timeout is not a failure unless asked)."""
    old = admin.upload_bundle(bundle[0]).bundle_id
    new = admin.upload_bundle(make_bundle(tmp_path / "new", publisher_key)[0]).bundle_id
    device = enroll(admin, device_channel)
    stream = DeviceStream(device_channel, device.credential)
    try:
        _report_running(admin, stream, device.device_id, old)
        deployment = admin.deploy(new, device_ids=[device.device_id], timeout=0.5, rollback_on_failure=True)
        assert not deployment.rollback_on_timeout
        done = admin.wait_deployment(deployment.deployment_id, timeout=30, poll_seconds=0.1)
        assert done.state == State.TIMED_OUT and done.rollback_reason == ""
        server.reaper.reap_once()       # one whole reaper pass after it ended, whatever the timing
        assert admin.get_device(device.device_id).desired_bundle_id == new
    finally:
        stream.close()


def test_rollback_on_timeout_without_rollback_on_failure_is_refused(server, admin, device_channel, bundle):
    uploaded = admin.upload_bundle(bundle[0])
    device = enroll(admin, device_channel)
    code, details = _error(lambda: admin.deploy(uploaded.bundle_id, device_ids=[device.device_id],
                                                rollback_on_timeout=True))
    assert code == Code.INVALID_ARGUMENT and "rollback_on_timeout needs rollback_on_failure" in details
    assert admin.list_deployments() == [] and admin.get_device(device.device_id).desired_bundle_id == ""
