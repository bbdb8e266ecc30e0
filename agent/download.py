"""Resumable, verified artifact download: Download(digest, offset) into downloads/<hex>.part.

Every chunk's sha256 is checked before it is appended (and fsync'd), so the part file's
length is always the resume point. When the file is complete its whole sha256 and size are
checked against the manifest, and only then is it renamed into artifacts/sha256/<hex>.
A corrupt chunk or a final mismatch deletes the part file: nothing unverified survives.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import threading
from typing import Callable

import grpc

from agent.fsutil import fsync_dir
from proto import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

# Transfer errors worth resuming from the part file; anything else fails the deployment.
_RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

_HASH_BLOCK = 1 << 20


class DownloadError(RuntimeError):
    """The artifact cannot be fetched or does not verify. `permanent` = retrying won't help."""

    def __init__(self, message: str, permanent: bool = True):
        super().__init__(message)
        self.permanent = permanent


class DownloadCancelled(RuntimeError):
    """A newer desired state arrived; the part file is kept for a later resume."""


def digest_hex(digest: str) -> str:
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise DownloadError(f"unsupported digest {digest!r}")
    return digest[len("sha256:"):]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


class Downloader:
    """Fetches artifacts by digest into an ArtifactStore-style layout under data_dir.

    `progress(digest, bytes_done, total)` is called after each verified chunk.
    `max_resumes` bounds the attempts inside one fetch after a dropped stream; a longer
    outage fails the fetch as transient and the next desired state resumes from the part.
    """

    def __init__(self, stub: fleet_pb2_grpc.DeviceServiceStub, metadata, data_dir: str | os.PathLike, *,
                 deadline: float = 300.0, max_resumes: int = 5, retry_delay: float = 0.5,
                 progress: Callable[[str, int, int], None] | None = None,
                 cancelled: threading.Event | None = None):
        self.stub = stub
        self.metadata = metadata
        self.data_dir = pathlib.Path(data_dir)
        self.artifacts = self.data_dir / "artifacts" / "sha256"
        self.downloads = self.data_dir / "downloads"
        self.deadline = deadline
        self.max_resumes = max_resumes
        self.retry_delay = retry_delay
        self.progress = progress
        self.cancelled = cancelled or threading.Event()
        self.bytes_received = 0          # cumulative, for metrics

    def artifact_path(self, digest: str) -> pathlib.Path:
        return self.artifacts / digest_hex(digest)

    def part_path(self, digest: str) -> pathlib.Path:
        return self.downloads / f"{digest_hex(digest)}.part"

    def fetch(self, digest: str, size: int) -> pathlib.Path:
        """Return the path of the verified artifact, downloading what is missing."""
        final = self.artifact_path(digest)
        if final.exists():
            return final
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.downloads.mkdir(parents=True, exist_ok=True)
        part = self.part_path(digest)
        resumes = 0
        while True:
            offset = part.stat().st_size if part.exists() else 0
            if offset > size:
                log.warning("part file %s is longer than the artifact; starting over", part.name)
                part.unlink()
                offset = 0
            if offset < size:
                if offset:
                    log.info("resuming %s at byte %d of %d", digest, offset, size)
                try:
                    self._transfer(digest, size, part, offset)
                except grpc.RpcError as exc:
                    code = exc.code()
                    if code not in _RESUMABLE:
                        if code in (grpc.StatusCode.DATA_LOSS, grpc.StatusCode.NOT_FOUND):
                            part.unlink(missing_ok=True)
                        raise DownloadError(f"download of {digest} refused: {code.name}: {exc.details()}",
                                            permanent=code != grpc.StatusCode.UNAUTHENTICATED) from None
                    resumes += 1
                    if resumes > self.max_resumes:
                        raise DownloadError(f"download of {digest} interrupted {resumes} times "
                                            f"({code.name}); will resume later", permanent=False) from None
                    log.warning("download of %s interrupted (%s); resuming", digest, code.name)
                    if self.cancelled.wait(self.retry_delay * resumes):
                        raise DownloadCancelled(digest) from None
                    continue
                continue          # re-read the part length: loop ends when offset == size
            return self._finish(digest, size, part, final)

    def _transfer(self, digest: str, size: int, part: pathlib.Path, offset: int) -> None:
        request = fleet_pb2.DownloadRequest(digest=digest, offset=offset)
        call = self.stub.Download(request, metadata=self.metadata, timeout=self.deadline)
        try:
            with open(part, "ab") as f:
                for chunk in call:
                    if self.cancelled.is_set():
                        raise DownloadCancelled(digest)
                    self._check_chunk(digest, size, part, offset, chunk)
                    f.write(chunk.data)
                    f.flush()
                    os.fsync(f.fileno())
                    offset += len(chunk.data)
                    self.bytes_received += len(chunk.data)
                    if self.progress:
                        self.progress(digest, offset, size)
                    if offset == size:
                        break
        finally:
            call.cancel()
        if offset < size:
            # The server ended the stream early without an error: treat as a drop.
            raise _EarlyEnd(digest, offset, size)

    def _check_chunk(self, digest, size, part, offset, chunk) -> None:
        problem = None
        if chunk.offset != offset:
            problem = f"chunk at offset {chunk.offset}, expected {offset}"
        elif chunk.total_size and chunk.total_size != size:
            problem = f"server says {chunk.total_size} bytes, manifest says {size}"
        elif hashlib.sha256(chunk.data).hexdigest() != chunk.sha256:
            problem = f"chunk at offset {offset} fails its sha256 check (corrupted in transit)"
        elif offset + len(chunk.data) > size:
            problem = f"chunk at offset {offset} runs past the manifest size {size}"
        if problem:
            part.unlink(missing_ok=True)
            raise DownloadError(f"download of {digest}: {problem}; part file discarded")

    def _finish(self, digest: str, size: int, part: pathlib.Path, final: pathlib.Path) -> pathlib.Path:
        actual_size = part.stat().st_size
        actual = file_sha256(part)
        if actual_size != size or "sha256:" + actual != digest:
            part.unlink(missing_ok=True)
            raise DownloadError(f"downloaded file does not match the manifest: got sha256:{actual} "
                                f"({actual_size} bytes), expected {digest} ({size} bytes); discarded")
        os.replace(part, final)
        fsync_dir(final.parent)
        log.info("artifact %s verified (%d bytes)", digest, size)
        return final


class _EarlyEnd(grpc.RpcError):
    """A stream that ended cleanly before the last byte: resumable like UNAVAILABLE."""

    def __init__(self, digest: str, offset: int, size: int):
        super().__init__(f"{digest}: stream ended at {offset} of {size}")
        self._details = f"stream ended at byte {offset} of {size}"

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return self._details
