"""AdminClient: a plain operator client for the AdminService (imports only grpc and proto).

    client = AdminClient("127.0.0.1:50051", operator_token)
    token = client.create_enrollment_token(ttl=600, labels={"site": "lab"}).token
    bundle = client.upload_bundle("runs/mnist/bundle")
    dep = client.deploy(bundle.bundle_id, label_selector="site=lab")
    dep = client.wait_deployment(dep.deployment_id, timeout=300)

Every call carries a deadline. Methods return the generated proto messages; errors surface
as grpc.RpcError with the server's status code and message.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Iterator

import grpc

from proto import fleet_pb2, fleet_pb2_grpc
from proto.tls import channel_credentials, check_client_certificate_options

UPLOAD_CHUNK_BYTES = 1 << 20          # well under the server's 8 MiB receive limit
MAX_RECEIVE_BYTES = 64 << 20          # list calls can be large on a big fleet

_IN_PROGRESS = fleet_pb2.Deployment.IN_PROGRESS


def read_operator_token(data_dir: str | pathlib.Path) -> str:
    """The token a server created in its data dir (for tools running beside it)."""
    return (pathlib.Path(data_dir) / "operator.token").read_text().strip()


def read_server_address(data_dir: str | pathlib.Path) -> str:
    """The gRPC address a running server wrote to data_dir/server.json."""
    return json.loads((pathlib.Path(data_dir) / "server.json").read_text())["address"]


class AdminClient:
    def __init__(self, address: str, operator_token: str, timeout: float = 30.0,
                 upload_timeout: float = 3600.0, channel: grpc.Channel | None = None,
                 tls_ca: str | pathlib.Path | None = None, tls_cert: str | pathlib.Path | None = None,
                 tls_key: str | pathlib.Path | None = None) -> None:
        """tls_ca: PEM of the CA that signed a TLS server's certificate; None = plaintext.
        tls_cert / tls_key: the operator's client certificate and key, for a server that requires
        mutual TLS (both or neither, only with tls_ca). proto.tls.TlsError names a bad file."""
        self.address = address
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self._metadata = (("authorization", f"Bearer {operator_token}"),)
        options = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]
        check_client_certificate_options(tls_ca, tls_cert, tls_key)
        if channel is None and tls_ca is not None:
            channel = grpc.secure_channel(address, channel_credentials(tls_ca, tls_cert, tls_key),
                                          options=options)
        self._channel = channel or grpc.insecure_channel(address, options=options)
        self._stub = fleet_pb2_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, timeout: float | None = None):
        return method(request, timeout=timeout or self.timeout, metadata=self._metadata)

    # -- enrollment and devices -------------------------------------------------------
    def create_enrollment_token(self, ttl: float = 0.0,
                                labels: dict[str, str] | None = None) -> fleet_pb2.EnrollmentToken:
        """ttl seconds (0 = server default, one hour); labels go to the device that enrolls."""
        return self._call(self._stub.CreateEnrollmentToken,
                          fleet_pb2.CreateEnrollmentTokenRequest(ttl_seconds=ttl, labels=labels or {}))

    def list_devices(self, label_selector: str = "") -> list[fleet_pb2.Device]:
        return list(self._call(self._stub.ListDevices,
                               fleet_pb2.ListDevicesRequest(label_selector=label_selector)).devices)

    def get_device(self, device_id: str) -> fleet_pb2.Device:
        return self._call(self._stub.GetDevice, fleet_pb2.GetDeviceRequest(device_id=device_id))

    def set_labels(self, device_id: str, labels: dict[str, str]) -> fleet_pb2.Device:
        """Replace the device's labels."""
        return self._call(self._stub.SetDeviceLabels,
                          fleet_pb2.SetDeviceLabelsRequest(device_id=device_id, labels=labels))

    def remove_device(self, device_id: str) -> fleet_pb2.Device:
        """Decommission a device: its credential stops working; it must enroll again to return."""
        return self._call(self._stub.RemoveDevice, fleet_pb2.RemoveDeviceRequest(device_id=device_id))

    # -- bundles ----------------------------------------------------------------------
    def upload_bundle(self, bundle_dir: str | pathlib.Path) -> fleet_pb2.Bundle:
        """Upload a bundle folder (manifest.json, manifest.sig, publisher.pub, variant files)."""
        bundle_dir = pathlib.Path(bundle_dir)
        manifest = (bundle_dir / "manifest.json").read_bytes()
        signature = (bundle_dir / "manifest.sig").read_bytes()
        publisher_key = (bundle_dir / "publisher.pub").read_bytes()
        # Only the file list is needed here; the server does the real validation.
        variants = json.loads(manifest)["variants"]
        files = [(v["digest"], bundle_dir / v["file"]) for v in variants]
        return self._stub.UploadBundle(
            _upload_messages(manifest, signature, publisher_key, files),
            timeout=self.upload_timeout, metadata=self._metadata)

    def list_bundles(self) -> list[fleet_pb2.Bundle]:
        return list(self._call(self._stub.ListBundles, fleet_pb2.ListBundlesRequest()).bundles)

    def remove_bundle(self, bundle_id: str) -> fleet_pb2.RemoveBundleResponse:
        """Delete a bundle no device or unfinished deployment needs (FAILED_PRECONDITION names
        what does) and the stored files no other bundle shares."""
        return self._call(self._stub.RemoveBundle, fleet_pb2.RemoveBundleRequest(bundle_id=bundle_id))

    # -- deployments ------------------------------------------------------------------
    def deploy(self, bundle_id: str, device_ids: list[str] | None = None,
               label_selector: str | None = None, timeout: float | None = None,
               rollback_on_failure: bool = False,
               rollback_on_timeout: bool = False, max_in_flight: int = 0) -> fleet_pb2.Deployment:
        """Deploy to explicit devices or to those matching "key=value"; timeout in seconds
        until the deployment counts as TIMED_OUT (None = server default, 15 minutes).
        rollback_on_failure: when a device reports FAILED, every target goes back to the bundle
        it ran before and the deployment ends ROLLED_BACK. rollback_on_timeout (only with
        rollback_on_failure, else INVALID_ARGUMENT): a timeout rolls back the same way, and the
        deployment ends ROLLED_BACK instead of TIMED_OUT (its rollback_reason says which).
        max_in_flight > 0: a phased rollout, at most that many targets released and not yet
        installed at once, released in device id order (0 = all at once)."""
        return self._call(self._stub.CreateDeployment, fleet_pb2.CreateDeploymentRequest(
            bundle_id=bundle_id, device_ids=device_ids or [], label_selector=label_selector or "",
            timeout_seconds=timeout or 0.0, rollback_on_failure=rollback_on_failure,
            rollback_on_timeout=rollback_on_timeout, max_in_flight=max_in_flight))

    def get_deployment(self, deployment_id: str) -> fleet_pb2.Deployment:
        return self._call(self._stub.GetDeployment,
                          fleet_pb2.GetDeploymentRequest(deployment_id=deployment_id))

    def list_deployments(self) -> list[fleet_pb2.Deployment]:
        return list(self._call(self._stub.ListDeployments,
                               fleet_pb2.ListDeploymentsRequest()).deployments)

    def wait_deployment(self, deployment_id: str, timeout: float = 900.0,
                        poll_seconds: float = 0.5) -> fleet_pb2.Deployment:
        """Poll until the deployment is no longer IN_PROGRESS; TimeoutError after `timeout`."""
        end = time.monotonic() + timeout
        while True:
            dep = self.get_deployment(deployment_id)
            if dep.state != _IN_PROGRESS:
                return dep
            if time.monotonic() >= end:
                raise TimeoutError(f"deployment {deployment_id} still in progress after {timeout} s")
            time.sleep(poll_seconds)

    def fleet_status(self) -> fleet_pb2.FleetStatus:
        return self._call(self._stub.GetFleetStatus, fleet_pb2.GetFleetStatusRequest())


def _upload_messages(manifest: bytes, signature: bytes, publisher_key: bytes,
                     files: list[tuple[str, pathlib.Path]]) -> Iterator[fleet_pb2.UploadBundleRequest]:
    yield fleet_pb2.UploadBundleRequest(header=fleet_pb2.BundleHeader(
        manifest=manifest, signature=signature, publisher_key=publisher_key))
    sent: set[str] = set()
    for digest, path in files:
        if digest in sent:
            continue            # two variants sharing one file: its bytes go once
        sent.add(digest)
        with open(path, "rb") as f:
            while data := f.read(UPLOAD_CHUNK_BYTES):
                yield fleet_pb2.UploadBundleRequest(chunk=fleet_pb2.FileChunk(digest=digest, data=data))
