"""A 3-layer MiniLM student distilled from the pretrained 6-layer all-MiniLM-L6-v2, on this
machine, against the same 3 layers without distillation (layers copied, no training).

    python -m benchmarks.distill_minilm              # 3 layers, 3 epochs, ~2,400 paragraphs
    python -m benchmarks.distill_minilm --layers 2 --epochs 6 --train-paragraphs 700

Training text is stdlib docstring paragraphs that are not in the quality corpus
(compressor.data.docstrings.training_paragraphs); quality is measured on the 900-sentence
corpus as for every MiniLM variant: mean cosine of each sentence embedding to the teacher's
and overlap of each sentence's 10 nearest neighbours. Latency: onnxruntime, 2 threads,
batch 1, 32 tokens, fastest of interleaved rounds. Needs the `minilm` extra.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
import torch

from compressor.data.docstrings import stdlib_sentences, training_paragraphs
from compressor.distill.layer_student import LayerDistillConfig, distill_layers, kept_layers
from compressor.models import minilm
from compressor.transformer.fidelity import cosine_rows, run_encoder, topk_overlap


def _session(model, example, threads: int) -> tuple[ort.InferenceSession, int]:
    proto = model.export_onnx(example)
    data = proto.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]), len(data)


def _latency_ms(sessions: dict, feeds: dict, rounds: int = 30) -> dict:
    best = {name: float("inf") for name in sessions}
    for _ in range(rounds):                      # interleaved: every model sees the same load
        for name, sess in sessions.items():
            t = time.perf_counter()
            sess.run(None, feeds)
            best[name] = min(best[name], (time.perf_counter() - t) * 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-paragraphs", type=int, default=None, help="default: all (~2,400)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--feature-weight", type=float, default=1.0)
    args = ap.parse_args()

    torch.set_num_threads(2)
    teacher, tok = minilm.load_minilm().eval(), minilm.load_tokenizer()
    ids, mask = tok.encode(stdlib_sentences(), seq_len=None)
    t_ids, t_mask = tok.encode(list(training_paragraphs())[:args.train_paragraphs], seq_len=None)
    print(f"teacher: {len(teacher.encoder.layer)} layers; training on {len(t_ids)} unlabelled "
          f"paragraphs, quality on {len(ids)} corpus sentences")

    config = LayerDistillConfig(layers=args.layers, epochs=args.epochs, lr=args.lr,
                                feature_weight=args.feature_weight)
    keep = kept_layers(len(teacher.encoder.layer), args.layers)
    start = time.perf_counter()
    student, record = distill_layers(teacher, t_ids, t_mask, config)
    train_s = time.perf_counter() - start
    print(f"distilled in {train_s:.0f} s, epoch losses {record['epoch_losses']}")

    # export needs a batch of 2 (size-1 axes would be frozen); latency is measured at batch 1
    ex_ids, ex_mask = tok.encode(["a " * 60, "b " * 60], seq_len=32)
    example = {"input_ids": ex_ids, "attention_mask": ex_mask}
    feeds = {"input_ids": ex_ids[:1], "attention_mask": ex_mask[:1]}
    models = {"teacher (6 layers)": teacher, f"copied {list(keep)}, no training": teacher.make_layer_student(keep),
              f"distilled {args.layers} layers": student}
    built = {name: _session(m, example, 2) for name, m in models.items()}
    ref = run_encoder(built["teacher (6 layers)"][0], ids, mask)
    lat = _latency_ms({n: s for n, (s, _) in built.items()}, feeds)
    print(f"\n{'model':32s} {'size MB':>8s} {'cosine':>8s} {'top-10':>7s} {'ms (2 thr)':>10s} {'speed-up':>8s}")
    t_ms = lat["teacher (6 layers)"]
    for name, (sess, size) in built.items():
        emb = run_encoder(sess, ids, mask)
        print(f"{name:32s} {size / 1e6:8.1f} {cosine_rows(emb, ref).mean():8.4f} {topk_overlap(emb, ref, 10):7.3f} "
              f"{lat[name]:10.2f} {t_ms / lat[name]:7.2f}x")


if __name__ == "__main__":
    main()
