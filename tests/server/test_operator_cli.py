"""The operator commands (`edgefleet upload/bundles/deploy/deployments/remove-bundle/remove-device`)
against a real server over gRPC, with a scripted device stream in the device's place."""

from __future__ import annotations

import subprocess
import sys
import time

from proto import fleet_pb2
from tests.server.conftest import DeviceStream, enroll

Phase = fleet_pb2.ReportedState.Phase


def _cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgefleet.cli", *args, "--server", server.address,
                           "--token", server.operator_token], capture_output=True, text=True, timeout=120)


def test_operator_workflow_with_rollback_and_removal(server, admin, device_channel, bundle):
    folder, _, _ = bundle
    device = enroll(admin, device_channel, hostname="bench-7")
    stream = DeviceStream(device_channel, device.credential)
    try:
        upload = _cli(server, "upload", str(folder))
        assert upload.returncode == 0, upload.stderr
        bundle_id = upload.stdout.split()[2]
        listed = _cli(server, "bundles")
        assert listed.returncode == 0 and listed.stdout.startswith(bundle_id)

        deploy = _cli(server, "deploy", bundle_id, "--device", device.device_id, "--rollback-on-failure")
        assert deploy.returncode == 0, deploy.stderr
        refused = _cli(server, "remove-bundle", bundle_id)
        assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr
        assert device.device_id in refused.stderr
        desired = stream.next("desired")
        stream.send(state=fleet_pb2.ReportedState(target_bundle_id=bundle_id, deployment_id=desired.deployment_id,
                                                  phase=Phase.FAILED, error="model does not load"))
        admin.wait_deployment(desired.deployment_id, timeout=30)
        shown = _cli(server, "deployments", "--targets")
        assert shown.returncode == 0, shown.stderr
        assert "ROLLED_BACK" in shown.stdout and "rollback on failure" in shown.stdout
        assert f"{device.device_id}  FAILED" in shown.stdout and "model does not load" in shown.stdout
        assert "rollback to nothing" in shown.stdout       # the device ran no bundle before

        for _ in range(100):            # the rollback is applied just after the deployment ends
            if not admin.get_device(device.device_id).desired_bundle_id:
                break
            time.sleep(0.05)
        removed_bundle = _cli(server, "remove-bundle", bundle_id)
        assert removed_bundle.returncode == 0, removed_bundle.stderr
        assert f"removed bundle {bundle_id}" in removed_bundle.stdout
        assert "1 finished deployment(s); deleted 2 unshared file(s)" in removed_bundle.stdout
        assert _cli(server, "bundles").stdout == ""

        removed = _cli(server, "remove-device", device.device_id)
        assert removed.returncode == 0 and "bench-7" in removed.stdout
        again = _cli(server, "remove-device", device.device_id)
        assert again.returncode == 1 and "NOT_FOUND" in again.stderr
        assert device.device_id not in _cli(server, "devices").stdout
    finally:
        stream.close()


def test_deploy_with_rollback_on_timeout_and_what_the_listing_says(server, admin, device_channel, bundle):
    """`deploy --rollback-on-failure --rollback-on-timeout --wait` on a device that never reports:
    the command waits for the reaper, exits 1 and says the deployment rolled back because it timed
    out; `deployments` shows the policy and the reason. --rollback-on-timeout alone is refused."""
    folder, _, _ = bundle
    device = enroll(admin, device_channel, hostname="bench-8")
    stream = DeviceStream(device_channel, device.credential)
    try:
        bundle_id = admin.upload_bundle(folder).bundle_id
        refused = _cli(server, "deploy", bundle_id, "--device", device.device_id, "--rollback-on-timeout")
        assert refused.returncode == 1 and "INVALID_ARGUMENT" in refused.stderr
        assert "rollback_on_timeout needs rollback_on_failure" in refused.stderr
        assert admin.list_deployments() == []

        deploy = _cli(server, "deploy", bundle_id, "--device", device.device_id, "--rollback-on-failure",
                      "--rollback-on-timeout", "--timeout", "1", "--wait")
        assert deploy.returncode == 1, deploy.stderr           # it did not succeed
        (dep,) = admin.list_deployments()
        reason = f"timed out after 1 s: 1 of 1 target(s) had not installed by the deadline ({device.device_id} at PENDING)"
        assert f"deployment {dep.deployment_id}: ROLLED_BACK ({reason})" in deploy.stdout
        shown = _cli(server, "deployments", "--targets")
        assert shown.returncode == 0, shown.stderr
        assert f"rollback on failure and timeout  rolled back: {reason}" in shown.stdout
        assert "rolled back: the deployment timed out (device was at PHASE_UNSPECIFIED)" in shown.stdout
    finally:
        stream.close()


def test_deploy_with_max_in_flight_and_what_the_listing_says(server, admin, device_channel, bundle):
    """`deploy --max-in-flight 1` to two devices: the listing shows the limit and one target
    WAITING; after the first fails, the other shows NOT_STARTED. A negative limit is refused."""
    folder, _, _ = bundle
    devices = sorted((enroll(admin, device_channel, hostname=f"bench-{i}") for i in range(2)),
                     key=lambda e: e.device_id)
    stream = DeviceStream(device_channel, devices[0].credential)
    try:
        bundle_id = admin.upload_bundle(folder).bundle_id
        targets = [arg for d in devices for arg in ("--device", d.device_id)]
        refused = _cli(server, "deploy", bundle_id, *targets, "--max-in-flight", "-1")
        assert refused.returncode != 0 and "--max-in-flight must be 0" in refused.stderr
        assert admin.list_deployments() == []

        deploy = _cli(server, "deploy", bundle_id, *targets, "--max-in-flight", "1")
        assert deploy.returncode == 0, deploy.stderr
        assert "2 device(s)  max 1 in flight, 1 waiting" in deploy.stdout
        shown = _cli(server, "deployments", "--targets")
        assert shown.returncode == 0, shown.stderr
        assert "0/2 installed" in shown.stdout and "max 1 in flight, 1 waiting" in shown.stdout
        assert f"    {devices[1].device_id}  WAITING" in shown.stdout
        status = _cli(server, "status")
        assert "1 deployment(s) in progress (1 target(s) waiting in phased rollouts)" in status.stdout

        (dep,) = admin.list_deployments()
        stream.send(state=fleet_pb2.ReportedState(deployment_id=dep.deployment_id, target_bundle_id=bundle_id,
                                                  phase=Phase.FAILED, error="no space"))
        end = time.monotonic() + 30
        while admin.get_deployment(dep.deployment_id).state == fleet_pb2.Deployment.IN_PROGRESS:
            assert time.monotonic() < end, "the FAILED report was not recorded"
            time.sleep(0.05)
        shown = _cli(server, "deployments", "--targets")
        assert "FAILED" in shown.stdout and "max 1 in flight, 0 waiting, 1 not started" in shown.stdout
        assert "waiting in phased rollouts" not in _cli(server, "status").stdout
        assert (f"    {devices[1].device_id}  NOT_STARTED   not started: the deployment failed on "
                f"{devices[0].device_id}") in shown.stdout
    finally:
        stream.close()
