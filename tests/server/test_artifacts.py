"""The content-addressed store: nothing half-written is visible; corruption is caught per chunk."""

from __future__ import annotations

import hashlib
import os

import pytest

from server.artifacts import CHUNK_SIZE, ArtifactCorrupted, ArtifactMismatch, ArtifactMissing, ArtifactStore


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "artifacts")


def _put(store, data: bytes, piece: int = 100_000) -> str:
    digest = _digest(data)
    upload = store.begin(digest, len(data))
    for i in range(0, len(data), piece):
        upload.write(data[i:i + piece])
    assert upload.commit()
    return digest


def test_roundtrip_and_resume(store):
    data = os.urandom(2 * CHUNK_SIZE + 777)
    digest = _put(store, data)
    assert store.has(digest) and store.size(digest) == len(data)
    assert b"".join(d for _, d in store.read_chunks(digest)) == data
    for offset in (1, CHUNK_SIZE, CHUNK_SIZE + 5, len(data) - 1):
        pieces = list(store.read_chunks(digest, offset))
        assert pieces[0][0] == offset
        assert b"".join(d for _, d in pieces) == data[offset:]
    assert list(store.read_chunks(digest, len(data))) == []
    with pytest.raises(ValueError):
        list(store.read_chunks(digest, len(data) + 1))


def test_wrong_digest_never_becomes_visible(store):
    data = os.urandom(5000)
    wrong = _digest(b"something else")
    upload = store.begin(wrong, len(data))
    upload.write(data)
    with pytest.raises(ArtifactMismatch, match="manifest says"):
        upload.commit()
    upload.abort()
    assert not store.has(wrong)
    assert os.listdir(store.dir) == []


def test_oversize_write_is_refused(store):
    upload = store.begin(_digest(b"abc"), 3)
    with pytest.raises(ArtifactMismatch):
        upload.write(b"abcd")
    upload.abort()
    assert os.listdir(store.dir) == []


def test_stale_temp_files_are_removed_on_open(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    upload = store.begin(_digest(b"x"), 1)     # a crash mid-upload leaves this behind
    assert any(p.name.startswith(".tmp-") for p in store.dir.iterdir())
    ArtifactStore(tmp_path / "a")
    assert list(store.dir.iterdir()) == []
    upload.abort()


def test_corruption_is_reported_with_its_offset(store):
    data = os.urandom(3 * CHUNK_SIZE)
    digest = _put(store, data)
    with open(store.path(digest), "r+b") as f:
        f.seek(CHUNK_SIZE * 2 + 10)
        f.write(bytes([data[CHUNK_SIZE * 2 + 10] ^ 0xFF]))
    pieces = store.read_chunks(digest)
    assert next(pieces)[0] == 0 and next(pieces)[0] == CHUNK_SIZE   # good chunks still flow
    with pytest.raises(ArtifactCorrupted, match=f"corrupted at offset {2 * CHUNK_SIZE}"):
        next(pieces)


def test_truncated_file_is_corrupted(store):
    data = os.urandom(CHUNK_SIZE + 10)
    digest = _put(store, data)
    with open(store.path(digest), "r+b") as f:
        f.truncate(100)
    with pytest.raises(ArtifactCorrupted):
        list(store.read_chunks(digest))


def test_place_refuses_before_publishing_when_a_reused_file_is_gone(store):
    kept = _put(store, os.urandom(1000))
    data = os.urandom(2000)
    upload = store.begin(_digest(data), len(data))
    upload.write(data)
    upload.finish()
    gone = _digest(b"collected meanwhile")
    with pytest.raises(ArtifactMissing) as info:
        store.place([upload], {kept, upload.digest, gone})
    assert info.value.digests == [gone]
    assert not store.has(upload.digest)             # nothing of the refused bundle appeared
    store.place([upload], {kept, upload.digest})
    store.place([upload], {kept, upload.digest})     # a retried transaction places it again
    assert store.has(upload.digest) and store.has(kept)


def test_remove_except_keeps_what_is_referenced_and_in_flight(store):
    kept = _put(store, os.urandom(CHUNK_SIZE + 1))
    data = os.urandom(3000)
    orphan = _put(store, data)
    half = _digest(b"crashed between its sidecar and its data file")
    store.sidecar_path(half).write_text("{}")
    in_flight = store.begin(_digest(b"uploading"), 9)
    in_flight.write(b"uploading")
    assert store.remove_except({kept}) == {orphan: len(data), half: 0}
    assert sorted(p.name for p in store.dir.iterdir() if not p.name.startswith(".tmp-")) == \
        sorted([store.path(kept).name, store.sidecar_path(kept).name])
    assert in_flight.tmp_path.exists()
    assert store.remove_except({kept}) == {}
    in_flight.abort()
