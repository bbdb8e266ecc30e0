"""The content-addressed store: nothing half-written is visible; corruption is caught per chunk."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from server.artifacts import (CHUNK_SIZE, TEMP_ABANDONED_SECONDS, ArtifactCorrupted, ArtifactMismatch,
                              ArtifactMissing, ArtifactStore)

DEADLINE = 30.0          # hang guard for waits, not a speed assertion


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "artifacts")


def _age(path, seconds: float) -> None:
    """Make `path` look untouched for `seconds`."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def _wait_until(predicate, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} not within {DEADLINE} s")
        time.sleep(0.02)


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
    _age(upload.tmp_path, TEMP_ABANDONED_SECONDS + 60)      # and nothing touches it any more
    ArtifactStore(tmp_path / "a")
    assert list(store.dir.iterdir()) == []
    upload.abort()


def test_only_abandoned_temp_files_are_removed_on_open(tmp_path):
    """Another replica's store directory: temp files touched within TEMP_ABANDONED_SECONDS may be
    live uploads and stay; older ones (data and sidecar temps alike) go."""
    store = ArtifactStore(tmp_path / "a")
    ages = {".tmp-000000000000-fresh": 0, ".tmp-111111111111-recent": TEMP_ABANDONED_SECONDS - 120,
            ".tmp-222222222222-old": TEMP_ABANDONED_SECONDS + 120,
            ".tmp-333333333333-old.chunks": TEMP_ABANDONED_SECONDS + 120,
            ".tmp-444444444444-ancient": 30 * 24 * 3600}
    for name, age in ages.items():
        (store.dir / name).write_bytes(b"partial upload")
        _age(store.dir / name, age)
    kept = _put(store, os.urandom(1000))
    _age(store.path(kept), 30 * 24 * 3600)         # stored artifacts are no temp files, whatever their age
    again = ArtifactStore(tmp_path / "a")
    assert sorted(p.name for p in again.dir.iterdir() if p.name.startswith(".tmp-")) == \
        [".tmp-000000000000-fresh", ".tmp-111111111111-recent"]
    assert again.has(kept)


def test_a_live_upload_keeps_its_temp_files_fresh_until_it_ends(tmp_path):
    """A bundle's first file is received long before its last, and a finished file waits for
    the store lock: no chunk touches it meanwhile, the keeper does. Another replica opening the
    same directory (or sweeping it) must leave both uploads alone, and both must complete."""
    store = ArtifactStore(tmp_path / "a", touch_interval_seconds=0.05)
    first_data, second_data = os.urandom(CHUNK_SIZE + 5), os.urandom(4000)
    first = store.begin(_digest(first_data), len(first_data))
    first.write(first_data)
    first.finish()                                  # whole and closed: waits for the rest
    second = store.begin(_digest(second_data), len(second_data))
    second.write(second_data[:1000])                # half-way
    for upload in (first, second):
        _age(upload.tmp_path, 2 * TEMP_ABANDONED_SECONDS)   # as if untouched for two hours
    _wait_until(lambda: all(time.time() - u.tmp_path.stat().st_mtime < TEMP_ABANDONED_SECONDS
                            for u in (first, second)), "the keeper's touch")
    other = ArtifactStore(tmp_path / "a")           # another replica starts
    assert other.remove_except(set()) == {}         # and sweeps
    assert first.tmp_path.exists() and second.tmp_path.exists()
    second.write(second_data[1000:])
    assert first.commit() and second.commit()
    for digest, data in ((first.digest, first_data), (second.digest, second_data)):
        assert b"".join(d for _, d in other.read_chunks(digest)) == data
    assert [p for p in store.dir.iterdir() if p.name.startswith(".tmp-")] == []
    _wait_until(lambda: store._keeper is None, "the keeper's end once no upload is left")


def test_a_store_never_deletes_its_own_live_upload_however_old_it_looks(store):
    upload = store.begin(_digest(b"slow"), 4)
    upload.write(b"sl")
    _age(upload.tmp_path, 2 * TEMP_ABANDONED_SECONDS)      # e.g. a clock that jumped forward
    assert store.remove_abandoned_temp_files() == [] and store.remove_except(set()) == {}
    upload.write(b"ow")
    assert upload.commit() and store.has(upload.digest)


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
    abandoned = store.dir / ".tmp-555555555555-crashed"
    abandoned.write_bytes(b"half an upload whose server died")
    _age(abandoned, TEMP_ABANDONED_SECONDS + 60)
    assert store.remove_except({kept}) == {orphan: len(data), half: 0}    # temp files are not counted
    assert sorted(p.name for p in store.dir.iterdir() if not p.name.startswith(".tmp-")) == \
        sorted([store.path(kept).name, store.sidecar_path(kept).name])
    assert in_flight.tmp_path.exists() and not abandoned.exists()
    assert store.remove_except({kept}) == {}
    in_flight.abort()
