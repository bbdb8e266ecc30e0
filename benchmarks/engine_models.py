"""Example ONNX variants for the native engine's tests and benchmark (built with the compressor,
small and fast): the digits CNN in fp32, int8 QDQ (uint8 and int8 activations), int4
weight-only, 75%-pruned fp32 and pruned int8 QDQ; the MobileNetV2-style network likewise,
its sparse variants block-pruned (16 x 4 blocks) for the block-sparse int8 kernel.

Imports torch/onnx/compressor: tests and benchmarks only, never the engine.
"""

from __future__ import annotations

import functools

import numpy as np


def prune_onnx(model, sparsity: float = 0.75):
    """Copy of `model` with the smallest-magnitude `sparsity` of every weight matrix / kernel
    (per output row) set to exactly zero."""
    import onnx
    from onnx import numpy_helper

    from kernels import quant

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.dtype != np.float32 or w.ndim < 2:
            continue
        rows = w.reshape(w.shape[0], -1)
        pruned = quant.prune_unstructured(rows, sparsity).reshape(w.shape)
        t.CopyFrom(numpy_helper.from_array(pruned.astype(np.float32), t.name))
    return out


@functools.lru_cache(maxsize=1)
def digits_variants(epochs: int = 2) -> tuple[dict[str, bytes], np.ndarray]:
    """{variant id: ONNX bytes} for the digits CNN and a batch of real inputs [N, 1, 8, 8]."""
    from compressor.examples import digits_cnn
    from compressor.export import export_onnx
    from compressor.quant.qdq import QdqOptions, quantize_static_qdq
    from compressor.quant.weight_only import quantize_weight_only

    ex = digits_cnn(seed=0, epochs=epochs)
    calib = ex.calibration[0][:64].astype(np.float32)
    fp32 = export_onnx(ex.model, calib[:2])
    sparse = prune_onnx(fp32, 0.75)
    variants = {
        "fp32": fp32,
        "int8": quantize_static_qdq(fp32, calib, QdqOptions())[0],
        "int8-s8act": quantize_static_qdq(fp32, calib, QdqOptions(activation_dtype="int8",
                                                                  activation_symmetric=True))[0],
        "int4": quantize_weight_only(fp32, bits=4, group_size=32)[0],
        "sparse-fp32": sparse,
        "sparse-int8": quantize_static_qdq(sparse, calib, QdqOptions())[0],
    }
    inputs = ex.heldout[0][:32].astype(np.float32)
    return {k: v.SerializeToString() for k, v in variants.items()}, np.ascontiguousarray(inputs)


@functools.lru_cache(maxsize=1)
def minilm_variants(seq_len: int = 32) -> tuple[dict[str, bytes], dict[str, np.ndarray]] | None:
    """{variant id: ONNX bytes} for all-MiniLM-L6-v2 (fp32 export, and onnxruntime's
    quantize_dynamic of it: per-channel QInt8 weights, MatMulInteger) and one tokenized
    sentence of `seq_len` tokens; None when the weights package is not installed."""
    import os
    import tempfile

    from compressor.models.minilm import ModelUnavailable, load_minilm, load_tokenizer
    from compressor.transformer.export import export_encoder
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        model, tok = load_minilm(), load_tokenizer()
    except ModelUnavailable:
        return None
    sentences = ["edge devices run compressed sentence encoders next to the sensors that need them",
                 "a second sentence, because the exporter needs a batch of two"]
    ids, mask = tok.encode(sentences, seq_len=seq_len)
    fp32 = export_encoder(model, ids, mask)
    ids, mask = ids[:1], mask[:1]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        with open(src, "wb") as f:
            f.write(fp32.SerializeToString())
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)
        with open(dst, "rb") as f:
            int8 = f.read()
    feeds = {"input_ids": np.ascontiguousarray(ids, np.int64), "attention_mask": np.ascontiguousarray(mask, np.int64)}
    return {"fp32": fp32.SerializeToString(), "int8-dynamic": int8}, feeds


MOBILENET_BLOCK = (16, 4)      # the block-sparse int8 kernel's unit (kernels bsr_qs8)


def block_pruned_mobilenet(ex, sparsity: float = 0.75, finetune_epochs: int = 0, finetune_lr: float = 5e-3):
    """The compressor's block pruning of the MobileNetV2-style network: 16 x 4 blocks of every
    pointwise conv and the classifier (depthwise convs and the 1-channel stem stay dense),
    magnitude scores, `finetune_epochs` of fine-tuning (at the example's training learning
    rate) with the pruned blocks held at zero."""
    from compressor.configs import PruneConfig
    from compressor.prune.handlers import prune_model

    config = PruneConfig(sparsity=sparsity, block=MOBILENET_BLOCK, finetune_epochs=finetune_epochs,
                         finetune_lr=finetune_lr)
    pruned, _ = prune_model(ex.model, config, None, ex.train if finetune_epochs else None)
    return pruned


@functools.lru_cache(maxsize=1)
def mobilenet_variants(epochs: int = 1) -> tuple[dict[str, bytes], np.ndarray]:
    """{variant id: ONNX bytes} for the MobileNetV2-style network on 16x16 digits (BatchNorm
    folded before export, as the compressor does): fp32, int8 QDQ, int4 weight-only, and the
    75% block-pruned network (16 x 4 blocks, block_pruned_mobilenet; fine-tuned for `epochs`
    when epochs > 0) in fp32 and int8 QDQ; plus real inputs [N, 1, 16, 16]."""
    from compressor.examples import mobilenet_v2_digits
    from compressor.export import export_onnx
    from compressor.models.mobilenet_v2 import fold_batchnorm
    from compressor.quant.qdq import QdqOptions, quantize_static_qdq
    from compressor.quant.weight_only import quantize_weight_only

    ex = mobilenet_v2_digits(seed=0, epochs=epochs)
    calib = ex.calibration[0][:64].astype(np.float32)
    fp32 = export_onnx(fold_batchnorm(ex.model), calib[:2])
    sparse = export_onnx(fold_batchnorm(block_pruned_mobilenet(ex, 0.75, epochs)), calib[:2])
    variants = {
        "fp32": fp32,
        "int8": quantize_static_qdq(fp32, calib, QdqOptions())[0],
        "int4": quantize_weight_only(fp32, bits=4, group_size=32)[0],
        "sparse-fp32": sparse,
        "sparse-int8": quantize_static_qdq(sparse, calib, QdqOptions())[0],
    }
    inputs = ex.heldout[0][:16].astype(np.float32)
    return {k: v.SerializeToString() for k, v in variants.items()}, np.ascontiguousarray(inputs)
