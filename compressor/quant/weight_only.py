"""Weight-only block quantization (int4, int2) as a rewrite of an fp32 ONNX graph.

Each weight becomes a packed INT4 (or INT2/UINT4) initializer and one blocked
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

PACKERS = {4: ref.pack_nibbles_ref, 2: ref.pack_crumbs_ref}


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


def quantize_weight_only(model: onnx.ModelProto, bits: int = 4, group_size: int = 32,
                         symmetric: bool = True, exclude: tuple[str, ...] = (),
                         overrides: dict[str, int] | None = None, quantizer=None
                         ) -> tuple[onnx.ModelProto, dict]:
    """Return (copy of `model` with block-quantized weights, report). `overrides` maps a
    weight name to other bits (8 for a sensitive layer: stored as int8 per-channel blocks)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out)
    g.check_supported(f"int{bits} weight-only quantization")
    report = {"layers": []}
    for s in g.weight_sites():
        if s.node.name in exclude or s.weight_name in exclude:
            continue
        b = (overrides or {}).get(s.weight_name, bits)
        if b in PACKERS:
            report["layers"].append(quantize_weight_blockwise(out, g, s, b, group_size, symmetric,
                                                              quantizer))
        else:
            from compressor.quant.qdq import quantize_weight_int
            quantize_weight_int(out, g, s, b, per_channel=True)
            report["layers"].append({"node": s.node.name, "op": s.node.op_type,
                                     "weight": s.weight_name, "weight_bits": b})
    remove_unused_initializers(out)
    topological_sort(out)
    return out, report
