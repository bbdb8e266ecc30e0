"""gRPC over TLS: a real server with a certificate signed by a test CA, the operator client and a
real agent daemon that trust that CA, and the clients that must be turned away (plaintext, a
different CA). Certificates are made here with `cryptography`, valid for 127.0.0.1 only."""

from __future__ import annotations

import datetime
import ipaddress
import json
import pathlib

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config import AgentConfig
from agent.daemon import Daemon
from server.admin_client import AdminClient
from server.app import serve
from server.config import ServerConfig
from tests.agent.helpers import wait_for


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(folder: pathlib.Path, name: str):
    """A self-signed CA; returns (key, cert) and writes <name>-ca.pem."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / f"{name}-ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def make_server_cert(folder: pathlib.Path, ca_key, ca_cert) -> tuple[pathlib.Path, pathlib.Path]:
    """A leaf certificate for 127.0.0.1 signed by the CA; returns (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("edgefleet-server")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path):
    ca_key, ca_cert = make_ca(tmp_path, "fleet")
    make_ca(tmp_path, "other")
    cert, key = make_server_cert(tmp_path, ca_key, ca_cert)
    running = serve(ServerConfig(data_dir=tmp_path / "server", port=0, metrics_port=-1,
                                 tls_cert_file=cert, tls_key_file=key))
    try:
        yield running, tmp_path
    finally:
        running.stop(grace=0.5)


def test_operator_client_and_agent_work_over_tls(tls_server):
    running, folder = tls_server
    with AdminClient(running.address, running.operator_token, tls_ca=folder / "fleet-ca.pem") as client:
        token = client.create_enrollment_token(300).token
        daemon = Daemon(AgentConfig(server=running.address, enrollment_token=token,
                                    data_dir=str(folder / "agent"), tls_ca=str(folder / "fleet-ca.pem"),
                                    sensors="sim:mains", sensor_seed=0, local_port=0, heartbeat_interval=0.5,
                                    metrics_interval=0.5, backoff_base=0.05, backoff_max=1.0))
        try:
            daemon.start()
            device_id = daemon.identity.device_id
            wait_for(lambda: client.get_device(device_id).online, 30, "device online over TLS")
        finally:
            daemon.stop()
    assert json.loads((folder / "server" / "server.json").read_text())["tls"] is True


def test_plaintext_and_untrusted_clients_are_refused(tls_server):
    running, folder = tls_server
    with AdminClient(running.address, running.operator_token, timeout=3) as plain:
        with pytest.raises(grpc.RpcError) as err:
            plain.list_devices()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with AdminClient(running.address, running.operator_token, timeout=3,
                     tls_ca=folder / "other-ca.pem") as wrong_ca:
        with pytest.raises(grpc.RpcError) as err:
            wrong_ca.list_devices()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_needs_both_halves_and_pem_files(tmp_path):
    ca_key, ca_cert = make_ca(tmp_path, "fleet")
    cert, key = make_server_cert(tmp_path, ca_key, ca_cert)
    with pytest.raises(ValueError, match="both a certificate and a private key"):
        ServerConfig(data_dir=tmp_path / "s", tls_cert_file=cert)
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"\x00not a key")
    config = ServerConfig(data_dir=tmp_path / "s", port=0, metrics_port=-1, tls_cert_file=cert,
                          tls_key_file=garbage)
    with pytest.raises(ValueError, match="not a PEM private key"):
        serve(config)
    assert not (tmp_path / "s" / "server.json").exists()
