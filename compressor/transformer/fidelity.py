"""Fidelity of a sentence encoder variant to the fp32 model, measured through onnxruntime.

cosine       mean over sentences of cos(variant embedding, fp32 embedding)
overlap@k    mean over sentences of |kNN_variant(i) & kNN_fp32(i)| / k, where kNN(i) are the
             k nearest other sentences of the corpus by cosine (the retrieval a user of
             sentence embeddings actually does)

Sentences are tokenised once, sorted by length and run in batches padded to the batch's
longest sentence (mean pooling ignores padding, so the result does not depend on batching
beyond float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask")


def run_encoder(sess, ids: np.ndarray, mask: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Embeddings (N, hidden) of a session fed int64 (input_ids, attention_mask)."""
    lengths = mask.sum(1)
    order = np.argsort(lengths, kind="stable")
    out = None
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = int(lengths[idx].max())
        emb = sess.run(None, {"input_ids": np.ascontiguousarray(ids[idx, :width]),
                              "attention_mask": np.ascontiguousarray(mask[idx, :width])})[0]
        if out is None:
            out = np.empty((len(ids), emb.shape[1]), np.float32)
        out[idx] = emb
    return out


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def nearest(emb: np.ndarray, k: int) -> np.ndarray:
    """Indices (N, k) of each row's k most cosine-similar other rows (ties by index)."""
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    # stable sort on -sim: equal similarities rank by index, so the result is deterministic
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def topk_overlap(emb: np.ndarray, ref: np.ndarray, k: int = 10) -> float:
    a, b = nearest(emb, k), nearest(ref, k)
    return float(np.mean([len(np.intersect1d(x, y)) / k for x, y in zip(a, b)]))


@dataclass
class EmbeddingFidelity:
    """An eval_fn for compress(): mean cosine of a session's embeddings to the fp32 ones.

    The reference comes from the PyTorch model (`from_model`), an fp32 session
    (`prepare`) or is given (`reference=`). After each call, `last` holds
    {"cosine": ..., "overlap@k": ...} for the session just measured.
    """

    ids: np.ndarray
    mask: np.ndarray
    k: int = 10
    reference: np.ndarray | None = None
    last: dict = field(default_factory=dict)

    @classmethod
    def from_model(cls, model, ids: np.ndarray, mask: np.ndarray, k: int = 10,
                   batch_size: int = 64) -> "EmbeddingFidelity":
        """Reference embeddings from the fp32 PyTorch encoder itself."""
        import torch

        class _TorchSession:                 # run_encoder only needs .run(None, feeds)
            def run(self, _names, feeds):
                with torch.no_grad():
                    return [model(torch.from_numpy(feeds["input_ids"]),
                                  torch.from_numpy(feeds["attention_mask"])).numpy()]

        return cls(ids, mask, k, run_encoder(_TorchSession(), ids, mask, batch_size))

    def prepare(self, fp32_session) -> np.ndarray:
        self.reference = run_encoder(fp32_session, self.ids, self.mask)
        return self.reference

    def metrics(self, emb: np.ndarray) -> dict:
        if self.reference is None:
            raise RuntimeError("EmbeddingFidelity needs prepare(fp32 session) or reference=")
        return {"cosine": float(np.mean(cosine_rows(emb, self.reference))),
                f"overlap@{self.k}": topk_overlap(emb, self.reference, self.k)}

    def evaluate(self, sess) -> dict:
        return self.metrics(run_encoder(sess, self.ids, self.mask))

    def __call__(self, sess) -> float:
        self.last = self.evaluate(sess)
        return self.last["cosine"]

    def subset(self, n: int) -> "EmbeddingFidelity":
        """The first n sentences (a cheaper proxy for per-layer sensitivity scans)."""
        return EmbeddingFidelity(self.ids[:n], self.mask[:n], self.k,
                                 None if self.reference is None else self.reference[:n])
