"""Static int8 post-training quantization as a QDQ rewrite of an fp32 ONNX graph.

What the rewrite produces, for every Conv/Gemm/MatMul with a constant weight:

    x_q  = QuantizeLinear(x, sx, zx)         activations: per tensor, calibrated ranges
    x'   = DequantizeLinear(x_q, sx, zx)
    w'   = DequantizeLinear(W_int8, sw[c], 0, axis=c)     weights: int8 initializers,
    b'   = DequantizeLinear(B_int32, sx*sw[c], 0, axis=0)  per-channel symmetric
    y    = Conv(x', w', b')  [-> Relu]  -> QuantizeLinear -> DequantizeLinear -> consumers

onnxruntime fuses DQ->Conv->Q into QLinearConv (and Gemm into QGemm, MatMul into
QLinearMatMul/MatMulInteger); a Relu between the op and its output Q is removed when the
output zero point is the type's minimum, which the asymmetric ReLU range [0, max] gives.
Value-moving ops (MaxPool, Reshape, ...) between two quantized tensors get the same scale on
both sides so they run on int8 too. The weights are stored as int8, so the file is ~4x
smaller than fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.quant import reference as ref
from compressor.quant.calibration import CalibrationMethod, compute_ranges
from compressor.quant.graph import (PASSTHROUGH_OPS, Graph, WeightSite, make_init,
                                    remove_unused_initializers, replace_input, topological_sort)

ONNX_TYPES = {"int8": onnx.TensorProto.INT8, "uint8": onnx.TensorProto.UINT8,
              "int16": onnx.TensorProto.INT16, "uint16": onnx.TensorProto.UINT16,
              "int4": onnx.TensorProto.INT4, "uint4": onnx.TensorProto.UINT4,
              "int2": getattr(onnx.TensorProto, "INT2", None),
              "uint2": getattr(onnx.TensorProto, "UINT2", None)}


@dataclass
class QdqOptions:
    """How the rewrite quantizes (filled from the user-facing config)."""

    activation_dtype: str = "uint8"       # uint8 | int8 | uint16 | int16
    activation_symmetric: bool = False
    weight_bits: int = 8                  # 8 or 16 (int16 weights for sensitive layers)
    per_channel: bool = True
    method: CalibrationMethod = CalibrationMethod.MINMAX
    percentile: float = 99.99
    quantize_outputs: bool = True         # also quantize graph outputs (lets the last op fuse)
    exclude: tuple[str, ...] = ()         # node names or weight names kept in fp32
    # per-node overrides: weight name -> (weight_bits, activation_dtype); mixed precision
    overrides: dict[str, tuple[int, str]] = field(default_factory=dict)


def activation_plan(g: Graph, sites: list[WeightSite], quantize_outputs: bool) -> list[str]:
    """Tensors that get a Q/DQ pair: inputs of weight ops, their (post-ReLU) outputs, and
    tensors a value-moving op passes between quantized tensors."""
    chosen: list[str] = []

    def add(t: str) -> None:
        if t and t not in chosen and t not in g.inits:
            chosen.append(t)

    for s in sites:
        for k, i in enumerate(s.node.input):
            if k != s.weight_index and i not in g.inits and k < 2:
                add(i)
        out = s.node.output[0]
        users = g.consumers.get(out, [])
        if len(users) == 1 and users[0].op_type in ("Relu", "Clip") and out not in g.graph_outputs:
            out = users[0].output[0]
        if out in g.graph_outputs and not quantize_outputs:
            continue
        add(out)
    # follow value-moving ops forward from quantized tensors (MaxPool of a quantized ReLU...)
    changed = True
    while changed:
        changed = False
        for n in g.model.graph.node:
            if n.op_type in PASSTHROUGH_OPS and n.input and n.input[0] in chosen \
                    and n.output[0] not in chosen and any(
                        c.op_type in ("Conv", "Gemm", "MatMul") or c.op_type in PASSTHROUGH_OPS
                        for c in g.consumers.get(n.output[0], [])):
                chosen.append(n.output[0])
                changed = True
    return chosen


def _params_in_order(g: Graph, tensors: list[str], ranges: dict[str, tuple[float, float]],
                     dtype: str, symmetric: bool) -> dict[str, tuple[np.float32, int]]:
    params = {t: ref.affine_params_ref(*ranges[t], dtype=dtype, symmetric=symmetric)
              for t in tensors}
    # a value-moving op must see one scale on both sides; inherit from its input
    for n in g.model.graph.node:
        if n.op_type in PASSTHROUGH_OPS and n.input and n.input[0] in params \
                and n.output[0] in params:
            params[n.output[0]] = params[n.input[0]]
    return params


def _fit_clip_ranges(g: Graph, params: dict, act_dtype: dict) -> None:
    """Keep a Clip output's quantized range inside [min, max] in float32 arithmetic.

    onnxruntime drops a Clip (ReLU6) before a QuantizeLinear only if scale * (qmax - zp) <=
    max (+ float epsilon). A ReLU6 saturates at exactly 6.0, and float32(6/255) * 255 is
    6.0000005, so the Clip would stay, block the QLinearConv fusion and leave every
    expand/depthwise conv of a MobileNet in fp32 between Q/DQ pairs (6x slower than fp32).
    Shaving the scale by a few ulps costs nothing measurable."""
    for n in g.model.graph.node:
        if n.op_type != "Clip" or n.output[0] not in params or len(n.input) < 3:
            continue
        if n.input[1] not in g.inits or n.input[2] not in g.inits:
            continue
        cmin, cmax = float(g.array(n.input[1])), float(g.array(n.input[2]))
        scale, zp = params[n.output[0]]
        qmin, qmax = ref.INT_RANGES[act_dtype[n.output[0]]]
        scale = np.float32(scale)
        while np.float32(scale * np.float32(qmax - zp)) > np.float32(cmax) or \
                np.float32(scale * np.float32(qmin - zp)) < np.float32(cmin):
            scale = np.nextafter(scale, np.float32(0))
        params[n.output[0]] = (scale, zp)


def _drop_clips_before_q(model: onnx.ModelProto) -> int:
    """Clip -> QuantizeLinear whose quantized range lies inside the Clip's [min, max]: the
    QuantizeLinear's saturation already clips, so the Clip is removed (exactly what
    onnxruntime's ClipQuantFusion would do; it does not fire on these opset-21 graphs, which
    left a MobileNet's expand/depthwise convs unfused and int8 6x slower than fp32)."""
    g = Graph(model)
    drop = []
    for n in model.graph.node:
        if n.op_type != "Clip" or len(n.input) < 3 or n.input[1] not in g.inits or n.input[2] not in g.inits:
            continue
        users = g.consumers.get(n.output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or n.output[0] in g.graph_outputs:
            continue
        q = users[0]
        sa, za = g.array(q.input[1]), g.array(q.input[2])
        if sa.size != 1 or za.size != 1:
            continue
        scale, zp = float(sa.reshape(-1)[0]), int(za.reshape(-1)[0])
        qmin, qmax = ref.INT_RANGES[{onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8",
                                     onnx.TensorProto.UINT16: "uint16", onnx.TensorProto.INT16: "int16"}[
                                         g.inits[q.input[2]].data_type]]
        cmin, cmax = float(g.array(n.input[1])), float(g.array(n.input[2]))
        lo = float(np.float32(scale) * np.float32(qmin - zp))
        hi = float(np.float32(scale) * np.float32(qmax - zp))
        if lo >= cmin and hi <= cmax:
            replace_input(q, n.output[0], n.input[0])
            drop.append(n)
    kept = [n for n in model.graph.node if all(n is not d for d in drop)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return len(drop)


def insert_qdq(model: onnx.ModelProto, g: Graph, tensor: str, scale: np.float32, zp: int,
               dtype: str) -> str:
    """Put QuantizeLinear -> DequantizeLinear on `tensor`; consumers read the DQ output.
    Returns the name of the dequantized tensor."""
    store = ref.NUMPY_STORAGE[dtype]
    s_name, z_name = g.fresh(f"{tensor}_scale"), g.fresh(f"{tensor}_zero_point")
    # 0-d (scalar) scale and zero point: onnxruntime's QDQ Add/Mul fusion into QLinearAdd
    # requires scalars and silently leaves DQ -> float Add -> Q when they are shape [1]
    # (QLinearConv accepts either), which kept every residual Add of a MobileNet in fp32.
    # (not make_init: np.ascontiguousarray turns a 0-d array into shape [1])
    model.graph.initializer.extend([
        numpy_helper.from_array(np.asarray(scale, np.float32).reshape(()), s_name),
        numpy_helper.from_array(np.asarray(zp, store).reshape(()), z_name)])
    if tensor in g.graph_outputs:
        # keep the graph output's name on the DQ output; the producer writes a new name
        src = g.fresh(f"{tensor}_float")
        producer = g.producer[tensor]
        for k, o in enumerate(producer.output):
            if o == tensor:
                producer.output[k] = src
        for c in g.consumers.get(tensor, []):
            replace_input(c, tensor, src)
        q_out, dq_out = g.fresh(f"{tensor}_quantized"), tensor
        q_in = src
    else:
        q_in, q_out, dq_out = tensor, g.fresh(f"{tensor}_quantized"), g.fresh(f"{tensor}_dequantized")
        for c in g.consumers.get(tensor, []):
            replace_input(c, tensor, dq_out)
    model.graph.node.extend([
        helper.make_node("QuantizeLinear", [q_in, s_name, z_name], [q_out], name=g.fresh(f"{tensor}_Q")),
        helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=g.fresh(f"{tensor}_DQ")),
    ])
    return dq_out


def quantize_weight_int(model: onnx.ModelProto, g: Graph, site: WeightSite, bits: int,
                        per_channel: bool) -> np.ndarray:
    """Replace the weight by int8/int16 + DequantizeLinear; return the per-channel scales."""
    w = g.array(site.weight_name)
    q, scale = ref.quantize_symmetric_ref(w, site.channel_axis if per_channel else None, bits)
    name = site.weight_name
    q_name, s_name, z_name = g.fresh(f"{name}_quantized"), g.fresh(f"{name}_scale"), g.fresh(f"{name}_zero_point")
    model.graph.initializer.extend([make_init(q_name, q), make_init(s_name, scale),
                                    make_init(z_name, np.zeros(scale.shape, q.dtype))])
    dq_out = g.fresh(f"{name}_dequantized")
    attrs = {"axis": site.channel_axis} if per_channel else {}
    model.graph.node.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out],
                                             name=g.fresh(f"{name}_DQ"), **attrs))
    site.node.input[site.weight_index] = dq_out
    return scale


def quantize_bias_int32(model: onnx.ModelProto, g: Graph, site: WeightSite, x_scale: float,
                        w_scale: np.ndarray) -> None:
    if len(site.node.input) < 3 or site.node.input[2] not in g.inits:
        return
    b_name = site.node.input[2]
    b = g.array(b_name)
    if b.ndim != 1:
        return
    w_scale = np.broadcast_to(np.asarray(w_scale, np.float32), b.shape)
    q, scale = ref.quantize_bias_ref(b, x_scale, w_scale)
    q_name, s_name, z_name = g.fresh(f"{b_name}_quantized"), g.fresh(f"{b_name}_scale"), g.fresh(f"{b_name}_zero_point")
    model.graph.initializer.extend([make_init(q_name, q), make_init(s_name, scale),
                                    make_init(z_name, np.zeros(scale.shape, np.int32))])
    dq_out = g.fresh(f"{b_name}_dequantized")
    model.graph.node.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out],
                                             name=g.fresh(f"{b_name}_DQ"), axis=0))
    site.node.input[2] = dq_out


def quantize_static_qdq(model: onnx.ModelProto, calib_data: np.ndarray, opts: QdqOptions,
                        ranges: dict[str, tuple[float, float]] | None = None
                        ) -> tuple[onnx.ModelProto, dict]:
    """Return (quantized copy of `model`, report) — the input model is not modified.

    The report lists, per weight op, the weight bits and activation type used, and the
    calibrated ranges, for the manifest's layer groups and for debugging.

    `ranges` gives (min, max) for activation tensors by name; only the tensors it lacks are
    calibrated (QAT passes the ranges its observers learned; mixed precision calibrates
    once and rebuilds many times).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out)
    g.check_supported("int8 static quantization")
    sites = [s for s in g.weight_sites()
             if s.node.name not in opts.exclude and s.weight_name not in opts.exclude]
    tensors = activation_plan(g, sites, opts.quantize_outputs)
    given = dict(ranges or {})
    missing = [t for t in tensors if t not in given]
    ranges = {t: given[t] for t in tensors if t in given}
    if missing:
        ranges.update(compute_ranges(model, missing, calib_data, opts.method, opts.percentile,
                                     bits=8 if opts.activation_dtype.endswith("8") else 16))
    # per-tensor activation type: an override on a weight op applies to the tensors it reads
    act_dtype = {t: opts.activation_dtype for t in tensors}
    for s in sites:
        if s.weight_name in opts.overrides:
            _, dt = opts.overrides[s.weight_name]
            for k, i in enumerate(s.node.input):
                if k != s.weight_index and i in act_dtype:
                    act_dtype[i] = dt
    params = {}
    for dt in set(act_dtype.values()):
        group = [t for t in tensors if act_dtype[t] == dt]
        params.update(_params_in_order(g, group, ranges, dt, opts.activation_symmetric))
    _fit_clip_ranges(g, params, act_dtype)
    report = {"layers": [], "ranges": {t: list(map(float, ranges[t])) for t in tensors}}
    for s in sites:
        w_name = s.weight_name                      # before the rewrite renames the input
        bits = opts.overrides.get(w_name, (opts.weight_bits, None))[0]
        w_scale = quantize_weight_int(out, g, s, bits, opts.per_channel)
        x = s.node.input[0]
        if x in params:
            quantize_bias_int32(out, g, s, params[x][0], w_scale)
        report["layers"].append({"node": s.node.name, "op": s.node.op_type, "weight": w_name,
                                 "weight_bits": bits,
                                 "activation_dtype": act_dtype.get(x, "float32")})
    for t in tensors:
        insert_qdq(out, g, t, params[t][0], params[t][1], act_dtype[t])
    report["clips_removed"] = _drop_clips_before_q(out)
    remove_unused_initializers(out)
    topological_sort(out)
    return out, report
