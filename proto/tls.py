"""gRPC TLS credentials from PEM files, for the server, the agent and the operator client.

Here (not in server/ or agent/) because all three need it and proto/ is what both sides may
import. Every file is read and parsed once, when the credentials are built, so a wrong path, a
file that is not PEM, an encrypted key or a key that belongs to another certificate stops the
start with the file's name, instead of surfacing later as grpc's bare "failed to connect" or
"handshake failed".
"""

from __future__ import annotations

import os
import pathlib

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

PathLike = str | os.PathLike


class TlsError(ValueError):
    """TLS options that cannot work together, or a TLS file that is missing, unreadable or not
    what it should be; the message names the option or the file."""


def check_client_certificate_options(ca_file: PathLike | None, cert_file: PathLike | None,
                                     key_file: PathLike | None) -> None:
    """The rule shared by the agent and the operator client: --tls-cert and --tls-key go
    together, and a client certificate is only ever sent over TLS, so it needs --tls-ca."""
    if (cert_file is None) != (key_file is None):
        raise TlsError("a client certificate needs both --tls-cert and --tls-key (or neither)")
    if cert_file is not None and ca_file is None:
        raise TlsError("--tls-cert/--tls-key need --tls-ca: a client certificate is only sent over TLS")


def read_certificates(path: PathLike, what: str = "certificate") -> bytes:
    """PEM bytes of `path`, checked to hold at least one X.509 certificate."""
    data = _read(path, what)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsError(f"{path}: not a PEM {what}") from None
    return data


def read_key_pair(cert_file: PathLike, key_file: PathLike) -> tuple[bytes, bytes]:
    """(certificate chain PEM, private key PEM); the key must be the chain's first certificate's."""
    chain = read_certificates(cert_file)
    key_pem = _read(key_file, "private key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:      # cryptography's way of saying "this key needs a password"
        raise TlsError(f"{key_file}: the private key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError(f"{key_file}: not a PEM private key") from None
    leaf = x509.load_pem_x509_certificates(chain)[0]
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TlsError(f"{key_file} is not the private key of the certificate in {cert_file}")
    return chain, key_pem


def channel_credentials(ca_file: PathLike, cert_file: PathLike | None = None,
                        key_file: PathLike | None = None) -> grpc.ChannelCredentials:
    """TLS to a server whose certificate `ca_file` signed; with cert_file and key_file the client
    also presents its own certificate (what a server with a client CA requires)."""
    check_client_certificate_options(ca_file, cert_file, key_file)
    root = read_certificates(ca_file, "CA certificate")
    if cert_file is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    chain, key = read_key_pair(cert_file, key_file)
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)


def server_credentials(cert_file: PathLike, key_file: PathLike,
                       client_ca_file: PathLike | None = None) -> grpc.ServerCredentials:
    """The server's certificate; with client_ca_file, mutual TLS: the handshake fails for a
    client that presents no certificate, or one that CA did not sign."""
    chain, key = read_key_pair(cert_file, key_file)
    if client_ca_file is None:
        return grpc.ssl_server_credentials([(key, chain)])
    return grpc.ssl_server_credentials([(key, chain)],
                                       root_certificates=read_certificates(client_ca_file, "client CA certificate"),
                                       require_client_auth=True)


def _read(path: PathLike, what: str) -> bytes:
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
