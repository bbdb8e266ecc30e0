"""scikit-learn's bundled digits (1,797 8x8 grey images, 10 classes) with one fixed split.

The split never depends on the training seed: held-out accuracy numbers from different runs
and different machines are comparable. Stratified, so every class is in every part.

    train        ~70%   fits the model
    calibration  ~10%   activation ranges for static quantization, importance for pruning
    held-out      20%   the quality number in the manifest; never seen by any fitting step
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SPLIT_SEED = 20240601          # fixed forever: changing it changes every recorded accuracy
HELDOUT_FRACTION = 0.20
CALIBRATION_FRACTION = 0.10
NUM_CLASSES = 10
INPUT_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class Split:
    """Images as float32 (N, 1, 8, 8) scaled to [0, 1], labels as int64 (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DigitsSplits:
    train: Split
    calibration: Split
    heldout: Split


@lru_cache(maxsize=1)
def load_digits_splits() -> DigitsSplits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    x = (raw.data.astype(np.float32) / 16.0).reshape(-1, *INPUT_SHAPE)
    y = raw.target.astype(np.int64)
    x_rest, x_held, y_rest, y_held = train_test_split(
        x, y, test_size=HELDOUT_FRACTION, stratify=y, random_state=SPLIT_SEED)
    calib_of_rest = CALIBRATION_FRACTION / (1.0 - HELDOUT_FRACTION)
    x_train, x_cal, y_train, y_cal = train_test_split(
        x_rest, y_rest, test_size=calib_of_rest, stratify=y_rest, random_state=SPLIT_SEED)
    for arr in (x_train, x_cal, x_held):
        arr.setflags(write=False)   # cached and shared: nobody may modify it in place
    return DigitsSplits(Split(x_train, y_train), Split(x_cal, y_cal), Split(x_held, y_held))


@lru_cache(maxsize=4)
def upsampled_digits_splits(size: int = 16) -> DigitsSplits:
    """The same split, bilinearly upsampled to size x size (for the MobileNetV2-style net)."""
    import torch

    base = load_digits_splits()

    def up(sp: Split) -> Split:
        x = torch.nn.functional.interpolate(torch.from_numpy(np.array(sp.x)), size=(size, size),
                                            mode="bilinear", align_corners=False).numpy()
        x.setflags(write=False)
        return Split(x, sp.y)

    return DigitsSplits(up(base.train), up(base.calibration), up(base.heldout))
