"""Dynamic quantization as a rewrite of an fp32 ONNX graph.

Weights are int8 per-channel symmetric initializers; activations are quantized at run time,
per call, by DynamicQuantizeLinear (uint8, range of the actual batch: no calibration data).

    MatMul / Gemm   x -> DynamicQuantizeLinear -> MatMulInteger(x_q, W_q, x_zp, 0) -> Cast
                    -> Mul(x_scale * w_scale[n]) [-> Add bias]
                    onnxruntime fuses this into DynamicQuantizeMatMul.
    Conv (opt-in)   ConvInteger(x_q, W_q, x_zp, 0) -> Cast -> Mul(x_scale * w_scale[c])
                    [-> Add bias]; onnxruntime's ConvInteger wants a scalar weight zero point,
                    which symmetric weights give (0), the per-channel scale is applied after.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from compressor.quant import reference as ref
from compressor.quant.graph import (Graph, make_init, remove_unused_initializers,
                                    topological_sort)

DEFAULT_OPS = ("Gemm", "MatMul")   # like torch.ao and onnxruntime defaults: linear layers


def quantize_dynamic_int8(model: onnx.ModelProto, ops: tuple[str, ...] = DEFAULT_OPS,
                          exclude: tuple[str, ...] = ()) -> tuple[onnx.ModelProto, dict]:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out)
    g.check_supported("dynamic int8 quantization")
    report = {"layers": []}
    dql: dict[str, tuple[str, str, str]] = {}       # one DynamicQuantizeLinear per input
    new_nodes: list[onnx.NodeProto] = []
    drop: list[onnx.NodeProto] = []
    for s in g.weight_sites():
        n = s.node
        if n.op_type not in ops or n.name in exclude or s.weight_name in exclude:
            continue
        x = n.input[0]
        if x not in dql:
            names = (g.fresh(f"{x}_quantized"), g.fresh(f"{x}_scale"), g.fresh(f"{x}_zero_point"))
            new_nodes.append(helper.make_node("DynamicQuantizeLinear", [x], list(names),
                                              name=g.fresh(f"{x}_DynamicQuantize")))
            dql[x] = names
        xq, xs, xz = dql[x]
        w = g.array(s.weight_name)
        y = n.output[0]
        base = n.name or s.weight_name
        if n.op_type == "Conv":
            wq, ws = ref.quantize_symmetric_ref(w, axis=0)
            wq_name, wz_name = g.fresh(f"{s.weight_name}_quantized"), g.fresh(f"{s.weight_name}_zero_point")
            out.graph.initializer.extend([make_init(wq_name, wq), make_init(wz_name, np.zeros((), np.int8))])
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            acc = g.fresh(f"{base}_int32")
            new_nodes.append(helper.make_node("ConvInteger", [xq, wq_name, xz, wz_name], [acc],
                                              name=g.fresh(f"{base}_ConvInteger"), **attrs))
            bshape = (1, -1, 1, 1)
        else:
            # Gemm(transB=1) keeps W as (N, K); MatMulInteger wants (K, N)
            wk = w.T if s.channel_axis == 0 else w
            wq, ws = ref.quantize_symmetric_ref(wk, axis=1)
            wq_name, wz_name = g.fresh(f"{s.weight_name}_quantized"), g.fresh(f"{s.weight_name}_zero_point")
            out.graph.initializer.extend([make_init(wq_name, wq),
                                          make_init(wz_name, np.zeros(ws.shape, np.int8))])
            acc = g.fresh(f"{base}_int32")
            new_nodes.append(helper.make_node("MatMulInteger", [xq, wq_name, xz, wz_name], [acc],
                                              name=g.fresh(f"{base}_MatMulInteger")))
            bshape = (-1,)
        ws_name = g.fresh(f"{s.weight_name}_scale")
        out.graph.initializer.append(make_init(ws_name, ws.reshape(bshape).astype(np.float32)))
        fl, prod = g.fresh(f"{base}_float"), g.fresh(f"{base}_scale_product")
        has_bias = len(n.input) > 2 and n.input[2] in g.inits
        scaled = g.fresh(f"{base}_scaled") if has_bias else y
        new_nodes += [helper.make_node("Cast", [acc], [fl], to=onnx.TensorProto.FLOAT, name=g.fresh(f"{base}_Cast")),
                      helper.make_node("Mul", [xs, ws_name], [prod], name=g.fresh(f"{base}_ScaleMul")),
                      helper.make_node("Mul", [fl, prod], [scaled], name=g.fresh(f"{base}_Mul"))]
        if has_bias:
            b_name = g.fresh(f"{n.input[2]}_reshaped")
            out.graph.initializer.append(make_init(b_name, g.array(n.input[2]).reshape(bshape)))
            new_nodes.append(helper.make_node("Add", [scaled, b_name], [y], name=g.fresh(f"{base}_AddBias")))
        drop.append(n)
        report["layers"].append({"node": n.name, "op": n.op_type, "weight": s.weight_name,
                                 "weight_bits": 8, "activation_dtype": "uint8"})
    kept = [n for n in out.graph.node if all(n is not d for d in drop)]
    del out.graph.node[:]
    out.graph.node.extend(kept + new_nodes)
    remove_unused_initializers(out)
    topological_sort(out)
    return out, report
