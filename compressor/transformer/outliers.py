"""Outlier channels computed in fp32 beside an int8 product (LLM.int8()'s decomposition).

MiniLM's FFN-out projections read a GELU output with one "massive activation": the [CLS]
token in one channel (e.g. channel 856 of layer 0 at 24.6, every sentence, while the other
channels stay under ~6). One per-tensor uint8 range per call then spends most of its codes
on that single value. SmoothQuant cannot fix it (a GELU output cannot absorb a scale, and
moving a 25x channel into the weights wrecks their per-channel scale). Instead, for a
MatMul y = x @ W with outlier channels O (few, found on calibration data):

    y = (x * mask_O) @ W_{rows not O}  +  x[..., O] @ W[O, :]
        int8 (dynamic), O zeroed           fp32, K = |O| (a rank-|O| update)

The first term no longer sees the outliers in its range; the second is exact and tiny.
The correction is added after the bias Add (so onnxruntime still fuses the bias into
its DynamicQuantizeMatMul). Exact in fp32 up to rounding.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from compressor.quant.graph import Graph, make_init


def outlier_channels(absmax: np.ndarray, ratio: float = 3.0, max_channels: int = 8,
                     ref_percentile: float = 99.0) -> np.ndarray:
    """Channels whose max |x| exceeds `ratio` x the `ref_percentile` of the other
    channels' max |x| (the `max_channels` largest left out of that reference, so the
    outliers do not raise their own bar); at most `max_channels`, largest first."""
    a = np.asarray(absmax, np.float64)
    order = np.argsort(-a, kind="stable")
    rest = a[order[max_channels:]]
    ref = np.percentile(rest, ref_percentile) if rest.size else 0.0
    if ref <= 0:
        return np.zeros(0, np.int64)
    return np.asarray([c for c in order[:max_channels] if a[c] > ratio * ref], np.int64)


def split_outlier_channels(model: onnx.ModelProto, tensor: str, weights: list[str],
                           channels: np.ndarray) -> list[str]:
    """Rewrite every MatMul reading `tensor` with a weight in `weights` as above; returns
    the names of the small fp32 weights (to keep out of quantization)."""
    g = Graph(model)
    channels = np.asarray(channels, np.int64)
    k = g.array(weights[0]).shape[0]
    mask = np.ones(k, np.float32)
    mask[channels] = 0.0
    mask_name, idx_name = g.fresh(f"{tensor}_inlier_mask"), g.fresh(f"{tensor}_outlier_channels")
    masked, gathered = g.fresh(f"{tensor}_inliers"), g.fresh(f"{tensor}_outliers")
    model.graph.initializer.extend([make_init(mask_name, mask), make_init(idx_name, channels)])
    model.graph.node.extend([
        helper.make_node("Mul", [tensor, mask_name], [masked], name=g.fresh(f"{tensor}_MaskOutliers")),
        helper.make_node("Gather", [tensor, idx_name], [gathered], axis=-1,
                         name=g.fresh(f"{tensor}_GatherOutliers"))])
    fp32_weights = []
    for n in list(g.consumers.get(tensor, [])):
        if n.op_type != "MatMul" or n.input[0] != tensor or n.input[1] not in weights:
            continue
        w_name = n.input[1]
        w = g.array(w_name)
        small_name = g.fresh(f"{w_name}_outlier_rows")
        model.graph.initializer.append(make_init(small_name, w[channels]))
        zeroed = w.copy()
        zeroed[channels] = 0.0          # these rows only ever meet zeros now
        g.inits[w_name].CopyFrom(onnx.numpy_helper.from_array(zeroed, w_name))
        n.input[0] = masked
        # add the correction after the bias Add when there is one
        out = n.output[0]
        users = g.consumers.get(out, [])
        if len(users) == 1 and users[0].op_type == "Add" and any(i in g.inits for i in users[0].input):
            anchor = users[0]
        else:
            anchor = n
        y = anchor.output[0]
        partial, corr = g.fresh(f"{y}_int8_part"), g.fresh(f"{y}_outlier_part")
        anchor.output[0] = partial
        model.graph.node.extend([
            helper.make_node("MatMul", [gathered, small_name], [corr], name=g.fresh(f"{y}_OutlierMatMul")),
            helper.make_node("Add", [partial, corr], [y], name=g.fresh(f"{y}_AddOutliers"))])
        fp32_weights.append(small_name)
    return fp32_weights

