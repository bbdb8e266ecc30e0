"""Configs of the transformer variants (handlers in compressor.transformer.handlers).

Both take calibration sentences as compress(calib_data={"input_ids": ..., "attention_mask":
...}) (int64 (N, seq) arrays, e.g. from MiniLMTokenizer.encode); they should not be the
sentences quality is measured on (compressor.data.docstrings.calibration_sentences gives
paragraphs outside the corpus).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from compressor.configs import VariantConfig


class SmoothTargets(str, enum.Enum):
    LAYERNORM = "layernorm"
    """Smooth the inputs produced by a LayerNormalization (Q/K/V and FFN-in projections),
    as SmoothQuant does. Measured on MiniLM: smoothing the GELU output feeding the FFN-out
    projection lowers that layer's own output error but raises the sentence-embedding
    error (it moves the error into output channels the next LayerNorm amplifies)."""
    ALL = "all"
    """Every MatMul input with a constant weight."""
    NONE = "none"
    """No smoothing: plain dynamic int8 plus mixed precision."""


@dataclass
class SmoothQuantInt8Config(VariantConfig):
    """int8 for transformer encoders: SmoothQuant + dynamic int8 + measured mixed precision.

    0. Linears that read one tensor (Q, K, V) are merged into one MatMul + Split
       (`merge_parallel`; compressor.transformer.fuse): fewer, larger int8 GEMMs; the
       attention heads of the merged output are then split once (one Reshape, Transpose,
       Split instead of a Reshape and Transpose per projection).
    1. SmoothQuant: per-channel scales move activation outliers into the weights of the
       chosen MatMuls (exact in fp32); alpha per tensor is picked from `alpha_grid` by the
       simulated int8 error of that tensor's products on the calibration sentences, or
       fixed by `alpha`.
    2. Dynamic int8: per-channel symmetric int8 weights, uint8 activations quantized per
       call (onnxruntime DynamicQuantizeMatMul), compressor.quant.dynamic's rewrite.
    3. Outlier channels: on the MatMul inputs not smoothed (GELU outputs, attention
       context), channels whose calibration max |x| exceeds `outlier_ratio` x the 99th
       percentile of channel maxima (MiniLM: the [CLS] token's "massive activation", one
       channel of FFN-out in layers 0-3) are computed in fp32 beside the int8 product
       (compressor.transformer.outliers). This replaced keeping three FFN-out layers fp32:
       same fidelity, all 36 Linears int8. Behind an FFN's Gelu the outlier channels are
       zeroed at their source and carried as extra up-projection columns (no mask Mul).
    4. Mixed precision (optional): every Linear's sensitivity is measured end to end
       (embedding cosine on `sensitivity_sentences` calibration sentences, with that one
       Linear back in fp32); the `keep_fp32` most sensitive stay fp32.
    5. The word-embedding table is stored as int8 blocks of a row (128 values per scale
       on MiniLM), read by one com.microsoft GatherBlockQuantized(bits=8).
    6. Each self-attention block (packed Q/K/V projection, head split, scores, mask,
       softmax, context, head merge) becomes one com.microsoft QAttention fed by one
       DynamicQuantizeLinear (`fuse_attention`; compressor.transformer.attention): per-column
       int8 Q/K/V weight, same arithmetic as the int8 MatMul it replaces, 2 ops instead of
       ~11 per layer at run time.
    7. Residual Adds feeding a LayerNormalization are written as Sum (`residual_sum`;
       compressor.transformer.fuse.residual_sums): onnxruntime would fuse Add +
       LayerNormalization into SkipLayerNormalization, which on onnxruntime 1.32 CPU is
       ~4x slower than the two ops it replaces at batch 1 x 32 tokens.

    Args:
        alpha: fixed migration strength in [0, 1], or None to search `alpha_grid` per tensor.
        alpha_grid: candidates (None in the grid = leave that tensor unsmoothed).
        min_smoothing_gain: smooth a tensor only if its best alpha cuts the simulated int8
            error of its products at least this many times vs no smoothing (needs None in
            `alpha_grid`; 1 = whenever it helps). Each smoothed tensor costs one Mul per call
            (~8 us at batch 1 x 32 tokens, 2 threads). MiniLM: Q/K/V inputs of layers 0-2
            gain 2.1-3.6x, layers 3-5 4.5-5.6x, FFN inputs 11-18x; skipping the three
            below 4x kept cosine 0.9984 / top-10 0.956 on 900 docstrings (0.954 once the
            residual Adds run as Sum, `residual_sum`).
        smooth: which MatMul inputs are smoothed.
        merge_parallel: merge Linears sharing an input (Q/K/V) first.
        outlier_ratio: outlier-channel threshold (0 turns the decomposition off).
        max_outlier_channels: at most this many fp32 channels per tensor.
        keep_fp32: how many of the most sensitive Linears stay in fp32 (0: no scan).
        sensitivity_candidates: weight-name substrings limiting which Linears are scanned
            (empty: all of them; each costs one session on the sensitivity sentences).
        sensitivity_sentences: calibration sentences used for the scan.
        calibration_rows: tokens of activations used to choose alpha.
        quantize_embedding: store the word-embedding table as int8.
        fuse_attention: run self-attention as one QAttention per layer (needs
            merge_parallel; blocks that do not match the pattern stay as they are).
        residual_sum: residual Adds before a LayerNormalization as Sum (not fused).
        exclude: weight or node names kept in fp32 regardless.
    """

    version = 1
    alpha: float | None = None
    alpha_grid: tuple = (None, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    min_smoothing_gain: float = 4.0
    smooth: SmoothTargets = SmoothTargets.LAYERNORM
    merge_parallel: bool = True
    outlier_ratio: float = 3.0
    max_outlier_channels: int = 8
    keep_fp32: int = 0
    sensitivity_candidates: tuple[str, ...] = ()
    sensitivity_sentences: int = 64
    calibration_rows: int = 2048
    quantize_embedding: bool = True
    fuse_attention: bool = True
    residual_sum: bool = True
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.smooth = SmoothTargets(self.smooth)
        self.alpha_grid = tuple(self.alpha_grid)
        self.sensitivity_candidates = tuple(self.sensitivity_candidates)
        self.exclude = tuple(self.exclude)
        for a in ((self.alpha,) if self.alpha is not None else ()) + tuple(
                a for a in self.alpha_grid if a is not None):
            if not 0.0 <= float(a) <= 1.0:
                raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {a}")
        if not self.alpha_grid and self.alpha is None:
            raise ValueError("give alpha or a non-empty alpha_grid")
        if self.min_smoothing_gain < 0:
            raise ValueError(f"min_smoothing_gain must be >= 0, got {self.min_smoothing_gain}")
        if self.outlier_ratio < 0 or self.max_outlier_channels < 0:
            raise ValueError("outlier_ratio and max_outlier_channels must be >= 0")
        if self.keep_fp32 < 0 or self.sensitivity_sentences < 8 or self.calibration_rows < 64:
            raise ValueError(f"bad SmoothQuantInt8Config: keep_fp32={self.keep_fp32}, "
                             f"sensitivity_sentences={self.sensitivity_sentences}, "
                             f"calibration_rows={self.calibration_rows}")
        super().__post_init__()

    def default_id(self) -> str:
        return "int8-sq"


class Int4Method(str, enum.Enum):
    GPTQ = "gptq"
    """Error-correcting: each input channel's rounding error is compensated on the rest
    through the inverse Hessian of the calibration activations."""
    RTN = "rtn"
    """Round to nearest, with an MSE search of each block's scale (no calibration)."""


@dataclass
class TransformerInt4Config(VariantConfig):
    """int4 for transformer encoders, embeddings included.

    MatMul weights: INT4 blocks of `group_size` along the reduction axis (blocked
    DequantizeLinear that onnxruntime fuses into MatMulNBits), codes chosen by GPTQ (or RTN).
    Word embeddings: INT4 blocks along the hidden axis read by com.microsoft
    GatherBlockQuantized (only the looked-up rows are dequantized), fp16 block scales.
    Position-embedding table: per-row int8.

    Args:
        group_size: weights per scale for the MatMuls (a multiple of 8 dividing K).
        method: gptq or rtn.
        damp: GPTQ's dampening, as a fraction of the mean Hessian diagonal.
        calibration_rows: tokens of activations per Hessian.
        embedding_block_size: values per scale in the embedding table.
        fp16_embedding_scales: store the embedding scales as fp16 (saves ~0.7 MB on MiniLM).
        quantize_positions: store position tables as int8.
        exclude: weight or node names kept in fp32.
    """

    version = 1
    group_size: int = 32
    method: Int4Method = Int4Method.GPTQ
    damp: float = 0.01
    calibration_rows: int = 4096
    embedding_block_size: int = 32
    fp16_embedding_scales: bool = True
    quantize_positions: bool = True
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.method = Int4Method(self.method)
        self.exclude = tuple(self.exclude)
        for name in ("group_size", "embedding_block_size"):
            v = getattr(self, name)
            if v < 8 or v % 8:
                raise ValueError(f"{name} must be a multiple of 8 (>= 8), got {v}")
        if not 0.0 < self.damp < 1.0:
            raise ValueError(f"damp must be in (0, 1), got {self.damp}")
        super().__post_init__()

    def default_id(self) -> str:
        return f"int4-{self.method.value}" if self.group_size == 32 else \
            f"int4-{self.method.value}-g{self.group_size}"
