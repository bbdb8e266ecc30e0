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

When x = Gelu(h @ W1 + b1) (a transformer FFN) the outliers are removed at their source
instead of masked: W1's columns O are zeroed and b1[O] set to -30 (Gelu(-30) is exactly
0), and copies of the original columns are appended to W1 and b1; one Split after the
shared Gelu parts the extra |O| channels off:

    [x, x_O] = Split(Gelu(h @ [W1 with O zeroed | W1[:, O]] + [b1' | b1[O]]))

so the outlier path is Split + MatMul + Add (~33 us per layer at batch 1 x 32 tokens, 2
threads, onnxruntime's profiler) instead of Mul + Gather + MatMul + Add over the 1536-wide
GELU output (~36-40 us); the outliers' pre-activations stay in the int8 up-projection, as
they were before this rewrite.
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


GELU_OFF = -30.0      # a pre-activation whose exact (erf) Gelu is 0 in float32


def _ffn_source(g: Graph, tensor: str, weights: list[str]):
    """(MatMul, bias Add, Gelu) if `tensor` = Gelu(MatMul(h, const W1) + const b1), each
    link read only by the next, and `tensor` read only by MatMuls with `weights`."""
    gelu = g.producer.get(tensor)
    if gelu is None or gelu.op_type != "Gelu" or gelu.domain not in ("", "ai.onnx"):
        return None
    users = g.consumers.get(tensor, [])
    if tensor in g.graph_outputs or not users or any(
            u.op_type != "MatMul" or u.input[0] != tensor or u.input[1] not in weights for u in users):
        return None
    add = g.producer.get(gelu.input[0])
    if add is None or add.op_type != "Add" or len(g.consumers.get(add.output[0], [])) != 1:
        return None
    bias = next((i for i in add.input if i in g.inits and len(g.inits[i].dims) == 1), None)
    other = next((i for i in add.input if i != bias), None)
    mm = g.producer.get(other) if bias is not None else None
    if mm is None or mm.op_type != "MatMul" or mm.input[1] not in g.inits or \
            len(g.inits[mm.input[1]].dims) != 2 or len(g.consumers.get(other, [])) != 1:
        return None
    if len(g.consumers.get(mm.input[1], [])) != 1 or len(g.consumers.get(bias, [])) != 1:
        return None
    return mm, add, bias, gelu


def split_outlier_channels(model: onnx.ModelProto, tensor: str, weights: list[str],
                           channels: np.ndarray) -> list[str]:
    """Rewrite every MatMul reading `tensor` with a weight in `weights` as above; returns
    the names of the small fp32 weights (to keep out of quantization)."""
    g = Graph(model)
    channels = np.asarray(channels, np.int64)
    src = _ffn_source(g, tensor, weights)
    if src is not None:
        return _recompute_at_source(model, g, tensor, weights, channels, *src)
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



def _recompute_at_source(model: onnx.ModelProto, g: Graph, tensor: str, weights: list[str],
                         channels: np.ndarray, mm: onnx.NodeProto, add: onnx.NodeProto,
                         bias: str, gelu: onnx.NodeProto) -> list[str]:
    w1_name = mm.input[1]
    w1, b1 = g.array(w1_name), g.array(bias)
    k = w1.shape[1]
    w1z, b1z = w1.copy(), b1.copy()
    w1z[:, channels] = 0.0
    b1z[channels] = GELU_OFF              # Gelu of these channels is now exactly 0
    # the outlier columns move to the end of the up-projection (its int8 product computes
    # them as before), and one Split parts them from the rest after the shared Gelu
    g.inits[w1_name].CopyFrom(onnx.numpy_helper.from_array(
        np.concatenate([w1z, w1[:, channels]], axis=1).astype(np.float32), w1_name))
    g.inits[bias].CopyFrom(onnx.numpy_helper.from_array(
        np.concatenate([b1z, b1[channels]]).astype(np.float32), bias))
    wide, gathered = g.fresh(f"{tensor}_with_outliers"), g.fresh(f"{tensor}_outliers")
    sizes = g.fresh(f"{tensor}_outlier_split")
    model.graph.initializer.append(make_init(sizes, np.asarray([k, len(channels)], np.int64)))
    gelu.output[0] = wide
    # the up-projection's outputs are wider now: drop their stale recorded shapes
    stale = {mm.output[0], add.output[0], tensor}
    kept_info = [v for v in model.graph.value_info if v.name not in stale]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)
    model.graph.node.append(helper.make_node("Split", [wide, sizes], [tensor, gathered], axis=-1,
                                             name=g.fresh(f"{tensor}_SplitOutliers")))
    fp32_weights = []
    for n in list(g.consumers.get(tensor, [])):
        w_name = n.input[1]
        w = g.array(w_name)
        small_name = g.fresh(f"{w_name}_outlier_rows")
        model.graph.initializer.append(make_init(small_name, w[channels]))
        zeroed = w.copy()
        zeroed[channels] = 0.0
        g.inits[w_name].CopyFrom(onnx.numpy_helper.from_array(zeroed, w_name))
        out = n.output[0]
        users = g.consumers.get(out, [])
        anchor = users[0] if len(users) == 1 and users[0].op_type == "Add" and \
            any(i in g.inits for i in users[0].input) else n
        y = anchor.output[0]
        partial, corr = g.fresh(f"{y}_int8_part"), g.fresh(f"{y}_outlier_part")
        anchor.output[0] = partial
        model.graph.node.extend([
            helper.make_node("MatMul", [gathered, small_name], [corr], name=g.fresh(f"{y}_OutlierMatMul")),
            helper.make_node("Add", [partial, corr], [y], name=g.fresh(f"{y}_AddOutliers"))])
        fp32_weights.append(small_name)
    return fp32_weights
