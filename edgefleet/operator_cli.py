"""Operator subcommands: keygen, token, upload, deploy, status, devices, remove-device, bundles,
remove-bundle, deployments.

Every call but keygen talks to a running server through `server.admin_client.AdminClient`.
Where to find the server and the operator token, first match wins:
  --server / $EDGEFLEET_SERVER / <data-dir>/server.json / 127.0.0.1:50051
  --token  / $EDGEFLEET_OPERATOR_TOKEN / <data-dir>/operator.token
TLS: --tls-ca / $EDGEFLEET_TLS_CA; a server with mutual TLS also wants the operator's client
certificate: --tls-cert, --tls-key / $EDGEFLEET_TLS_CLIENT_CERT, $EDGEFLEET_TLS_CLIENT_KEY (not
$EDGEFLEET_TLS_CERT/KEY: those are the server's own, and may be set on the same host).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

DEFAULT_ADDRESS = "127.0.0.1:50051"
WAIT_MARGIN_SECONDS = 60.0     # deploy --wait: how long past the deadline to wait for the server to end it


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help="server address HOST:PORT")
    parser.add_argument("--token", help="operator token")
    parser.add_argument("--data-dir", help="the server's data directory (to read its address and token)")
    parser.add_argument("--tls-ca", default=os.environ.get("EDGEFLEET_TLS_CA"), metavar="PEM",
                        help="CA of a TLS server's certificate (default $EDGEFLEET_TLS_CA; none = plaintext)")
    parser.add_argument("--tls-cert", default=os.environ.get("EDGEFLEET_TLS_CLIENT_CERT"), metavar="PEM",
                        help="operator client certificate for a server that requires mutual TLS "
                             "(with --tls-key; default $EDGEFLEET_TLS_CLIENT_CERT)")
    parser.add_argument("--tls-key", default=os.environ.get("EDGEFLEET_TLS_CLIENT_KEY"), metavar="PEM",
                        help="private key of --tls-cert (default $EDGEFLEET_TLS_CLIENT_KEY)")


def resolve_address(args: argparse.Namespace) -> str:
    if args.server:
        return args.server
    if os.environ.get("EDGEFLEET_SERVER"):
        return os.environ["EDGEFLEET_SERVER"]
    if args.data_dir and (pathlib.Path(args.data_dir) / "server.json").exists():
        from server.admin_client import read_server_address

        return read_server_address(args.data_dir)
    return DEFAULT_ADDRESS


def resolve_token(args: argparse.Namespace) -> str:
    if args.token:
        return args.token
    if os.environ.get("EDGEFLEET_OPERATOR_TOKEN"):
        return os.environ["EDGEFLEET_OPERATOR_TOKEN"]
    if args.data_dir and (pathlib.Path(args.data_dir) / "operator.token").exists():
        from server.admin_client import read_operator_token

        return read_operator_token(args.data_dir)
    raise SystemExit("edgefleet: no operator token: pass --token, set EDGEFLEET_OPERATOR_TOKEN, "
                     "or point --data-dir at the server's data directory")


def _client(args: argparse.Namespace):
    from server.admin_client import AdminClient

    return AdminClient(resolve_address(args), resolve_token(args), tls_ca=args.tls_ca,
                       tls_cert=args.tls_cert, tls_key=args.tls_key)


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"edgefleet: label {pair!r} is not key=value")
        labels[key] = value
    return labels


# -- subcommands ---------------------------------------------------------------------------

def cmd_keygen(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet keygen", description=_doc("keygen"))
    parser.add_argument("--out", required=True,
                        help="private key path, e.g. publisher.key; the raw public key goes beside it "
                             "with the suffix .pub (publisher.pub)")
    args = parser.parse_args(argv)
    from proto import signing

    out = pathlib.Path(args.out)
    if out.exists():
        raise SystemExit(f"edgefleet: {out} exists; refusing to overwrite a signing key")
    key = signing.load_or_create_private_key(out)
    pub = out.with_suffix(".pub")
    pub.write_bytes(signing.public_key_bytes(key))
    print(f"wrote {out} (private, mode 0600) and {pub} (give this to the server with --trust-key)")
    return 0


def cmd_token(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet token", description=_doc("token"))
    _connection_args(parser)
    parser.add_argument("--ttl", type=float, default=3600.0, help="seconds until the token expires")
    parser.add_argument("--label", action="append", default=[], help="label for the device, key=value")
    args = parser.parse_args(argv)
    token = _client(args).create_enrollment_token(args.ttl, _labels(args.label))
    print(token.token)
    return 0


def cmd_upload(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet upload", description=_doc("upload"))
    _connection_args(parser)
    parser.add_argument("bundle_dir", help="folder written by `edgefleet compress`")
    args = parser.parse_args(argv)
    bundle = _client(args).upload_bundle(args.bundle_dir)
    print(f"uploaded bundle {bundle.bundle_id} ({bundle.model} {bundle.version}: "
          f"{', '.join(bundle.variant_ids)}; {bundle.total_bytes} bytes)")
    return 0


def cmd_deploy(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet deploy", description=_doc("deploy"))
    _connection_args(parser)
    parser.add_argument("bundle_id")
    parser.add_argument("--device", action="append", default=[], help="target device id (repeatable)")
    parser.add_argument("--selector", default="", help="target devices by label, key=value")
    parser.add_argument("--timeout", type=float, default=0.0, help="deployment deadline in seconds")
    parser.add_argument("--rollback-on-failure", action="store_true",
                        help="when a device fails, send every target back to the bundle it ran before")
    parser.add_argument("--rollback-on-timeout", action="store_true",
                        help="with --rollback-on-failure: roll back the same way when the deadline "
                             "passes before every target installed (ROLLED_BACK instead of TIMED_OUT)")
    parser.add_argument("--max-in-flight", type=int, default=0, metavar="N",
                        help="phased rollout: at most N targets released and not yet installed at a "
                             "time, released in device id order; the next one starts when one installs, "
                             "none after a failure (default 0: every target at once)")
    parser.add_argument("--wait", action="store_true", help="wait until the deployment ends")
    args = parser.parse_args(argv)
    if not args.device and not args.selector:
        raise SystemExit("edgefleet: give --device ID (repeatable) or --selector key=value")
    if args.max_in_flight < 0:
        raise SystemExit("edgefleet: --max-in-flight must be 0 (every target at once) or more")
    client = _client(args)
    deployment = client.deploy(args.bundle_id, device_ids=args.device or None,
                               label_selector=args.selector or None, timeout=args.timeout or None,
                               rollback_on_failure=args.rollback_on_failure,
                               rollback_on_timeout=args.rollback_on_timeout,
                               max_in_flight=args.max_in_flight)
    print(f"deployment {deployment.deployment_id}: {len(deployment.targets)} device(s)" + _phased(deployment))
    if args.wait:
        # The server's reaper ends the deployment at its deadline (the server's default when no
        # --timeout was given) within a pass of its interval: wait for that, not just the deadline.
        deadline = deployment.deadline_unix - deployment.created_unix
        deployment = client.wait_deployment(deployment.deployment_id, timeout=deadline + WAIT_MARGIN_SECONDS)
        from proto import fleet_pb2

        state = fleet_pb2.Deployment.State.Name(deployment.state)
        print(f"deployment {deployment.deployment_id}: {state}"
              + (f" ({deployment.rollback_reason})" if deployment.rollback_reason else ""))
        return 0 if deployment.state == fleet_pb2.Deployment.SUCCEEDED else 1
    return 0


def cmd_status(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet status", description=_doc("status"))
    _connection_args(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    status = _client(args).fleet_status()
    if args.json:
        from google.protobuf import json_format

        print(json_format.MessageToJson(status))
        return 0
    waiting = f" ({status.targets_waiting} target(s) waiting in phased rollouts)" if status.targets_waiting else ""
    print(f"devices {status.devices_online}/{status.devices_total} online, "
          f"{status.bundles_total} bundle(s), {status.deployments_in_progress} deployment(s) in progress{waiting}")
    _print_devices(status.devices)
    return 0


def cmd_devices(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet devices", description=_doc("devices"))
    _connection_args(parser)
    parser.add_argument("--selector", default="", help="only devices with this label, key=value")
    args = parser.parse_args(argv)
    _print_devices(_client(args).list_devices(args.selector))
    return 0


def cmd_remove_device(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet remove-device", description=_doc("remove-device"))
    _connection_args(parser)
    parser.add_argument("device_id")
    args = parser.parse_args(argv)
    device = _client(args).remove_device(args.device_id)
    print(f"removed device {device.device_id} ({device.hostname}); its credential no longer works")
    return 0


def cmd_bundles(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet bundles", description=_doc("bundles"))
    _connection_args(parser)
    args = parser.parse_args(argv)
    for b in _client(args).list_bundles():
        print(f"{b.bundle_id}  {b.model} {b.version}  {len(b.variant_ids)} variant(s) "
              f"({', '.join(b.variant_ids)})  {b.total_bytes} bytes  "
              f"uploaded {time.strftime('%F %T', time.localtime(b.created_unix))}")
    return 0


def cmd_remove_bundle(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet remove-bundle", description=_doc("remove-bundle"))
    _connection_args(parser)
    parser.add_argument("bundle_id")
    args = parser.parse_args(argv)
    removed = _client(args).remove_bundle(args.bundle_id)
    b = removed.bundle
    print(f"removed bundle {b.bundle_id} ({b.model} {b.version}) and "
          f"{len(removed.removed_deployment_ids)} finished deployment(s); deleted "
          f"{len(removed.removed_digests)} unshared file(s), {removed.freed_bytes} bytes")
    return 0


def cmd_deployments(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet deployments", description=_doc("deployments"))
    _connection_args(parser)
    parser.add_argument("--targets", action="store_true",
                        help="also print every target: phase, error, where a rollback sends it")
    args = parser.parse_args(argv)
    from proto import fleet_pb2

    phase = fleet_pb2.ReportedState.Phase.Name
    for d in _client(args).list_deployments():
        done = sum(1 for t in d.targets if t.phase == fleet_pb2.ReportedState.INSTALLED)
        print(f"{d.deployment_id}  {fleet_pb2.Deployment.State.Name(d.state):<12} bundle {d.bundle_id[:12]}  "
              f"{done}/{len(d.targets)} installed  created {time.strftime('%F %T', time.localtime(d.created_unix))}"
              + _phased(d) + _rollback_policy(d)
              + (f"  rolled back: {d.rollback_reason}" if d.rollback_reason else ""))
        if args.targets:
            for t in d.targets:
                back = f"  rollback to {t.rollback_bundle_id[:12] or 'nothing'}" if d.rollback_on_failure else ""
                print(f"    {t.device_id}  {_target_state(t, phase):<12}{back}"
                      + (f"  {t.error}" if t.error else ""))
    return 0


def _phased(d) -> str:
    """A phased rollout's limit and how many targets wait for (or never got) their turn."""
    if not d.max_in_flight:
        return ""
    from proto import fleet_pb2

    release = fleet_pb2.DeploymentTarget.Release
    waiting = sum(1 for t in d.targets if t.release == release.WAITING)
    not_started = sum(1 for t in d.targets if t.release == release.NOT_STARTED)
    return (f"  max {d.max_in_flight} in flight, {waiting} waiting"
            + (f", {not_started} not started" if not_started else ""))


def _target_state(t, phase) -> str:
    """The phase the device reported, or, for a target a phased rollout has not released,
    WAITING / NOT_STARTED (such a device was never asked, so it has no phase of its own)."""
    from proto import fleet_pb2

    release = fleet_pb2.DeploymentTarget.Release
    if t.release in (release.WAITING, release.NOT_STARTED):
        return release.Name(t.release)
    return phase(t.phase) if t.phase else "PENDING"


def _rollback_policy(d) -> str:
    if not d.rollback_on_failure:
        return ""
    return "  rollback on failure" + (" and timeout" if d.rollback_on_timeout else "")


def _print_devices(devices) -> None:
    from proto import fleet_pb2

    for d in devices:
        r = d.reported
        phase = fleet_pb2.ReportedState.Phase.Name(r.phase) if r.phase else "-"
        s = r.sensors
        battery = f"{s.battery_percent:.0f}%" if s.HasField("battery_percent") else "?"
        temp = f"{s.temperature_celsius:.0f}C" if s.HasField("temperature_celsius") else "?"
        # mutual TLS: the client certificate CN the device is bound to ("-": none, e.g. no mutual TLS)
        cert = f"CN={d.certificate_common_name}" if d.certificate_common_name else "-"
        print(f"{d.device_id}  {'online ' if d.online else 'offline'}  {d.hostname:<16} "
              f"bundle {(r.bundle_id or '-')[:12]:<12} {phase:<11} variant {r.active_variant or '-':<12} "
              f"battery {battery:>4} temp {temp:>4}  cert {cert:<15}  {r.switch_reason}")


_COMMANDS = {
    "keygen": cmd_keygen, "token": cmd_token, "upload": cmd_upload, "deploy": cmd_deploy,
    "status": cmd_status, "devices": cmd_devices, "remove-device": cmd_remove_device,
    "bundles": cmd_bundles, "remove-bundle": cmd_remove_bundle, "deployments": cmd_deployments,
}


def _doc(name: str) -> str:
    from edgefleet.cli import _OPERATOR

    return _OPERATOR[name]


def main(command: str, argv: list[str]) -> int:
    import grpc

    from proto.tls import TlsError

    try:
        return _COMMANDS[command](argv)
    except grpc.RpcError as err:
        print(f"edgefleet {command}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except TlsError as err:             # conflicting --tls-* options or a bad PEM file
        print(f"edgefleet {command}: {err}", file=sys.stderr)
        return 2
