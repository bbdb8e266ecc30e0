"""Regenerate (or check) the Python code generated from proto/fleet.proto.

    python -m proto.codegen          # rewrite fleet_pb2.py, fleet_pb2_grpc.py, fleet_pb2.pyi
    python -m proto.codegen --check  # exit 1 if the committed code is stale

The proto is compiled with the repository root as include path, so the generated
modules import each other as `from proto import fleet_pb2` and work as a package.
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import shutil
import sys
import tempfile

PROTO_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent
GENERATED = ("fleet_pb2.py", "fleet_pb2_grpc.py", "fleet_pb2.pyi")


def generate(out_root: pathlib.Path) -> None:
    from grpc_tools import protoc  # dev dependency only

    (out_root / "proto").mkdir(parents=True, exist_ok=True)
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(PROTO_DIR / "fleet.proto"),
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, do not write")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        generate(out)
        stale = [name for name in GENERATED
                 if not (PROTO_DIR / name).exists()
                 or not filecmp.cmp(out / "proto" / name, PROTO_DIR / name, shallow=False)]
        if args.check:
            if stale:
                print("stale generated code: " + ", ".join(stale) + " (run python -m proto.codegen)")
                return 1
            print("generated code is up to date")
            return 0
        for name in GENERATED:
            shutil.copyfile(out / "proto" / name, PROTO_DIR / name)
        print("wrote " + ", ".join(GENERATED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
