"""Quantization written on the ONNX graph: reference quantizers, calibration, graph rewrites."""
