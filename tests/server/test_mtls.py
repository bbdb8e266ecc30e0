"""Mutual TLS with per-device client certificates, on a real server over loopback.

The "fleet" CA signs the server's certificate (localhost, 127.0.0.1); the "devices" CA is the
server's client CA and signs the operator's and the devices' certificates; the "other" CA signs a
look-alike "device-a" certificate that must be turned away. Rule under test
(server/device_service.py): a device is bound to its certificate's subject CN at enrollment, and
its credential works only over a connection whose certificate has that CN.
"""

from __future__ import annotations

import types

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.channel import make_channel
from agent.config import AgentConfig
from agent.daemon import Daemon
from edgefleet import operator_cli, processes
from proto import fleet_pb2
from proto.tls import TlsError, channel_credentials
from server import app
from server.admin_client import AdminClient
from server.config import ServerConfig
from server.models import Device, DeviceCertificate, EnrollmentToken
from tests.agent.helpers import make_bundle, wait_for
from tests.server.certs import make_ca, make_client_cert, make_server_cert
from tests.server.conftest import DeviceStream, device_stub, start_server

Code = grpc.StatusCode
NO_SUCH_DIGEST = "sha256:" + "0" * 64


@pytest.fixture
def pki(tmp_path):
    folder = tmp_path / "pki"
    folder.mkdir()
    fleet, devices, other = (make_ca(folder, name) for name in ("fleet", "devices", "other"))
    server_cert, server_key = make_server_cert(folder, *fleet)
    certs = {name: make_client_cert(folder, *devices, name)
             for name in ("operator", "device-a", "device-b", "device-c")}
    certs["foreign-device-a"] = make_client_cert(folder, *other, "device-a", stem="foreign-device-a")
    certs["nameless"] = make_client_cert(folder, *devices, None)
    return types.SimpleNamespace(folder=folder, server_ca=folder / "fleet-ca.pem",
                                 client_ca=folder / "devices-ca.pem", server_cert=server_cert,
                                 server_key=server_key, certs=certs)


def tls_settings(pki, mutual: bool = True) -> dict:
    return dict(metrics_port=-1, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key,
                tls_client_ca_file=pki.client_ca if mutual else None)


@pytest.fixture
def mtls(tmp_path, pki, publisher_key):
    running = start_server(tmp_path / "server", publisher_key, **tls_settings(pki))
    operator = AdminClient(running.address, running.operator_token, timeout=10, tls_ca=pki.server_ca,
                           tls_cert=pki.certs["operator"][0], tls_key=pki.certs["operator"][1])
    channels: list[grpc.Channel] = []

    def device_channel(cert_name: str | None) -> grpc.Channel:
        """A channel to the server presenting the named certificate (None: no certificate)."""
        cert, key = pki.certs[cert_name] if cert_name else (None, None)
        channel = grpc.secure_channel(running.address, channel_credentials(pki.server_ca, cert, key))
        channels.append(channel)
        return channel

    try:
        yield types.SimpleNamespace(server=running, operator=operator, channel=device_channel)
    finally:
        for channel in channels:
            channel.close()
        operator.close()
        running.stop(grace=0)


def _enroll(channel: grpc.Channel, token: str) -> fleet_pb2.EnrollResponse:
    return device_stub(channel).Enroll(fleet_pb2.EnrollRequest(token=token, hostname="pi"), timeout=10)


def _refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def _rows(db) -> dict:
    """Everything a device call could change: devices, certificate bindings, tokens."""
    with Session(db.engine) as s:
        return {
            "devices": [(d.id, d.last_seen, d.info, d.credential_hash, d.labels)
                        for d in s.scalars(select(Device).order_by(Device.id))],
            "bindings": [(c.device_id, c.common_name)
                         for c in s.scalars(select(DeviceCertificate).order_by(DeviceCertificate.device_id))],
            "tokens": [(t.token_hash, t.used_at, t.used_by)
                       for t in s.scalars(select(EnrollmentToken).order_by(EnrollmentToken.token_hash))],
        }


def _stream_error(channel: grpc.Channel, credential: str) -> grpc.RpcError:
    stream = DeviceStream(channel, credential)
    try:
        assert stream.ended.wait(15), "the server kept a refused stream open"
        assert stream.error is not None
        return stream.error
    finally:
        stream.close()


def _heartbeat_acked(channel: grpc.Channel, credential: str) -> bool:
    stream = DeviceStream(channel, credential)
    try:
        stream.send(heartbeat=fleet_pb2.Heartbeat(sequence=7))
        return stream.next("ack", timeout=15).sequence == 7
    finally:
        stream.close()


# -- the handshake: no certificate, or one from another CA -----------------------------------

def test_clients_without_a_certificate_are_refused(mtls, pki):
    with AdminClient(mtls.server.address, mtls.server.operator_token, timeout=5,
                     tls_ca=pki.server_ca) as no_cert:
        assert _refused(no_cert.list_devices)[0] == Code.UNAVAILABLE
    token = mtls.operator.create_enrollment_token(60).token
    assert _refused(lambda: _enroll(mtls.channel(None), token))[0] == Code.UNAVAILABLE
    # The refused attempt never reached the service: the token is still good.
    assert _enroll(mtls.channel("device-a"), token).device_id


def test_certificates_from_another_ca_are_refused(mtls, pki):
    cert, key = pki.certs["foreign-device-a"]
    with AdminClient(mtls.server.address, mtls.server.operator_token, timeout=5, tls_ca=pki.server_ca,
                     tls_cert=cert, tls_key=key) as foreign:
        assert _refused(foreign.list_devices)[0] == Code.UNAVAILABLE
    token = mtls.operator.create_enrollment_token(60).token
    assert _refused(lambda: _enroll(mtls.channel("foreign-device-a"), token))[0] == Code.UNAVAILABLE
    assert mtls.operator.list_devices() == []


# -- the right certificate: an agent end to end ----------------------------------------------

def test_agent_with_its_certificate_enrolls_and_installs_a_deployment(tmp_path, pki, publisher_key):
    bundle = make_bundle()
    running = start_server(tmp_path / "server", publisher_key, trusted_publisher_keys=[bundle.publisher_key],
                           **tls_settings(pki))
    operator = AdminClient(running.address, running.operator_token, timeout=10, tls_ca=pki.server_ca,
                           tls_cert=pki.certs["operator"][0], tls_key=pki.certs["operator"][1])
    cert, key = pki.certs["device-a"]
    daemon = Daemon(AgentConfig(server=running.address, enrollment_token=operator.create_enrollment_token(300).token,
                                data_dir=str(tmp_path / "agent"),
                                tls_ca=str(pki.server_ca), tls_cert=str(cert), tls_key=str(key),
                                sensors="sim:mains", sensor_seed=0, local_port=0, heartbeat_interval=0.5,
                                metrics_interval=0.5, control_interval=0.2, backoff_base=0.05,
                                backoff_max=1.0, profile_warmup=1, profile_runs=2))
    try:
        daemon.start()
        device_id = daemon.identity.device_id
        assert running.db.certificate_name(device_id) == "device-a"
        wait_for(lambda: operator.get_device(device_id).online, 30, "device online over mutual TLS")
        uploaded = operator.upload_bundle(bundle.write_dir(tmp_path / "bundle"))
        deployment = operator.deploy(uploaded.bundle_id, device_ids=[device_id], timeout=120)
        # Desired state comes down the stream, every variant through Download: both check the binding.
        deployment = operator.wait_deployment(deployment.deployment_id, timeout=120, poll_seconds=0.2)
        assert deployment.state == fleet_pb2.Deployment.SUCCEEDED, deployment
        assert operator.get_device(device_id).reported.bundle_id == bundle.bundle_id
    finally:
        daemon.stop()
        operator.close()
        running.stop(grace=0)


def test_agent_takes_its_tls_files_from_the_environment(tmp_path, mtls, pki):
    """What the systemd unit does: no TLS flags on the command line, the EnvironmentFile's
    $EDGEFLEET_TLS_CA / $EDGEFLEET_TLS_CLIENT_CERT / $EDGEFLEET_TLS_CLIENT_KEY instead."""
    cert, key = pki.certs["device-b"]
    agent = processes.start_agent(tmp_path / "agent", server=mtls.server.address, token=None,
                                  sensors="sim:mains",
                                  env={"EDGEFLEET_ENROLL_TOKEN": mtls.operator.create_enrollment_token(60).token,
                                       "EDGEFLEET_TLS_CA": str(pki.server_ca),
                                       "EDGEFLEET_TLS_CLIENT_CERT": str(cert), "EDGEFLEET_TLS_CLIENT_KEY": str(key)})
    try:
        assert "--tls" not in " ".join(agent.popen.args)
        device_id = agent.info["device_id"]
        assert mtls.server.db.certificate_name(device_id) == "device-b"
        wait_for(lambda: mtls.operator.get_device(device_id).online, 60, "agent online over mutual TLS")
    finally:
        agent.stop()


# -- per-device binding ------------------------------------------------------------------------

def test_a_credential_over_another_devices_certificate_is_refused(mtls):
    channel_a, channel_b = mtls.channel("device-a"), mtls.channel("device-b")
    device_a = _enroll(channel_a, mtls.operator.create_enrollment_token(60).token)
    device_b = _enroll(channel_b, mtls.operator.create_enrollment_token(60).token)
    db = mtls.server.db
    assert (db.certificate_name(device_a.device_id), db.certificate_name(device_b.device_id)) == \
        ("device-a", "device-b")
    before = _rows(db)

    error = _stream_error(channel_b, device_a.credential)
    assert error.code() == Code.PERMISSION_DENIED
    assert f"device {device_a.device_id} is bound to client certificate CN='device-a'" in error.details()
    assert "presents CN='device-b'" in error.details()
    download = device_stub(channel_b).Download(fleet_pb2.DownloadRequest(digest=NO_SUCH_DIGEST),
                                               metadata=(("authorization", f"Bearer {device_a.credential}"),),
                                               timeout=10)
    assert _refused(lambda: list(download))[0] == Code.PERMISSION_DENIED
    assert _rows(db) == before          # not even last_seen moved

    # The same credential over its own device's certificate works.
    assert _heartbeat_acked(channel_a, device_a.credential)
    assert db.certificate_name(device_a.device_id) == "device-a"


def test_enrolling_with_a_certificate_bound_to_another_device_is_refused(mtls):
    first = _enroll(mtls.channel("device-a"), mtls.operator.create_enrollment_token(60).token)
    token = mtls.operator.create_enrollment_token(60).token
    before = _rows(mtls.server.db)
    code, details = _refused(lambda: _enroll(mtls.channel("device-a"), token))
    assert code == Code.PERMISSION_DENIED
    assert f"CN='device-a' is already bound to device {first.device_id}" in details
    assert _rows(mtls.server.db) == before      # the token was not used up
    second = _enroll(mtls.channel("device-c"), token)
    assert mtls.server.db.certificate_name(second.device_id) == "device-c"
    # Removing the device frees its certificate name for a device that enrolls again.
    mtls.operator.remove_device(first.device_id)
    again = _enroll(mtls.channel("device-a"), mtls.operator.create_enrollment_token(60).token)
    assert mtls.server.db.certificate_name(again.device_id) == "device-a"


def test_a_certificate_without_a_common_name_cannot_enroll(mtls):
    token = mtls.operator.create_enrollment_token(60).token
    code, details = _refused(lambda: _enroll(mtls.channel("nameless"), token))
    assert code == Code.UNAUTHENTICATED and "no subject common name" in details
    assert mtls.operator.list_devices() == []


def _enroll_under_one_way_tls(data_dir, pki, publisher_key):
    """Enroll one device on a server in data_dir that serves one-way TLS (no client
    certificates), then stop it: the device has no certificate binding yet."""
    one_way = start_server(data_dir, publisher_key, **tls_settings(pki, mutual=False))
    try:
        with AdminClient(one_way.address, one_way.operator_token, tls_ca=pki.server_ca) as operator:
            token = operator.create_enrollment_token(60).token
        with grpc.secure_channel(one_way.address, channel_credentials(pki.server_ca)) as channel:
            return _enroll(channel, token)
    finally:
        one_way.stop(grace=0)


def test_a_device_enrolled_before_mutual_tls_is_bound_on_its_first_call(tmp_path, pki, publisher_key):
    data_dir = tmp_path / "server"
    device = _enroll_under_one_way_tls(data_dir, pki, publisher_key)

    running = start_server(data_dir, publisher_key, **tls_settings(pki))
    try:
        assert running.db.certificate_name(device.device_id) is None
        def channel(name):
            return grpc.secure_channel(running.address, channel_credentials(pki.server_ca, *pki.certs[name]))

        with channel("device-b") as channel_b, channel("device-c") as channel_c:
            assert _heartbeat_acked(channel_b, device.credential)
            assert running.db.certificate_name(device.device_id) == "device-b"
            assert _stream_error(channel_c, device.credential).code() == Code.PERMISSION_DENIED
            assert running.db.certificate_name(device.device_id) == "device-b"
    finally:
        running.stop(grace=0)


# -- what operators see: the bound CN in the device listing ------------------------------------

def test_device_listing_shows_the_bound_certificate_name(tmp_path, pki, publisher_key, capsys):
    """A device enrolled before mutual TLS has no binding (empty CN) until its first call; one
    enrolled over mutual TLS shows its certificate's CN, in every admin call that returns devices
    and in `edgefleet devices` / `edgefleet status`."""
    data_dir = tmp_path / "server"
    enrolled = _enroll_under_one_way_tls(data_dir, pki, publisher_key)
    early = enrolled.device_id

    running = start_server(data_dir, publisher_key, **tls_settings(pki))
    operator_cert, operator_key = pki.certs["operator"]
    operator = AdminClient(running.address, running.operator_token, timeout=10, tls_ca=pki.server_ca,
                           tls_cert=operator_cert, tls_key=operator_key)
    cli_args = ["--server", running.address, "--token", running.operator_token, "--tls-ca", str(pki.server_ca),
                "--tls-cert", str(operator_cert), "--tls-key", str(operator_key)]

    def cli_lines(command: str) -> dict[str, str]:
        assert operator_cli.main(command, cli_args) == 0
        return {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
                if line.split() and line.split()[0] in (early, late)}

    try:
        with grpc.secure_channel(running.address, channel_credentials(pki.server_ca, *pki.certs["device-a"])) as ch:
            late = _enroll(ch, operator.create_enrollment_token(60).token).device_id
        names = {d.device_id: d.certificate_common_name for d in operator.list_devices()}
        assert names == {early: "", late: "device-a"}
        assert operator.get_device(late).certificate_common_name == "device-a"
        assert operator.get_device(early).certificate_common_name == ""
        assert {d.device_id: d.certificate_common_name for d in operator.fleet_status().devices} == names
        assert operator.set_labels(late, {"site": "lab"}).certificate_common_name == "device-a"
        for command in ("devices", "status"):
            lines = cli_lines(command)
            assert "cert CN=device-a " in lines[late], lines
            assert "cert - " in lines[early] and "CN=" not in lines[early], lines

        # The early device's first call over mutual TLS binds it; the listing follows.
        with grpc.secure_channel(running.address, channel_credentials(pki.server_ca, *pki.certs["device-b"])) as ch:
            assert _heartbeat_acked(ch, enrolled.credential)
        assert {d.device_id: d.certificate_common_name for d in operator.list_devices()} == \
            {early: "device-b", late: "device-a"}
        assert "cert CN=device-b " in cli_lines("devices")[early]
        # RemoveDevice answers with the device as it was, binding included.
        assert operator.remove_device(late).certificate_common_name == "device-a"
        assert [d.certificate_common_name for d in operator.list_devices()] == ["device-b"]
    finally:
        operator.close()
        running.stop(grace=0)


# -- bad configuration: errors that name the option or the file --------------------------------

def test_server_refuses_to_start_with_bad_mutual_tls_files(tmp_path, pki, capsys):
    with pytest.raises(ValueError, match="client CA .* needs the server's own TLS certificate"):
        ServerConfig(data_dir=tmp_path / "s", tls_client_ca_file=pki.client_ca)
    missing = pki.folder / "missing-ca.pem"
    for client_ca, message in ((missing, f"{missing}: cannot read the client CA certificate"),
                               (pki.certs["device-a"][1], "not a PEM client CA certificate")):
        config = ServerConfig(data_dir=tmp_path / "s", port=0, **{**tls_settings(pki), "tls_client_ca_file": client_ca})
        with pytest.raises(TlsError, match=message):
            app.serve(config)
    assert not (tmp_path / "s" / "server.json").exists()

    status = app.main(["--data-dir", str(tmp_path / "s"), "--port", "0", "--metrics-port", "-1",
                       "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                       "--tls-client-ca", str(missing)])
    assert status == 2
    assert f"edgefleet server: {missing}: cannot read the client CA certificate" in capsys.readouterr().err


def test_clients_refuse_bad_client_certificate_options(tmp_path, pki, capsys):
    cert_a, key_a = pki.certs["device-a"]
    ca = str(pki.server_ca)
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        AgentConfig(tls_ca=ca, tls_cert=str(cert_a))
    with pytest.raises(ValueError, match="need --tls-ca"):
        AgentConfig(tls_cert=str(cert_a), tls_key=str(key_a))
    with pytest.raises(TlsError, match="both --tls-cert and --tls-key"):
        AdminClient("127.0.0.1:1", "t", tls_ca=ca, tls_key=key_a)

    missing = pki.folder / "missing.pem"
    with pytest.raises(TlsError, match=f"{missing}: cannot read the certificate"):
        make_channel(AgentConfig(tls_ca=ca, tls_cert=str(missing), tls_key=str(key_a)))
    with pytest.raises(TlsError, match="is not the private key of the certificate"):
        make_channel(AgentConfig(tls_ca=ca, tls_cert=str(cert_a), tls_key=str(pki.certs["device-b"][1])))
    encrypted = pki.folder / "encrypted.key"
    key = serialization.load_pem_private_key(key_a.read_bytes(), password=None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TlsError, match="the private key is encrypted"):
        make_channel(AgentConfig(tls_ca=ca, tls_cert=str(cert_a), tls_key=str(encrypted)))

    status = operator_cli.main("devices", ["--server", "127.0.0.1:1", "--token", "t", "--tls-ca", ca,
                                           "--tls-cert", str(missing), "--tls-key", str(key_a)])
    assert status == 2
    assert f"edgefleet devices: {missing}: cannot read the certificate" in capsys.readouterr().err
