"""Weight-only block quantization (int4, int2) as a rewrite of an fp32 ONNX graph.

int2 is stored differently (onnxruntime 1.32 cannot run an INT2 DequantizeLinear): packed
uint8 codes unpacked by ordinary ops that onnxruntime constant-folds at load; see int2.py.
The rest of this module is about int4.

Each weight becomes a packed INT4 (or UINT4) initializer and one blocked
DequantizeLinear (opset 21 `block_size`), with one fp32 scale per block of `group_size`
consecutive values along the reduction axis; activations stay fp32.

    MatMul   W (K, N): blocks along K (axis 0). onnxruntime fuses DQ -> MatMul into its
             MatMulNBits kernel (int4 weights unpacked on the fly).
    Gemm     W (N, K) with transB=1: blocks along K (axis 1).
    Conv     W (O, I, kh, kw) is stored flattened to (O, I*kh*kw) and blocked along the
             flattened axis (ggml's row layout: each output channel's kernel is a row), then
             reshaped back to (O, I, kh, kw) in the graph. Blocking along I alone would make
             blocks of size I (1 for a first layer) and waste scales.

onnxruntime 1.32 runs all three on CPU (checked by tests). The 4-bit payload is stored
packed, two values per byte, so the file really shrinks ~8x on the weights.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from compressor.quant import reference as ref
from compressor.quant.graph import (Graph, WeightSite, make_init, remove_unused_initializers,
                                    topological_sort)
from compressor.quant.qdq import ONNX_TYPES

PACKERS = {4: ref.pack_nibbles_ref}     # INT2 DequantizeLinear does not load in onnxruntime 1.32


def _packed_tensor(name: str, q: np.ndarray, dtype: str, bits: int) -> onnx.TensorProto:
    onnx_type = ONNX_TYPES[dtype]
    if onnx_type is None:
        raise ValueError(f"this onnx has no {dtype} tensor type")
    return helper.make_tensor(name, onnx_type, list(q.shape), PACKERS[bits](q), raw=True)


def quantize_weight_blockwise(model: onnx.ModelProto, g: Graph, site: WeightSite, bits: int,
                              group_size: int, symmetric: bool = True, quantizer=None) -> dict:
    w = g.array(site.weight_name)
    name = site.weight_name
    conv = site.node.op_type == "Conv"
    w2 = w.reshape(w.shape[0], -1) if conv else w
    axis = 1 if conv else site.reduce_axis
    block = min(group_size, w2.shape[axis])          # a layer narrower than a group: one block
    if quantizer is None:
        b = ref.quantize_blockwise_ref(w2, axis=axis, block_size=block, bits=bits, symmetric=symmetric)
    else:   # e.g. GPTQ: same storage format, smarter rounding
        b = quantizer(site, w2, axis, block, bits)
    q_name, s_name = g.fresh(f"{name}_q{bits}"), g.fresh(f"{name}_scale")
    inits = [_packed_tensor(q_name, b.q, b.dtype, bits), make_init(s_name, b.scale)]
    dq_inputs = [q_name, s_name]
    if b.zero_point is not None:
        z_name = g.fresh(f"{name}_zero_point")
        inits.append(_packed_tensor(z_name, b.zero_point, b.dtype, bits))
        dq_inputs.append(z_name)
    model.graph.initializer.extend(inits)
    dq_out = g.fresh(f"{name}_dequantized")
    nodes = [helper.make_node("DequantizeLinear", dq_inputs, [dq_out], name=g.fresh(f"{name}_DQ"),
                              axis=axis, block_size=block)]
    if conv:
        shape_name = g.fresh(f"{name}_shape")
        model.graph.initializer.append(make_init(shape_name, np.asarray(w.shape, np.int64)))
        reshaped = g.fresh(f"{name}_kernel")
        nodes.append(helper.make_node("Reshape", [dq_out, shape_name], [reshaped],
                                      name=g.fresh(f"{name}_reshape")))
        dq_out = reshaped
    model.graph.node.extend(nodes)
    site.node.input[site.weight_index] = dq_out
    err = ref.dequantize_blockwise_ref(b).reshape(w.shape) - w
    return {"node": site.node.name, "op": site.node.op_type, "weight": name, "weight_bits": bits,
            "group_size": block, "symmetric": symmetric,
            "sqnr_db": float(10 * np.log10(np.sum(w ** 2) / max(np.sum(err ** 2), 1e-30)))}


WEIGHT_ONLY_BITS = (2, 4)
INT2_GROUP_SIZES = (32, 64, 128)


def check_weight_only_args(bits: int, group_size: int, edge_bits: int | None = None) -> None:
    """Clear errors for settings the formats cannot store (shared by the config and the
    graph rewrite, so a direct caller gets the same message as a config user)."""
    if bits not in WEIGHT_ONLY_BITS:
        raise ValueError(f"weight-only bits must be one of {WEIGHT_ONLY_BITS}, got {bits!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or \
            group_size < 8 or group_size & (group_size - 1):
        raise ValueError(f"group_size must be a power of two >= 8, got {group_size!r}")
    if bits == 2 and group_size not in INT2_GROUP_SIZES:
        raise ValueError(f"int2 group_size must be one of {INT2_GROUP_SIZES}, got {group_size} (below 32 "
                         "the float16 scales cost more than 2-bit codes save; above 128 accuracy falls)")
    if edge_bits is not None and edge_bits not in (2, 4, 8):
        raise ValueError(f"edge_bits (first/last layer) must be 2, 4 or 8, got {edge_bits!r}")


def edge_overrides(g: Graph, bits: int, edge_bits: int | None) -> dict[str, int]:
    """First and last weight layers (graph order) at `edge_bits`: they hold few weights
    and cost the most accuracy at 2 bits (the input layer sees raw pixels, the last one
    writes the logits)."""
    sites = g.weight_sites()
    if edge_bits is None or edge_bits == bits or not sites:
        return {}
    return {sites[0].weight_name: edge_bits, sites[-1].weight_name: edge_bits}


def quantize_weight_only(model: onnx.ModelProto, bits: int = 4, group_size: int = 32,
                         symmetric: bool = True, exclude: tuple[str, ...] = (),
                         overrides: dict[str, int] | None = None, quantizer=None,
                         edge_bits: int | None = None) -> tuple[onnx.ModelProto, dict]:
    """Return (copy of `model` with block-quantized weights, report). `overrides` maps a
    weight name to other bits (8 for a sensitive layer: stored as int8 per-channel blocks);
    `edge_bits` sets the first and last weight layers' bits. `quantizer` serves the layers
    at `bits` (int4: site, w2, axis, block, bits -> Blockwise; int2: int2.gptq_int2_quantizer);
    layers overridden to other bits use round-to-nearest."""
    check_weight_only_args(bits, group_size, edge_bits)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out)
    g.check_supported(f"int{bits} weight-only quantization")
    overrides = {**edge_overrides(g, bits, edge_bits), **(overrides or {})}
    report = {"layers": []}
    for s in g.weight_sites():
        if s.node.name in exclude or s.weight_name in exclude:
            continue
        b = overrides.get(s.weight_name, bits)
        if b == 2:
            from compressor.quant.int2 import emit_int2_weight
            report["layers"].append(emit_int2_weight(out, g, s, group_size, symmetric,
                                                     quantizer if b == bits else None))
        elif b in PACKERS:
            report["layers"].append(quantize_weight_blockwise(out, g, s, b, group_size, symmetric,
                                                              quantizer if b == bits else None))
        else:
            from compressor.quant.qdq import quantize_weight_int
            name = s.weight_name             # the rewrite points the node at the DQ output
            quantize_weight_int(out, g, s, b, per_channel=True)
            report["layers"].append({"node": s.node.name, "op": s.node.op_type,
                                     "weight": name, "weight_bits": b})
    remove_unused_initializers(out)
    topological_sort(out)
    return out, report
