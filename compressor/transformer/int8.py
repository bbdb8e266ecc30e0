"""SmoothQuant + dynamic int8 + measured mixed precision for a sentence encoder graph.

The steps and why are in SmoothQuantInt8Config's docstring. Everything runs on the fp32
ONNX graph; the dynamic int8 rewrite is compressor.quant.dynamic's.
"""

from __future__ import annotations

import numpy as np
import onnx

from compressor.evaluate import session
from compressor.quant.dynamic import quantize_dynamic_int8
from compressor.quant.graph import Graph, remove_unused_initializers, topological_sort
from compressor.transformer.attention import (QATTENTION_MASK_FILTER, fuse_attention,
                                              quantize_attention_int8)
from compressor.transformer.calibration import batches, channel_absmax, collect_inputs
from compressor.transformer.configs import SmoothQuantInt8Config, SmoothTargets
from compressor.transformer.embedding import embedding_gathers, quantize_embedding_int8
from compressor.transformer.fidelity import cosine_rows, run_encoder
from compressor.transformer.fuse import (merge_head_splits, merge_parallel_linears,
                                        remove_dead_nodes, residual_sums)
from compressor.transformer.outliers import outlier_channels, split_outlier_channels
from compressor.transformer.smoothquant import (apply_smoothquant, search_alpha,
                                                smoothable_inputs)


def smoothing_targets(model: onnx.ModelProto, which: SmoothTargets,
                      exclude: tuple[str, ...] = ()) -> dict[str, list[str]]:
    g = Graph(model)
    targets = smoothable_inputs(model, include=lambda w: w not in exclude)
    if which is SmoothTargets.NONE:
        return {}
    if which is SmoothTargets.LAYERNORM:
        targets = {x: ws for x, ws in targets.items()
                   if x in g.producer and g.producer[x].op_type == "LayerNormalization"}
    return targets


def choose_alphas(model: onnx.ModelProto, targets: dict[str, list[str]], feeds, absmax,
                  cfg: SmoothQuantInt8Config) -> tuple[dict[str, float | None], dict]:
    if cfg.alpha is not None:
        return {x: cfg.alpha for x in targets}, {}
    g = Graph(model)
    rows, sentence = collect_inputs(model, list(targets), feeds, cfg.calibration_rows)
    alphas, errors = {}, {}
    for x, weights in targets.items():
        alphas[x], errs = search_alpha(rows[x], sentence, [g.array(w) for w in weights],
                                       absmax[x], cfg.alpha_grid)
        errors[x] = {str(a): float(e) for a, e in errs.items()}
        # a smoothed tensor costs one Mul per call: only where it cuts the error enough
        if alphas[x] is not None and None in errs and \
                errs[None] < cfg.min_smoothing_gain * errs[alphas[x]]:
            alphas[x] = None
    return alphas, errors


def _embedding_int8(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict]]:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out)
    layers = [quantize_embedding_int8(out, g, n) for n in embedding_gathers(out, g)]
    remove_unused_initializers(out)
    topological_sort(out)
    return out, layers


def _quantize(base: onnx.ModelProto, exclude: tuple[str, ...], attention: bool = False
              ) -> tuple[onnx.ModelProto, dict]:
    """Dynamic int8 of every MatMul not in `exclude`; with `attention`, each self-attention
    block whose packed Q/K/V weight is quantized becomes one QAttention first
    (compressor.transformer.attention)."""
    layers = []
    if attention:
        # a block whose Q/K/V MatMul is excluded, or whose mask QAttention cannot take, keeps
        # its unfused ops: quantize_dynamic_int8 takes no fp32 weight on a com.microsoft op
        base, _ = fuse_attention(base, skip=exclude, mask_filter=QATTENTION_MASK_FILTER)
        base, layers = quantize_attention_int8(base)
    q, report = quantize_dynamic_int8(base, ops=("MatMul",), exclude=exclude)
    report["layers"] = layers + report["layers"]
    return q, report


def sensitivity(smoothed: onnx.ModelProto, candidates: list[str], base_exclude: tuple[str, ...],
                ids: np.ndarray, mask: np.ndarray, reference: np.ndarray, attention: bool = False
                ) -> tuple[float, dict[str, float]]:
    """Mean cosine of the all-int8 model, and for each candidate Linear the cosine gained
    when only that one is back in fp32 (measured end to end, through onnxruntime)."""
    def cos(model: onnx.ModelProto) -> float:
        return float(np.mean(cosine_rows(run_encoder(session(model, 2), ids, mask), reference)))

    base = cos(_quantize(smoothed, base_exclude, attention)[0])
    gains = {}
    for w in candidates:
        gains[w] = cos(_quantize(smoothed, base_exclude + (w,), attention)[0]) - base
    return base, gains


def build_smoothquant_int8(fp32: onnx.ModelProto, ids: np.ndarray, mask: np.ndarray,
                           cfg: SmoothQuantInt8Config, say=lambda _m: None
                           ) -> tuple[onnx.ModelProto, dict]:
    """Return (int8 graph, report) built from calibration sentences (ids, mask)."""
    feeds = batches(ids, mask)
    merged = []
    if cfg.merge_parallel:
        fp32, merged = merge_parallel_linears(fp32)
        fp32, _ = merge_head_splits(fp32)
    targets = smoothing_targets(fp32, cfg.smooth, cfg.exclude)
    others = {x: ws for x, ws in smoothable_inputs(fp32, include=lambda w: w not in cfg.exclude).items()
              if x not in targets} if cfg.outlier_ratio > 0 else {}
    say(f"statistics of {len(targets)} tensors to smooth and {len(others)} to check for outliers")
    absmax = channel_absmax(fp32, list(targets) + list(others), feeds) if targets or others else {}
    alphas, alpha_errors = choose_alphas(fp32, targets, feeds, absmax, cfg) if targets else ({}, {})
    smoothed, sq_report = apply_smoothquant(fp32, absmax, alphas, targets)
    outliers, fp32_parts = {}, []
    for x, weights in others.items():
        ch = outlier_channels(absmax[x], cfg.outlier_ratio, cfg.max_outlier_channels)
        if len(ch):
            fp32_parts += split_outlier_channels(smoothed, x, weights, ch)
            outliers[weights[0]] = [int(c) for c in ch]
    topological_sort(smoothed)
    exclude = cfg.exclude + tuple(fp32_parts)

    n = min(cfg.sensitivity_sentences, len(ids))
    s_ids, s_mask = ids[:n], mask[:n]
    sites = [s.weight_name for s in Graph(smoothed).weight_sites()
             if s.node.op_type == "MatMul" and s.weight_name not in exclude
             and s.node.name not in exclude]
    candidates = [w for w in sites if not cfg.sensitivity_candidates
                  or any(c in w for c in cfg.sensitivity_candidates)]
    keep: list[str] = []
    base, gains = None, {}
    if cfg.keep_fp32 and candidates:
        say(f"sensitivity scan of {len(candidates)} layers on {n} sentences")
        reference = run_encoder(session(fp32, 2), s_ids, s_mask)
        base, gains = sensitivity(smoothed, candidates, exclude, s_ids, s_mask, reference,
                                  cfg.fuse_attention)
        keep = sorted(gains, key=gains.get, reverse=True)[:cfg.keep_fp32]
    q, report = _quantize(smoothed, exclude + tuple(keep), cfg.fuse_attention)
    if cfg.quantize_embedding:
        # last: the dynamic int8 rewrite does not take a GatherBlockQuantized (weights on a
        # com.microsoft op), so the sensitivity scan above measures with an fp32 table
        q, embedding_layers = _embedding_int8(q)
        report["layers"] += embedding_layers
    if cfg.residual_sum:
        q, _ = residual_sums(q)
    remove_dead_nodes(q)
    matmuls = {s.weight_name for s in Graph(smoothed).weight_sites()
               if s.node.op_type == "MatMul" and s.weight_name not in fp32_parts}
    for w in dict.fromkeys(list(cfg.exclude) + keep):
        if w in matmuls:
            report["layers"].append({"node": w, "weight": w, "op": "MatMul", "weight_bits": 32,
                                     "activation_dtype": "float32"})
    report.update({
        "smoothquant": [{**t, "simulated_error": alpha_errors.get(t["tensor"])}
                        for t in sq_report["tensors"]],
        "merged": merged,
        "kept_fp32": keep,
        "outlier_channels_fp32": outliers,
        "sensitivity": {"all_int8_cosine": base,
                        "cosine_gain_if_fp32": {w: round(v, 6) for w, v in
                                                sorted(gains.items(), key=lambda kv: -kv[1])}},
    })
    return q, report
