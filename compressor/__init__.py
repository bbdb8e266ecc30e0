"""edgefleet compressor: a PyTorch model -> a signed bundle of ONNX variants.

    from compressor import compress, Fp32Config, Int8StaticConfig, Int4WeightOnlyConfig
    result = compress(model, [Fp32Config(), Int8StaticConfig(), Int4WeightOnlyConfig()],
                      calib_data=x_cal, eval_data=(x_test, y_test),
                      out_dir="bundle", signing_key="publisher.key", model_name="digits-cnn")
"""

from compressor.configs import (ActivationType, Fp32Config, Int4WeightOnlyConfig,
                                Int8DynamicConfig, Int8QatConfig, Int8StaticConfig,
                                MixedPrecisionConfig, PruneConfig, DistillConfig,
                                SparsityPattern, VariantConfig, config_from_dict,
                                config_to_dict)
from compressor.errors import (BudgetError, CompressionError, EmptyCalibrationError,
                               UnsupportedLayerError)
from compressor.evaluate import LatencyConfig
from compressor.quant.calibration import CalibrationMethod
from compressor.registry import register_variant_handler
from compressor.api import BundleResult, compress  # noqa: E402  (after configs)
from compressor.bundle import read_bundle, write_bundle
from compressor.search import Budget, SearchResult, default_candidates, search  # noqa: E402
import compressor.quant.handlers  # noqa: F401,E402  registers the quantization handlers
import compressor.prune.handlers  # noqa: F401,E402
import compressor.distill.handlers  # noqa: F401,E402
from compressor.distill.layer_student import LayerDistillConfig  # noqa: E402  (transformer students)

__all__ = [
    "compress", "BundleResult", "search", "Budget", "SearchResult", "default_candidates", "read_bundle", "write_bundle", "register_variant_handler",
    "VariantConfig", "Fp32Config", "Int8StaticConfig", "Int8DynamicConfig", "PruneConfig", "SparsityPattern", "DistillConfig", "Int4WeightOnlyConfig",
    "Int8QatConfig", "MixedPrecisionConfig", "LayerDistillConfig",
    "ActivationType", "CalibrationMethod", "LatencyConfig", "config_to_dict", "config_from_dict",
    "CompressionError", "EmptyCalibrationError", "UnsupportedLayerError", "BudgetError",
]
