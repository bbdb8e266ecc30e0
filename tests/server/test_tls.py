"""gRPC over TLS: a real server with a certificate signed by a test CA, the operator client and a
real agent daemon that trust that CA, and the clients that must be turned away (plaintext, a
different CA). Certificates come from tests/server/certs.py. Mutual TLS: test_mtls.py."""

from __future__ import annotations

import json

import grpc
import pytest

from agent.config import AgentConfig
from agent.daemon import Daemon
from server.admin_client import AdminClient
from server.app import serve
from server.config import ServerConfig
from tests.agent.helpers import wait_for
from tests.server.certs import make_ca, make_client_cert, make_server_cert


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


def test_one_way_tls_ignores_a_client_certificate(tls_server):
    """Without --tls-client-ca the server does not ask for one: a client that has one still works."""
    running, folder = tls_server
    ca_key, ca_cert = make_ca(folder, "devices")
    cert, key = make_client_cert(folder, ca_key, ca_cert, "ops")
    with AdminClient(running.address, running.operator_token, tls_ca=folder / "fleet-ca.pem",
                     tls_cert=cert, tls_key=key) as client:
        assert client.list_devices() == []


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
    (tmp_path / "other").mkdir()
    _, other_key = make_server_cert(tmp_path / "other", ca_key, ca_cert)
    with pytest.raises(ValueError, match="is not the private key of the certificate"):
        serve(ServerConfig(data_dir=tmp_path / "s", port=0, metrics_port=-1, tls_cert_file=cert,
                           tls_key_file=other_key))
    assert not (tmp_path / "s" / "server.json").exists()
