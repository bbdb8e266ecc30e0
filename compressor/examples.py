"""Built-in example models, trained deterministically on bundled data (used by the CLI,
the demo and the benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from torch import nn

from compressor.data.digits import load_digits_splits
from compressor.models.digits_cnn import DigitsCNN
from compressor.train import TrainConfig, seed_everything, train

DIGITS_EPOCHS = 15


@dataclass
class Example:
    name: str
    model: nn.Module
    train: tuple[np.ndarray, np.ndarray]
    calibration: tuple[np.ndarray, np.ndarray]
    heldout: tuple[np.ndarray, np.ndarray]


def digits_cnn(seed: int = 0, epochs: int = DIGITS_EPOCHS, width: float = 1.0) -> Example:
    s = load_digits_splits()
    seed_everything(seed)
    model = DigitsCNN(width=width)
    train(model, s.train.x, s.train.y, TrainConfig(epochs=epochs, seed=seed))
    return Example("digits-cnn", model, (s.train.x, s.train.y),
                   (s.calibration.x, s.calibration.y), (s.heldout.x, s.heldout.y))


def mobilenet_v2_digits(seed: int = 0, epochs: int = 12, width: float = 1.0,
                        size: int = 16) -> Example:
    from compressor.data.digits import upsampled_digits_splits
    from compressor.models.mobilenet_v2 import MobileNetV2

    s = upsampled_digits_splits(size)
    seed_everything(seed)
    model = MobileNetV2(width=width)
    train(model, s.train.x, s.train.y, TrainConfig(epochs=epochs, seed=seed, lr=5e-3))
    return Example("mobilenetv2-digits", model, (s.train.x, s.train.y),
                   (s.calibration.x, s.calibration.y), (s.heldout.x, s.heldout.y))


EXAMPLES: dict[str, Callable[..., Example]] = {"digits-cnn": digits_cnn,
                                               "mobilenetv2-digits": mobilenet_v2_digits}
