"""Compile options of the native engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    """How a variant is compiled into a plan.

    Args:
        sparse_min_zero_fraction: a constant weight matrix with at least this fraction of
            exact zeros runs on the sparse kernels (the kernels break even with dense at about
            50% unstructured sparsity); 1.0 or more disables the sparse path.
        sparse_f32_min_zero_fraction: fp32 weights that qualify above but are not block-sparse
            (see bsr_max_block_fraction) take the compressed-rows kernel only from this
            fraction of zeros, else the dense fp32 GEMM: below ~90% the rows kernel is slower
            than dense (`python -m benchmarks.kernels_sparse_f32`: 0.3-0.9x at 75% zeros,
            1.25-2x at 90% but for 4-row batches). Lower it to trade speed for memory.
        int4_kernels: run group-quantized int4/int2 weights (blocked DequantizeLinear with
            groups of 32/64/128 along K) on the qb kernels, which quantize activations to int8
            per row on the fly. False folds them to fp32 weights (bit-for-bit what onnxruntime
            computes with the QDQ pair folded, but 8x the weight memory).
        int8_kernels: run QDQ int8 Conv/Gemm/MatMul on the exact int8 kernels. False leaves the
            QDQ graph as written (dequantize, float op, quantize) on the numpy fallback.
        channels_last: run convolution chains in NHWC (GEMM rows = pixels, no per-layer
            transposes), converting at the chain's edges; False keeps ONNX's NCHW throughout.
        autotune_sparse: int8 weights that qualify for the sparse kernel are also packed dense,
            and each plan keeps the faster of the two for its shapes (both compute the same
            integers, so results do not depend on the choice). False: always sparse.
        bsr_max_block_fraction: int8 weights of which at most this fraction of the 16 x 4
            blocks (16 output channels x 4 consecutive K) hold a nonzero weight are also packed
            for the block-sparse kernel (bsr_qs8; any zero points), which skips the zero blocks
            at any M; fp32 weights that take the sparse path run on the fp32 block kernel
            (bsr_f32) instead of compressed rows; 0 disables both. Block-pruned weights
            (compressor prune, block=(16, 4)).
        max_cached_shapes: input-shape plans kept per model (least recently used dropped).
    """

    sparse_min_zero_fraction: float = 0.5
    sparse_f32_min_zero_fraction: float = 0.9
    int4_kernels: bool = True
    int8_kernels: bool = True
    channels_last: bool = True
    autotune_sparse: bool = True
    bsr_max_block_fraction: float = 0.75
    max_cached_shapes: int = 8

    def __post_init__(self):
        if not 0.0 <= self.sparse_min_zero_fraction:
            raise ValueError("sparse_min_zero_fraction must be >= 0")
        if not 0.0 <= self.sparse_f32_min_zero_fraction:
            raise ValueError("sparse_f32_min_zero_fraction must be >= 0")
        if not 0.0 <= self.bsr_max_block_fraction <= 1.0:
            raise ValueError("bsr_max_block_fraction must be in [0, 1]")
        if self.max_cached_shapes < 1:
            raise ValueError("max_cached_shapes must be >= 1")
