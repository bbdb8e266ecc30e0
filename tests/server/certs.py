"""Test certificates made with `cryptography`: CAs, a server certificate for localhost and
127.0.0.1, and client certificates named by their subject CN. EC P-256, valid for a day."""

from __future__ import annotations

import datetime
import ipaddress
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str | None) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


def make_ca(folder: pathlib.Path, name: str):
    """A self-signed CA; returns (key, cert) and writes <name>-ca.pem."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(_name(name), _name(name), key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / f"{name}-ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _write_leaf(folder: pathlib.Path, stem: str, builder: x509.CertificateBuilder, key,
                ca_key) -> tuple[pathlib.Path, pathlib.Path]:
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    return cert_path, key_path


def make_server_cert(folder: pathlib.Path, ca_key, ca_cert) -> tuple[pathlib.Path, pathlib.Path]:
    """A leaf certificate for localhost and 127.0.0.1 signed by the CA; returns (server.pem, server.key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_builder(_name("edgefleet-server"), ca_cert.subject, key.public_key())
               .add_extension(x509.SubjectAlternativeName([
                   x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                   critical=False))
    return _write_leaf(folder, "server", builder, key, ca_key)


def make_client_cert(folder: pathlib.Path, ca_key, ca_cert, common_name: str | None,
                     stem: str | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    """A client certificate with subject CN=common_name (None: an empty subject) signed by the CA;
    returns (<stem>.pem, <stem>.key), stem defaulting to the name."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_builder(_name(common_name), ca_cert.subject, key.public_key())
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if common_name is None:      # RFC 5280: an empty subject needs a subject alternative name
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("nameless.example")]),
                                        critical=True)
    return _write_leaf(folder, stem or common_name or "nameless", builder, key, ca_key)
