"""AdminService: what an operator (CLI, demo, tests) asks of the control plane.

Every call needs `authorization: Bearer <operator token>` (compared in constant time).
"""

from __future__ import annotations

import functools
import hmac
import logging
import time

import grpc

from proto import fleet_pb2, fleet_pb2_grpc
from proto import signing
from proto.manifest import Manifest, ManifestError, bundle_id_of
from server.artifacts import ArtifactMismatch, ArtifactMissing, ArtifactStore, PendingArtifact
from server.db import BundleInUse, Database, DeploymentView, InvalidArgument, NotFound
from server.device_service import bearer_token
from server.models import RELEASED, Bundle, Device
from server.sessions import SessionHub

log = logging.getLogger(__name__)

Phase = fleet_pb2.ReportedState.Phase
State = fleet_pb2.Deployment.State
Release = fleet_pb2.DeploymentTarget.Release


def operator_only(method):
    """Refuse the call unless it carries the operator token."""

    @functools.wraps(method)
    def wrapped(self: "AdminService", request, context):
        token = bearer_token(context).encode("utf-8")
        if not token or not hmac.compare_digest(token, self.operator_token):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "operator token missing or wrong (authorization: Bearer <operator token>)")
        return method(self, request, context)

    return wrapped


def device_to_proto(d: Device, now: float, heartbeat_timeout: float,
                    certificate_common_name: str | None = None) -> fleet_pb2.Device:
    """certificate_common_name: the client certificate CN the device is bound to (mutual TLS,
    DeviceCertificate), None = not bound."""
    msg = fleet_pb2.Device(
        device_id=d.id, hostname=d.hostname or "", labels=d.labels or {},
        online=d.last_seen is not None and now - d.last_seen <= heartbeat_timeout,
        last_seen_unix=d.last_seen or 0.0, enrolled_unix=d.enrolled_at,
        desired_bundle_id=d.desired_bundle_id or "", desired_deployment_id=d.desired_deployment_id or "",
        certificate_common_name=certificate_common_name or "")
    if d.info:
        msg.info.ParseFromString(d.info)
    if d.reported:
        msg.reported.ParseFromString(d.reported)
    return msg


def deployment_to_proto(view: DeploymentView) -> fleet_pb2.Deployment:
    dep = view.deployment
    return fleet_pb2.Deployment(
        deployment_id=dep.id, bundle_id=dep.bundle_id, state=State.Value(dep.state),
        created_unix=dep.created_at, deadline_unix=dep.deadline, finished_unix=dep.finished_at or 0.0,
        rollback_on_failure=view.rollback is not None,
        rollback_on_timeout=dep.rollback_on_timeout, rollback_reason=dep.rollback_reason or "",
        max_in_flight=dep.max_in_flight or 0,
        targets=[fleet_pb2.DeploymentTarget(device_id=t.device_id, phase=Phase.Value(t.phase),
                                            error=t.error or "",
                                            rollback_bundle_id=(view.rollback or {}).get(t.device_id) or "",
                                            release=Release.Value(t.release))
                 for t in view.targets])


class AdminService(fleet_pb2_grpc.AdminServiceServicer):
    def __init__(self, db: Database, store: ArtifactStore, hub: SessionHub, operator_token: str,
                 trusted_keys: list[bytes], *, heartbeat_timeout_seconds: float = 15.0,
                 deployment_timeout_seconds: float = 900.0,
                 enrollment_token_ttl_seconds: float = 3600.0,
                 max_bundle_bytes: int = 4 << 30) -> None:
        self.db, self.store, self.hub = db, store, hub
        self.operator_token = operator_token.encode("utf-8")
        self.trusted_keys = list(trusted_keys)
        self.heartbeat_timeout_seconds = heartbeat_timeout_seconds
        self.deployment_timeout_seconds = deployment_timeout_seconds
        self.enrollment_token_ttl_seconds = enrollment_token_ttl_seconds
        self.max_bundle_bytes = max_bundle_bytes
        self._variant_ids: dict[str, list[str]] = {}    # bundle id -> variant ids (immutable)

    def _device(self, d: Device, certificate_name: str | None = None) -> fleet_pb2.Device:
        return device_to_proto(d, time.time(), self.heartbeat_timeout_seconds, certificate_name)

    def _devices(self, devices: list[Device]) -> list[fleet_pb2.Device]:
        names = self.db.certificate_names() if devices else {}
        return [self._device(d, names.get(d.id)) for d in devices]

    def _bundle(self, b: Bundle) -> fleet_pb2.Bundle:
        if b.id not in self._variant_ids:
            self._variant_ids[b.id] = [v.id for v in Manifest.from_bytes(b.manifest).variants]
        return fleet_pb2.Bundle(bundle_id=b.id, model=b.model, version=b.version,
                                variant_ids=self._variant_ids[b.id], total_bytes=b.total_bytes,
                                created_unix=b.created_at, manifest=b.manifest)

    # -- enrollment and devices -------------------------------------------------------
    @operator_only
    def CreateEnrollmentToken(self, request, context):
        if request.ttl_seconds < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ttl_seconds must not be negative")
        ttl = request.ttl_seconds or self.enrollment_token_ttl_seconds
        try:
            token, expires = self.db.create_enrollment_token(ttl, dict(request.labels))
        except InvalidArgument as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return fleet_pb2.EnrollmentToken(token=token, expires_unix=expires)

    @operator_only
    def ListDevices(self, request, context):
        try:
            devices = self.db.list_devices(request.label_selector)
        except InvalidArgument as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return fleet_pb2.ListDevicesResponse(devices=self._devices(devices))

    @operator_only
    def GetDevice(self, request, context):
        device = self.db.get_device(request.device_id)
        if device is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown device {request.device_id!r}")
        return self._device(device, self.db.certificate_name(device.id))

    @operator_only
    def SetDeviceLabels(self, request, context):
        try:
            device = self.db.set_labels(request.device_id, dict(request.labels))
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except InvalidArgument as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return self._device(device, self.db.certificate_name(device.id))

    @operator_only
    def RemoveDevice(self, request, context):
        certificate_name = self.db.certificate_name(request.device_id)    # the removal unbinds it
        try:
            device, ended = self.db.remove_device(request.device_id)
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        self.hub.disconnect(device.id)   # here, and on other replicas through NOTIFY (PostgreSQL)
        log.warning("device %s removed%s", device.id,
                    f"; ended deployment(s) {', '.join(ended)}" if ended else "")
        return self._device(device, certificate_name)

    # -- bundles ----------------------------------------------------------------------
    @operator_only
    def UploadBundle(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be the bundle header")
        header = first.header
        if header.publisher_key not in self.trusted_keys:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "bundle is signed by a key this server does not trust (add the publisher's "
                          "public key with --trust-key or under data_dir/trusted_publishers/)")
        try:
            manifest = signing.verify(header.manifest, header.signature, header.publisher_key,
                                      self.trusted_keys)
        except ManifestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bundle rejected: {exc}")
        if manifest.total_bytes > self.max_bundle_bytes:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"bundle is {manifest.total_bytes} bytes, over the {self.max_bundle_bytes} limit")
        sizes: dict[str, int] = {}
        for v in manifest.variants:
            if sizes.setdefault(v.digest, v.size_bytes) != v.size_bytes:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"manifest gives {v.digest} two different sizes")
        bundle_id = bundle_id_of(header.manifest)

        pending: dict[str, PendingArtifact] = {}
        try:
            for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "only the first message may be a header")
                chunk = message.chunk
                if chunk.digest not in sizes:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"chunk for {chunk.digest[:80]!r}, which the manifest does not list")
                upload = pending.get(chunk.digest)
                if upload is None:
                    upload = pending[chunk.digest] = self.store.begin(chunk.digest, sizes[chunk.digest])
                try:
                    upload.write(chunk.data)
                except ArtifactMismatch as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bundle rejected: {exc}")

            existing = self.db.get_bundle(bundle_id)
            if existing is not None:
                return self._bundle(existing)       # same bundle again: nothing to do

            # A file may be left out only if the store already holds it (shared with another bundle).
            missing = [d for d in sizes if d not in pending
                       and not (self.store.has(d) and self.db.get_artifact(d) is not None)]
            if missing:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"bundle upload incomplete: no data for {', '.join(missing)}")
            for upload in pending.values():
                try:
                    upload.finish()
                except ArtifactMismatch as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bundle rejected: {exc}")
            # Every file verified: only now does anything become visible, inside the transaction
            # that records the bundle, holding the artifact store lock (server/db.py).
            try:
                bundle, created = self.db.add_bundle(
                    header.manifest, header.signature, header.publisher_key, manifest,
                    {d: self.store.relpath(d) for d in sizes},
                    place_files=lambda: self.store.place(list(pending.values()), set(sizes)))
            except ArtifactMissing as exc:   # garbage-collected since the check above
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"bundle upload incomplete: {exc}")
            except Exception:
                # Files published before the transaction failed are referenced by nothing; they
                # may only be deleted under the store lock, which the sweep takes.
                if any(u.published for u in pending.values()):
                    self._sweep_artifacts()
                raise
            if created:
                log.info("stored bundle %s (%s %s, %d bytes)", bundle_id, manifest.model,
                         manifest.version, manifest.total_bytes)
            return self._bundle(bundle)
        finally:
            for upload in pending.values():
                upload.abort()                       # no-op for published files

    @operator_only
    def ListBundles(self, request, context):
        return fleet_pb2.ListBundlesResponse(bundles=[self._bundle(b) for b in self.db.list_bundles()])

    @operator_only
    def RemoveBundle(self, request, context):
        if not request.bundle_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bundle_id is required")
        try:
            removed = self.db.remove_bundle(request.bundle_id)
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except BundleInUse as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        reply = fleet_pb2.RemoveBundleResponse(bundle=self._bundle(removed.bundle),
                                               removed_deployment_ids=removed.deployment_ids)
        self._variant_ids.pop(removed.bundle.id, None)
        # The rows are gone for good; should this sweep fail or the server die first, the files
        # are only orphans, which the next sweep (next removal or start-up) deletes.
        freed = self._sweep_artifacts()
        reply.removed_digests.extend(sorted(freed))
        reply.freed_bytes = sum(freed.values())
        log.warning("bundle %s removed (%s %s); freed %d file(s), %d bytes", removed.bundle.id,
                    removed.bundle.model, removed.bundle.version, len(freed), reply.freed_bytes)
        return reply

    def _sweep_artifacts(self) -> dict[str, int]:
        """Best effort: a sweep that fails leaves orphans for the next one, never a bad row."""
        try:
            return self.db.sweep_artifacts(self.store.remove_except)
        except Exception:
            log.exception("artifact sweep failed; unreferenced files stay until the next sweep")
            return {}

    # -- deployments ------------------------------------------------------------------
    @operator_only
    def CreateDeployment(self, request, context):
        if request.timeout_seconds < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "timeout_seconds must not be negative")
        try:
            view = self.db.create_deployment(
                request.bundle_id, list(request.device_ids), request.label_selector,
                request.timeout_seconds or self.deployment_timeout_seconds,
                rollback_on_failure=request.rollback_on_failure,
                rollback_on_timeout=request.rollback_on_timeout,
                max_in_flight=request.max_in_flight)
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except InvalidArgument as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # Only the released targets' desired state changed (phased rollout: the others wait).
        released = [t.device_id for t in view.targets if t.release == RELEASED]
        self.hub.notify_desired(released)
        log.info("deployment %s: bundle %s to %d device(s)%s", view.deployment.id, request.bundle_id,
                 len(view.targets), f", {len(released)} released (max_in_flight {request.max_in_flight})"
                 if request.max_in_flight else "")
        return deployment_to_proto(view)

    @operator_only
    def GetDeployment(self, request, context):
        view = self.db.get_deployment(request.deployment_id)
        if view is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown deployment {request.deployment_id!r}")
        return deployment_to_proto(view)

    @operator_only
    def ListDeployments(self, request, context):
        return fleet_pb2.ListDeploymentsResponse(
            deployments=[deployment_to_proto(v) for v in self.db.list_deployments()])

    @operator_only
    def GetFleetStatus(self, request, context):
        snap = self.db.fleet_snapshot()
        devices = self._devices(snap.devices)
        return fleet_pb2.FleetStatus(
            devices_total=len(devices), devices_online=sum(d.online for d in devices),
            bundles_total=snap.bundles_total,
            deployments_in_progress=snap.deployments_by_state.get("IN_PROGRESS", 0),
            devices=devices, targets_waiting=snap.targets_waiting)
