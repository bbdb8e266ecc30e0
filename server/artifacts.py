"""Content-addressed artifact store: root/sha256/<hex>, plus a <hex>.chunks sidecar.

Writes go to a temp file in the same directory, are fsynced and checked against the
expected digest and size, and only then renamed into place (os.replace), so a half-written
upload never appears under its digest. The sidecar records the sha256 of every 256 KiB chunk,
so serving can notice bit rot or tampering on disk chunk by chunk and refuse to send it,
instead of streaming bad bytes the agent would only reject at the very end.

Files enter the store (`place`) and leave it (`remove_except`) only while the caller holds the
database's artifact store lock (server/db.py, "Artifact garbage collection"), so a file is never
deleted between an upload deciding to reuse it and the upload's rows referencing it.

Temp files and shared volumes. Several replicas may share one store directory (PostgreSQL, a
ReadWriteMany volume), so a temp file in it may be the live upload of another process, which no
replica can ask about. An upload therefore keeps the modification time of each of its temp files
fresh while it lives (a keeper thread touches them every TEMP_TOUCH_SECONDS, also while the
upload waits for the bundle's other files, for the client or for the store lock), and a temp
file untouched for TEMP_ABANDONED_SECONDS counts as abandoned: its server died mid-upload.
Opening the store (server start-up) and every remove_except delete only abandoned temp files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
import secrets
import threading
import time
from typing import Iterator

log = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TMP_PREFIX = ".tmp-"
# How often a live upload's temp files are touched (ArtifactStore's keeper thread).
TEMP_TOUCH_SECONDS = 60.0
# A temp file untouched this long is abandoned and may be deleted. 60 touch intervals: a keeper
# delayed by a slow or briefly hung shared filesystem, or replicas whose clocks (and the file
# server's, which stamps the times) are minutes apart, never make a live upload look abandoned;
# a crashed upload's leftover costs only its disk space for this long.
TEMP_ABANDONED_SECONDS = 3600.0


class ArtifactCorrupted(Exception):
    """The stored bytes no longer match what was verified at upload time."""

    def __init__(self, digest: str, offset: int, why: str = "") -> None:
        self.digest, self.offset = digest, offset
        super().__init__(f"artifact {digest} is corrupted at offset {offset}" + (f" ({why})" if why else ""))


class ArtifactMismatch(ValueError):
    """Uploaded bytes do not match the digest or size the manifest promised."""


class ArtifactMissing(LookupError):
    """A bundle reuses a stored file that is no longer in the store (garbage-collected)."""

    def __init__(self, digests: list[str]) -> None:
        self.digests = digests
        super().__init__(f"no data for {', '.join(digests)} (no longer stored; send the file)")


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PendingArtifact:
    """One upload in progress: bytes go to a temp file, chunk hashes are kept as they arrive."""

    def __init__(self, store: "ArtifactStore", digest: str, size: int) -> None:
        self.store, self.digest, self.size = store, digest, size
        self.tmp_path = store.dir / f"{_TMP_PREFIX}{digest[7:19]}-{secrets.token_hex(6)}"
        self._file = open(self.tmp_path, "wb")
        self._whole = hashlib.sha256()
        self._chunk = hashlib.sha256()
        self._chunk_len = 0
        self._chunk_hashes: list[str] = []
        self.received = 0
        self.existed_before = False
        self.published = False
        store._adopt(self)

    def write(self, data: bytes) -> None:
        if self.received + len(data) > self.size:
            raise ArtifactMismatch(f"{self.digest}: more than the {self.size} bytes the manifest declares")
        self._file.write(data)
        self._whole.update(data)
        view = memoryview(data)
        while view:
            take = min(CHUNK_SIZE - self._chunk_len, len(view))
            self._chunk.update(view[:take])
            self._chunk_len += take
            view = view[take:]
            if self._chunk_len == CHUNK_SIZE:
                self._chunk_hashes.append(self._chunk.hexdigest())
                self._chunk, self._chunk_len = hashlib.sha256(), 0
        self.received += len(data)

    def touch(self) -> None:
        """Mark the temp file as belonging to a live upload (module docstring)."""
        try:
            os.utime(self.tmp_path)
        except FileNotFoundError:
            if not self.published and self.store._owns(self):
                log.warning("upload temp file %s vanished; this upload of %s will fail", self.tmp_path, self.digest)
        except OSError as exc:
            log.warning("cannot touch upload temp file %s: %s", self.tmp_path, exc)

    @property
    def complete(self) -> bool:
        return self.received == self.size

    def finish(self) -> None:
        """Flush to disk and check size and digest (raises ArtifactMismatch); nothing visible yet."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        if self.received != self.size:
            raise ArtifactMismatch(f"{self.digest}: received {self.received} of {self.size} bytes")
        actual = "sha256:" + self._whole.hexdigest()
        if actual != self.digest:
            raise ArtifactMismatch(f"file content is {actual}, manifest says {self.digest}")
        if self._chunk_len:
            self._chunk_hashes.append(self._chunk.hexdigest())
            self._chunk, self._chunk_len = hashlib.sha256(), 0

    def publish(self) -> bool:
        """Move a finished artifact into place. Returns True if the digest was not stored before.
        A second call does nothing (a retried database transaction places its files again)."""
        if self.published:
            return False
        final = self.store.path(self.digest)
        self.existed_before = final.exists()
        # Sidecar first: a data file is never visible without the hashes that guard it.
        sidecar = {"digest": self.digest, "size": self.size, "chunk_size": CHUNK_SIZE,
                   "chunks": self._chunk_hashes}
        side_tmp = self.tmp_path.with_name(self.tmp_path.name + ".chunks")
        with open(side_tmp, "w") as f:
            json.dump(sidecar, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(side_tmp, self.store.sidecar_path(self.digest))
        # Replacing an existing copy is harmless (same bytes) and repairs a corrupted one.
        self.store._release(self)            # from here on its keeper has nothing to touch
        os.replace(self.tmp_path, final)
        _fsync_dir(self.store.dir)
        self.store.forget(self.digest)
        self.published = True
        return not self.existed_before

    def commit(self) -> bool:
        self.finish()
        return self.publish()

    def abort(self) -> None:
        self.store._release(self)
        if not self._file.closed:
            self._file.close()
        for p in (self.tmp_path, self.tmp_path.with_name(self.tmp_path.name + ".chunks")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


class ArtifactStore:
    def __init__(self, root: str | os.PathLike, touch_interval_seconds: float = TEMP_TOUCH_SECONDS) -> None:
        self.root = pathlib.Path(root)
        self.dir = self.root / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.touch_interval_seconds = touch_interval_seconds
        self._sidecars: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._live: set[PendingArtifact] = set()        # uploads whose temp files the keeper touches
        self._live_lock = threading.Lock()
        self._keeper: threading.Thread | None = None    # runs while _live is not empty
        # Temp files of uploads cut short by a crash are garbage: nothing refers to them. Those of
        # uploads other replicas are writing into a shared directory are not (module docstring).
        self.remove_abandoned_temp_files()

    # -- temp files of uploads in progress ----------------------------------------------
    def _adopt(self, upload: PendingArtifact) -> None:
        with self._live_lock:
            self._live.add(upload)
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep_fresh, name="artifact-temp-keeper",
                                                daemon=True)
                self._keeper.start()

    def _release(self, upload: PendingArtifact) -> None:
        with self._live_lock:
            self._live.discard(upload)

    def _owns(self, upload: PendingArtifact) -> bool:
        with self._live_lock:
            return upload in self._live

    def _keep_fresh(self) -> None:
        """Touch every live upload's temp file each interval; end once none is left."""
        while True:
            time.sleep(self.touch_interval_seconds)
            with self._live_lock:
                live = list(self._live)
                if not live:
                    self._keeper = None      # the next upload starts a new keeper
                    return
            for upload in live:
                upload.touch()

    def remove_abandoned_temp_files(self, now: float | None = None) -> list[str]:
        """Delete the temp files no upload touched for TEMP_ABANDONED_SECONDS (never this store's
        own live ones); returns their names."""
        now = time.time() if now is None else now
        with self._live_lock:
            own = {u.tmp_path.name for u in self._live}
        removed = []
        for temp in sorted(self.dir.glob(_TMP_PREFIX + "*")):
            if temp.name.removesuffix(".chunks") in own:
                continue
            try:
                if now - temp.stat().st_mtime < TEMP_ABANDONED_SECONDS:
                    continue
                temp.unlink()
            except FileNotFoundError:
                continue                      # finished or removed meanwhile
            removed.append(temp.name)
        if removed:
            log.info("removed %d abandoned upload temp file(s): %s", len(removed), ", ".join(removed))
        return removed

    @staticmethod
    def _hex(digest: str) -> str:
        if not DIGEST_RE.match(digest):
            raise ValueError(f"digest {digest!r} is not sha256:<64 lowercase hex>")
        return digest[7:]

    def path(self, digest: str) -> pathlib.Path:
        return self.dir / self._hex(digest)

    def sidecar_path(self, digest: str) -> pathlib.Path:
        return self.dir / (self._hex(digest) + ".chunks")

    def relpath(self, digest: str) -> str:
        return f"sha256/{self._hex(digest)}"

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file() and self.sidecar_path(digest).is_file()

    def begin(self, digest: str, size: int) -> PendingArtifact:
        self._hex(digest)
        return PendingArtifact(self, digest, size)

    def remove(self, digest: str) -> None:
        for p in (self.path(digest), self.sidecar_path(digest)):
            p.unlink(missing_ok=True)
        self.forget(digest)

    def place(self, uploads: list[PendingArtifact], needed: set[str]) -> None:
        """Publish finished uploads and check that every other digest in `needed` is stored.
        Raises ArtifactMissing before publishing anything. Call it holding the store lock."""
        sent = {u.digest for u in uploads}
        gone = sorted(d for d in needed - sent if not self.has(d))
        if gone:
            raise ArtifactMissing(gone)
        for upload in uploads:
            upload.publish()

    def remove_except(self, keep: set[str]) -> dict[str, int]:
        """Delete every stored artifact (data file and sidecar) whose digest is not in `keep`;
        returns {digest: bytes freed}. Temp files of uploads in flight are left alone, abandoned
        ones deleted (not counted in the result). Call it holding the store lock."""
        self.remove_abandoned_temp_files()
        removed: dict[str, int] = {}
        for entry in sorted(self.dir.iterdir()):        # listed first: removal edits the directory
            hex_part = entry.name.removesuffix(".chunks")
            digest = "sha256:" + hex_part
            if entry.name.startswith(_TMP_PREFIX) or not DIGEST_RE.match(digest) or digest in keep:
                continue
            if digest not in removed:
                try:
                    removed[digest] = self.path(digest).stat().st_size
                except FileNotFoundError:
                    removed[digest] = 0          # a sidecar whose data file never arrived
                self.remove(digest)
        if removed:
            _fsync_dir(self.dir)
        return removed

    def forget(self, digest: str) -> None:
        with self._lock:
            self._sidecars.pop(digest, None)

    def _sidecar(self, digest: str) -> dict:
        with self._lock:
            cached = self._sidecars.get(digest)
        if cached is not None:
            return cached
        try:
            meta = json.loads(self.sidecar_path(digest).read_text())
            if meta["chunk_size"] != CHUNK_SIZE or meta["digest"] != digest:
                raise ValueError("sidecar does not describe this artifact")
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactCorrupted(digest, 0, f"chunk index unreadable: {exc}") from None
        with self._lock:
            self._sidecars[digest] = meta
        return meta

    def size(self, digest: str) -> int:
        return int(self._sidecar(digest)["size"])

    def read_chunks(self, digest: str, offset: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield (offset, data) from `offset` to the end, each piece checked against the
        chunk index before it leaves. The first piece is the tail of the aligned chunk that
        holds `offset`, so later pieces line up with the index. Raises ArtifactCorrupted."""
        meta = self._sidecar(digest)
        size, hashes = int(meta["size"]), meta["chunks"]
        if not 0 <= offset <= size:
            raise ValueError(f"offset {offset} outside 0..{size}")
        try:
            f = open(self.path(digest), "rb")
        except FileNotFoundError:
            raise ArtifactCorrupted(digest, 0, "file is missing") from None
        with f:
            on_disk = os.fstat(f.fileno()).st_size
            if on_disk != size:
                raise ArtifactCorrupted(digest, min(on_disk, size), f"file is {on_disk} bytes, expected {size}")
            index = offset // CHUNK_SIZE
            f.seek(index * CHUNK_SIZE)
            while index * CHUNK_SIZE < size:
                start = index * CHUNK_SIZE
                block = f.read(min(CHUNK_SIZE, size - start))
                if index >= len(hashes) or hashlib.sha256(block).hexdigest() != hashes[index]:
                    raise ArtifactCorrupted(digest, start)
                skip = max(offset - start, 0)
                if skip < len(block):
                    yield start + skip, block[skip:]
                index += 1
