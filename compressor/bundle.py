"""Write and read a signed variant bundle (the folder format of proto/manifest.py).

Writing is atomic: everything goes into a temporary sibling folder (files fsynced), which is
renamed onto `out_dir` at the end. A crash leaves either the old bundle or the new one,
never a mix; a leftover temp folder is ignored by readers and removed by the next write.
Variant files that deflate well (sparse ones) are stored deflated; `read_bundle` gives back
the ONNX bytes either way.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import tempfile
import zlib
from dataclasses import dataclass

from proto import signing
from proto.manifest import ZLIB_SUFFIX, Manifest, ManifestError, decode_variant, sha256_digest

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
PUBLIC_KEY_FILE = "publisher.pub"


def _write(path: pathlib.Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bundle(out_dir: str | os.PathLike, manifest: Manifest, files: dict[str, bytes],
                 signing_key) -> str:
    """Write manifest, signature, public key and every variant file; return the bundle id.

    `files` maps each variant's file name to its ONNX bytes; digests and sizes must match the
    manifest (checked here, so a wrong bundle is never written). Files that deflate well are
    stored deflated (deflate_where_it_pays): the manifest written, and so the bundle id, is
    that stored form.
    """
    out = pathlib.Path(out_dir)
    for v in manifest.variants:
        blob = files.get(v.file)
        if blob is None:
            raise ManifestError(f"variant {v.id}: no bytes given for {v.file}")
        if sha256_digest(blob) != v.digest or len(blob) != v.size_bytes:
            raise ManifestError(f"variant {v.id}: digest/size of {v.file} do not match the manifest")
    manifest, files = deflate_where_it_pays(manifest, files)
    data = manifest.to_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for v in manifest.variants:
            _write(tmp / v.file, files[v.file])
        _write(tmp / MANIFEST_FILE, data)
        _write(tmp / SIGNATURE_FILE, signing.sign(data, signing_key))
        _write(tmp / PUBLIC_KEY_FILE, signing.public_key_bytes(signing_key))
        os.chmod(tmp, 0o755)
        if out.exists():
            # rename the old bundle away first: os.replace cannot replace a non-empty folder
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "bundle")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        dir_fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _bundle_id(data)


# Deflate a variant file only when that leaves at most this fraction of it: sparse variants
# (their zeros) qualify, dense int8/fp32 weights (~0.9) do not and stay loadable as they are.
DEFLATE_MAX_RATIO = 0.8


def deflate_where_it_pays(manifest: Manifest, files: dict[str, bytes]) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and files to store: each variant deflated (encoding "zlib", file
    "<name>.onnx.zlib") where that shrinks it to DEFLATE_MAX_RATIO or less, as is otherwise."""
    variants, stored = [], {}
    for v in manifest.variants:
        blob = files[v.file]
        packed = None if v.encoding else _deflated(blob)
        if packed is None:
            variants.append(v)
            stored[v.file] = blob
            continue
        d = dataclasses.replace(v, file=v.file + ZLIB_SUFFIX, digest=sha256_digest(packed), size_bytes=len(packed),
                                encoding="zlib", decoded_size=len(blob), decoded_digest=v.digest)
        variants.append(d)
        stored[d.file] = packed
    return dataclasses.replace(manifest, variants=tuple(variants)), stored


def _deflated(blob: bytes) -> bytes | None:
    packed = zlib.compress(blob, 6)
    return packed if len(packed) <= DEFLATE_MAX_RATIO * len(blob) else None


def stored_size(onnx_bytes: bytes) -> int:
    """Bytes a variant file takes in a bundle (and on the wire to each device)."""
    packed = _deflated(onnx_bytes)
    return len(onnx_bytes) if packed is None else len(packed)


def _bundle_id(data: bytes) -> str:
    from proto.manifest import bundle_id_of
    return bundle_id_of(data)


@dataclass(frozen=True)
class LoadedBundle:
    manifest: Manifest               # as stored (some variants may be deflated)
    manifest_bytes: bytes
    bundle_id: str
    publisher_key: bytes
    files: dict[str, bytes]          # ONNX file name (Variant.model_file) -> ONNX bytes, verified


def read_bundle(bundle_dir: str | os.PathLike,
                trusted_keys: list[bytes] | None = None) -> LoadedBundle:
    """Verify the signature (under `trusted_keys`, or the bundle's own key if None) and every
    file's size and digest; raise ManifestError on any mismatch."""
    d = pathlib.Path(bundle_dir)
    data = (d / MANIFEST_FILE).read_bytes()
    sig = (d / SIGNATURE_FILE).read_bytes()
    pub = (d / PUBLIC_KEY_FILE).read_bytes()
    manifest = signing.verify(data, sig, pub, trusted_keys if trusted_keys is not None else [pub])
    files = {}
    for v in manifest.variants:
        blob = (d / v.file).read_bytes()
        if len(blob) != v.size_bytes or sha256_digest(blob) != v.digest:
            raise ManifestError(f"variant {v.id}: {v.file} does not match its digest")
        files[v.model_file] = decode_variant(v, blob)
    return LoadedBundle(manifest, data, _bundle_id(data), pub, files)
