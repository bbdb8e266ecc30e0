"""Transformer-specific compression: SmoothQuant int8, GPTQ int4 with quantized embeddings,
sentence-embedding fidelity, multi-input export. Importing it registers the handlers.

    from compressor.transformer import SmoothQuantInt8Config, TransformerInt4Config
"""

from compressor.transformer.configs import (Int4Method, SmoothQuantInt8Config, SmoothTargets,
                                            TransformerInt4Config)
from compressor.transformer.fidelity import EmbeddingFidelity
import compressor.transformer.handlers  # noqa: F401,E402  registers the handlers

__all__ = ["SmoothQuantInt8Config", "TransformerInt4Config", "SmoothTargets", "Int4Method",
           "EmbeddingFidelity"]
