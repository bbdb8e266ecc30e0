"""Layer-dropping transformer students (compressor.distill.layer_student) on a tiny BERT built
from the project's MiniLM code with random weights: fast, and no model package needed."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compressor import CompressionError, Fp32Config, LatencyConfig, UnsupportedLayerError, compress
from compressor.distill.layer_student import LayerDistillConfig, distill_layers, kept_layers
from compressor.models.minilm import BertConfig, MiniLMEncoder
from compressor.transformer import EmbeddingFidelity

TINY = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=16)


def _teacher(seed: int = 0) -> MiniLMEncoder:
    torch.manual_seed(seed)
    model = MiniLMEncoder(TINY)
    for p in model.parameters():          # BERT-like init scale so layers matter
        if p.ndim > 1:
            torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def _tokens(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, TINY.vocab_size, size=(n, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    for row, length in zip(mask, rng.integers(4, 13, size=n)):
        row[length:] = 0
    return ids, mask


def _cosine_to(model, teacher, ids, mask) -> float:
    with torch.no_grad():
        a = model(torch.from_numpy(ids), torch.from_numpy(mask))
        b = teacher(torch.from_numpy(ids), torch.from_numpy(mask))
    return float((a * b).sum(1).mean())


def test_kept_layers_spread_evenly_and_reject_nonsense():
    assert kept_layers(6, 3) == (0, 2, 5)
    assert kept_layers(4, 2) == (0, 3)
    assert kept_layers(6, 1) == (5,)
    with pytest.raises(CompressionError):
        kept_layers(4, 4)
    with pytest.raises(ValueError):
        LayerDistillConfig(layers=0)


def test_student_starts_as_a_copy_of_the_kept_teacher_layers():
    teacher = _teacher()
    student = teacher.make_layer_student((0, 3))
    assert len(student.encoder.layer) == 2 and student.config.num_hidden_layers == 2
    for dst, src in zip(student.encoder.layer, (0, 3)):
        for (name, p), q in zip(dst.state_dict().items(), teacher.encoder.layer[src].state_dict().values()):
            assert torch.equal(p, q), name
    assert torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)
    with pytest.raises(ValueError):
        teacher.make_layer_student((1, 1))


def test_distillation_brings_the_student_closer_to_the_teacher_on_unseen_sentences():
    torch.set_num_threads(1)
    teacher = _teacher()
    ids, mask = _tokens(256, seed=1)
    held_ids, held_mask = _tokens(64, seed=2)
    keep = kept_layers(4, 2)
    before = _cosine_to(teacher.make_layer_student(keep), teacher, held_ids, held_mask)
    student, record = distill_layers(teacher, ids, mask, LayerDistillConfig(layers=2, epochs=4, lr=2e-3))
    after = _cosine_to(student, teacher, held_ids, held_mask)
    assert record["kept_teacher_layers"] == [0, 3]
    assert record["epoch_losses"][-1] < record["epoch_losses"][0]
    assert after > before + 0.01, (before, after)


def test_compress_exports_a_student_that_onnxruntime_runs_like_pytorch(tmp_path):
    torch.set_num_threads(1)
    teacher = _teacher()
    ids, mask = _tokens(128, seed=1)
    held_ids, held_mask = _tokens(32, seed=2)
    result = compress(
        teacher, [Fp32Config(), LayerDistillConfig(layers=2, epochs=2, lr=2e-3)],
        train_data={"input_ids": ids, "attention_mask": mask}, calib_data={"input_ids": ids, "attention_mask": mask},
        eval_fn=EmbeddingFidelity.from_model(teacher, held_ids, held_mask), quality_metric="cosine_to_fp32",
        example_input={"input_ids": held_ids[:2], "attention_mask": held_mask[:2]},
        out_dir=tmp_path / "bundle", signing_key=tmp_path / "k.key", model_name="tiny-bert",
        latency=LatencyConfig(warmup=1, repeats=2, threads=1))
    variant = {v.id: v for v in result.manifest.variants}["student-2l"]
    assert variant.method == "kd-layer-student"
    assert variant.size_bytes < {v.id: v for v in result.manifest.variants}["fp32"].size_bytes
    from compressor import read_bundle

    onnx_bytes = read_bundle(tmp_path / "bundle").files[variant.file]     # inflated if stored deflated
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": held_ids, "attention_mask": held_mask})[0]
    # the exported graph computes what the PyTorch student would: its cosine to the teacher
    # (the variant's recorded quality) is what we measure from the ONNX output here
    with torch.no_grad():
        ref = teacher(torch.from_numpy(held_ids), torch.from_numpy(held_mask)).numpy()
    assert abs(float((got * ref).sum(1).mean()) - variant.quality) < 1e-4


def test_layer_distillation_refuses_missing_data_and_models_without_layers(tmp_path):
    teacher = _teacher()
    ids, mask = _tokens(8, seed=1)
    kwargs = dict(eval_fn=EmbeddingFidelity.from_model(teacher, ids, mask), quality_metric="cosine_to_fp32",
                  example_input={"input_ids": ids[:2], "attention_mask": mask[:2]},
                  out_dir=tmp_path / "b", signing_key=tmp_path / "k.key", model_name="tiny-bert")
    with pytest.raises(CompressionError, match="train_data"):
        compress(teacher, [LayerDistillConfig(layers=2)], **kwargs)
    with pytest.raises(UnsupportedLayerError, match="make_layer_student"):
        distill_layers(torch.nn.Linear(2, 2), ids, mask, LayerDistillConfig(layers=1))
