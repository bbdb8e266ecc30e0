"""Fixtures for server tests: signed test bundles, a real in-process server on free ports,
device-side helpers built on the generated stubs, and database URLs (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import pathlib
import queue
import secrets
import threading
import time

import grpc
import pytest

from proto import fleet_pb2, fleet_pb2_grpc, signing
from proto.manifest import Manifest, TensorSpec, Variant, sha256_digest
from server.admin_client import AdminClient
from server.app import serve
from server.config import ServerConfig

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


# -- bundles ---------------------------------------------------------------------------
def make_bundle(folder: pathlib.Path, key, sizes=(3000, 70_000), model: str = "tiny",
                version: str | None = None,
                payloads: tuple[bytes, ...] | None = None) -> tuple[pathlib.Path, Manifest, dict[str, bytes]]:
    """Write a signed bundle folder with random *.onnx payloads (the server only checks digests),
    or with `payloads` as the variants' files (to share a file between bundles)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    variants = []
    for i, data in enumerate(payloads or [os.urandom(size) for size in sizes]):
        size = len(data)
        name = f"v{i}.onnx"
        (folder / name).write_bytes(data)
        files[name] = data
        variants.append(Variant(id=f"v{i}", file=name, digest=sha256_digest(data), size_bytes=size,
                                method="ptq-static" if i else "fp32", weight_bits=8 if i else 32,
                                activation_bits=8 if i else 32, quality=0.9 - 0.01 * i,
                                sparsity=0.5 if i else 0.0,
                                sparsity_pattern="unstructured" if i else "none"))
    manifest = Manifest(model=model, version=version or secrets.token_hex(4), quality_metric="accuracy",
                        inputs=(TensorSpec("x", (1, 4)),), outputs=(TensorSpec("y", (1, 2)),),
                        variants=tuple(variants))
    raw = manifest.to_bytes()
    (folder / "manifest.json").write_bytes(raw)
    (folder / "manifest.sig").write_bytes(signing.sign(raw, key))
    (folder / "publisher.pub").write_bytes(signing.public_key_bytes(key))
    return folder, manifest, files


@pytest.fixture(scope="session")
def publisher_key():
    return signing.generate_private_key()


@pytest.fixture
def bundle(tmp_path, publisher_key):
    return make_bundle(tmp_path / "bundle", publisher_key)


def wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    """Poll predicate until it holds; the timeout is a hang guard, not a speed assertion."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


# -- server ----------------------------------------------------------------------------
def start_server(data_dir: pathlib.Path, publisher_key, **overrides):
    settings = dict(port=0, metrics_port=0, reaper_interval_seconds=0.2,
                    trusted_publisher_keys=[signing.public_key_bytes(publisher_key)])
    config = ServerConfig(data_dir=data_dir, **{**settings, **overrides})
    return serve(config)


@pytest.fixture
def server(tmp_path, publisher_key):
    running = start_server(tmp_path / "server", publisher_key)
    yield running
    running.stop(grace=0)


@pytest.fixture
def admin(server):
    client = AdminClient(server.address, server.operator_token, timeout=10)
    yield client
    client.close()


@pytest.fixture
def device_channel(server):
    channel = grpc.insecure_channel(server.address)
    yield channel
    channel.close()


def device_stub(channel) -> fleet_pb2_grpc.DeviceServiceStub:
    return fleet_pb2_grpc.DeviceServiceStub(channel)


def enroll(admin: AdminClient, channel, labels=None, hostname="test-device") -> fleet_pb2.EnrollResponse:
    token = admin.create_enrollment_token(ttl=60, labels=labels or {}).token
    return device_stub(channel).Enroll(fleet_pb2.EnrollRequest(token=token, hostname=hostname), timeout=10)


def auth(credential: str):
    return (("authorization", f"Bearer {credential}"),)


class DeviceStream:
    """A device's Connect stream driven by a test: send AgentMessages, read ServerMessages."""

    def __init__(self, channel, credential: str) -> None:
        self._out: queue.Queue = queue.Queue()
        self.received: queue.Queue = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self._call = device_stub(channel).Connect(self._requests(), metadata=auth(credential), timeout=60)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self):
        while True:
            item = self._out.get()
            if item is None:
                return
            yield item

    def _read(self) -> None:
        try:
            for message in self._call:
                self.received.put(message)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    def send(self, **kind) -> None:
        self._out.put(fleet_pb2.AgentMessage(**kind))

    def next(self, kind: str, timeout: float = 10.0):
        """The next received message of `kind` ("desired" or "ack"); others are skipped."""
        import time
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind} message within {timeout} s")
            try:
                message = self.received.get(timeout=left)
            except queue.Empty:
                continue
            if message.WhichOneof("kind") == kind:
                return getattr(message, kind)

    def close(self) -> None:
        self._out.put(None)
        self._call.cancel()
        self._reader.join(timeout=5)


# -- databases -------------------------------------------------------------------------
def _postgres_database():
    """Create a fresh database for one test; yields its SQLAlchemy URL, drops it after."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {exc}")
    name = f"edgefleet_test_{secrets.token_hex(6)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def pg_url():
    yield from _postgres_database()


def store_lock_is_free(db_url: str) -> bool:
    """Whether another session could take the artifact store lock right now; never waits."""
    if db_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")     # what the store lock is on SQLite: the write lock
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            return False
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql"), connect_timeout=3) as conn:
        try:
            conn.execute("SELECT id FROM artifact_store_lock WHERE id = 1 FOR UPDATE NOWAIT")
            return True
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            conn.rollback()
