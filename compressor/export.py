"""PyTorch -> ONNX, one clean graph with a dynamic batch axis.

torch 2.13's `torch.onnx.export` defaults to the torch.export-based ("dynamo") exporter; the
TorchScript one is deprecated. We use dynamo: it gives a clean graph (Conv/Relu/MaxPool/
Reshape/Gemm for the digits CNN, weights as initializers named after the parameters) with a
symbolic batch dimension. It exports at opset 18 and converts to the requested opset; we ask
for 21 because blocked DequantizeLinear (int4 with block_size) needs it, and keeping every
variant at one opset makes the graphs comparable. It costs ~3 s per export (the legacy
exporter ~0.05 s), which is fine for compression jobs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import warnings

import numpy as np
import onnx
import torch
from torch import nn

DEFAULT_OPSET = 21
IR_VERSION = 10           # onnxruntime 1.17+ reads IR 10; keeps files loadable on older agents


class ExportError(RuntimeError):
    """The model could not be turned into an ONNX graph that checks and loads."""


def export_onnx(model: nn.Module, example_input: torch.Tensor | np.ndarray, *,
                input_name: str = "input", output_name: str = "logits",
                opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Export `model` (eval mode) with a dynamic batch axis on input and output.

    Returns an in-memory, self-contained ModelProto (no external data) that passes
    onnx.checker (full check, shape inference) and loads in onnxruntime.
    """
    model = model.eval()
    fold = getattr(model, "fold_for_export", None)
    if fold is None:
        from compressor.models.mobilenet_v2 import ConvBNAct, fold_batchnorm
        if any(isinstance(m, ConvBNAct) for m in model.modules()):
            model = fold_batchnorm(model)        # no BatchNormalization between Conv and Q
    else:
        model = fold()
    x = torch.from_numpy(np.array(example_input, dtype=np.float32)) if not isinstance(
        example_input, torch.Tensor) else example_input.float()
    if x.shape[0] < 2:
        x = torch.cat([x, x])          # a batch of 1 gets specialised as a constant; use 2
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    buf = io.BytesIO()
    try:
        with _quiet():
            prog = torch.onnx.export(
                model, (x,), input_names=[input_name], output_names=[output_name],
                dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True,
                external_data=False, verbose=False, optimize=True)
            prog.save(buf)
    except Exception as exc:  # the exporter raises many types; all mean the same to callers
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    check_model(proto)
    return proto


def check_model(proto: onnx.ModelProto) -> None:
    """onnx.checker with shape inference, then an onnxruntime session must build."""
    import onnxruntime as ort

    try:
        onnx.checker.check_model(proto, full_check=True)
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"exported graph does not check/load: {exc}") from exc


def save_onnx(proto: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Write a self-contained .onnx file; return its size in bytes."""
    data = proto.SerializeToString()
    pathlib.Path(path).write_bytes(data)
    return len(data)


@contextlib.contextmanager
def _quiet():
    """The dynamo exporter prints progress and warns about torchvision; keep logs clean."""
    logger = logging.getLogger("torch.onnx")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(old)
