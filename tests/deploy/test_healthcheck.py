"""deploy/healthcheck.py (the container HEALTHCHECK) against a real gRPC health service on loopback,
and against the real edgefleet server over TLS and mutual TLS."""

import ast
import importlib.util
import os
import pathlib
import subprocess
import sys
import types
from concurrent import futures

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from proto import signing, tls
from proto.tls import TlsError
from tests.conftest import REPO_ROOT, free_port
from tests.deploy import files
from tests.server.certs import make_ca, make_client_cert, make_server_cert
from tests.server.conftest import start_server

SCRIPT = files.DEPLOY / "healthcheck.py"


def load_healthcheck():
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)


def test_serving_server_is_healthy(health_server):
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    result = subprocess.run([sys.executable, str(SCRIPT), target], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_not_serving_server_is_unhealthy(health_server):
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = subprocess.run([sys.executable, str(SCRIPT), target], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "NOT_SERVING" in result.stderr and "bad configuration" not in result.stderr


def test_unknown_service_and_unreachable_server_are_unhealthy(health_server):
    target, _ = health_server
    check = load_healthcheck().check
    assert check(target, "edgefleet.NoSuchService", timeout=5.0) is False      # NOT_FOUND
    assert check(f"127.0.0.1:{free_port()}", timeout=2.0) is False              # nothing listens
    nowhere = f"127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, str(SCRIPT), "--timeout", "2", nowhere], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert f"unhealthy: {nowhere}: UNAVAILABLE" in result.stderr and "bad configuration" not in result.stderr


@pytest.mark.parametrize("args, message", [
    ((), "the following arguments are required: HOST:PORT"),
    (("--timeout", "0", "127.0.0.1:1"), "--timeout must be positive"),
    (("--timeout", "soon", "127.0.0.1:1"), "argument --timeout: invalid float value: 'soon'"),
    (("--no-such-flag", "127.0.0.1:1"), "unrecognized arguments: --no-such-flag"),
    (("127.0.0.1:1", "svc", "extra"), "unrecognized arguments: extra"),
])
def test_usage_errors_exit_1_as_bad_configuration(args, message):
    """Docker defines only 0 and 1 (2 is reserved): argparse's usual 2 must not leak out."""
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"healthcheck: bad configuration: {message}" in result.stderr, result.stderr
    assert "usage: healthcheck.py" in result.stderr and "unhealthy" not in result.stderr


# -- TLS and mutual TLS, against the real edgefleet server over loopback ----------------------
#
# The "fleet" CA signs the server's certificate (localhost, 127.0.0.1), the "devices" CA is the
# mutual-TLS server's client CA and signs the probe's certificate, the "other" CA signs nothing
# the server trusts.

TLS_ENV = ("EDGEFLEET_TLS_CA", "EDGEFLEET_TLS_CLIENT_CERT", "EDGEFLEET_TLS_CLIENT_KEY",
           "EDGEFLEET_TLS_SERVER_NAME")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    fleet, devices, other = (make_ca(folder, name) for name in ("fleet", "devices", "other"))
    server_cert, server_key = make_server_cert(folder, *fleet)
    probe = make_client_cert(folder, *devices, "probe")
    foreign_probe = make_client_cert(folder, *other, "probe", stem="foreign-probe")
    return types.SimpleNamespace(folder=folder, ca=folder / "fleet-ca.pem", client_ca=folder / "devices-ca.pem",
                                 other_ca=folder / "other-ca.pem", server_cert=server_cert,
                                 server_key=server_key, probe=probe, foreign_probe=foreign_probe)


def _start(tmp_path_factory, pki, mutual: bool):
    return start_server(tmp_path_factory.mktemp("server"), signing.generate_private_key(), metrics_port=-1,
                        tls_cert_file=pki.server_cert, tls_key_file=pki.server_key,
                        tls_client_ca_file=pki.client_ca if mutual else None)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki):
    running = _start(tmp_path_factory, pki, mutual=False)
    yield running.address
    running.stop(grace=0)


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, pki):
    running = _start(tmp_path_factory, pki, mutual=True)
    yield running.address
    running.stop(grace=0)


@pytest.fixture
def no_tls_env(monkeypatch):
    for name in TLS_ENV:
        monkeypatch.delenv(name, raising=False)


def probe(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the script as the image does: its own process, TLS settings from argv and `env` only."""
    environ = {k: v for k, v in os.environ.items() if k not in TLS_ENV}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=60, env={**environ, **(env or {})})


def run_main(capsys, *args) -> tuple[int, str]:
    status = load_healthcheck().main([str(a) for a in args])
    return status, capsys.readouterr().err


def test_tls_server_is_healthy_to_a_probe_that_trusts_its_ca(tls_server, pki):
    result = probe("--tls-ca", pki.ca, tls_server)
    assert result.returncode == 0, result.stderr
    result = probe(tls_server, env={"EDGEFLEET_TLS_CA": str(pki.ca)})
    assert result.returncode == 0, result.stderr


def test_tls_server_is_unhealthy_to_a_plaintext_probe_or_a_foreign_ca(tls_server, pki):
    result = probe(tls_server)
    assert result.returncode == 1
    assert f"unhealthy: {tls_server}: UNAVAILABLE" in result.stderr
    assert "if the server speaks TLS, give --tls-ca or $EDGEFLEET_TLS_CA" in result.stderr
    assert "bad configuration" not in result.stderr     # a refused handshake is the server's verdict
    result = probe("--tls-ca", pki.other_ca, tls_server)
    assert result.returncode == 1
    assert f"unhealthy: {tls_server}: UNAVAILABLE" in result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr


def test_mutual_tls_server_is_healthy_to_a_probe_with_a_client_certificate(mtls_server, pki):
    cert, key = pki.probe
    result = probe("--tls-ca", pki.ca, "--tls-cert", cert, "--tls-key", key, mtls_server)
    assert result.returncode == 0, result.stderr
    result = probe(mtls_server, env={"EDGEFLEET_TLS_CA": str(pki.ca), "EDGEFLEET_TLS_CLIENT_CERT": str(cert),
                                     "EDGEFLEET_TLS_CLIENT_KEY": str(key)})
    assert result.returncode == 0, result.stderr


def test_mutual_tls_server_is_unhealthy_to_a_probe_without_the_right_certificate(mtls_server, pki, capsys,
                                                                                 no_tls_env):
    status, err = run_main(capsys, "--tls-ca", pki.ca, mtls_server)
    assert status == 1
    assert f"unhealthy: {mtls_server}: UNAVAILABLE" in err
    assert "if the server requires mutual TLS, give --tls-cert/--tls-key" in err
    cert, key = pki.foreign_probe                     # right CN, signed by a CA the server does not trust
    status, err = run_main(capsys, "--tls-ca", pki.ca, "--tls-cert", cert, "--tls-key", key, mtls_server)
    assert status == 1
    assert "is the client certificate signed by the server's client CA?" in err
    cert, key = pki.probe                             # the right client certificate, the wrong server CA
    status, err = run_main(capsys, "--tls-ca", pki.other_ca, "--tls-cert", cert, "--tls-key", key, mtls_server)
    assert status == 1 and "CERTIFICATE_VERIFY_FAILED" in err
    status, err = run_main(capsys, mtls_server)       # plaintext
    assert status == 1 and "if the server speaks TLS" in err


def test_flags_win_over_the_environment(mtls_server, pki, capsys, monkeypatch):
    cert, key = pki.probe
    foreign_cert, foreign_key = pki.foreign_probe
    monkeypatch.setenv("EDGEFLEET_TLS_CA", str(pki.other_ca))
    monkeypatch.setenv("EDGEFLEET_TLS_CLIENT_CERT", str(foreign_cert))
    monkeypatch.setenv("EDGEFLEET_TLS_CLIENT_KEY", str(foreign_key))
    assert run_main(capsys, mtls_server)[0] == 1
    status, err = run_main(capsys, "--tls-ca", pki.ca, "--tls-cert", cert, "--tls-key", key, mtls_server)
    assert status == 0, err


def test_server_name_override_checks_the_certificate_against_that_name(tls_server, pki, capsys, no_tls_env):
    # The server's certificate names localhost and 127.0.0.1; the probe dials 127.0.0.1.
    status, err = run_main(capsys, "--tls-ca", pki.ca, "--tls-server-name", "localhost", tls_server)
    assert status == 0, err
    status, err = run_main(capsys, "--tls-ca", pki.ca, "--tls-server-name", "fleet.example.com", tls_server)
    assert status == 1 and f"unhealthy: {tls_server}: UNAVAILABLE" in err


def test_an_empty_environment_variable_counts_as_unset(health_server, monkeypatch, capsys):
    target, servicer = health_server                  # a plaintext server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    for name in TLS_ENV:
        monkeypatch.setenv(name, "")
    status, err = run_main(capsys, target)
    assert status == 0, err


# -- bad options and files: exit 1, a "bad configuration" message naming the option or the file --

def _encrypted_copy(key_path: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    out = folder / "encrypted.key"
    out.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"secret")))
    return out


def bad_tls_options(pki) -> list[tuple[tuple, str]]:
    """(ca, cert, key) that cannot work, and the message that says why."""
    cert, key = pki.probe
    missing = pki.folder / "missing.pem"
    return [
        ((missing, None, None), f"{missing}: cannot read the CA certificate"),
        ((key, None, None), f"{key}: not a PEM CA certificate"),
        ((pki.ca, missing, key), f"{missing}: cannot read the certificate"),
        ((pki.ca, key, key), f"{key}: not a PEM certificate"),
        ((pki.ca, cert, missing), f"{missing}: cannot read the private key"),
        ((pki.ca, cert, cert), f"{cert}: not a PEM private key"),
        ((pki.ca, cert, pki.server_key), f"{pki.server_key} is not the private key of the certificate in {cert}"),
        ((pki.ca, cert, _encrypted_copy(key, pki.folder)), "the private key is encrypted"),
        ((pki.ca, cert, None), "a client certificate needs both --tls-cert and --tls-key"),
        ((pki.ca, None, key), "a client certificate needs both --tls-cert and --tls-key"),
        ((None, cert, key), "--tls-cert/--tls-key need --tls-ca"),
    ]


def test_bad_tls_options_and_files_exit_1_naming_the_file(pki, capsys, no_tls_env):
    target = f"127.0.0.1:{free_port()}"              # never dialled: the files are checked first
    for (ca, cert, key), message in bad_tls_options(pki):
        args = [*(["--tls-ca", ca] if ca else []), *(["--tls-cert", cert] if cert else []),
                *(["--tls-key", key] if key else []), target]
        status, err = run_main(capsys, *args)
        assert status == 1, (args, err)
        assert err.startswith("healthcheck: bad configuration: ") and message in err, (args, err)
        assert "unhealthy" not in err, err
    result = probe("--tls-ca", pki.folder / "missing.pem", target)
    assert result.returncode == 1
    assert "healthcheck: bad configuration: " in result.stderr
    assert "missing.pem: cannot read the CA certificate" in result.stderr
    with pytest.raises(SystemExit) as info:
        load_healthcheck().main(["--tls-server-name", "localhost", target])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "healthcheck: bad configuration: --tls-server-name needs --tls-ca" in err


def test_the_file_checks_say_what_proto_tls_says(pki):
    """healthcheck.py restates proto/tls.py's checks (it imports nothing of ours): same verdicts,
    same messages, for every bad input above."""
    restated = load_healthcheck()
    for (ca, cert, key), _ in bad_tls_options(pki):
        with pytest.raises(restated.TlsError) as ours:
            restated.channel_credentials(*(str(p) if p else None for p in (ca, cert, key)))
        if ca is None:
            with pytest.raises(TlsError) as theirs:
                tls.check_client_certificate_options(ca, cert, key)
        else:
            with pytest.raises(TlsError) as theirs:
                tls.channel_credentials(ca, cert, key)
        assert str(ours.value) == str(theirs.value)


def test_healthcheck_imports_nothing_of_ours():
    """It runs on its own in the server image; only third-party modules the image installs."""
    tree = ast.parse(SCRIPT.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    ours = {p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert {"proto", "agent", "server"} <= ours
    assert imported & ours == set()
    assert {"grpc", "grpc_health", "cryptography"} <= imported
