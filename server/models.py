"""SQLAlchemy tables of the control plane. The database is the only source of truth.

Times are unix seconds in DOUBLE columns (the same on SQLite and PostgreSQL, and what the
proto messages carry). Protobuf-shaped data the server does not query on (device info,
last reported state) is stored as serialized proto bytes. Phases and states are stored as
the proto enum *names* (e.g. "INSTALLED", "IN_PROGRESS") so the rows read well in psql.
"""

from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Boolean, Double, ForeignKey, Index, Integer, LargeBinary, String,
                        Text, false)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# 2: adds deployment_rollbacks (a new table: create_all adds it to a version-1 database)
# 3: adds device_certificates (likewise)
# 4: adds artifact_store_lock (a new table; create_schema inserts its one row)
# 5: adds deployments.rollback_on_timeout and deployments.rollback_reason (new columns on an
#    existing table, which create_all does not add: Database.create_schema ALTERs a version-4
#    database, see UPGRADE_COLUMNS)
# 6: adds deployments.max_in_flight and deployment_targets.release_state (phased rollouts; likewise
#    ALTERed in, their server defaults making every older deployment unlimited and every older
#    target released, which is what they were)
SCHEMA_VERSION = 6


class Base(DeclarativeBase):
    pass


class SchemaInfo(Base):
    """One row: the schema version these tables were created with (for future migrations)."""

    __tablename__ = "schema_info"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class ArtifactStoreLock(Base):
    """One row (id 1), locked by every transaction that puts files into the artifact store or
    takes them out (uploads and garbage collection), so the two never interleave; see
    server/db.py, "Artifact garbage collection"."""

    __tablename__ = "artifact_store_lock"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    labels: Mapped[dict] = mapped_column(JSON, default=dict)
    info: Mapped[bytes] = mapped_column(LargeBinary, default=b"")          # DeviceInfo proto
    credential_hash: Mapped[str] = mapped_column(String(64))               # sha256 hex of secret
    enrolled_at: Mapped[float] = mapped_column(Double)
    last_seen: Mapped[float | None] = mapped_column(Double, nullable=True)
    desired_bundle_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    desired_deployment_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reported: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # ReportedState
    reported_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class DeviceCertificate(Base):
    """Mutual TLS: the client certificate subject common name a device is bound to. One name
    names one device (unique), so a certificate can never speak for two devices."""

    __tablename__ = "device_certificates"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    common_name: Mapped[str] = mapped_column(String(255), unique=True)
    bound_at: Mapped[float] = mapped_column(Double)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of token
    created_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)
    used_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    used_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    labels: Mapped[dict] = mapped_column(JSON, default=dict)


class Bundle(Base):
    __tablename__ = "bundles"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)          # sha256 hex of manifest
    model: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(255))
    manifest: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    publisher_key: Mapped[bytes] = mapped_column(LargeBinary)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Double)


class Artifact(Base):
    __tablename__ = "artifacts"
    digest: Mapped[str] = mapped_column(String(71), primary_key=True)      # "sha256:<64 hex>"
    size: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)                                # relative to artifacts dir
    created_at: Mapped[float] = mapped_column(Double)


class BundleArtifact(Base):
    __tablename__ = "bundle_artifacts"
    bundle_id: Mapped[str] = mapped_column(ForeignKey("bundles.id"), primary_key=True)
    variant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(ForeignKey("artifacts.digest"))
    file_name: Mapped[str] = mapped_column(String(255))
    __table_args__ = (Index("ix_bundle_artifacts_digest", "digest"),)


class Deployment(Base):
    __tablename__ = "deployments"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    bundle_id: Mapped[str] = mapped_column(ForeignKey("bundles.id"))
    state: Mapped[str] = mapped_column(String(32))                         # Deployment.State name
    created_at: Mapped[float] = mapped_column(Double)
    deadline: Mapped[float] = mapped_column(Double)
    finished_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    # Version 5. Server-side defaults, so rows written before the upgrade (and by a replica still
    # on version 4 while others upgrade) read as "no rollback on timeout, no reason".
    rollback_on_timeout: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # ROLLED_BACK only: why ("<device> reported FAILED: ..." or "timed out after ..."); "" otherwise
    rollback_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    # Version 6. Phased rollout: at most this many targets released and not yet INSTALLED; 0 = all
    # at once (and what every deployment written before the upgrade was).
    max_in_flight: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    __table_args__ = (Index("ix_deployments_state_deadline", "state", "deadline"),)


# Columns added to existing tables, by the version that added them: create_schema ALTERs a
# database older than that version to add them (create_all only creates missing tables).
UPGRADE_COLUMNS: dict[int, list[tuple[str, str]]] = {
    5: [("deployments", "rollback_on_timeout"), ("deployments", "rollback_reason")],
    6: [("deployments", "max_in_flight"), ("deployment_targets", "release_state")],
}

# DeploymentTarget.release values (the proto's DeploymentTarget.Release names)
RELEASED, WAITING, NOT_STARTED = "RELEASED", "WAITING", "NOT_STARTED"


class DeploymentTarget(Base):
    __tablename__ = "deployment_targets"
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    phase: Mapped[str] = mapped_column(String(32))                         # ReportedState.Phase name
    error: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[float] = mapped_column(Double)
    # Version 6: RELEASED (the device's desired bundle is this deployment's), WAITING (phased
    # rollout, not released yet: the device keeps its old desired state) or NOT_STARTED (the
    # deployment ended before releasing it). Rows from before the upgrade were all released.
    release: Mapped[str] = mapped_column("release_state", String(16), default=RELEASED, server_default=RELEASED)


class DeploymentRollback(Base):
    """For a deployment created with rollback_on_failure: per target, the bundle the device was
    running then (None: it ran none). A row per target; no rows = no rollback."""

    __tablename__ = "deployment_rollbacks"
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    bundle_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
