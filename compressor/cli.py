"""Command line: `compress` (built-in example model -> signed bundle) and `quantize-onnx`
(post-training quantization of an existing .onnx file).

    python -m compressor.cli compress --out bundle/ --signing-key publisher.key
    python -m compressor.cli quantize-onnx model.onnx --calib calib.npz --out model.int8.onnx

The lead's `edgefleet compress` calls main(["compress", ...]).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np


def _print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("id", "method", "bits", "sparsity", "size", "quality", "p50 ms", "p95 ms", "parent"):
        t.add_column(col, justify="right" if col not in ("id", "method", "parent") else "left")
    for r in rows:
        t.add_row(r["id"], r["method"], r["bits"], f"{r['sparsity']:.0%}",
                  f"{r['size_bytes'] / 1024:.1f} KiB", f"{r['quality']:.4f}",
                  f"{r['p50_ms']:.3f}", f"{r['p95_ms']:.3f}", r["parent"] or "-")
    console = Console()
    Console(width=max(console.width, 120)).print(t)


def public_key_path(key_path: str | pathlib.Path) -> pathlib.Path:
    p = pathlib.Path(key_path)
    return p.with_suffix(".pub") if p.suffix != ".pub" else p.with_name(p.name + ".pub")


def cmd_compress(args: argparse.Namespace) -> int:
    from compressor import Fp32Config, Int4WeightOnlyConfig, Int8StaticConfig, compress
    from compressor.evaluate import LatencyConfig
    from compressor.examples import EXAMPLES
    from proto.signing import load_or_create_private_key, public_key_bytes

    key = load_or_create_private_key(args.signing_key)
    pub_path = public_key_path(args.signing_key)
    pub_path.write_bytes(public_key_bytes(key))
    print(f"training {args.model} (seed {args.seed}, {args.epochs} epochs)...", flush=True)
    ex = EXAMPLES[args.model](seed=args.seed, epochs=args.epochs)
    configs = [Fp32Config(), Int8StaticConfig(), Int4WeightOnlyConfig(group_size=args.group_size)]
    result = compress(ex.model, configs, calib_data=ex.calibration[0], eval_data=ex.heldout,
                      out_dir=args.out, signing_key=key, model_name=args.model,
                      version=args.version, latency=LatencyConfig(threads=args.threads),
                      progress=(lambda m: print("  " + m, flush=True)))
    _print_table(result.table(), f"{args.model} bundle {result.bundle_id[:12]} -> {args.out}")
    print(f"bundle id {result.bundle_id}\npublic key {pub_path}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from compressor.evaluate import LatencyConfig
    from compressor.examples import EXAMPLES
    from compressor.search import Budget, print_report, search
    from proto.signing import load_or_create_private_key, public_key_bytes

    key = load_or_create_private_key(args.signing_key)
    public_key_path(args.signing_key).write_bytes(public_key_bytes(key))
    print(f"training {args.model} (seed {args.seed}, {args.epochs} epochs)...", flush=True)
    ex = EXAMPLES[args.model](seed=args.seed, epochs=args.epochs)
    budget = Budget(max_quality_drop=args.max_drop / 100.0,
                    max_size_bytes=int(args.max_size_kib * 1024) if args.max_size_kib else None,
                    max_latency_seconds=args.max_latency_ms / 1e3 if args.max_latency_ms else None)
    res = search(ex.model, budget, calib_data=ex.calibration[0], eval_data=ex.heldout,
                 train_data=ex.train, work_dir=args.work_dir, out_dir=args.out, signing_key=key,
                 model_name=args.model, latency=LatencyConfig(threads=args.threads))
    print_report(res)
    print(f"bundle id {res.bundle.bundle_id} ({len(res.front)} variants) -> {args.out}")
    return 0


def load_calibration(path: str, input_name: str | None = None) -> np.ndarray:
    """.npy: the array itself. .npz: the array named like the model input, else the only
    array, else one called "calib"/"x"/"input"."""
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.ndarray):
        return data.astype(np.float32)
    keys = list(data.keys())
    for k in ([input_name] if input_name else []) + ["calib", "x", "input"]:
        if k in keys:
            return data[k].astype(np.float32)
    if len(keys) == 1:
        return data[keys[0]].astype(np.float32)
    raise SystemExit(f"{path}: several arrays {keys}; name one after the model input")


def cmd_quantize_onnx(args: argparse.Namespace) -> int:
    import onnx

    from compressor.export import check_model
    from compressor.quant.qdq import QdqOptions, quantize_static_qdq
    from compressor.quant.weight_only import quantize_weight_only
    from compressor.quant.convert import ensure_opset

    model = ensure_opset(onnx.load(args.input))
    if args.format == "int8":
        calib = load_calibration(args.calib, model.graph.input[0].name) if args.calib else None
        from compressor.quant.calibration import check_calibration_data
        calib = check_calibration_data(calib, "quantize-onnx --format int8 (use --calib)")
        q, report = quantize_static_qdq(model, calib, QdqOptions(
            activation_dtype=args.activation_type, per_channel=not args.per_tensor,
            method=args.method, percentile=args.percentile,
            activation_symmetric=args.symmetric_activations))
    else:
        bits = int(args.format[-1])
        # As Int4WeightOnlyConfig: 2-bit keeps the first and last weight layers at int8 unless told.
        edge_bits = args.edge_bits if args.edge_bits is not None else (8 if bits == 2 else None)
        q, report = quantize_weight_only(model, bits=bits, group_size=args.group_size, edge_bits=edge_bits)
    check_model(q)
    onnx.save(q, args.out)
    before, after = pathlib.Path(args.input).stat().st_size, pathlib.Path(args.out).stat().st_size
    print(f"{args.input} ({before} B) -> {args.out} ({after} B, {before / after:.2f}x smaller); "
          f"{len(report['layers'])} layers quantized")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="train a built-in example model and write its bundle")
    c.add_argument("--out", required=True, help="bundle folder to write (replaced atomically)")
    c.add_argument("--signing-key", required=True,
                   help="Ed25519 private key (PEM); created if missing, with KEY.pub beside it")
    c.add_argument("--model", default="digits-cnn", choices=["digits-cnn"])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--epochs", type=int, default=15)
    c.add_argument("--group-size", type=int, default=32, help="int4 group size")
    c.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency")
    c.add_argument("--version", default="1", help="model version recorded in the manifest")
    c.set_defaults(fn=cmd_compress)
    s = sub.add_parser("search", help="budget search on a built-in example: Pareto front as bundle")
    s.add_argument("--out", required=True)
    s.add_argument("--signing-key", required=True)
    s.add_argument("--work-dir", required=True, help="finished candidates are kept here (resume)")
    s.add_argument("--max-drop", type=float, default=1.0, help="accepted accuracy drop, points")
    s.add_argument("--max-size-kib", type=float, default=None)
    s.add_argument("--max-latency-ms", type=float, default=None)
    s.add_argument("--model", default="digits-cnn", choices=["digits-cnn"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--epochs", type=int, default=15)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_search)
    q = sub.add_parser("quantize-onnx", help="post-training quantization of an existing .onnx")
    q.add_argument("input", help="fp32 .onnx file")
    q.add_argument("--calib", help=".npy or .npz with calibration inputs (N, ...)")
    q.add_argument("--out", required=True)
    q.add_argument("--format", default="int8", choices=["int8", "int4", "int2"])
    q.add_argument("--method", default="minmax", choices=["minmax", "percentile", "mse", "entropy"])
    q.add_argument("--percentile", type=float, default=99.99)
    q.add_argument("--activation-type", default="uint8", choices=["uint8", "int8", "uint16", "int16"])
    q.add_argument("--symmetric-activations", action="store_true")
    q.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default per-channel)")
    q.add_argument("--group-size", type=int, default=32, help="int4/int2 weights per scale group")
    q.add_argument("--edge-bits", type=int, default=None, choices=[2, 4, 8],
                   help="bits of the first and last weight layers (int2 default: 8; int4: 4)")
    q.set_defaults(fn=cmd_quantize_onnx)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
