"""Variant handlers for the quantization configs (registered with compress())."""

from __future__ import annotations

from compressor.configs import Fp32Config, Int4WeightOnlyConfig, Int8DynamicConfig, Int8StaticConfig
from compressor.context import Artifact, CompressContext, layer_groups_from_report
from compressor.quant.calibration import check_calibration_data
from compressor.quant.dynamic import quantize_dynamic_int8
from compressor.quant.qdq import QdqOptions, quantize_static_qdq
from compressor.quant.weight_only import quantize_weight_only
from compressor.registry import register_variant_handler


def _act_bits(dtype: str) -> int:
    return 32 if dtype == "float32" else int(dtype.lstrip("uint"))


@register_variant_handler(Fp32Config)
def _fp32(config: Fp32Config, ctx: CompressContext) -> Artifact:
    return Artifact(onnx=ctx.fp32_onnx, method="fp32", weight_bits=32, activation_bits=32)


@register_variant_handler(Int8StaticConfig)
def _int8_static(config: Int8StaticConfig, ctx: CompressContext) -> Artifact:
    calib = check_calibration_data(ctx.calib_data, f"variant {config.id!r} (static int8)")
    opts = QdqOptions(activation_dtype=config.activation_type.value,
                      activation_symmetric=config.symmetric_activations,
                      weight_bits=config.weight_bits, per_channel=config.per_channel,
                      method=config.calibration, percentile=config.percentile,
                      exclude=config.exclude)
    q, report = quantize_static_qdq(ctx.fp32_onnx, calib, opts)
    groups = layer_groups_from_report(report["layers"], lambda l: _act_bits(l["activation_dtype"]))
    return Artifact(
        onnx=q, method="ptq-static", weight_bits=max(g.weight_bits for g in groups),
        activation_bits=max(g.activation_bits for g in groups), parent=ctx.parent_id(),
        layer_groups=groups,
        details={"calibration": config.calibration.value, "per_channel": config.per_channel,
                 "activation_type": config.activation_type.value,
                 "symmetric_activations": config.symmetric_activations,
                 "calibration_samples": int(len(calib))})


@register_variant_handler(Int4WeightOnlyConfig)
def _weight_only(config: Int4WeightOnlyConfig, ctx: CompressContext) -> Artifact:
    quantizer = None
    if config.algorithm == "gptq":
        from compressor.quant.gptq import gptq_quantizer
        from compressor.quant.int2 import gptq_int2_quantizer
        make = gptq_int2_quantizer if config.bits == 2 else gptq_quantizer
        quantizer = make(ctx.fp32_onnx, check_calibration_data(
            ctx.calib_data, f"variant {config.id!r} (GPTQ)"))
    q, report = quantize_weight_only(ctx.fp32_onnx, bits=config.bits, group_size=config.group_size,
                                     symmetric=config.symmetric, exclude=config.exclude,
                                     quantizer=quantizer, edge_bits=config.edge_bits)
    method = "gptq" if config.algorithm == "gptq" else f"weight-only-int{config.bits}"
    details = {"group_size": config.group_size, "symmetric": config.symmetric,
               "edge_bits": config.edge_bits}
    two = [l for l in report["layers"] if l["weight_bits"] == 2]
    if two:     # codes + float16 scales (+ zero points) over the weights they encode
        details["int2_bits_per_weight"] = round(8.0 * sum(l["payload_bytes"] for l in two) /
                                                sum(l["weights"] for l in two), 3)
    if config.algorithm == "gptq" and config.bits == 2:
        method = "gptq-int2"
    return weight_only_artifact(q, report, config.bits, ctx, method=method, details=details)


# Without a MatMul to fuse into MatMulNBits, onnxruntime would run every blocked
# DequantizeLinear on every call (8x slower than fp32 for the digits CNN). With QDQ handling
# off, it folds them into fp32 weights once at load: fp32 speed, int4 download and storage.
FOLD_DQ_AT_LOAD = {"session.disable_quant_qdq": "1"}


def weight_only_artifact(q, report, bits: int, ctx: CompressContext, method: str,
                         details: dict) -> Artifact:
    groups = layer_groups_from_report(report["layers"], lambda l: 32)
    has_matmul = any(l["op"] == "MatMul" for l in report["layers"])
    return Artifact(
        onnx=q, method=method, weight_bits=max(g.weight_bits for g in groups),
        activation_bits=32, parent=ctx.parent_id(), layer_groups=groups,
        session_config={} if has_matmul else dict(FOLD_DQ_AT_LOAD),
        details={**details, "min_layer_sqnr_db": round(min(l.get("sqnr_db", 99.0) for l in report["layers"]), 2)})


@register_variant_handler(Int8DynamicConfig)
def _int8_dynamic(config: Int8DynamicConfig, ctx: CompressContext) -> Artifact:
    ops = ("Gemm", "MatMul", "Conv") if config.include_conv else ("Gemm", "MatMul")
    q, report = quantize_dynamic_int8(ctx.fp32_onnx, ops=ops, exclude=config.exclude)
    if not report["layers"]:
        from compressor.errors import UnsupportedLayerError
        raise UnsupportedLayerError(f"variant {config.id!r}: no {'/'.join(ops)} layer to quantize "
                                    "dynamically (set include_conv=True for convolutions)")
    groups = layer_groups_from_report(report["layers"], lambda l: 8)
    quantized = {l["weight"] for l in report["layers"]}
    widest = 32 if len(quantized) < _n_sites(ctx) else 8    # convs left in fp32 count
    return Artifact(onnx=q, method="ptq-dynamic", weight_bits=widest, activation_bits=widest,
                    parent=ctx.parent_id(), layer_groups=groups,
                    details={"ops": list(ops), "quantized_layers": sorted(quantized)})


def _n_sites(ctx: CompressContext) -> int:
    from compressor.quant.graph import Graph
    return len(Graph(ctx.fp32_onnx).weight_sites())

