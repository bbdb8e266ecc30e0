"""Regenerate (or check) onnx_subset_pb2.py from kernels/engine/onnx_subset.proto.

    python -m kernels.engine.codegen          # rewrite onnx_subset_pb2.py (+ .pyi)
    python -m kernels.engine.codegen --check  # exit 1 if the committed code is stale

Same approach as proto/codegen.py: compile with the repository root as include path into a
temporary folder, then compare or copy. Only grpc_tools (a dev dependency) is needed here;
at run time the engine needs nothing beyond google.protobuf.
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import shutil
import sys
import tempfile

ENGINE_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = ENGINE_DIR.parents[1]
PROTO = ENGINE_DIR / "onnx_subset.proto"
GENERATED = ("onnx_subset_pb2.py", "onnx_subset_pb2.pyi")


def generate(out_root: pathlib.Path) -> pathlib.Path:
    """Compile into out_root; returns the folder holding the generated files."""
    from grpc_tools import protoc  # dev dependency only

    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        str(PROTO),
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    return out_root / ENGINE_DIR.relative_to(REPO_ROOT)


def stale_files() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        out = generate(pathlib.Path(tmp))
        return [name for name in GENERATED
                if not (ENGINE_DIR / name).exists()
                or not filecmp.cmp(out / name, ENGINE_DIR / name, shallow=False)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, do not write")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated code: " + ", ".join(stale) + " (run python -m kernels.engine.codegen)")
            return 1
        print("generated code is up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = generate(pathlib.Path(tmp))
        for name in GENERATED:
            shutil.copyfile(out / name, ENGINE_DIR / name)
    print("wrote " + ", ".join(GENERATED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
