"""Export a sentence encoder (input_ids, attention_mask -> embedding) to ONNX.

Same exporter as compressor.export (torch.export-based, opset 21, checked and loaded), with
two int64 inputs whose batch and sequence axes are both dynamic. The dynamo exporter names
a Linear's transposed weight after a counter ("val_19"); those initializers are renamed
after the Linear's bias ("encoder.layer.0.attention.self.query.weight_t") so that reports,
exclude lists and sensitivity tables speak in layer names.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import torch
from torch import nn

from compressor.export import DEFAULT_OPSET, IR_VERSION, ExportError, _quiet, check_model
from compressor.transformer.fidelity import INPUT_NAMES

OUTPUT_NAME = "sentence_embedding"


def export_encoder(model: nn.Module, input_ids: np.ndarray, attention_mask: np.ndarray, *,
                   opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """ONNX graph of `model(input_ids, attention_mask)` with dynamic (batch, seq) axes."""
    model = model.eval()
    ids = torch.as_tensor(np.asarray(input_ids, np.int64))
    mask = torch.as_tensor(np.asarray(attention_mask, np.int64))
    if ids.shape[0] < 2 or ids.shape[1] < 3:
        raise ExportError("export_encoder needs an example batch of >= 2 rows and >= 3 tokens "
                          "(size-1 axes get specialised as constants)")
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    seq = torch.export.Dim("seq", min=2, max=_max_positions(model))
    buf = io.BytesIO()
    try:
        with _quiet():
            prog = torch.onnx.export(
                model, (ids, mask), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), opset_version=opset,
                dynamo=True, external_data=False, verbose=False, optimize=True)
            prog.save(buf)
    except Exception as exc:  # the exporter raises many types; all mean the same to callers
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    name_linear_weights(proto)
    check_model(proto)
    return proto


def _max_positions(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "max_position_embeddings", 512))


def name_linear_weights(model: onnx.ModelProto) -> dict[str, str]:
    """Rename MatMul weight initializers after the bias added right after them."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    taken = set(inits) | {o for n in g.node for o in n.output}
    renamed = {}
    for n in g.node:
        if n.op_type != "MatMul" or n.input[1] not in inits or n.input[1] in renamed:
            continue
        users = consumers.get(n.output[0], [])
        bias = next((i for u in users if u.op_type == "Add" for i in u.input
                     if i in inits and i.endswith(".bias")), None)
        if bias is None or len(consumers.get(n.input[1], [])) != 1:
            continue
        new = bias[:-len(".bias")] + ".weight_t"
        if new in taken:
            continue
        renamed[n.input[1]] = new
        inits[n.input[1]].name = new
        n.input[1] = new
        taken.add(new)
    return renamed
