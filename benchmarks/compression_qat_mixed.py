"""QAT int8 against static PTQ int8, and sensitivity-chosen mixed precision, one run per model.

    python benchmarks/compression_qat_mixed.py [--models digits-cnn,mobilenetv2-digits]
        [--outlier 512] [--calib-samples N] [--per-tensor] [--qat-epochs 3]
        [--qat-lrs 1e-4,1e-3 ("" for none)] [--max-drop 0.005] [--no-mixed]

For each model (trained with compressor.examples' seed), first as trained, then with one
activation-outlier channel (--outlier K, 0 to skip): one channel of a layer's output is
multiplied by K and the layer that reads it divides its weights by K, so the fp32 function
is unchanged but a per-tensor activation scale must cover a K times wider range (the
failure mode of static PTQ that QAT can train around). Variants: fp32, static PTQ int8
(min-max, per-channel weights; --per-tensor adds per-tensor weights), Int8QatConfig at each
--qat-lrs, and MixedPrecisionConfig(max_drop) with candidates int8/int16/fp32. Printed per
variant: held-out accuracy and mean negative log-likelihood (a continuous quality measure:
accuracy on 360 held-out images moves in steps of 0.28 points) through onnxruntime, size.
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from compressor import Fp32Config, Int8StaticConfig, compress  # noqa: E402
from compressor.configs import Int8QatConfig, MixedPrecisionConfig  # noqa: E402
from compressor.evaluate import LatencyConfig, run, session  # noqa: E402
from compressor.examples import EXAMPLES  # noqa: E402
from compressor.models.digits_cnn import DigitsCNN  # noqa: E402
from compressor.models.mobilenet_v2 import MobileNetV2  # noqa: E402

FAST = LatencyConfig(warmup=5, repeats=50)


def add_outlier_channel(model, k: float):
    """A copy computing the same function with output channel 0 of one layer k times larger:
    digits CNN conv2 (its reader conv3 divides by k; ReLU and MaxPool commute with k > 0);
    MobileNetV2 the last block's linear projection (BatchNorm gamma and beta; the head conv
    divides by k)."""
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        if isinstance(m, DigitsCNN):
            m.conv2.weight[0] *= k
            m.conv2.bias[0] *= k
            m.conv3.weight[:, 0] /= k
        elif isinstance(m, MobileNetV2):
            bn = m.blocks[-1].project.bn
            bn.weight[0] *= k
            bn.bias[0] *= k
            m.head.conv.weight[:, 0] /= k
        else:
            raise ValueError(f"no outlier recipe for {type(m).__name__}")
    return m


def nll(onnx_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    z = run(session(onnx_bytes), x).astype(np.float64)
    z -= z.max(1, keepdims=True)
    return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits-cnn,mobilenetv2-digits")
    ap.add_argument("--outlier", type=float, default=512.0)
    ap.add_argument("--calib-samples", type=int, default=0, help="0: the whole calibration split")
    ap.add_argument("--per-tensor", action="store_true")
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--qat-lrs", default="1e-4,1e-3")
    ap.add_argument("--max-drop", type=float, default=0.005)
    ap.add_argument("--no-mixed", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.models.split(","):
        t0 = time.time()
        ex = EXAMPLES[name](seed=args.seed)
        print(f"== {name}: trained in {time.time() - t0:.0f} s", flush=True)
        calib = ex.calibration[0][:args.calib_samples or None]
        for k in ([1.0] + ([args.outlier] if args.outlier else [])):
            model = ex.model if k == 1.0 else add_outlier_channel(ex.model, k)
            configs = [Fp32Config(), Int8StaticConfig(id="ptq")]
            if args.per_tensor:
                configs.append(Int8StaticConfig(id="ptq-pt", per_channel=False))
            for lr in (float(v) for v in args.qat_lrs.split(",") if v):
                configs.append(Int8QatConfig(id=f"qat-lr{lr:g}", epochs=args.qat_epochs, lr=lr,
                                             seed=args.seed))
                if args.per_tensor:
                    configs.append(Int8QatConfig(id=f"qat-pt-lr{lr:g}", epochs=args.qat_epochs,
                                                 lr=lr, per_channel=False, seed=args.seed))
            if not args.no_mixed:
                configs.append(MixedPrecisionConfig(max_drop=args.max_drop,
                                                    candidates=("int8", "int16", "fp32")))
            t0 = time.time()
            r = compress(model, configs, calib_data=calib, eval_data=ex.heldout,
                         train_data=ex.train, latency=FAST)
            what = "as trained" if k == 1.0 else f"outlier channel x{k:g}"
            print(f"-- {name} {what}, {len(calib)} calibration rows, {args.qat_epochs} QAT epochs "
                  f"({time.time() - t0:.0f} s)", flush=True)
            fp32 = r.manifest.variants[0]
            for v in r.manifest.variants:
                line = (f"  {v.id:16s} {v.method:16s} acc {v.quality:.4f} "
                        f"({(v.quality - fp32.quality) * 100:+.2f} pt)  nll "
                        f"{nll(r.files[v.file], *ex.heldout):.4f}  {v.size_bytes / 1024:6.0f} KiB")
                if v.method == "mixed-precision":
                    kept = [f"{l['weight']}={l['precision']}" for l in
                            sorted(v.details["layers"], key=lambda l: l["rank"])
                            if l["precision"] != "int8"]
                    line += (f"  all-int8 {v.details['all_int8_quality']:.4f}; "
                             f"{len(kept)}/{len(v.details['layers'])} layers above int8: "
                             f"{', '.join(kept) or 'none'}")
                print(line, flush=True)


if __name__ == "__main__":
    main()
