"""Shared fixtures: one small trained digits CNN and its fp32 export per test session."""

import pytest

from compressor.examples import digits_cnn
from compressor.export import export_onnx

TEST_EPOCHS = 10   # ~2 s on 2 cores; reaches ~98.6% held-out


@pytest.fixture(scope="session")
def digits():
    return digits_cnn(seed=0, epochs=TEST_EPOCHS)


@pytest.fixture(scope="session")
def digits_fp32_onnx(digits):
    return export_onnx(digits.model, digits.calibration[0][:2])
