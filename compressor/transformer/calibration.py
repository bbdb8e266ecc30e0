"""Per-channel statistics of intermediate tensors of a multi-input ONNX graph.

compressor.quant.calibration feeds one float input; a sentence encoder has two int64 inputs
(input_ids, attention_mask), so this module runs the graph on dict feeds instead. Only the
real tokens count: a padded position's activations are not what the model computes on, so
rows where attention_mask is 0 are left out of the statistics.
"""

from __future__ import annotations

import numpy as np
import onnx

from compressor.quant.calibration import capture_session


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
