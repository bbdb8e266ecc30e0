"""Activation ranges from calibration data, measured by running the fp32 ONNX graph.

The graph is copied with the tensors of interest added as outputs and run by onnxruntime on
the calibration batches. Each method turns what it saw into one (min, max) per tensor:

    minmax      the observed extremes
    percentile  the p-th / (100-p)-th percentiles of all observed values (clips outliers)
    mse         the clipping threshold that minimises the mean squared quantization error
                over a histogram of the observed values
    entropy     the threshold that minimises KL divergence between the clipped-and-quantized
                histogram and the original (TensorRT's method)
"""

from __future__ import annotations

from typing import Iterable

import enum

import numpy as np
import onnx
from onnx import helper

from compressor.errors import EmptyCalibrationError


class CalibrationMethod(str, enum.Enum):
    MINMAX = "minmax"
    """Observed min and max: never clips, sensitive to outliers."""
    PERCENTILE = "percentile"
    """Clip to the given percentile of |values| (default 99.99)."""
    MSE = "mse"
    """Threshold minimising mean squared error of quantize-dequantize on the histogram."""
    ENTROPY = "entropy"
    """Threshold minimising KL(original || quantized) on the histogram."""


HIST_BINS = 2048


def check_calibration_data(data, what: str = "static quantization") -> np.ndarray:
    if data is None:
        raise EmptyCalibrationError(f"{what} needs calibration data; got None")
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim == 0 or arr.shape[0] == 0 or arr.size == 0:
        raise EmptyCalibrationError(
            f"{what} needs calibration data; got an empty array of shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise EmptyCalibrationError(f"{what}: calibration data contains NaN or inf")
    return arr


def capture_session(model: onnx.ModelProto, names: Iterable[str]):
    """An onnxruntime session of `model` that also outputs the tensors `names` (graph
    optimisations off, so every named intermediate tensor still exists)."""
    import onnxruntime as ort

    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    existing = {o.name for o in aug.graph.output}
    for n in names:
        if n not in existing:
            aug.graph.output.append(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep tensors
    opts.intra_op_num_threads = 1          # shared machine: see TrainConfig.threads
    opts.log_severity_level = 3
    return ort.InferenceSession(aug.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def capture_tensors(model: onnx.ModelProto, names: list[str], data: np.ndarray,
                    batch_size: int = 64) -> dict[str, list[np.ndarray]]:
    """Run `model` on `data` in batches; return every batch's value of each named tensor."""
    sess = capture_session(model, names)
    in_name = sess.get_inputs()[0].name
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for s in range(0, len(data), batch_size):
        vals = sess.run(names, {in_name: data[s:s + batch_size]})
        for n, v in zip(names, vals):
            out[n].append(np.asarray(v, np.float32))
    return out


def compute_ranges(model: onnx.ModelProto, names: list[str], data, method: CalibrationMethod
                   = CalibrationMethod.MINMAX, percentile: float = 99.99, bits: int = 8,
                   batch_size: int = 64) -> dict[str, tuple[float, float]]:
    """(min, max) per tensor name, by `method`, from running `model` on `data`."""
    data = check_calibration_data(data)
    method = CalibrationMethod(method)
    captured = capture_tensors(model, names, data, batch_size)
    ranges = {}
    for n, chunks in captured.items():
        values = np.concatenate([c.ravel() for c in chunks])
        ranges[n] = RANGE_FNS[method](values, percentile=percentile, bits=bits)
    return ranges


def _minmax(v: np.ndarray, **_) -> tuple[float, float]:
    return float(v.min()), float(v.max())


def _percentile(v: np.ndarray, percentile: float = 99.99, **_) -> tuple[float, float]:
    lo, hi = np.percentile(v, [100.0 - percentile, percentile])
    return float(min(lo, 0.0)), float(max(hi, 0.0))


def _histogram(v: np.ndarray):
    """Histogram of |v| when v has one sign (ReLU outputs), else of v on a symmetric range."""
    vmin, vmax = float(v.min()), float(v.max())
    one_sided = vmin >= 0.0
    absmax = max(abs(vmin), abs(vmax), 1e-12)
    edges = np.linspace(0.0 if one_sided else -absmax, absmax, HIST_BINS + 1)
    hist, _ = np.histogram(v, bins=edges)
    return hist.astype(np.float64), edges, one_sided, vmin, vmax


def _mse(v: np.ndarray, bits: int = 8, **_) -> tuple[float, float]:
    hist, edges, one_sided, vmin, vmax = _histogram(v)
    centers = (edges[:-1] + edges[1:]) / 2
    levels = (1 << bits) - 1
    absmax = edges[-1]
    best, best_t = np.inf, absmax
    for frac in np.linspace(0.2, 1.0, 81):
        t = absmax * frac
        lo = 0.0 if one_sided else -t
        scale = (t - lo) / levels
        xq = np.clip(np.rint((np.clip(centers, lo, t) - lo) / scale), 0, levels) * scale + lo
        err = float(np.sum(hist * (xq - centers) ** 2))
        if err < best:
            best, best_t = err, t
    return (0.0, float(best_t)) if one_sided else (-float(best_t), float(best_t))


def _entropy(v: np.ndarray, bits: int = 8, **_) -> tuple[float, float]:
    """KL-divergence threshold search (TensorRT's calibrator) on the |v| histogram.

    Exact zeros are left out: 0.0 is exact in every affine grid, and the spike of zeros a
    ReLU leaves (55-70% of values here) would otherwise be smeared over the merged bins and
    push the threshold to the smallest candidate.
    """
    one_sided = float(v.min()) >= 0.0
    a = np.abs(v[v != 0])
    if a.size == 0:
        return 0.0, 0.0
    hist, edges = np.histogram(a, bins=HIST_BINS, range=(0.0, float(a.max())))
    hist = hist.astype(np.float64)
    nq = min(1 << bits if one_sided else 1 << (bits - 1), HIST_BINS)   # levels on |v|
    best_kl, best_i = np.inf, HIST_BINS
    for i in range(nq, HIST_BINS + 1, max(1, (HIST_BINS - nq) // 128)):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()                       # outliers clipped into the last bin
        q = np.zeros(i)
        for c in np.array_split(np.arange(i), nq):     # merge i bins into nq levels...
            nz = hist[c] > 0
            if nz.any():
                q[c[nz]] = hist[c].sum() / nz.sum()    # ...and spread each level back
        mask = p > 0
        p, q = p / p.sum(), q / max(q.sum(), 1e-12)
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    t = float(edges[best_i])
    return (0.0, t) if one_sided else (-t, t)


RANGE_FNS = {
    CalibrationMethod.MINMAX: _minmax,
    CalibrationMethod.PERCENTILE: _percentile,
    CalibrationMethod.MSE: _mse,
    CalibrationMethod.ENTROPY: _entropy,
}
