"""Container health check: ask the server's standard gRPC health service.

    python healthcheck.py [--tls-ca PEM [--tls-cert PEM --tls-key PEM] [--tls-server-name NAME]]
                          HOST:PORT [SERVICE]

Exits 0 when the server answers SERVING and 1 on every failure: the server is not serving,
unreachable, refused the TLS handshake or was too slow ("unhealthy: ..." on stderr), or the
probe's own arguments or TLS files are wrong ("healthcheck: bad configuration: ..."). Docker
defines only 0 (healthy) and 1 (unhealthy) and reserves 2, so the stderr line, not the status,
tells the two kinds of failure apart. The empty service name asks about the server as a whole,
which is what Docker and Kubernetes probes ask too.

TLS, for a server started with --tls-cert/--tls-key: --tls-ca (default $EDGEFLEET_TLS_CA) is the
CA that signed the server's certificate. Mutual TLS (a server with --tls-client-ca) also wants a
client certificate that CA signed: --tls-cert/--tls-key (default $EDGEFLEET_TLS_CLIENT_CERT /
$EDGEFLEET_TLS_CLIENT_KEY), the same names the operator commands read. The probe dials
127.0.0.1, which the server's certificate may not name: --tls-server-name (default
$EDGEFLEET_TLS_SERVER_NAME) is the name to check the certificate against instead.

This file runs on its own (copied into the server image beside the installed package), so it
imports nothing of the project (deploy/ imports nothing of ours, docs/architecture.md). Its TLS
file checks mirror proto/tls.py's, with the same messages (tests/deploy/test_healthcheck.py
holds the two to each other).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The probe runs every few seconds; a server that needs longer than this to answer
# a health check is as good as down for the orchestrator.
TIMEOUT_SECONDS = 3.0

# Docker's HEALTHCHECK defines these two statuses only (2 is reserved): a bad configuration
# exits UNHEALTHY too, with a "bad configuration" message instead of an "unhealthy" one.
HEALTHY, UNHEALTHY = 0, 1
CONFIG_ERROR_PREFIX = "healthcheck: bad configuration: "


class TlsError(ValueError):
    """A TLS option or file the probe cannot use; the message names the option or the file."""


# -- TLS files: the checks of proto/tls.py, restated so that this file stands alone ---------

def _read(path: str, what: str) -> bytes:
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def _certificates(path: str, what: str = "certificate") -> bytes:
    data = _read(path, what)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsError(f"{path}: not a PEM {what}") from None
    return data


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_pair(cert_file: str, key_file: str) -> tuple[bytes, bytes]:
    chain = _certificates(cert_file)
    key_pem = _read(key_file, "private key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:      # cryptography's way of saying "this key needs a password"
        raise TlsError(f"{key_file}: the private key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError(f"{key_file}: not a PEM private key") from None
    if _spki(key.public_key()) != _spki(x509.load_pem_x509_certificates(chain)[0].public_key()):
        raise TlsError(f"{key_file} is not the private key of the certificate in {cert_file}")
    return chain, key_pem


def channel_credentials(ca_file: str | None, cert_file: str | None = None,
                        key_file: str | None = None) -> grpc.ChannelCredentials | None:
    """None (plaintext) without a CA; else TLS to a server `ca_file` signed, presenting the client
    certificate too when cert_file and key_file are given. Every file is read and checked here."""
    if (cert_file is None) != (key_file is None):
        raise TlsError("a client certificate needs both --tls-cert and --tls-key (or neither)")
    if ca_file is None:
        if cert_file is not None:
            raise TlsError("--tls-cert/--tls-key need --tls-ca: a client certificate is only sent over TLS")
        return None
    root = _certificates(ca_file, "CA certificate")
    if cert_file is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    chain, key = _key_pair(cert_file, key_file)
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)


# -- the check -------------------------------------------------------------------------------

def check(target: str, service: str = "", timeout: float = TIMEOUT_SECONDS,
          credentials: grpc.ChannelCredentials | None = None, server_name: str | None = None,
          mutual: bool = False) -> bool:
    """True when `target` answers SERVING; else prints why to stderr and returns False.
    credentials None: plaintext. server_name: check the server's certificate against this name
    instead of the host in `target`. mutual: the credentials carry a client certificate (only
    changes the hint printed when the server hangs up)."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    if credentials is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, credentials, options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            hint = _hint(err.code(), credentials is not None, mutual)
            print(f"unhealthy: {target}: {err.code().name}: {err.details()}{hint}", file=sys.stderr)
            return False
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        print(f"unhealthy: {target}: {name}", file=sys.stderr)
        return False
    return True


def _hint(code: grpc.StatusCode, tls: bool, mutual: bool) -> str:
    """gRPC reports a refused handshake as a bare "Socket closed": say what the usual cause is."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return ""
    if not tls:
        return " (if the server speaks TLS, give --tls-ca or $EDGEFLEET_TLS_CA)"
    if not mutual:
        return (" (if the server requires mutual TLS, give --tls-cert/--tls-key or "
                "$EDGEFLEET_TLS_CLIENT_CERT/$EDGEFLEET_TLS_CLIENT_KEY)")
    return " (is the client certificate signed by the server's client CA?)"


def _env(name: str) -> str | None:
    return os.environ.get(name) or None      # set but empty = not set, as in a compose file


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; the probe exits 1, saying it is bad configuration."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(UNHEALTHY, f"{CONFIG_ERROR_PREFIX}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="healthcheck.py", description="gRPC health probe of an edgefleet server; exit 0 SERVING, "
                "1 on any failure (stderr says 'unhealthy: ...' or 'healthcheck: bad configuration: ...')")
    p.add_argument("target", metavar="HOST:PORT", help="the server's gRPC address")
    p.add_argument("service", metavar="SERVICE", nargs="?", default="",
                   help="service name to ask about (default: the server as a whole)")
    p.add_argument("--tls-ca", default=_env("EDGEFLEET_TLS_CA"), metavar="PEM",
                   help="CA of the server's TLS certificate (default $EDGEFLEET_TLS_CA; none = plaintext)")
    p.add_argument("--tls-cert", default=_env("EDGEFLEET_TLS_CLIENT_CERT"), metavar="PEM",
                   help="client certificate for a server that requires mutual TLS "
                        "(with --tls-key; default $EDGEFLEET_TLS_CLIENT_CERT)")
    p.add_argument("--tls-key", default=_env("EDGEFLEET_TLS_CLIENT_KEY"), metavar="PEM",
                   help="private key of --tls-cert (default $EDGEFLEET_TLS_CLIENT_KEY)")
    p.add_argument("--tls-server-name", default=_env("EDGEFLEET_TLS_SERVER_NAME"), metavar="NAME",
                   help="name the server's certificate must carry, when it does not name HOST "
                        "(default $EDGEFLEET_TLS_SERVER_NAME)")
    p.add_argument("--timeout", type=float, default=TIMEOUT_SECONDS, help="seconds (default %(default)s)")
    return p


def main(argv: list[str]) -> int:
    """argv without the program name."""
    parser = build_parser()
    args = parser.parse_args(argv)          # exits 1 on a usage error (_Parser.error)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.tls_server_name and not args.tls_ca:
        parser.error("--tls-server-name needs --tls-ca: it names the server's TLS certificate")
    try:
        credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    except TlsError as exc:
        print(f"{CONFIG_ERROR_PREFIX}{exc}", file=sys.stderr)
        return UNHEALTHY
    healthy = check(args.target, args.service, args.timeout, credentials, args.tls_server_name,
                    mutual=args.tls_cert is not None)
    return HEALTHY if healthy else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
