"""Bring a user's ONNX file to the opset the rewrites need."""

from __future__ import annotations

import onnx
from onnx import version_converter

from compressor.export import DEFAULT_OPSET, IR_VERSION


def ensure_opset(model: onnx.ModelProto, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert the default-domain opset up to `opset` (21: blocked DequantizeLinear)."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current < opset:
        model = version_converter.convert_version(model, opset)
        model.ir_version = max(min(model.ir_version, IR_VERSION), 10)
    return model
