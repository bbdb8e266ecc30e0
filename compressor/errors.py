"""Errors a user can act on. Every one names what was wrong and what to do instead."""


class CompressionError(ValueError):
    """Base class: compression could not produce the requested variant."""


class EmptyCalibrationError(CompressionError):
    """Static quantization (or a data-aware method) was given no calibration samples."""


class UnsupportedLayerError(CompressionError):
    """The model holds a layer/op the requested technique cannot handle."""


class BudgetError(CompressionError):
    """No candidate meets the stated quality/size/latency budget."""
