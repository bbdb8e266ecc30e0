"""Per-channel statistics of intermediate tensors of a multi-input ONNX graph.

compressor.quant.calibration feeds one float input; a sentence encoder has two int64 inputs
(input_ids, attention_mask), so this module runs the graph on dict feeds instead. Only the
real tokens count: a padded position's activations are not what the model computes on, so
rows where attention_mask is 0 are left out of the statistics.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
from onnx import helper


def batches(ids: np.ndarray, mask: np.ndarray, batch_size: int = 32) -> list[dict[str, np.ndarray]]:
    """Feeds of at most `batch_size` sentences, each batch cut to its longest sentence."""
    lengths = mask.sum(1)
    order = np.argsort(lengths, kind="stable")
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        w = int(lengths[idx].max())
        out.append({"input_ids": np.ascontiguousarray(ids[idx, :w]),
                    "attention_mask": np.ascontiguousarray(mask[idx, :w])})
    return out


def capture_session(model: onnx.ModelProto, names: Iterable[str]):
    """A session of `model` that also outputs `names` (graph optimisations off, so every
    named tensor still exists)."""
    import onnxruntime as ort

    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    existing = {o.name for o in aug.graph.output}
    for n in names:
        if n not in existing:
            aug.graph.output.append(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(aug.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def channel_absmax(model: onnx.ModelProto, names: list[str], feeds: list[dict[str, np.ndarray]]
                   ) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each named (batch, seq, channels) tensor, over the
    real (unmasked) tokens of all feeds."""
    sess = capture_session(model, names)
    out: dict[str, np.ndarray] = {}
    for f in feeds:
        keep = f["attention_mask"].astype(bool)
        for n, v in zip(names, sess.run(list(names), f)):
            a = np.abs(np.asarray(v, np.float32)[keep]).max(axis=0)
            out[n] = a if n not in out else np.maximum(out[n], a)
    return out


def collect_inputs(model: onnx.ModelProto, names: list[str], feeds: list[dict[str, np.ndarray]],
                   max_rows: int = 4096) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Rows (tokens, channels) of each named tensor over the real tokens, and the sentence
    index of every row (dynamic quantization takes its range per sentence at batch 1).
    At most about `max_rows` rows per tensor, taken in feed order, whole sentences only."""
    sess = capture_session(model, names)
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    sentence: list[np.ndarray] = []
    count = n_sent = 0
    for f in feeds:
        keep = f["attention_mask"].astype(bool)
        for n, v in zip(names, sess.run(list(names), f)):
            rows[n].append(np.asarray(v, np.float32)[keep])
        sentence.append(np.repeat(np.arange(n_sent, n_sent + len(keep)), keep.sum(1)))
        n_sent += len(keep)
        count += int(keep.sum())
        if count >= max_rows:
            break
    return {n: np.concatenate(r) for n, r in rows.items()}, np.concatenate(sentence)
