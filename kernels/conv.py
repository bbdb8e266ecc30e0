"""Convolutions for CNNs (MobileNetV2-style) on NHWC activations.

- depthwise 3x3 (padding 1, stride 1/2): dedicated kernels, fp32 and int8
- pointwise 1x1: the GEMM kernels directly on the [N*H*W, C] matrix
- general KxK: im2col (C) + GEMM, int8 padding uses the activation zero point

Weights come in ONNX layout (OIHW) and are packed once with pack_conv.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _kernels
from ._kernels import Packed

__all__ = ["ConvWeights", "pack_conv", "conv2d", "conv2d_qs8", "dwconv3x3", "dwconv3x3_qs8", "conv_output_size"]


@dataclass(frozen=True)
class ConvWeights:
    """A convolution's weights packed for the GEMM kernels: rows are output channels,
    columns (kh, kw, cin) in NHWC patch order."""

    packed: Packed
    kh: int
    kw: int
    cin: int
    cout: int

    @property
    def int8(self) -> bool:
        return self.packed.kind == "qs8"


def pack_conv(w: np.ndarray, bias=None, w_scales=None, w_zero_points=None) -> ConvWeights:
    """Pack OIHW weights (float32, or int8 with per-output-channel w_scales)."""
    from . import pack_f32, pack_qs8  # package-level packers

    if not isinstance(w, np.ndarray) or w.ndim != 4:
        raise ValueError("w: expected a 4-D OIHW numpy array")
    cout, cin, kh, kw = w.shape
    rows = np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(cout, kh * kw * cin))
    if w.dtype == np.int8:
        if w_scales is None:
            raise ValueError("w_scales: int8 convolution weights need per-channel scales")
        packed = pack_qs8(rows, w_scales, w_zero_points, bias)
    elif w.dtype == np.float32:
        packed = pack_f32(rows, bias)
    else:
        raise TypeError(f"w: expected dtype float32 or int8, got {w.dtype}")
    return ConvWeights(packed, kh, kw, cin, cout)


def _pads(padding) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    top, left, bottom, right = (int(p) for p in padding)
    return top, left, bottom, right


def conv_output_size(size: int, k: int, stride: int, pad_a: int, pad_b: int) -> int:
    return (size + pad_a + pad_b - k) // stride + 1


def _check_nhwc(x: np.ndarray, dtype, cin: int | None = None) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x: expected a numpy array, got {type(x).__name__}")
    if x.dtype != dtype:
        raise TypeError(f"x: expected dtype {np.dtype(dtype).name}, got {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"x: expected NHWC (4-D) or HWC, got {x.ndim} dimensions")
    if cin is not None and x.shape[3] != cin:
        raise ValueError(f"x: expected {cin} channels, got {x.shape[3]}")
    if not x.flags.c_contiguous:
        raise ValueError("x: array must be C-contiguous (use numpy.ascontiguousarray)")
    return x


def _patches(x: np.ndarray, w: ConvWeights, stride, padding, pad_value) -> tuple[np.ndarray, int, int]:
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    top, left, bottom, right = _pads(padding)
    n, h, wd, c = x.shape
    oh = conv_output_size(h, w.kh, sh, top, bottom)
    ow = conv_output_size(wd, w.kw, sw, left, right)
    if oh <= 0 or ow <= 0:
        raise ValueError("convolution output would be empty")
    if w.kh == w.kw == 1 and sh == sw == 1 and top == left == bottom == right == 0:
        return x.reshape(n * h * wd, c), oh, ow  # pointwise: the activations are already the GEMM input
    out = np.empty((n, oh * ow, w.kh * w.kw * c), x.dtype)
    _kernels.im2col(x, w.kh, w.kw, sh, sw, top, left, oh, ow, float(pad_value), out)
    return out.reshape(n * oh * ow, -1), oh, ow


def conv2d(x: np.ndarray, w: ConvWeights, stride=1, padding=0, activation=None) -> np.ndarray:
    """fp32 convolution: x NHWC float32, w from pack_conv (float32). Returns NHWC float32."""
    from . import f32_linear

    if w.int8:
        raise TypeError("w: int8 weights need conv2d_qs8")
    x = _check_nhwc(x, np.float32, w.cin)
    cols, oh, ow = _patches(x, w, stride, padding, 0.0)
    y = f32_linear(cols, w.packed, activation=activation)
    return y.reshape(x.shape[0], oh, ow, w.cout)


def conv2d_qs8(x: np.ndarray, x_scale: float, x_zero_point: int, w: ConvWeights, stride=1, padding=0,
               out_scale: float | None = None, out_zero_point: int = 0, activation=None) -> np.ndarray:
    """int8 convolution (qs8 definition): x NHWC int8 with per-tensor scale/zero point; padding
    reads the zero point (real 0). Returns NHWC float32, or int8 when out_scale is given."""
    from . import qs8_linear

    if not w.int8:
        raise TypeError("w: float32 weights need conv2d")
    x = _check_nhwc(x, np.int8, w.cin)
    if not -128 <= int(x_zero_point) <= 127:
        raise ValueError(f"x_zero_point {x_zero_point} is outside the int8 range [-128, 127]")
    cols, oh, ow = _patches(x, w, stride, padding, int(x_zero_point))
    y = qs8_linear(cols, x_scale, x_zero_point, w.packed, out_scale=out_scale, out_zero_point=out_zero_point,
                   activation=activation)
    return y.reshape(x.shape[0], oh, ow, w.cout)


def _dw_out(x: np.ndarray, stride: int) -> tuple[int, int]:
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    return (x.shape[1] - 1) // stride + 1, (x.shape[2] - 1) // stride + 1


def dwconv3x3(x: np.ndarray, w: np.ndarray, bias=None, stride: int = 1, activation=None) -> np.ndarray:
    """Depthwise 3x3, padding 1: x NHWC float32, w [3, 3, C] float32 (ONNX [C,1,3,3] ->
    w[:, 0].transpose(1, 2, 0)). Returns NHWC float32."""
    from . import _clamp, _vector

    x = _check_nhwc(x, np.float32)
    c = x.shape[3]
    b = _vector(np.zeros(c, np.float32) if bias is None else bias, c, np.float32, "bias")
    oh, ow = _dw_out(x, stride)
    out = np.empty((x.shape[0], oh, ow, c), np.float32)
    _kernels.dwconv3x3(x, w, b, out, stride, *_clamp(activation, False), 1.0, 0, None, 1.0, 0)
    return out


def dwconv3x3_qs8(x: np.ndarray, x_scale: float, x_zero_point: int, w: np.ndarray, w_scales, bias=None,
                  out_scale: float = 1.0, out_zero_point: int = 0, stride: int = 1, activation=None) -> np.ndarray:
    """int8 depthwise 3x3, padding 1 (padding reads the zero point): x NHWC int8, w [3, 3, C]
    int8 symmetric with per-channel w_scales [C]. Returns NHWC int8 requantized with
    out_scale/out_zero_point (exactly as kernels.quant.dwconv3x3_qs8_ref)."""
    from . import _clamp, _vector

    x = _check_nhwc(x, np.int8)
    c = x.shape[3]
    b = _vector(np.zeros(c, np.float32) if bias is None else bias, c, np.float32, "bias")
    oh, ow = _dw_out(x, stride)
    out = np.empty((x.shape[0], oh, ow, c), np.int8)
    _kernels.dwconv3x3(x, w, b, out, stride, *_clamp(activation, False), float(x_scale), int(x_zero_point),
                       _vector(w_scales, c, np.float32, "w_scales"), float(out_scale), int(out_zero_point))
    return out
