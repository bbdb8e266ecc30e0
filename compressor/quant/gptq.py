"""GPTQ (Frantar et al. 2022): error-correcting block quantization of weights.

Round-to-nearest quantizes each weight alone. GPTQ quantizes the columns of a layer's
weight W (out x in) one at a time and spreads each column's rounding error over the columns
not yet quantized, weighted by the inverse Hessian of the layer's reconstruction loss
||X W^T - X Q^T||^2, H = X^T X (X: the layer's calibration inputs, one row per position).
Group scales are fixed when the quantizer reaches each group, from the already-updated
weights. The result is a normal `Blockwise` (same file format as round-to-nearest), so
onnxruntime runs it exactly like the RTN int4 variant.
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import helper

from compressor.quant import reference as ref
from compressor.quant.calibration import capture_tensors, check_calibration_data
from compressor.quant.graph import Graph, WeightSite


def layer_inputs(model, sites: list[WeightSite], calib: np.ndarray) -> dict[str, np.ndarray]:
    """Rows of X for each site, laid out like the flattened weight's columns (im2col)."""
    g = Graph(model)
    sites = [s for s in sites if not (s.node.op_type == "Conv" and any(
        a.name == "group" and a.i != 1 for a in s.node.attribute))]   # grouped: RTN (below)
    names = sorted({s.node.input[0] for s in sites})
    acts = {n: np.concatenate(v) for n, v in capture_tensors(model, names, calib).items()}
    out = {}
    for s in sites:
        a = acts[s.node.input[0]]
        if s.node.op_type == "Conv":
            at = {x.name: helper.get_attribute_value(x) for x in s.node.attribute}
            w = g.array(s.weight_name)
            pads = at.get("pads", [0, 0, 0, 0])
            cols = torch.nn.functional.unfold(
                torch.nn.functional.pad(torch.from_numpy(a), (pads[1], pads[3], pads[0], pads[2])),
                kernel_size=tuple(w.shape[2:]), dilation=tuple(at.get("dilations", [1, 1])),
                stride=tuple(at.get("strides", [1, 1])))          # (N, C*kh*kw, L)
            out[s.weight_name] = cols.permute(0, 2, 1).reshape(-1, cols.shape[1]).numpy()
        else:
            out[s.weight_name] = a.reshape(-1, a.shape[-1])
    return out


def gptq_blockwise(w2: np.ndarray, x: np.ndarray, block_size: int, bits: int = 4,
                   damp: float = 0.01) -> ref.Blockwise:
    """Quantize W (out x in) in blocks of `block_size` along `in`, GPTQ-corrected by X."""
    w = np.array(w2, dtype=np.float64)
    rows, cols = w.shape
    h = x.astype(np.float64).T @ x.astype(np.float64) / max(len(x), 1)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(cols)
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T            # upper Cholesky factor of H^-1
    qmax = ref.symmetric_qmax(bits)
    nblocks = -(-cols // block_size)
    scale = np.ones((rows, nblocks), np.float32)
    q = np.zeros((rows, cols), np.int8)
    for i in range(cols):
        b = i // block_size
        if i % block_size == 0:
            absmax = np.abs(w[:, i:i + block_size]).max(axis=1)
            scale[:, b] = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)
        s = scale[:, b].astype(np.float64)
        qi = np.clip(np.rint(w[:, i] / s), -qmax, qmax)
        q[:, i] = qi
        err = (w[:, i] - qi * s) / hinv[i, i]
        w[:, i + 1:] -= np.outer(err, hinv[i, i + 1:])
    return ref.Blockwise(q=q, scale=scale, zero_point=None, axis=1, block_size=block_size,
                         dtype=f"int{bits}")


def gptq_quantizer(model, calib: np.ndarray):
    """A per-site quantizer for weight_only.quantize_weight_only(quantizer=...)."""
    calib = check_calibration_data(calib, "GPTQ")
    g = Graph(model)
    xs = layer_inputs(model, g.weight_sites(), calib)

    def quantize(site: WeightSite, w2: np.ndarray, axis: int, block: int, bits: int):
        if site.weight_name not in xs:
            # grouped/depthwise conv: each output channel sees only its own group's inputs;
            # a per-group Hessian is not implemented, so these layers use round-to-nearest
            return ref.quantize_blockwise_ref(w2, axis=axis, block_size=block, bits=bits)
        if axis != 1:                   # MatMul (K, N): GPTQ works on (out x in)
            b = gptq_blockwise(w2.T, xs[site.weight_name], block, bits)
            return ref.Blockwise(q=b.q.T.copy(), scale=b.scale.T.copy(), zero_point=None,
                                 axis=0, block_size=block, dtype=b.dtype)
        return gptq_blockwise(w2, xs[site.weight_name], block, bits)
    return quantize
