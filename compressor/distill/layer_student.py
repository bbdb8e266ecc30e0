"""Shallower transformer students: keep some of the teacher's layers, then distill.

The student is the teacher with fewer layers (DistilBERT's recipe): embeddings and the kept
layers are copied from the teacher, so training starts from a working encoder. It is then
trained, on unlabelled sentences, to reproduce the teacher's sentence embedding (cosine) and,
with `feature_weight`, each kept layer's hidden states (intermediate-feature distillation,
student layer i against the teacher layer it was copied from). The teacher's outputs are
computed once, before training; only the student runs backward.

    compress(minilm, [LayerDistillConfig(layers=3)],
             train_data={"input_ids": ids, "attention_mask": mask},    # unlabelled sentences
             calib_data=..., eval_fn=EmbeddingFidelity(...), example_input=...)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from compressor.configs import VariantConfig
from compressor.context import Artifact, CompressContext
from compressor.errors import CompressionError, UnsupportedLayerError
from compressor.prune.structured import count_params
from compressor.registry import register_variant_handler


@dataclass
class LayerDistillConfig(VariantConfig):
    """A transformer student with `layers` of the teacher's layers, distilled from it.

    Args:
        layers: student depth (< the teacher's); the kept teacher layers are spread evenly
            and always include the first and the last.
        epochs, lr, batch_size, seed: student training (AdamW, linear decay).
        feature_weight: weight of the hidden-state (feature) loss beside the embedding loss;
            0 trains on the sentence embedding alone.
    """

    layers: int = 3
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 32
    feature_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"a student needs layers >= 1, got {self.layers}")
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1 or self.feature_weight < 0:
            raise ValueError("epochs and batch_size must be >= 1, lr > 0, feature_weight >= 0")
        super().__post_init__()

    def default_id(self) -> str:
        return f"student-{self.layers}l"


def kept_layers(teacher_layers: int, student_layers: int) -> tuple[int, ...]:
    """Evenly spaced teacher layers, first and last included: 6 -> 3 gives (0, 2, 5)."""
    if not 1 <= student_layers < teacher_layers:
        raise CompressionError(f"a student needs fewer layers than the teacher's {teacher_layers}, "
                               f"got {student_layers}")
    if student_layers == 1:
        return (teacher_layers - 1,)
    return tuple(int(i) for i in np.linspace(0, teacher_layers - 1, student_layers).round())


def _masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over the real (unpadded) tokens."""
    m = mask[:, :, None].to(a.dtype)
    return ((a - b) ** 2 * m).sum() / (m.sum() * a.shape[-1]).clamp(min=1.0)


def distill_layers(teacher: nn.Module, ids: np.ndarray, mask: np.ndarray,
                   config: LayerDistillConfig) -> tuple[nn.Module, dict]:
    """Build the student from `teacher` and train it; returns (student, training record)."""
    for needed in ("make_layer_student", "forward_with_hidden"):
        if not hasattr(teacher, needed):
            raise UnsupportedLayerError(f"{type(teacher).__name__} has no {needed}(); layer "
                                        "distillation needs a transformer encoder that offers it")
    keep = kept_layers(len(teacher.encoder.layer), config.layers)
    torch.manual_seed(config.seed)
    student = teacher.make_layer_student(keep)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)

    teacher.eval()
    with torch.no_grad():           # the targets, once
        t_emb, t_hidden = [], []
        for s in range(0, len(ids), 64):
            e, h = teacher.forward_with_hidden(ids_t[s:s + 64], mask_t[s:s + 64])
            t_emb.append(e)
            t_hidden.append(torch.stack([h[i] for i in keep]))
        t_emb, t_hidden = torch.cat(t_emb), torch.cat(t_hidden, dim=1)

    steps = config.epochs * -(-len(ids) // config.batch_size)
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / steps)
    gen = torch.Generator().manual_seed(config.seed)
    losses = []
    student.train()
    for _ in range(config.epochs):
        epoch_loss = 0.0
        for batch in torch.randperm(len(ids), generator=gen).split(config.batch_size):
            emb, hidden = student.forward_with_hidden(ids_t[batch], mask_t[batch])
            loss = (1.0 - (emb * t_emb[batch]).sum(1)).mean()      # both are L2-normalised
            if config.feature_weight:
                loss = loss + config.feature_weight * sum(
                    _masked_mse(h, t_hidden[i, batch], mask_t[batch]) for i, h in enumerate(hidden)
                ) / len(hidden)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            epoch_loss += float(loss.detach()) * len(batch)
        losses.append(round(epoch_loss / len(ids), 6))
    student.eval()
    return student, {"kept_teacher_layers": list(keep), "epoch_losses": losses}


@register_variant_handler(LayerDistillConfig)
def _layer_distill(config: LayerDistillConfig, ctx: CompressContext) -> Artifact:
    from compressor.transformer.handlers import calibration_tokens
    if ctx.train_data is None:
        raise CompressionError(f"variant {config.id!r}: layer distillation needs train_data="
                               "{'input_ids': ..., 'attention_mask': ...} (unlabelled sentences)")
    ids, mask = calibration_tokens(ctx.train_data, f"variant {config.id!r} (layer distillation)")
    student, record = distill_layers(ctx.model, ids, mask, config)
    proto = student.export_onnx(ctx.example_input)
    details = {"layers": config.layers, "epochs": config.epochs, "lr": config.lr,
               "feature_weight": config.feature_weight, "params": count_params(student),
               "teacher_params": count_params(ctx.model), **record}
    return Artifact(onnx=proto, method="kd-layer-student", weight_bits=32, activation_bits=32,
                    parent=ctx.parent_id(), details=details)
