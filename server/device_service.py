"""DeviceService: enrollment, the per-device stream, and artifact downloads.

Device credential: "<device_id>.<secret>" in `authorization: Bearer ...` metadata. The server
keeps only sha256(secret); see Database.authenticate.

Mutual TLS (bind_client_certificates): the handshake already proved the client holds a
certificate the client CA signed; what binds it to one device is its subject common name (CN).
Enroll records the CN of the connection it arrives on for the new device, and from then on
that device's credential is accepted only over a connection whose certificate has that CN, so a
stolen credential is useless without the device's certificate too. One CN names one device. A
device enrolled before mutual TLS was switched on is bound on its first call over it.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time

import grpc

from proto import fleet_pb2, fleet_pb2_grpc
from server.artifacts import DIGEST_RE, ArtifactCorrupted, ArtifactStore
from server.db import ROLLED_BACK, CertificateInUse, Database, EnrollmentRefused, InvalidArgument
from server.metrics import LatestDeviceMetrics, ServerStats
from server.sessions import CLOSE, DESIRED_CHANGED, SessionHub

log = logging.getLogger(__name__)

MAX_HOSTNAME = 255
TOUCH_INTERVAL_SECONDS = 1.0     # last_seen is written at most this often per stream


def bearer_token(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


def certificate_common_name(context: grpc.ServicerContext) -> str | None:
    """Subject CN of the client certificate the connection was made with, None without one."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode("utf-8", "replace") if names else None


class DeviceService(fleet_pb2_grpc.DeviceServiceServicer):
    def __init__(self, db: Database, store: ArtifactStore, hub: SessionHub,
                 latest: LatestDeviceMetrics, stats: ServerStats, trusted_keys: list[bytes],
                 desired_recheck_seconds: float = 10.0, bind_client_certificates: bool = False) -> None:
        """bind_client_certificates: the server runs mutual TLS; bind devices to certificates."""
        self.db, self.store, self.hub = db, store, hub
        self.latest, self.stats = latest, stats
        self.trusted_keys = list(trusted_keys)
        self.desired_recheck_seconds = desired_recheck_seconds
        self.bind_client_certificates = bind_client_certificates

    def _authenticate(self, context: grpc.ServicerContext) -> str:
        credential = bearer_token(context)
        if not credential:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "missing device credential (authorization: Bearer <credential>)")
        device_id = self.db.authenticate(credential)
        if device_id is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "unknown device credential; enroll again with a new token")
        if self.bind_client_certificates:
            self._check_certificate(device_id, context)
        return device_id

    def _certificate_name(self, context: grpc.ServicerContext) -> str:
        name = certificate_common_name(context)
        if not name:
            # The handshake guarantees a CA-signed certificate; one without a CN cannot be bound.
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "the client certificate has no subject common name (CN); a device "
                          "certificate needs one to be bound to the device")
        return name

    def _check_certificate(self, device_id: str, context: grpc.ServicerContext) -> None:
        presented = self._certificate_name(context)
        try:
            bound = self.db.bind_certificate(device_id, presented)
        except CertificateInUse as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"device {device_id}: {exc}")
        if bound != presented:
            log.warning("device %s credential presented with certificate CN=%r (bound to CN=%r), from %s",
                        device_id, presented, bound, context.peer())
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"device {device_id} is bound to client certificate CN={bound!r}; this "
                          f"connection presents CN={presented!r}")

    # -- Enroll -----------------------------------------------------------------------
    def Enroll(self, request: fleet_pb2.EnrollRequest, context) -> fleet_pb2.EnrollResponse:
        if not request.token:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "enrollment token missing")
        if len(request.hostname) > MAX_HOSTNAME:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"hostname longer than {MAX_HOSTNAME}")
        certificate_name = self._certificate_name(context) if self.bind_client_certificates else None
        try:
            device_id, credential = self.db.enroll(
                request.token, request.hostname, dict(request.labels),
                request.info.SerializeToString(), certificate_name=certificate_name)
        except EnrollmentRefused as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except CertificateInUse as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except InvalidArgument as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.info("enrolled device %s (%s)%s", device_id, request.hostname,
                 f", bound to certificate CN={certificate_name!r}" if certificate_name else "")
        return fleet_pb2.EnrollResponse(device_id=device_id, credential=credential,
                                        trusted_publisher_keys=self.trusted_keys)

    # -- Connect ----------------------------------------------------------------------
    def Connect(self, request_iterator, context):
        device_id = self._authenticate(context)
        session = self.hub.register(device_id)
        # Wakes the sender below as soon as the RPC ends for any reason (client gone, cancel).
        context.add_callback(session.close)
        self.db.touch(device_id)
        reader = threading.Thread(target=self._read_loop, args=(device_id, request_iterator, session),
                                  name=f"connect-{device_id}", daemon=True)
        reader.start()
        log.info("device %s connected from %s", device_id, context.peer())
        last_sent = None
        try:
            message, last_sent = self._desired_message(device_id, last_sent)
            if message is not None:
                yield message
            next_recheck = time.monotonic() + self.desired_recheck_seconds
            while not session.closed.is_set() and context.is_active():
                wait = min(1.0, max(0.0, next_recheck - time.monotonic()))
                try:
                    item = session.outbox.get(timeout=wait)
                except queue.Empty:
                    item = None
                if isinstance(item, fleet_pb2.ServerMessage):
                    yield item
                    continue
                if item == CLOSE:
                    break
                if item == DESIRED_CHANGED or time.monotonic() >= next_recheck:
                    # The periodic re-read is the safety net for a change made through another
                    # replica whose NOTIFY never arrived (server/notify.py), a removal among them:
                    # the stream ends and the credential no longer works.
                    if self.db.get_device(device_id) is None:
                        log.info("device %s was removed: ending its stream", device_id)
                        break
                    message, last_sent = self._desired_message(device_id, last_sent)
                    if message is not None:
                        yield message
                    next_recheck = time.monotonic() + self.desired_recheck_seconds
        finally:
            self.hub.unregister(session)
            log.info("device %s stream ended", device_id)

    def _desired_message(self, device_id: str, last_sent):
        view = self.db.desired_state(device_id)
        if view is None:
            return None, last_sent
        key = (view.bundle_id, view.deployment_id)
        if key == last_sent:
            return None, last_sent
        desired = fleet_pb2.DesiredState(bundle_id=view.bundle_id, deployment_id=view.deployment_id,
                                         manifest=view.manifest, signature=view.signature,
                                         publisher_key=view.publisher_key)
        return fleet_pb2.ServerMessage(desired=desired), key

    def _read_loop(self, device_id: str, request_iterator, session) -> None:
        last_touch = time.monotonic()
        try:
            for message in request_iterator:
                if session.closed.is_set():
                    break
                now = time.time()
                kind = message.WhichOneof("kind")
                try:
                    if kind == "hello":
                        info = message.hello.info.SerializeToString() if message.hello.HasField("info") else None
                        self.db.touch(device_id, now, info=info)
                        last_touch = time.monotonic()
                    elif kind == "heartbeat":
                        session.send(fleet_pb2.ServerMessage(ack=fleet_pb2.HeartbeatAck(
                            sequence=message.heartbeat.sequence, server_unix=now)))
                    elif kind == "state":
                        outcome = self.db.apply_report(device_id, message.state, now)
                        last_touch = time.monotonic()
                        if outcome.released:       # phased rollout: the next target(s), here and on peers
                            log.info("device %s installed; released %s", device_id, ", ".join(outcome.released))
                            self.hub.notify_desired(outcome.released)
                        if outcome.ended:
                            log.info("deployment %s ended %s", *outcome.ended)
                            if outcome.ended[1] == ROLLED_BACK:
                                self.hub.notify_desired(self.db.apply_rollbacks(outcome.ended[0]))
                    elif kind == "metrics":
                        self.latest.put(device_id, message.metrics)
                    if time.monotonic() - last_touch >= TOUCH_INTERVAL_SECONDS:
                        self.db.touch(device_id, now)
                        last_touch = time.monotonic()
                except Exception:   # one bad message (or a DB hiccup) must not kill the stream
                    log.exception("device %s: handling %s failed", device_id, kind)
        except grpc.RpcError:
            pass                    # the stream was cancelled or replaced
        except Exception:
            log.exception("device %s: reading the stream failed", device_id)
        finally:
            session.close()         # the agent stopped sending: end our half too

    # -- Download ---------------------------------------------------------------------
    def Download(self, request: fleet_pb2.DownloadRequest, context):
        device_id = self._authenticate(context)
        digest = request.digest
        if not DIGEST_RE.match(digest):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"digest {digest[:80]!r} is not sha256:<64 lowercase hex>")
        if request.offset < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"offset {request.offset} is negative")
        artifact = self.db.get_artifact(digest)
        if artifact is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown artifact {digest}")
        if not self.db.artifact_assigned(device_id, digest):
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"artifact {digest} is not part of the bundle assigned to this device")
        if request.offset > artifact.size:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"offset {request.offset} is past the end of {digest} ({artifact.size} bytes)")
        try:
            for offset, data in self.store.read_chunks(digest, request.offset):
                if not context.is_active():
                    return
                yield fleet_pb2.Chunk(offset=offset, data=data, total_size=artifact.size,
                                      sha256=hashlib.sha256(data).hexdigest())
                self.stats.add_bytes_served(len(data))
        except ArtifactCorrupted as exc:
            log.error("%s (device %s was downloading it)", exc, device_id)
            context.abort(grpc.StatusCode.DATA_LOSS, str(exc))
