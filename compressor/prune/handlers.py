"""Variant handler for PruneConfig: prune a copy of the model, fine-tune, export, [int8]."""

from __future__ import annotations

import copy

import numpy as np
import torch

from compressor.configs import PruneConfig, SparsityPattern
from compressor.context import Artifact, CompressContext, layer_groups_from_report
from compressor.errors import CompressionError, UnsupportedLayerError
from compressor.evaluate import count_macs
from compressor.export import export_onnx
from compressor.prune.importance import Importance, channel_contribution, weight_scores
from compressor.prune.masks import apply_masks, block_masks, n_m_masks, sparsity_of, unstructured_masks
from compressor.prune.structured import channel_scores_magnitude, count_params, prune_channels
from compressor.quant.calibration import check_calibration_data
from compressor.quant.qdq import QdqOptions, quantize_static_qdq
from compressor.registry import register_variant_handler
from compressor.train import TrainConfig, train


def _need_calib(ctx: CompressContext, what: str) -> np.ndarray:
    return check_calibration_data(ctx.calib_data, what)


def prune_model(model: torch.nn.Module, config: PruneConfig, calib: np.ndarray | None,
                train_data: tuple[np.ndarray, np.ndarray] | None) -> tuple[torch.nn.Module, dict]:
    """The PyTorch side of pruning (also used by the budget search and benchmarks)."""
    importance = Importance(config.importance)
    details: dict = {"importance": importance.value, "pattern": config.pattern.value}
    if config.pattern is SparsityPattern.CHANNEL:
        if not hasattr(model, "channel_groups"):
            raise UnsupportedLayerError(
                f"{type(model).__name__} does not declare channel_groups(); structured pruning "
                "needs to know which layers read each channel")
        groups = model.channel_groups()
        if importance is Importance.ACTIVATION:
            scores = {g.name: channel_contribution(model, g, calib) for g in groups}
        else:
            scores = {g.name: channel_scores_magnitude(model, g) for g in groups}
        before = count_params(model)
        pruned, rep = prune_channels(model, groups, config.sparsity, scores)
        details.update(channels=rep, params_before=before, params_after=count_params(pruned))
        masks = None
    else:
        pruned = copy.deepcopy(model)
        scores = weight_scores(pruned, importance, calib)
        if config.block is not None:
            # left dense: grouped (depthwise) convolutions (no block-sparse kernel), and layers
            # with fewer than 4 blocks along their input (a 1-channel 3x3 stem: dropping 3 of 4
            # blocks would leave each filter a few taps)
            dense = {n for n, m in pruned.named_modules()
                     if getattr(m, "groups", 1) > 1 or (n in scores and scores[n][0].numel() < 4 * config.block[1])}
            masks = block_masks({n: s for n, s in scores.items() if n not in dense}, config.sparsity, config.block)
            details["block"] = list(config.block)
        elif config.pattern is SparsityPattern.TWO_FOUR:
            masks = n_m_masks(scores)
        else:
            masks = unstructured_masks(scores, config.sparsity, config.scope)
        apply_masks(pruned, masks)
        details["scope"] = config.scope
    if config.finetune_epochs:
        if train_data is None:
            raise CompressionError(f"variant {config.id!r}: fine-tuning after pruning needs "
                                   "train_data=(x, y) (or finetune_epochs=0)")
        torch.manual_seed(config.seed)
        train(pruned, *train_data, TrainConfig(epochs=config.finetune_epochs, lr=config.finetune_lr,
                                               seed=config.seed),
              after_step=(lambda m: apply_masks(m, masks)) if masks is not None else None)
    details["finetune_epochs"] = config.finetune_epochs
    return pruned.eval(), details


@register_variant_handler(PruneConfig)
def _prune(config: PruneConfig, ctx: CompressContext) -> Artifact:
    calib = None
    if Importance(config.importance) is Importance.ACTIVATION or config.int8:
        calib = _need_calib(ctx, f"variant {config.id!r}")
    pruned, details = prune_model(ctx.model, config, calib, ctx.train_data)
    proto = export_onnx(pruned, ctx.example_input)
    if config.pattern is SparsityPattern.CHANNEL:
        sparsity = 1.0 - details["params_after"] / details["params_before"]
    else:
        sparsity = sparsity_of(pruned)
    details["macs"] = count_macs(proto)
    details["macs_fp32"] = count_macs(ctx.fp32_onnx)
    wbits = abits = 32
    groups = ()
    method = {"unstructured": f"{config.importance}-unstructured", "2:4": f"{config.importance}-2:4",
              "channel": f"{config.importance}-channel"}[config.pattern.value]
    if config.block is not None:
        method = f"{config.importance}-block{config.block[0]}x{config.block[1]}"
    if config.int8:
        proto, report = quantize_static_qdq(proto, calib, QdqOptions())
        groups = layer_groups_from_report(report["layers"], lambda l: 8)
        wbits = abits = 8
        method += "+ptq-static"
    return Artifact(onnx=proto, method=method, weight_bits=wbits, activation_bits=abits,
                    parent=ctx.parent_id(), sparsity=min(float(sparsity), 0.999999),
                    sparsity_pattern=config.pattern.value, layer_groups=groups, details=details)
