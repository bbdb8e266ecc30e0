"""Ed25519 signatures on bundle manifests (via `cryptography`).

The publisher (whoever runs the compressor) holds a private key; the server and every
agent hold the public keys they trust. A manifest is accepted only if its signature
verifies under one of those keys, and only then are its digests used to check files.
"""

from __future__ import annotations

import os
import pathlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from proto.manifest import Manifest, ManifestError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: str | os.PathLike) -> None:
    """Write a PKCS#8 PEM readable only by its owner (temp file + rename: never half-written)."""
    path = pathlib.Path(path)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pathlib.Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_or_create_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    path = pathlib.Path(path)
    if path.exists():
        return load_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    save_private_key(key, path)
    return key


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    return key.sign(manifest_bytes)


def verify(manifest_bytes: bytes, signature: bytes, publisher_key: bytes,
           trusted_keys: list[bytes] | tuple[bytes, ...] | set[bytes]) -> Manifest:
    """Return the parsed manifest if `signature` verifies under `publisher_key` and that key
    is trusted; raise ManifestError otherwise (never returns an unverified manifest)."""
    if len(publisher_key) != PUBLIC_KEY_BYTES:
        raise ManifestError("publisher key must be 32 raw bytes")
    if publisher_key not in set(trusted_keys):
        raise ManifestError("bundle is signed by a key this side does not trust")
    if len(signature) != SIGNATURE_BYTES:
        raise ManifestError("signature must be 64 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(publisher_key).verify(signature, manifest_bytes)
    except InvalidSignature:
        raise ManifestError("manifest signature does not verify (tampered or wrong key)") from None
    return Manifest.from_bytes(manifest_bytes)
