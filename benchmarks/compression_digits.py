"""Compression benchmark: our variants beside onnxruntime's and torch.ao's, same model, one run.

    python benchmarks/compression_digits.py [--models digits-cnn,mobilenetv2-digits] [--threads 1]

For each model: our variants (bits, sparsity, method, size, held-out accuracy, onnxruntime
latency p50 at batch 1) and the peers on the same trained weights:
  ort-dynamic-int8   onnxruntime.quantization.quantize_dynamic (per-channel int8 weights)
  ort-static-int8    onnxruntime.quantization.quantize_static, QDQ, per-channel, min-max on
                     the same calibration split
  ort-matmulnbits    onnxruntime MatMulNBitsQuantizer int4 (block 32); it only rewrites MatMul,
                     so CNNs whose linear layers are Gemm come back unchanged (said so)
  torch.ao-dynamic   torch.ao.quantization.quantize_dynamic on nn.Linear (PyTorch eager latency)
Ratios: size and latency relative to fp32, and our int8 against each int8 peer.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from compressor import (DistillConfig, Fp32Config, Int4WeightOnlyConfig,  # noqa: E402
                        Int8DynamicConfig, Int8StaticConfig, PruneConfig, compress)
from compressor.evaluate import (LatencyConfig, accuracy_fn, measure_latency,  # noqa: E402
                                 session)
from compressor.examples import EXAMPLES  # noqa: E402


def ort_peers(fp32_bytes: bytes, calib: np.ndarray, tmp: pathlib.Path) -> dict[str, bytes | str]:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    src = tmp / "fp32.onnx"
    src.write_bytes(fp32_bytes)
    out: dict[str, bytes | str] = {}
    quantize_dynamic(str(src), str(tmp / "dyn.onnx"), weight_type=QuantType.QInt8, per_channel=True)
    out["ort-dynamic-int8"] = (tmp / "dyn.onnx").read_bytes()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(tmp / "static.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    out["ort-static-int8"] = (tmp / "static.onnx").read_bytes()
    try:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
        q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=True)
        q.process()
        data = q.model.model.SerializeToString()
        n = sum(1 for node in q.model.model.graph.node if node.op_type == "MatMulNBits")
        out["ort-matmulnbits-int4"] = data if n else "no MatMul nodes (linear layers are Gemm): unchanged"
    except Exception as exc:  # a peer failing must not hide the rest of the table
        out["ort-matmulnbits-int4"] = f"failed: {exc}"
    return out


def torch_ao_dynamic(model, x_eval, y_eval, sample, lat: LatencyConfig):
    import copy

    import torch
    q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear},
                                               dtype=torch.qint8)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    torch.set_num_threads(lat.threads)
    with torch.no_grad():
        acc = float((q(torch.from_numpy(np.array(x_eval))).argmax(1).numpy() == y_eval).mean())
        x = torch.from_numpy(np.array(sample[:1]))
        for _ in range(lat.warmup):
            q(x)
        ts = []
        for _ in range(lat.repeats):
            t0 = time.perf_counter()
            q(x)
            ts.append(time.perf_counter() - t0)
    return acc, len(buf.getvalue()), float(np.percentile(ts, 50))


def our_configs(name: str):
    ft = 5 if name == "digits-cnn" else 10     # MobileNet needs longer to recover from pruning
    # MobileNet: rank hidden channels by what they feed the projection (activation x weight);
    # the expand conv's filter norm ignores BatchNorm's rescaling and lost ~2 points here
    imp = "magnitude" if name == "digits-cnn" else "activation"
    cfgs = [Fp32Config(), Int8StaticConfig(), Int8StaticConfig(id="int8-percentile", calibration="percentile"),
            Int8DynamicConfig(), Int4WeightOnlyConfig(), Int4WeightOnlyConfig(algorithm="gptq"),
            PruneConfig(pattern="2:4", finetune_epochs=3),
            PruneConfig(pattern="channel", sparsity=0.5, finetune_epochs=ft, importance=imp),
            PruneConfig(pattern="channel", sparsity=0.5, int8=True, finetune_epochs=ft, importance=imp)]
    if name == "digits-cnn":
        cfgs += [DistillConfig(width=0.25, int8=True)]
    return cfgs


def run_model(name: str, lat: LatencyConfig, epochs: int | None) -> None:
    from rich.console import Console
    from rich.table import Table

    t0 = time.time()
    ex = EXAMPLES[name](**({"epochs": epochs} if epochs else {}))
    train_s = time.time() - t0
    res = compress(ex.model, our_configs(name), calib_data=ex.calibration[0], eval_data=ex.heldout,
                   train_data=ex.train, model_name=name, latency=lat)
    fp32 = res.manifest.variants[0]
    rows = [(v.id, "ours", v.method, f"w{v.weight_bits}a{v.activation_bits}", v.sparsity,
             v.size_bytes, v.quality, v.latency_p50_seconds, v.details.get("macs"))
            for v in res.manifest.variants]
    acc = accuracy_fn(*ex.heldout)
    with tempfile.TemporaryDirectory() as d:
        for pid, data in ort_peers(res.files["fp32.onnx"], ex.calibration[0], pathlib.Path(d)).items():
            if isinstance(data, str):
                rows.append((pid, "onnxruntime", data, "", 0.0, None, None, None, None))
                continue
            s = session(data, lat.threads)
            rows.append((pid, "onnxruntime", pid, "w8a8" if "int8" in pid else "w4a32", 0.0,
                         len(data), acc(s), measure_latency(s, ex.heldout[0], lat)[0], None))
    a, size, p50 = torch_ao_dynamic(ex.model, *ex.heldout, ex.heldout[0], lat)
    rows.append(("torch.ao-dynamic-int8", "torch eager", "quantize_dynamic(Linear)", "w8a32",
                 0.0, size, a, p50, None))
    t = Table(title=f"{name}: trained in {train_s:.0f} s, held-out n={len(ex.heldout[1])}, "
                    f"onnxruntime {lat.threads} thread(s), batch 1")
    for c in ("variant", "by", "method", "bits", "sparsity", "size KiB", "x smaller", "accuracy",
              "drop pt", "p50 ms", "x faster", "MACs"):
        t.add_column(c)
    for vid, by, method, bits, sp, size, q, p50, macs in rows:
        t.add_row(vid, by, method, bits, f"{sp:.2f}",
                  "-" if size is None else f"{size / 1024:.1f}",
                  "-" if size is None else f"{fp32.size_bytes / size:.2f}",
                  "-" if q is None else f"{q:.4f}",
                  "-" if q is None else f"{(fp32.quality - q) * 100:+.2f}",
                  "-" if p50 is None else f"{p50 * 1e3:.4f}",
                  "-" if p50 is None else f"{fp32.latency_p50_seconds / p50:.2f}",
                  "-" if macs is None else f"{macs / 1e6:.2f}M")
    Console(width=170).print(t)
    ours = {r[0]: r for r in rows}
    o = ours["int8"]
    for peer in ("ort-static-int8", "ort-dynamic-int8", "torch.ao-dynamic-int8"):
        p = ours.get(peer)
        if p and p[5]:
            print(f"  ours int8 vs {peer}: size {p[5] / o[5]:.2f}x smaller, latency "
                  f"{p[7] / o[7]:.2f}x faster, accuracy {(o[6] - p[6]) * 100:+.2f} pt")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits-cnn,mobilenetv2-digits")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=None, help="override training epochs")
    a = ap.parse_args(argv)
    lat = LatencyConfig(warmup=30, repeats=a.repeats, threads=a.threads)
    for name in a.models.split(","):
        run_model(name.strip(), lat, a.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
