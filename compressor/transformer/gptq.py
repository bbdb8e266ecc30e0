"""GPTQ (Frantar et al., 2023): int4 weights that correct each other's rounding error.

Round-to-nearest quantizes every weight on its own. GPTQ quantizes the input channels of a
Linear one at a time and, after each, updates the not-yet-quantized channels so that the
layer's output on the calibration activations X stays as close as possible: the error of
channel i is spread over the others through the inverse Hessian H^-1 of ||X w||^2
(H = 2 X^T X). It is a one-shot, data-aware, error-correcting quantizer; no training.

Layout here: W is (K, N) as the ONNX MatMul stores it (K input channels, the reduction
axis); blocks of `group_size` run along K, as onnxruntime's MatMulNBits and blocked
DequantizeLinear(axis=0) expect. A group's scales (one per output column) are chosen when
the group starts, from the already error-updated weights, by the same MSE grid search as
the embedding quantizer; codes are symmetric INT4 in [-8, 7].
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from compressor.quant import reference as ref
from compressor.quant.graph import Graph, WeightSite, make_init
from compressor.quant.weight_only import _packed_tensor
from compressor.transformer.embedding import INT4_MAX, INT4_MIN, SCALE_GRID


def hessian(x: np.ndarray) -> np.ndarray:
    """2/n X^T X of activations x (n, K), float32 (K x K)."""
    x = np.asarray(x, np.float32)
    return (2.0 / max(len(x), 1)) * (x.T @ x)


def _group_scales(w: np.ndarray, grid=SCALE_GRID) -> np.ndarray:
    """Per-column scales of a (group, N) slice: MSE-best of absmax/7 * grid."""
    absmax = np.abs(w).max(axis=0)
    best_s = np.ones_like(absmax)
    best_e = np.full_like(absmax, np.inf)
    for f in grid:
        s = absmax * np.float32(f) / np.float32(INT4_MAX)
        s = np.where(s > 0, s, np.float32(1.0)).astype(np.float32)
        e = np.sum((np.clip(np.rint(w / s), INT4_MIN, INT4_MAX) * s - w) ** 2, axis=0)
        better = e < best_e
        best_e = np.where(better, e, best_e)
        best_s = np.where(better, s, best_s)
    return best_s


def gptq_int4(w: np.ndarray, h: np.ndarray, group_size: int = 32, damp: float = 0.01,
              block: int | None = None) -> ref.Blockwise:
    """Quantize W (K, N) to INT4 blocks along K, minimising ||X W - X W_q|| for the X
    whose Hessian is h (K, K). Returns the codes and per-(group, column) scales.

    `block` is GPTQ's lazy-update width (default: one group). numpy, not torch: torch 2.13's
    float32 round is ~1000x slower than np.rint on small tensors with 2 threads here."""
    k, n = w.shape
    block = block or group_size
    if k % group_size or block % group_size:
        raise ValueError(f"K={k} and block={block} must be multiples of group_size={group_size}")
    W = np.array(w, dtype=np.float32).T.copy()                 # (N, K): columns = inputs
    H = np.array(h, dtype=np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * np.mean(np.diag(H)) * np.eye(k)
    # upper Cholesky factor of H^-1: row i holds the update coefficients for column i
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T.astype(np.float32)
    Q = np.zeros((n, k), np.int8)
    S = np.zeros((n, k // group_size), np.float32)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1 = W[:, i1:i2].copy()
        E1 = np.zeros_like(W1)
        Hb = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:     # scales from the group as it is now (updated)
                S[:, col // group_size] = _group_scales(W1[:, i:i + group_size].T)
            s = S[:, col // group_size]
            wcol = W1[:, i]
            q = np.clip(np.rint(wcol / s), INT4_MIN, INT4_MAX)
            Q[:, col] = q
            err = (wcol - q * s) / Hb[i, i]
            W1[:, i:] -= np.outer(err, Hb[i, i:])
            E1[:, i] = err
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    return ref.Blockwise(q=Q.T.copy(), scale=S.T.copy(), zero_point=None, axis=0,
                         block_size=group_size, dtype="int4")


def rtn_int4(w: np.ndarray, group_size: int = 32) -> ref.Blockwise:
    """Round-to-nearest with the same scale search (no error correction), for comparison."""
    from compressor.transformer.embedding import quantize_blocks_mse
    b = quantize_blocks_mse(np.ascontiguousarray(w.T), group_size)
    return ref.Blockwise(q=b.q.T.copy(), scale=b.scale.T.copy(), zero_point=None, axis=0,
                         block_size=group_size, dtype="int4")


def write_int4_weight(model: onnx.ModelProto, g: Graph, site: WeightSite, b: ref.Blockwise
                      ) -> None:
    """Replace a MatMul weight (K, N) by INT4 codes + a blocked DequantizeLinear(axis=0):
    the form onnxruntime fuses with the MatMul into MatMulNBits (as compressor.quant.
    weight_only writes it, but with codes chosen by the caller)."""
    name = site.weight_name
    q_name, s_name = g.fresh(f"{name}_q4"), g.fresh(f"{name}_scale")
    model.graph.initializer.extend([_packed_tensor(q_name, b.q, "int4", 4),
                                    make_init(s_name, b.scale.astype(np.float32))])
    dq_out = g.fresh(f"{name}_dequantized")
    model.graph.node.append(helper.make_node("DequantizeLinear", [q_name, s_name], [dq_out],
                                             name=g.fresh(f"{name}_DQ"), axis=0,
                                             block_size=b.block_size))
    site.node.input[site.weight_index] = dq_out
