"""QAT int8 against static PTQ int8, and sensitivity-chosen mixed precision, one run per model.

    python benchmarks/compression_qat_mixed.py [--models digits-cnn,mobilenetv2-digits]
        [--calib-samples 180,8] [--qat-epochs 3] [--max-drop 0.005] [--no-mixed]

For each model (trained with the seed of compressor.examples) and each calibration-set size:
static PTQ int8 (min-max) and Int8QatConfig, both with per-channel and per-tensor weights,
on the same calibration rows (the first N of the calibration split) and the same held-out
split. Then MixedPrecisionConfig(max_drop) with per-tensor weights (the setting where some
layers lose), printing which layers it kept at higher precision. Accuracy is held-out top-1
through onnxruntime; torch training runs on one thread.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from compressor import Fp32Config, Int8StaticConfig, compress  # noqa: E402
from compressor.configs import Int8QatConfig, MixedPrecisionConfig  # noqa: E402
from compressor.evaluate import LatencyConfig  # noqa: E402
from compressor.examples import EXAMPLES  # noqa: E402

FAST = LatencyConfig(warmup=5, repeats=50)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits-cnn,mobilenetv2-digits")
    ap.add_argument("--calib-samples", default="180,8")
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--max-drop", type=float, default=0.005)
    ap.add_argument("--no-mixed", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in args.models.split(","):
        t0 = time.time()
        ex = EXAMPLES[name](seed=args.seed)
        print(f"== {name}: trained in {time.time() - t0:.0f} s", flush=True)
        for n in (int(v) for v in args.calib_samples.split(",")):
            calib = ex.calibration[0][:n]
            configs = [Fp32Config()]
            for pc in (True, False):
                sfx = "" if pc else "-pt"
                configs += [Int8StaticConfig(id=f"ptq{sfx}", per_channel=pc),
                            Int8QatConfig(id=f"qat{sfx}", per_channel=pc, epochs=args.qat_epochs,
                                          lr=args.qat_lr, seed=args.seed)]
            t0 = time.time()
            r = compress(ex.model, configs, calib_data=calib, eval_data=ex.heldout,
                         train_data=ex.train, latency=FAST)
            q = {v.id: v.quality for v in r.manifest.variants}
            print(f"calibration rows {n} ({time.time() - t0:.0f} s): fp32 {q['fp32']:.4f}", flush=True)
            for w, sfx in (("per-channel", ""), ("per-tensor", "-pt")):
                p, a = q[f"ptq{sfx}"], q[f"qat{sfx}"]
                print(f"  {w:11s} weights: PTQ int8 {p:.4f} ({(p - q['fp32']) * 100:+.2f} pt)  "
                      f"QAT int8 {a:.4f} ({(a - q['fp32']) * 100:+.2f} pt)  QAT-PTQ {(a - p) * 100:+.2f} pt",
                      flush=True)
        if args.no_mixed:
            continue
        t0 = time.time()
        cfg = MixedPrecisionConfig(max_drop=args.max_drop, per_channel=False,
                                   candidates=("int8", "int16", "fp32"))
        r = compress(ex.model, [Fp32Config(), Int8StaticConfig(id="ptq-pt", per_channel=False), cfg],
                     calib_data=ex.calibration[0], eval_data=ex.heldout, latency=FAST)
        fp32, ptq, mixed = r.manifest.variants
        d = mixed.details
        kept = [(l["weight"], l["precision"], round(l["drop"], 4)) for l in
                sorted(d["layers"], key=lambda l: l["rank"]) if l["precision"] != "int8"]
        print(f"mixed precision (per-tensor weights, max_drop {args.max_drop}, {time.time() - t0:.0f} s): "
              f"fp32 {fp32.quality:.4f}, all-int8 {ptq.quality:.4f}, mixed {mixed.quality:.4f} "
              f"({(mixed.quality - fp32.quality) * 100:+.2f} pt), {len(d['layers'])} layers, "
              f"{len(kept)} above int8: {kept}; size {mixed.size_bytes / 1024:.0f} KiB "
              f"(fp32 {fp32.size_bytes / 1024:.0f}, int8 {ptq.size_bytes / 1024:.0f})", flush=True)


if __name__ == "__main__":
    main()
