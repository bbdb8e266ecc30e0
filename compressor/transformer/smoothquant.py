"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights.

Transformer activations have a few channels with values 10-100x the rest (LayerNorm outputs,
GELU outputs). One per-tensor int8 scale for such a tensor spends its 256 codes on the
outliers and rounds every ordinary channel to a handful of levels. Weights are easy to
quantize per output channel. For a Linear y = x @ W (W: (K, N)) and any positive s (K,):

    y = (x / s) @ (diag(s) @ W)

is the same product in exact arithmetic. With s_j = max|x_j|^alpha / max|W_j,:|^(1-alpha)
the smoothed activation x / s has flat channel ranges and the smoothed weight takes on the
outliers, where per-output-channel weight quantization absorbs them better.
alpha = 0.5 splits the difficulty evenly; larger alpha moves more of it to the weights.

On the ONNX graph: every MatMul with a constant weight reading tensor x gets its weight rows
multiplied by s; the consumers that read x through a MatMul then read Mul(x, 1/s) instead
(one Mul per tensor, shared by the Q/K/V projections that read the same x; the residual
branch keeps reading x). The scales are computed from the union of the weights sharing x,
so one smoothed tensor serves them all. The rewrite is exact in fp32 up to rounding; the
quantizer applied afterwards (dynamic int8 here) is what gains.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.quant import reference as ref
from compressor.quant.graph import Graph, make_init, topological_sort

S_MIN, S_MAX = 1e-2, 1e2       # bounds on s: a dead channel must not blow a weight row up


def smoothing_scales(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float = 0.5
                     ) -> np.ndarray:
    """s_j = act_j^alpha / w_j^(1-alpha), 1 where either is 0, clipped to [S_MIN, S_MAX]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    a = np.asarray(act_absmax, np.float64)
    w = np.asarray(weight_absmax, np.float64)
    ok = (a > 0) & (w > 0)
    s = np.where(ok, np.power(np.where(ok, a, 1.0), alpha) /
                 np.power(np.where(ok, w, 1.0), 1.0 - alpha), 1.0)
    return np.clip(s, S_MIN, S_MAX).astype(np.float32)


def smoothable_inputs(model: onnx.ModelProto, include=lambda weight_name: True
                      ) -> dict[str, list[str]]:
    """Activation tensor -> names of the MatMul weights (K, N) that read it."""
    g = Graph(model)
    out: dict[str, list[str]] = {}
    for s in g.weight_sites():
        if s.node.op_type == "MatMul" and include(s.weight_name):
            out.setdefault(s.node.input[0], []).append(s.weight_name)
    return out


def apply_smoothquant(model: onnx.ModelProto, act_absmax: dict[str, np.ndarray],
                      alpha: float | dict[str, float | None] = 0.5,
                      targets: dict[str, list[str]] | None = None
                      ) -> tuple[onnx.ModelProto, dict]:
    """Return (smoothed copy of `model`, report). `act_absmax` maps each activation tensor
    to its per-channel max |x| from calibration; `targets` (default: every MatMul input
    with statistics) maps tensor -> the weights to scale. `alpha` is one value for all, or
    one per tensor (None: leave that tensor alone)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out)
    targets = targets if targets is not None else {
        x: ws for x, ws in smoothable_inputs(out).items() if x in act_absmax}
    alphas = alpha if isinstance(alpha, dict) else {x: alpha for x in targets}
    report = {"tensors": []}
    for x, weights in targets.items():
        if alphas.get(x) is None:
            continue
        w_arrays = [g.array(w) for w in weights]
        w_absmax = np.max(np.stack([np.abs(w).max(axis=1) for w in w_arrays]), axis=0)
        s = smoothing_scales(act_absmax[x], w_absmax, alphas[x])
        for name, w in zip(weights, w_arrays):
            g.inits[name].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), name))
        inv_name, smoothed = g.fresh(f"{x}_smooth_inv_scale"), g.fresh(f"{x}_smoothed")
        out.graph.initializer.append(make_init(inv_name, (1.0 / s).astype(np.float32)))
        out.graph.node.append(helper.make_node("Mul", [x, inv_name], [smoothed],
                                               name=g.fresh(f"{x}_SmoothQuant")))
        readers = set(weights)
        for n in g.consumers.get(x, []):
            if n.op_type == "MatMul" and n.input[0] == x and n.input[1] in readers:
                n.input[0] = smoothed
        a = np.asarray(act_absmax[x], np.float32)
        report["tensors"].append({
            "tensor": x, "weights": list(weights), "alpha": alphas[x],
            "act_range_ratio_before": float(a.max() / max(np.median(a), 1e-12)),
            "act_range_ratio_after": float((a / s).max() / max(np.median(a / s), 1e-12))})
    topological_sort(out)
    return out, report


# -- choosing alpha per tensor --------------------------------------------------------------

def fake_dynamic_uint8(x: np.ndarray, sentence: np.ndarray) -> np.ndarray:
    """Quantize-dequantize rows the way DynamicQuantizeLinear does at batch 1: one
    asymmetric uint8 range per sentence (rows with the same `sentence` index)."""
    n = int(sentence.max()) + 1
    lo = np.zeros(n, np.float32)
    hi = np.zeros(n, np.float32)
    np.minimum.at(lo, sentence, x.min(axis=1))
    np.maximum.at(hi, sentence, x.max(axis=1))
    scale = np.where(hi > lo, (hi - lo) / np.float32(255), np.float32(1)).astype(np.float32)
    zp = np.clip(np.rint(-lo / scale), 0, 255)
    sc, z = scale[sentence][:, None], zp[sentence][:, None]
    return (np.clip(np.rint(x / sc) + z, 0, 255) - z) * sc


def dynamic_int8_error(x: np.ndarray, sentence: np.ndarray, weights: list[np.ndarray],
                       s: np.ndarray | None = None) -> float:
    """Relative squared error of x @ W under dynamic uint8 activations and per-channel
    int8 weights (summed over the weights sharing x), after smoothing by s if given."""
    xs = x if s is None else x / s
    xq = fake_dynamic_uint8(xs, sentence)
    num = den = 0.0
    for w in weights:
        ws = w if s is None else w * s[:, None]
        q, scale = ref.quantize_symmetric_ref(ws, axis=1)
        y = x @ w
        num += float(np.sum((xq @ (q.astype(np.float32) * scale) - y) ** 2))
        den += float(np.sum(y ** 2))
    return num / max(den, 1e-30)


DEFAULT_ALPHAS = (None, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def search_alpha(x: np.ndarray, sentence: np.ndarray, weights: list[np.ndarray],
                 act_absmax: np.ndarray, grid=DEFAULT_ALPHAS) -> tuple[float | None, dict]:
    """The alpha of `grid` (None = no smoothing) with the smallest simulated error of this
    tensor's products: SmoothQuant's migration strength chosen per layer from data."""
    w_absmax = np.max(np.stack([np.abs(w).max(axis=1) for w in weights]), axis=0)
    errors = {}
    for a in grid:
        s = None if a is None else smoothing_scales(act_absmax, w_absmax, a)
        errors[a] = dynamic_int8_error(x, sentence, weights, s)
    best = min(errors, key=errors.get)
    return best, errors
