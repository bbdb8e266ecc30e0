"""`edgefleet agent` / `python -m agent`: parse flags, run the daemon until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import os
import logging
import signal
import sys

from agent.config import DEFAULT_LOCAL_PORT, AgentConfig
from agent.identity import EnrollmentError
from proto.tls import TlsError


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label {text!r} must be key=value")
    return key, value


# The TLS flags' environment defaults: the client names the operator commands and the health
# check read too, so a systemd EnvironmentFile (deploy/systemd/agent.env.example) can set them.
TLS_ENVIRONMENT = {"--tls-ca": "EDGEFLEET_TLS_CA", "--tls-cert": "EDGEFLEET_TLS_CLIENT_CERT",
                   "--tls-key": "EDGEFLEET_TLS_CLIENT_KEY"}


def _env(name: str) -> str | None:
    return os.environ.get(name) or None      # set but empty (`KEY=` in an EnvironmentFile) = not set


def build_parser() -> argparse.ArgumentParser:
    defaults = AgentConfig.__dataclass_fields__
    p = argparse.ArgumentParser(prog="edgefleet agent", description="edgefleet device agent")
    p.add_argument("--server", default="127.0.0.1:50051", help="control plane HOST:PORT")
    p.add_argument("--token", default=os.environ.get("EDGEFLEET_ENROLL_TOKEN"),
                   help="one-time enrollment token (first start only); default $EDGEFLEET_ENROLL_TOKEN, "
                        "which keeps it out of the process list")
    p.add_argument("--data-dir", default=defaults["data_dir"].default_factory(),
                   help="identity, artifacts, bundles, profiles (default: %(default)s)")
    p.add_argument("--sensors", default="psutil",
                   help='sensor source: psutil | sim:drain | sim:heat | sim:mains | replay:<csv>')
    p.add_argument("--sim-speed", type=float, default=1.0, help="time factor of simulated sensors")
    p.add_argument("--sensor-seed", type=int, default=None, help="seed of simulated sensors")
    p.add_argument("--local-host", default="127.0.0.1", help="local inference API bind address")
    p.add_argument("--local-port", type=int, default=DEFAULT_LOCAL_PORT, help="local API port (0 = any free)")
    p.add_argument("--metrics-port", type=int, default=-1,
                   help="separate Prometheus /metrics port (-1 = off, 0 = any free)")
    p.add_argument("--policy", default=None, help="scheduler policy TOML file")
    p.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE",
                   help="device label sent at enrollment (repeatable)")
    p.add_argument("--tls-ca", default=_env(TLS_ENVIRONMENT["--tls-ca"]), metavar="PEM",
                   help="CA PEM for a TLS server (default $EDGEFLEET_TLS_CA; none = plaintext)")
    p.add_argument("--tls-cert", default=_env(TLS_ENVIRONMENT["--tls-cert"]), metavar="PEM",
                   help="this device's client certificate, for a server that requires mutual TLS "
                        "(with --tls-key and --tls-ca; keep its subject CN: the device is bound to it; "
                        "default $EDGEFLEET_TLS_CLIENT_CERT)")
    p.add_argument("--tls-key", default=_env(TLS_ENVIRONMENT["--tls-key"]), metavar="PEM",
                   help="private key of --tls-cert (default $EDGEFLEET_TLS_CLIENT_KEY)")
    p.add_argument("--engine", default="auto",
                   help="inference engine: auto (default) serves each variant on the faster of the native "
                        "engine and onnxruntime, measured when it arrives; onnxruntime or native pin one")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per inference session")
    p.add_argument("--batch-max-rows", type=int, default=0,
                   help="coalesce concurrent requests into batches of up to N rows (0 = off)")
    p.add_argument("--heartbeat-interval", type=float, default=2.0, help="seconds")
    p.add_argument("--metrics-interval", type=float, default=2.0, help="seconds between metric pushes")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(server=args.server, enrollment_token=args.token, data_dir=args.data_dir,
                       sensors=args.sensors, sim_speed=args.sim_speed, sensor_seed=args.sensor_seed,
                       local_host=args.local_host, local_port=args.local_port, metrics_port=args.metrics_port,
                       policy_file=args.policy, labels=dict(args.label), tls_ca=args.tls_ca,
                       tls_cert=args.tls_cert, tls_key=args.tls_key,
                       engine=args.engine, intra_op_threads=args.threads, batch_max_rows=args.batch_max_rows,
                       heartbeat_interval=args.heartbeat_interval, metrics_interval=args.metrics_interval)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        message = str(exc)
        if "--tls-" in message:      # say which of the values came from the environment
            from_env = [f"{flag} from ${name}" for flag, name in TLS_ENVIRONMENT.items()
                        if _env(name) is not None and getattr(args, flag[2:].replace("-", "_")) == _env(name)]
            message += f" ({', '.join(from_env)})" if from_env else ""
        parser.error(message)

    from agent.daemon import Daemon      # after arg parsing: --help stays instant

    daemon = Daemon(config)

    def _on_signal(signum, _frame):
        logging.getLogger("agent").info("signal %s: shutting down", signal.Signals(signum).name)
        daemon.stop_event.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        daemon.start()
        daemon.wait()
    except EnrollmentError as exc:
        if daemon.stop_event.is_set():
            return 0                     # asked to stop while still waiting to enroll
        logging.getLogger("agent").error("%s", exc)
        print(f"edgefleet agent: {exc}", file=sys.stderr)
        return 2
    except (OSError, TlsError) as exc:  # e.g. the local API port is taken, a TLS file is bad
        logging.getLogger("agent").error("cannot start: %s", exc)
        print(f"edgefleet agent: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
