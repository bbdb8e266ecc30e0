"""The variant bundle manifest: one JSON document that lists the variants of one model version.

A bundle on disk is a folder:

    manifest.json     canonical JSON (sorted keys, no spaces), the bytes that are signed
    manifest.sig      Ed25519 signature over manifest.json (64 raw bytes)
    publisher.pub     the raw 32-byte public key that signed it
    <variant files>   one ONNX file per variant, named in the manifest (no sub-folders);
                      "<name>.onnx.zlib" where the variant is stored deflated (ENCODINGS)

The bundle id is the sha256 hex of manifest.json; artifacts are addressed by
"sha256:<hex>" of their bytes. Producers (the compressor) build a `Manifest` and call
`to_bytes()`; consumers (server, agent) call `Manifest.from_bytes()`, which rejects anything
malformed with `ManifestError` before a single file is trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20          # a manifest is metadata; 1 MiB is generous
MAX_VARIANTS = 64

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.onnx$")

# How a variant file is stored and shipped. "" = the ONNX file itself; "zlib" = the ONNX file
# deflated (its name ends in ".onnx.zlib"), which the agent inflates when it installs the
# bundle. The compressor deflates a variant only where it pays: the zeros of a 75 %-sparse int8
# variant leave 0.4 of it, while the random-looking bytes of a dense int8 one leave 0.9.
ENCODINGS = ("", "zlib")
ZLIB_SUFFIX = ".zlib"

# Sparsity patterns a variant may declare.
SPARSITY_PATTERNS = ("none", "unstructured", "block", "2:4", "channel")


class ManifestError(ValueError):
    """A manifest that is malformed, inconsistent or does not verify."""


def sha256_digest(data: bytes) -> str:
    """Content address of a byte string, as used in manifests: "sha256:<hex>"."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def bundle_id_of(manifest_bytes: bytes) -> str:
    """A bundle is named by the sha256 hex of its exact manifest bytes."""
    return hashlib.sha256(manifest_bytes).hexdigest()


def decode_variant(v: "Variant", stored: bytes) -> bytes:
    """The ONNX bytes of a variant from its stored (already digest-checked) bytes. Inflates at
    most decoded_size + 1 bytes, so a crafted file cannot exhaust memory, and checks size and
    digest of the result: ManifestError on any mismatch."""
    if not v.encoding:
        return stored
    import zlib

    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(stored, v.decoded_size + 1)
    except zlib.error as exc:
        raise ManifestError(f"variant {v.id}: {v.file} does not inflate: {exc}") from None
    if len(data) != v.decoded_size or not inflater.eof or sha256_digest(data) != v.decoded_digest:
        raise ManifestError(f"variant {v.id}: {v.file} does not inflate to the ONNX file the manifest names")
    return data


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, shape (None/-1 for a dynamic axis), element type."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class LayerGroup:
    """Bits used for a group of layers, e.g. {"layers": "conv*", "weight_bits": 8, ...}."""

    layers: str
    weight_bits: int
    activation_bits: int


@dataclass(frozen=True)
class Variant:
    """One compressed form of the model, stored as one ONNX file.

    `quality` is the task metric on held-out data (or fidelity to fp32), higher is better,
    in the unit named by Manifest.quality_metric. `latency_*` and `memory_bytes` were
    measured with onnxruntime on the machine that compressed the model; agents measure again.
    """

    id: str
    file: str
    digest: str
    size_bytes: int
    method: str                         # e.g. "fp32", "ptq-static", "weight-only-int4"
    weight_bits: int                    # the widest weight width in the variant
    activation_bits: int
    quality: float
    latency_p50_seconds: float = 0.0
    latency_p95_seconds: float = 0.0
    memory_bytes: int = 0
    sparsity: float = 0.0
    sparsity_pattern: str = "none"
    parent: str | None = None           # id of the variant it was derived from
    layer_groups: tuple[LayerGroup, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)   # method-specific, informational
    # Storage (see ENCODINGS): file, digest and size_bytes describe the stored bytes; with an
    # encoding, decoded_* describe the ONNX file they inflate to.
    encoding: str = ""
    decoded_size: int = 0
    decoded_digest: str = ""

    @property
    def model_file(self) -> str:
        """Name of the ONNX file once installed (the stored name without the encoding suffix)."""
        return self.file[:-len(ZLIB_SUFFIX)] if self.encoding == "zlib" else self.file

    @property
    def model_size(self) -> int:
        """Bytes of the ONNX file itself."""
        return self.decoded_size if self.encoding else self.size_bytes

    @property
    def bits_label(self) -> str:
        """"w8a8", or with several weight widths all of them narrowest first: "w2/8a32" is 2-bit
        weights with some layers (here the edges) kept at 8 (`weight_bits` alone says 8)."""
        widths = sorted({g.weight_bits for g in self.layer_groups} | {self.weight_bits})
        return f"w{'/'.join(map(str, widths))}a{self.activation_bits}"

    @property
    def cost_rank_key(self) -> tuple[float, int]:
        """Cheaper first: measured latency, then size."""
        return (self.latency_p50_seconds, self.size_bytes)


@dataclass(frozen=True)
class Manifest:
    model: str
    version: str
    quality_metric: str                 # e.g. "accuracy" or "cosine_to_fp32"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    variants: tuple[Variant, ...]
    created_unix: float = 0.0
    format_version: int = FORMAT_VERSION
    description: str = ""

    # -- encoding ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_bytes(self) -> bytes:
        """Canonical JSON: the same manifest always gives the same bytes (and bundle id)."""
        self.validate()
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          allow_nan=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit")
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from None
        manifest = cls.from_dict(raw)
        manifest.validate()
        return manifest

    @classmethod
    def from_dict(cls, raw: Any) -> "Manifest":
        if not isinstance(raw, dict):
            raise ManifestError("manifest must be a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(f"unsupported manifest format_version {version!r} (expected {FORMAT_VERSION})")
        try:
            variants = tuple(
                Variant(**{**v, "layer_groups": tuple(LayerGroup(**g) for g in v.get("layer_groups", ()))})
                for v in raw["variants"])
            return cls(
                model=raw["model"], version=raw["version"], quality_metric=raw["quality_metric"],
                inputs=tuple(TensorSpec(t["name"], tuple(t["shape"]), t.get("dtype", "float32"))
                             for t in raw["inputs"]),
                outputs=tuple(TensorSpec(t["name"], tuple(t["shape"]), t.get("dtype", "float32"))
                              for t in raw["outputs"]),
                variants=variants,
                created_unix=raw.get("created_unix", 0.0),
                format_version=version,
                description=raw.get("description", ""),
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"manifest is missing or has a malformed field: {exc}") from None

    # -- checks -----------------------------------------------------------------------
    def validate(self) -> None:
        """Reject what a consumer must never act on: traversal in file names, bad digests,
        duplicate ids, impossible numbers."""
        if not self.model or not isinstance(self.model, str):
            raise ManifestError("manifest has no model name")
        if not self.variants:
            raise ManifestError("manifest lists no variants")
        if len(self.variants) > MAX_VARIANTS:
            raise ManifestError(f"manifest lists {len(self.variants)} variants, over {MAX_VARIANTS}")
        seen_ids: set[str] = set()
        seen_files: set[str] = set()
        for v in self.variants:
            if not isinstance(v.id, str) or not _ID_RE.match(v.id):
                raise ManifestError(f"variant id {v.id!r} must match {_ID_RE.pattern}")
            if v.id in seen_ids:
                raise ManifestError(f"duplicate variant id {v.id!r}")
            seen_ids.add(v.id)
            if v.encoding not in ENCODINGS:
                raise ManifestError(f"variant {v.id}: unknown encoding {v.encoding!r} (known: {ENCODINGS})")
            if not isinstance(v.file, str) or not _FILE_RE.match(v.model_file) or \
                    (v.encoding == "zlib") != v.file.endswith(ZLIB_SUFFIX):
                raise ManifestError(f"variant {v.id}: file name {v.file!r} must be a plain *.onnx name"
                                    " (*.onnx.zlib when deflated)")
            if v.encoding and (not isinstance(v.decoded_size, int) or v.decoded_size <= 0
                               or not isinstance(v.decoded_digest, str) or not _DIGEST_RE.match(v.decoded_digest)):
                raise ManifestError(f"variant {v.id}: an encoded file needs decoded_size and decoded_digest")
            if not v.encoding and (v.decoded_size or v.decoded_digest):
                raise ManifestError(f"variant {v.id}: decoded_size/decoded_digest without an encoding")
            if v.file in seen_files:
                raise ManifestError(f"variant {v.id}: file {v.file!r} listed twice")
            seen_files.add(v.file)
            if not isinstance(v.digest, str) or not _DIGEST_RE.match(v.digest):
                raise ManifestError(f"variant {v.id}: digest {v.digest!r} is not sha256:<64 hex>")
            if not isinstance(v.size_bytes, int) or v.size_bytes <= 0:
                raise ManifestError(f"variant {v.id}: size_bytes must be a positive integer")
            if v.weight_bits not in (2, 4, 8, 16, 32) or v.activation_bits not in (8, 16, 32):
                raise ManifestError(f"variant {v.id}: unsupported bits w{v.weight_bits}/a{v.activation_bits}")
            if not 0.0 <= float(v.sparsity) < 1.0:
                raise ManifestError(f"variant {v.id}: sparsity {v.sparsity} outside [0, 1)")
            if v.sparsity_pattern not in SPARSITY_PATTERNS:
                raise ManifestError(f"variant {v.id}: unknown sparsity pattern {v.sparsity_pattern!r}")
        for v in self.variants:
            if v.parent is not None and v.parent not in seen_ids:
                raise ManifestError(f"variant {v.id}: parent {v.parent!r} is not in the bundle")

    # -- lookups ----------------------------------------------------------------------
    def variant(self, variant_id: str) -> Variant:
        for v in self.variants:
            if v.id == variant_id:
                return v
        raise KeyError(variant_id)

    @property
    def total_bytes(self) -> int:
        return sum(v.size_bytes for v in self.variants)
