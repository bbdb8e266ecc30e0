"""Variant handlers for the transformer configs (registered with compress())."""

from __future__ import annotations

import numpy as np

from compressor.context import Artifact, CompressContext, layer_groups_from_report
from compressor.errors import EmptyCalibrationError
from compressor.registry import register_variant_handler
from compressor.transformer.configs import (Int4Method, SmoothQuantInt8Config,
                                            TransformerInt4Config)
from compressor.transformer.fidelity import INPUT_NAMES, EmbeddingFidelity


def calibration_tokens(data, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) from compress(calib_data={...}) or a 2-tuple."""
    if isinstance(data, dict):
        missing = [k for k in INPUT_NAMES if k not in data]
        if missing:
            raise EmptyCalibrationError(f"{what}: calib_data lacks {missing}; give "
                                        f"{{'input_ids': ..., 'attention_mask': ...}}")
        ids, mask = data["input_ids"], data["attention_mask"]
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        ids, mask = data
    else:
        raise EmptyCalibrationError(f"{what} needs calibration sentences: calib_data="
                                    f"{{'input_ids': (N, seq) int64, 'attention_mask': ...}}")
    ids, mask = np.asarray(ids, np.int64), np.asarray(mask, np.int64)
    if ids.ndim != 2 or ids.shape != mask.shape or len(ids) == 0 or mask.sum() == 0:
        raise EmptyCalibrationError(f"{what}: calibration tokens must be two equal (N>0, seq) "
                                    f"arrays, got {ids.shape} and {mask.shape}")
    return ids, mask


def _fidelity_details(ctx: CompressContext, model) -> dict:
    """Top-k overlap too, when compress() measures with an EmbeddingFidelity."""
    if not isinstance(ctx.eval_fn, EmbeddingFidelity) or ctx.eval_fn.reference is None:
        return {}
    from compressor.evaluate import session
    m = ctx.eval_fn.evaluate(session(model, 2))
    return {k: round(v, 6) for k, v in m.items() if k.startswith("overlap")}


def _bits(report: dict) -> tuple[tuple, int, int]:
    groups = layer_groups_from_report(
        report["layers"], lambda l: 8 if l.get("activation_dtype") == "uint8" else 32)
    return groups, max(g.weight_bits for g in groups), max(g.activation_bits for g in groups)


@register_variant_handler(SmoothQuantInt8Config)
def _smoothquant_int8(config: SmoothQuantInt8Config, ctx: CompressContext) -> Artifact:
    from compressor.transformer.int8 import build_smoothquant_int8
    ids, mask = calibration_tokens(ctx.calib_data, f"variant {config.id!r} (SmoothQuant int8)")
    q, report = build_smoothquant_int8(ctx.fp32_onnx, ids, mask, config)
    groups, wb, ab = _bits(report)
    return Artifact(
        onnx=q, method="smoothquant-dynamic-int8", weight_bits=wb, activation_bits=ab,
        parent=ctx.parent_id(), layer_groups=groups,
        details={"kept_fp32": report["kept_fp32"],
                 "outlier_channels_fp32": report["outlier_channels_fp32"],
                 "smoothquant_alpha": {t["tensor"]: t["alpha"] for t in report["smoothquant"]},
                 "sensitivity": report["sensitivity"], "calibration_sentences": int(len(ids)),
                 **_fidelity_details(ctx, q)})


@register_variant_handler(TransformerInt4Config)
def _int4(config: TransformerInt4Config, ctx: CompressContext) -> Artifact:
    from compressor.transformer.int4 import build_int4
    ids = mask = None
    if config.method is Int4Method.GPTQ:
        ids, mask = calibration_tokens(ctx.calib_data, f"variant {config.id!r} (GPTQ int4)")
    q, report = build_int4(ctx.fp32_onnx, ids, mask, config)
    groups = layer_groups_from_report(report["layers"], lambda l: 32)
    return Artifact(
        onnx=q, method=f"{config.method.value}-int4", parent=ctx.parent_id(), layer_groups=groups,
        weight_bits=max(g.weight_bits for g in groups) if not report["fp32_layers"] else 32,
        activation_bits=32,
        details={"group_size": config.group_size, "embedding": "GatherBlockQuantized int4",
                 "embedding_block_size": config.embedding_block_size,
                 "fp32_layers": report["fp32_layers"],
                 "min_layer_sqnr_db": round(min(l["sqnr_db"] for l in report["layers"]), 2),
                 **({"calibration_sentences": int(len(ids))} if ids is not None else {}),
                 **_fidelity_details(ctx, q)})
