"""int4 everywhere in a sentence encoder: GPTQ MatMuls, GatherBlockQuantized embeddings.

Size on MiniLM-L6 (22.7 M parameters): MatMuls 10.6 M x (4 bits + fp32 scale / 32) =
6.6 MB, word embeddings 11.7 M x (4 bits + fp16 scale / 32) = 6.6 MB, int8 position table
0.2 MB, LayerNorm and biases 0.1 MB: ~13.5 MB, against 90.5 MB in fp32.
"""

from __future__ import annotations

import numpy as np
import onnx

from compressor.quant.graph import Graph, remove_unused_initializers, topological_sort
from compressor.transformer.calibration import batches, collect_inputs
from compressor.transformer.configs import Int4Method, TransformerInt4Config
from compressor.transformer.embedding import (embedding_gathers, quantize_embedding_int4,
                                              quantize_table_int8_dq, sliced_tables)
from compressor.transformer.gptq import gptq_int4, hessian, rtn_int4, write_int4_weight
from compressor.quant import reference as ref


def build_int4(fp32: onnx.ModelProto, ids: np.ndarray | None, mask: np.ndarray | None,
               cfg: TransformerInt4Config, say=lambda _m: None) -> tuple[onnx.ModelProto, dict]:
    """Return (int4 graph, report). GPTQ needs calibration sentences (ids, mask)."""
    out = onnx.ModelProto()
    out.CopyFrom(fp32)
    g = Graph(out)
    sites = [s for s in g.weight_sites() if s.node.op_type == "MatMul"
             and s.weight_name not in cfg.exclude and s.node.name not in cfg.exclude]
    # a reduction axis that is not a whole number of groups stays fp32 (reported below)
    skipped = [s.weight_name for s in sites if g.array(s.weight_name).shape[0] % cfg.group_size]
    sites = [s for s in sites if s.weight_name not in skipped]
    hessians: dict[str, np.ndarray] = {}
    if cfg.method is Int4Method.GPTQ:
        inputs = list(dict.fromkeys(s.node.input[0] for s in sites))
        say(f"GPTQ: activations of {len(inputs)} tensors")
        rows, _ = collect_inputs(fp32, inputs, batches(ids, mask), cfg.calibration_rows)
        hessians = {x: hessian(rows[x]) for x in inputs}
    report = {"layers": [], "fp32_layers": skipped}
    for k, s in enumerate(sites):
        w = g.array(s.weight_name)
        if cfg.method is Int4Method.GPTQ:
            say(f"GPTQ {k + 1}/{len(sites)} {s.weight_name}")
            b = gptq_int4(w, hessians[s.node.input[0]], cfg.group_size, cfg.damp)
        else:
            b = rtn_int4(w, cfg.group_size)
        name, node = s.weight_name, s.node.name
        write_int4_weight(out, g, s, b)
        err = ref.dequantize_blockwise_ref(b) - w
        entry = {"node": node, "op": "MatMul", "weight": name, "weight_bits": 4,
                 "group_size": cfg.group_size, "method": cfg.method.value,
                 "sqnr_db": float(10 * np.log10(np.sum(w.astype(np.float64) ** 2) /
                                                max(np.sum(err.astype(np.float64) ** 2), 1e-30)))}
        if hessians:     # output error on the calibration activations: what GPTQ minimises
            h = hessians[s.node.input[0]]
            entry["output_error_rel"] = float(np.sum((h @ err) * err) / max(np.sum((h @ w) * w), 1e-30))
        report["layers"].append(entry)
    for n in embedding_gathers(out, g):
        if n.input[0] not in cfg.exclude:
            report["layers"].append(quantize_embedding_int4(out, g, n, cfg.embedding_block_size,
                                                            cfg.fp16_embedding_scales))
    if cfg.quantize_positions:
        for t in sliced_tables(out, g):
            if t not in cfg.exclude:
                report["layers"].append(quantize_table_int8_dq(out, g, t))
    remove_unused_initializers(out)
    topological_sort(out)
    return out, report
