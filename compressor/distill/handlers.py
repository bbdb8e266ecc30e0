"""Variant handler for DistillConfig: train a narrower student from the model, export, [int8]."""

from __future__ import annotations

import torch

from compressor.configs import DistillConfig
from compressor.context import Artifact, CompressContext, layer_groups_from_report
from compressor.distill.losses import DistillSettings, distill
from compressor.errors import CompressionError, UnsupportedLayerError
from compressor.export import export_onnx
from compressor.prune.structured import count_params
from compressor.quant.calibration import check_calibration_data
from compressor.quant.qdq import QdqOptions, quantize_static_qdq
from compressor.registry import register_variant_handler


def train_student(teacher: torch.nn.Module, config: DistillConfig, train_data) -> torch.nn.Module:
    if not hasattr(teacher, "make_student"):
        raise UnsupportedLayerError(f"{type(teacher).__name__} has no make_student(width); "
                                    "distillation needs to know how to build a narrower student")
    if train_data is None:
        raise CompressionError(f"variant {config.id!r}: distillation needs train_data=(x, y)")
    torch.manual_seed(config.seed)
    student = teacher.make_student(config.width)
    return distill(teacher, student, *train_data, DistillSettings(
        temperature=config.temperature, alpha=config.alpha, feature_weight=config.feature_weight,
        epochs=config.epochs, lr=config.lr, seed=config.seed))


@register_variant_handler(DistillConfig)
def _distill(config: DistillConfig, ctx: CompressContext) -> Artifact:
    student = train_student(ctx.model, config, ctx.train_data)
    proto = export_onnx(student, ctx.example_input)
    details = {"width": config.width, "temperature": config.temperature, "alpha": config.alpha,
               "feature_weight": config.feature_weight, "epochs": config.epochs,
               "params": count_params(student), "teacher_params": count_params(ctx.model)}
    method, bits, groups = "kd-student", 32, ()
    if config.int8:
        calib = check_calibration_data(ctx.calib_data, f"variant {config.id!r} (int8 student)")
        proto, report = quantize_static_qdq(proto, calib, QdqOptions())
        method, bits = "kd-student+ptq-static", 8
        groups = layer_groups_from_report(report["layers"], lambda l: 8)
    return Artifact(onnx=proto, method=method, weight_bits=bits, activation_bits=bits,
                    parent=ctx.parent_id(), layer_groups=groups, details=details)
