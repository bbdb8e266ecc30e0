"""The `edgefleet` command: one entry point, one subcommand per job.

Each subcommand imports its package only when it runs, so `edgefleet agent` on a device
never loads torch or the server, and `edgefleet --help` is instant.

    edgefleet demo                      the end-to-end demo on the embedded defaults
    edgefleet server  --data-dir D      the control plane (gRPC + Prometheus /metrics)
    edgefleet agent   --server H:P --token T --data-dir D
    edgefleet compress --out DIR        train the example model and write a signed bundle
    edgefleet search --out DIR --max-drop 1.0   the Pareto front under a quality budget
    edgefleet quantize-onnx IN --calib X.npz --out OUT
    edgefleet keygen  --out publisher.key
    edgefleet token | upload | deploy | status | devices | deployments   (operator calls)
"""

from __future__ import annotations

import sys

# Subcommands that hand their arguments to a package's own main(argv):
# name -> (module, argv prefix, help line).
_DELEGATED = {
    "server": ("server.app", [], "run the control plane (gRPC, SQLite/PostgreSQL, /metrics)"),
    "agent": ("agent.main", [], "run the device agent"),
    "demo": ("edgefleet.demo", [], "run the end-to-end demo on the embedded defaults"),
    "compress": ("compressor.cli", ["compress"], "train the example model and write a signed bundle"),
    "search": ("compressor.cli", ["search"], "search compressions under a quality budget; keep the Pareto front"),
    "quantize-onnx": ("compressor.cli", ["quantize-onnx"], "post-training quantization of an existing .onnx"),
}
# Subcommands that talk to a running server as an operator.
_OPERATOR = {
    "keygen": "create a publisher signing key (and its .pub)",
    "token": "create a one-time enrollment token for a device",
    "upload": "upload a signed bundle folder to the server",
    "deploy": "deploy an uploaded bundle to devices or a label selector",
    "status": "fleet status: devices, what they hold and run",
    "devices": "list devices",
    "remove-device": "decommission a device: its credential stops working",
    "bundles": "list uploaded bundles",
    "remove-bundle": "delete a bundle no device needs, and its unshared files",
    "deployments": "list deployments (--targets: per device, with errors)",
}


def _usage() -> str:
    lines = ["usage: edgefleet <command> [options]", "", "commands:"]
    for name, (_, _, doc) in _DELEGATED.items():
        lines.append(f"  {name:<14} {doc}")
    for name, doc in _OPERATOR.items():
        lines.append(f"  {name:<14} {doc}")
    lines += ["", "`edgefleet <command> --help` documents each command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in _DELEGATED:
        module_name, prefix, _ = _DELEGATED[command]
        import importlib

        module = importlib.import_module(module_name)
        return int(module.main(prefix + rest) or 0)
    if command in _OPERATOR:
        from edgefleet import operator_cli

        return operator_cli.main(command, rest)
    print(f"edgefleet: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
