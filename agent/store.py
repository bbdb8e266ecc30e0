"""On-disk bundle store and the atomic active pointer.

    data_dir/
      artifacts/sha256/<hex>        verified variant files, content-addressed (immutable)
      downloads/<hex>.part          downloads in progress (resume point = file length)
      bundles/<bundle_id>/          manifest.json, manifest.sig, publisher.pub, <variant files>
      current.json                  {"bundle_id", "deployment_id", ...}: the active bundle
      profiles/<bundle_id>.json     on-device benchmarks (agent.profiling)

A bundle folder is built under a temp name and renamed into place only when complete, and
is never modified afterwards; the active pointer is switched by one atomic rename. So a
process killed at any instant leaves current.json naming a complete bundle (old or new).
On start, `recover()` removes stray temp files and re-verifies the active bundle's digests.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import time
from dataclasses import dataclass

from agent.download import digest_hex, file_sha256
from agent.fsutil import atomic_write_bytes, atomic_write_json, fsync_dir, is_temp_name, TMP_MARKER
from proto import signing
from proto.manifest import Manifest, ManifestError, bundle_id_of, decode_variant

log = logging.getLogger(__name__)

CURRENT_FILE = "current.json"


class StoreError(RuntimeError):
    """A bundle that cannot be installed or no longer verifies."""


@dataclass(frozen=True)
class InstalledBundle:
    bundle_id: str
    deployment_id: str
    path: pathlib.Path
    manifest: Manifest

    def variant_path(self, variant_id: str) -> pathlib.Path:
        return self.path / self.manifest.variant(variant_id).model_file


class Store:
    def __init__(self, data_dir: str | os.PathLike):
        self.root = pathlib.Path(data_dir)
        self.artifacts = self.root / "artifacts" / "sha256"
        self.downloads = self.root / "downloads"
        self.bundles = self.root / "bundles"
        self.profiles = self.root / "profiles"
        for d in (self.artifacts, self.downloads, self.bundles, self.profiles):
            d.mkdir(parents=True, exist_ok=True)

    # -- start-up -----------------------------------------------------------------------
    def clean_temp(self) -> list[pathlib.Path]:
        """Delete what a killed process left half-written (never .part files: they resume)."""
        removed = []
        for folder in (self.root, self.artifacts, self.bundles, self.profiles, self.downloads):
            for entry in folder.iterdir():
                if is_temp_name(entry.name):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    removed.append(entry)
        if removed:
            log.info("removed %d stray temp file(s): %s", len(removed), ", ".join(p.name for p in removed))
        return removed

    def recover(self, trusted_keys) -> InstalledBundle | None:
        """Clean temp files, then return the active bundle if it still verifies."""
        self.clean_temp()
        pointer = self.read_current()
        if pointer is None:
            return None
        try:
            return self.verify_bundle(pointer["bundle_id"], pointer.get("deployment_id", ""), trusted_keys)
        except StoreError as exc:
            log.error("active bundle %s failed verification on start (%s); serving nothing until "
                      "the server sends it again", pointer["bundle_id"], exc)
            # Its files may be what is corrupted: forget the pointer so nothing runs on them.
            (self.root / CURRENT_FILE).unlink(missing_ok=True)
            return None

    def read_current(self) -> dict | None:
        path = self.root / CURRENT_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("unreadable %s (%s); ignoring it", path, exc)
            return None
        if not isinstance(raw, dict) or not isinstance(raw.get("bundle_id"), str):
            return None
        return raw

    # -- verification -------------------------------------------------------------------
    def verify_bundle(self, bundle_id: str, deployment_id: str, trusted_keys) -> InstalledBundle:
        folder = self.bundles / bundle_id
        try:
            manifest_bytes = (folder / "manifest.json").read_bytes()
            signature = (folder / "manifest.sig").read_bytes()
            publisher = (folder / "publisher.pub").read_bytes()
        except OSError as exc:
            raise StoreError(f"bundle {bundle_id} is incomplete: {exc}") from None
        if bundle_id_of(manifest_bytes) != bundle_id:
            raise StoreError(f"bundle {bundle_id}: manifest.json does not hash to its id")
        try:
            manifest = signing.verify(manifest_bytes, signature, publisher, trusted_keys)
        except ManifestError as exc:
            raise StoreError(f"bundle {bundle_id}: {exc}") from None
        for v in manifest.variants:
            # the installed ONNX file: a deflated variant was inflated at staging
            path = folder / v.model_file
            digest = v.decoded_digest if v.encoding else v.digest
            try:
                size = path.stat().st_size
            except OSError:
                raise StoreError(f"bundle {bundle_id}: variant file {v.model_file} is missing") from None
            if size != v.model_size or "sha256:" + file_sha256(path) != digest:
                raise StoreError(f"bundle {bundle_id}: variant file {v.model_file} does not match its digest")
        return InstalledBundle(bundle_id, deployment_id, folder, manifest)

    def has_artifact(self, digest: str) -> bool:
        return (self.artifacts / digest_hex(digest)).exists()

    def verify_artifact(self, digest: str, size: int) -> bool:
        """Hash a stored artifact; a mismatching one is deleted so it gets downloaded again."""
        path = self.artifacts / digest_hex(digest)
        try:
            ok = path.stat().st_size == size and "sha256:" + file_sha256(path) == digest
        except OSError:
            return False
        if not ok:
            log.error("stored artifact %s is corrupted; deleting it", digest)
            path.unlink(missing_ok=True)
        return ok

    # -- install ------------------------------------------------------------------------
    def install(self, manifest_bytes: bytes, signature: bytes, publisher_key: bytes,
                manifest: Manifest, deployment_id: str) -> InstalledBundle:
        """Stage the bundle folder, then make it active (callers that need to load it first
        call `stage` and `set_current` themselves)."""
        bundle = self.stage(manifest_bytes, signature, publisher_key, manifest, deployment_id)
        self.set_current(bundle.bundle_id, deployment_id)
        log.info("bundle %s installed and active (deployment %s)", bundle.bundle_id[:12], deployment_id)
        return bundle

    def stage(self, manifest_bytes: bytes, signature: bytes, publisher_key: bytes,
              manifest: Manifest, deployment_id: str) -> InstalledBundle:
        """Build bundles/<id>/ from verified artifacts under a temp name, then rename it into
        place. Does not touch current.json. Callers have verified the signature and every
        artifact's digest already.
        """
        bundle_id = bundle_id_of(manifest_bytes)
        final = self.bundles / bundle_id
        active = self.read_current()
        if active and active.get("bundle_id") == bundle_id and final.is_dir():
            return InstalledBundle(bundle_id, deployment_id, final, manifest)   # never rebuild the live one
        tmp = self.bundles / f".{bundle_id}{TMP_MARKER}{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            self._write_bundle_dir(tmp, manifest_bytes, signature, publisher_key, manifest)
            if final.exists():
                # A leftover, inactive copy (an earlier install, or one staged before a crash).
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.bundles)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return InstalledBundle(bundle_id, deployment_id, final, manifest)

    def _write_bundle_dir(self, folder: pathlib.Path, manifest_bytes: bytes, signature: bytes,
                          publisher_key: bytes, manifest: Manifest) -> None:
        atomic_write_bytes(folder / "manifest.json", manifest_bytes)
        atomic_write_bytes(folder / "manifest.sig", signature)
        atomic_write_bytes(folder / "publisher.pub", publisher_key)
        for v in manifest.variants:
            src = self.artifacts / digest_hex(v.digest)
            dst = folder / v.model_file
            if v.encoding:                   # deflated for the transfer: install the ONNX file
                try:
                    atomic_write_bytes(dst, decode_variant(v, src.read_bytes()))
                except ManifestError as exc:
                    raise StoreError(str(exc)) from None
                continue
            try:
                os.link(src, dst)            # same file system: no copy, no extra space
            except OSError:
                shutil.copyfile(src, dst)
                with open(dst, "rb+") as f:
                    os.fsync(f.fileno())
        fsync_dir(folder)

    def set_current(self, bundle_id: str, deployment_id: str) -> None:
        previous = self.read_current()
        record = {"bundle_id": bundle_id, "deployment_id": deployment_id, "activated_unix": time.time()}
        if previous and previous.get("bundle_id") != bundle_id:
            record["previous_bundle_id"] = previous["bundle_id"]
        elif previous and previous.get("previous_bundle_id"):
            record["previous_bundle_id"] = previous["previous_bundle_id"]
        atomic_write_json(self.root / CURRENT_FILE, record)

    # -- housekeeping -------------------------------------------------------------------
    def gc(self) -> None:
        """Keep the active and the previous bundle; drop other bundles and unused artifacts."""
        pointer = self.read_current() or {}
        keep = {pointer.get("bundle_id"), pointer.get("previous_bundle_id")} - {None}
        used: set[str] = set()
        for entry in self.bundles.iterdir():
            if is_temp_name(entry.name):
                continue
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
                (self.profiles / f"{entry.name}.json").unlink(missing_ok=True)
                continue
            try:
                m = Manifest.from_bytes((entry / "manifest.json").read_bytes())
                used.update(digest_hex(v.digest) for v in m.variants)
            except (OSError, ManifestError):
                pass
        for artifact in self.artifacts.iterdir():
            if not is_temp_name(artifact.name) and artifact.name not in used:
                artifact.unlink(missing_ok=True)
