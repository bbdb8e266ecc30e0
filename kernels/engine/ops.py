"""numpy implementations of the ONNX ops the engine understands (the reference fallback).

They serve three purposes: constant folding at compile time, shape/dtype tracing when a plan
is built for an input shape, and the per-inference fallback step for ops no C kernel covers
yet (those allocate; the hot ops get dedicated steps in lower.py). Each function takes the
Node (for attributes) and the input arrays (None for an omitted optional input) and returns a
tuple of outputs. Semantics follow the ONNX operator docs for opsets 13-23.
"""

from __future__ import annotations

import numpy as np

from kernels.engine.graph import DTYPES, Node

OPS: dict[str, callable] = {}

#: Ops whose outputs depend only on the shapes of their inputs (foldable once shapes are known).
SHAPE_ONLY = {"Shape", "Size"}


def op(*names):
    def register(fn):
        for name in names:
            OPS[name] = fn
        return fn
    return register


def _f32(x):
    return np.asarray(x)


# ----------------------------------------------------------------------------- elementwise

_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Pow": np.power,
           "Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
           "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or,
           "Xor": np.logical_xor}


def _binary(fn):
    def run(node, a, b):
        out = fn(a, b)
        if fn is np.power and a.dtype.kind == "f":
            out = out.astype(a.dtype)
        return (np.asarray(out),)
    return run


for _name, _fn in _BINARY.items():
    OPS[_name] = _binary(_fn)


@op("Div")
def _div(node, a, b):
    if a.dtype.kind in "iu":
        return (np.trunc(a / b).astype(a.dtype),)      # ONNX integer Div truncates
    return (np.asarray(a / b, dtype=np.result_type(a, b)),)


@op("Mod")
def _mod(node, a, b):
    return (np.fmod(a, b) if node.attrs.get("fmod", 0) else np.mod(a, b),)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 (Numerical Recipes' erfc Chebyshev fit, fractional error < 1.2e-7);
    numpy has no erf and the engine must not need scipy."""
    x64 = np.asarray(x, np.float64)
    a = np.abs(x64)
    t = 1.0 / (1.0 + 0.5 * a)
    y = t * np.exp(-a * a - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
    return np.sign(x64) * (1.0 - y)


_UNARY = {"Relu": lambda x: np.maximum(x, 0).astype(x.dtype), "Neg": np.negative, "Abs": np.abs,
          "Exp": np.exp, "Log": np.log, "Sqrt": np.sqrt, "Tanh": np.tanh, "Reciprocal": np.reciprocal,
          "Floor": np.floor, "Ceil": np.ceil, "Sign": np.sign, "Not": np.logical_not,
          "Sigmoid": lambda x: (1.0 / (1.0 + np.exp(-x))).astype(x.dtype),
          "Erf": lambda x: _erf(x).astype(x.dtype), "Identity": lambda x: x.copy(),
          "Round": np.rint, "Sin": np.sin, "Cos": np.cos}

for _name, _fn in _UNARY.items():
    OPS[_name] = (lambda fn: (lambda node, x: (np.asarray(fn(x)),)))(_fn)


@op("Clip")
def _clip(node, x, lo=None, hi=None):
    lo = node.attrs.get("min") if lo is None else lo
    hi = node.attrs.get("max") if hi is None else hi
    y = x
    if lo is not None:
        y = np.maximum(y, np.asarray(lo, x.dtype))
    if hi is not None:
        y = np.minimum(y, np.asarray(hi, x.dtype))
    return (np.asarray(y, x.dtype),)


@op("LeakyRelu")
def _leaky(node, x):
    alpha = node.attrs.get("alpha", 0.01)
    return (np.where(x >= 0, x, x * np.float32(alpha)).astype(x.dtype),)


@op("HardSigmoid")
def _hard_sigmoid(node, x):
    a, b = node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5)
    return (np.clip(x * np.float32(a) + np.float32(b), 0, 1).astype(x.dtype),)


@op("HardSwish")
def _hard_swish(node, x):
    return ((x * np.clip(x / np.float32(6) + np.float32(0.5), 0, 1)).astype(x.dtype),)


@op("Gelu")
def _gelu(node, x):
    if node.attrs.get("approximate", "none") == "tanh":
        c = np.sqrt(2.0 / np.pi)
        return ((0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x ** 3)))).astype(x.dtype),)
    return ((0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))).astype(x.dtype),)


@op("Where")
def _where(node, c, a, b):
    return (np.where(c, a, b),)


@op("Max", "Min", "Sum", "Mean")
def _variadic(node, *xs):
    fn = {"Max": np.maximum, "Min": np.minimum, "Sum": np.add, "Mean": np.add}[node.op_type]
    y = xs[0]
    for x in xs[1:]:
        y = fn(y, x)
    if node.op_type == "Mean":
        y = y / len(xs)
    return (np.asarray(y, xs[0].dtype),)


@op("Cast")
def _cast(node, x):
    to = node.attrs["to"]
    if to not in DTYPES:
        raise ValueError(f"Cast to data_type {to} is not supported")
    return (x.astype(DTYPES[to]),)


@op("CastLike")
def _cast_like(node, x, like):
    return (x.astype(like.dtype),)


# ----------------------------------------------------------------------------- shapes

@op("Shape")
def _shape(node, x):
    shape = np.asarray(x.shape, np.int64)
    start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
    return (shape[start:end].copy(),)


@op("Size")
def _size(node, x):
    return (np.asarray(x.size, np.int64),)


@op("Reshape")
def _reshape(node, x, shape):
    shape = [int(s) for s in shape]
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return (x.reshape(shape),)


@op("Flatten")
def _flatten(node, x):
    axis = node.attrs.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    lead = int(np.prod(x.shape[:axis], dtype=np.int64))
    return (x.reshape(lead, -1),)


def _axes(node, axes_input, opset_attr="axes"):
    if axes_input is not None:
        return [int(a) for a in np.atleast_1d(axes_input)]
    return node.attrs.get(opset_attr)


@op("Unsqueeze")
def _unsqueeze(node, x, axes=None):
    axes = _axes(node, axes)
    rank = x.ndim + len(axes)
    shape = list(x.shape)
    for a in sorted(a + rank if a < 0 else a for a in axes):
        shape.insert(a, 1)
    return (x.reshape(shape),)


@op("Squeeze")
def _squeeze(node, x, axes=None):
    axes = _axes(node, axes)
    if axes is None:
        return (np.squeeze(x),)
    return (np.squeeze(x, axis=tuple(a + x.ndim if a < 0 else a for a in axes)),)


@op("Transpose")
def _transpose(node, x):
    perm = node.attrs.get("perm")
    return (np.ascontiguousarray(np.transpose(x, perm)),)


@op("Concat")
def _concat(node, *xs):
    return (np.concatenate([x for x in xs if x is not None], axis=node.attrs["axis"]),)


@op("Split")
def _split(node, x, split=None):
    axis = node.attrs.get("axis", 0)
    if split is None:
        split = node.attrs.get("split")
    n = len(node.outputs)
    if split is None:
        return tuple(np.array_split(x, n, axis=axis))
    idx = np.cumsum([int(s) for s in split])[:-1]
    return tuple(p.copy() for p in np.split(x, idx, axis=axis))


@op("Slice")
def _slice(node, x, starts, ends, axes=None, steps=None):
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = a + x.ndim if a < 0 else a
        dim = x.shape[a]
        s, e = int(s), int(e)
        s = max(min(s + dim if s < 0 else s, dim if st > 0 else dim - 1), 0 if st > 0 else -1)
        e = max(min(e + dim if e < 0 else e, dim if st > 0 else dim - 1), 0 if st > 0 else -1)
        index[a] = slice(s, e if e >= 0 else None, st)
    return (x[tuple(index)].copy(),)


@op("Gather")
def _gather(node, data, indices):
    axis = node.attrs.get("axis", 0)
    idx = np.where(indices < 0, indices + data.shape[axis], indices)
    if np.any(idx < 0) or np.any(idx >= data.shape[axis]):
        raise IndexError(f"Gather index out of range for axis of size {data.shape[axis]}")
    return (np.take(data, idx, axis=axis),)


@op("Expand")
def _expand(node, x, shape):
    shape = np.broadcast_shapes(x.shape, tuple(int(s) for s in shape))
    return (np.broadcast_to(x, shape).copy(),)


@op("Tile")
def _tile(node, x, repeats):
    return (np.tile(x, [int(r) for r in repeats]),)


@op("ConstantOfShape")
def _constant_of_shape(node, shape):
    value = node.attrs.get("value")
    value = np.zeros(1, np.float32) if value is None else value
    return (np.full([int(s) for s in shape], value.reshape(-1)[0], value.dtype),)


@op("Constant")
def _constant(node):
    a = node.attrs
    if "value" in a:
        return (a["value"],)
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in a:
            return (np.asarray(a[key], dtype),)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in a:
            return (np.asarray(a[key], dtype),)
    raise ValueError("Constant without a supported value attribute")


@op("Range")
def _range(node, start, limit, delta):
    return (np.arange(start, limit, delta).astype(start.dtype),)


# ----------------------------------------------------------------------------- reductions, norms

def _reduce(fn):
    def run(node, x, axes=None):
        axes = _axes(node, axes)
        keep = bool(node.attrs.get("keepdims", 1))
        if not axes:
            if node.attrs.get("noop_with_empty_axes", 0):
                return (x.copy(),)
            axes = None
        else:
            axes = tuple(axes)
        return (np.asarray(fn(x, axis=axes, keepdims=keep), x.dtype),)
    return run


OPS["ReduceMean"] = _reduce(np.mean)
OPS["ReduceSum"] = _reduce(np.sum)
OPS["ReduceMax"] = _reduce(np.max)
OPS["ReduceMin"] = _reduce(np.min)
OPS["ReduceProd"] = _reduce(np.prod)
OPS["ReduceL2"] = _reduce(lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)))


@op("Softmax")
def _softmax(node, x):
    axis = node.attrs.get("axis", -1)
    m = x.max(axis=axis, keepdims=True)
    e = np.exp(x - m)
    return ((e / e.sum(axis=axis, keepdims=True)).astype(x.dtype),)


@op("LayerNormalization")
def _layer_norm(node, x, scale, bias=None):
    axis = node.attrs.get("axis", -1)
    eps = node.attrs.get("epsilon", 1e-5)
    axes = tuple(range(axis + x.ndim if axis < 0 else axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(eps)) * scale
    if bias is not None:
        y = y + bias
    return (y.astype(x.dtype),)


# ----------------------------------------------------------------------------- linear algebra

@op("MatMul")
def _matmul(node, a, b):
    return (np.matmul(a, b),)


@op("Gemm")
def _gemm(node, a, b, c=None):
    if node.attrs.get("transA", 0):
        a = a.T
    if node.attrs.get("transB", 0):
        b = b.T
    y = np.float32(node.attrs.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        y = y + np.float32(node.attrs.get("beta", 1.0)) * c
    return (y.astype(a.dtype),)


# ----------------------------------------------------------------------------- conv, pooling

def conv_geometry(node: Node, in_hw: tuple[int, ...], kernel: tuple[int, ...]):
    """(pads_begin, pads_end, strides, dilations, out_hw) for Conv/pooling attributes."""
    nd = len(in_hw)
    strides = node.attrs.get("strides", [1] * nd)
    dil = node.attrs.get("dilations", [1] * nd)
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = node.attrs.get("pads", [0] * (2 * nd))
        begin, end = list(pads[:nd]), list(pads[nd:])
    elif auto == "VALID":
        begin, end = [0] * nd, [0] * nd
    else:  # SAME_UPPER / SAME_LOWER
        begin, end = [], []
        for i in range(nd):
            out = -(-in_hw[i] // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - in_hw[i], 0)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
    ceil_mode = node.attrs.get("ceil_mode", 0)
    out_hw = []
    for i in range(nd):
        span = in_hw[i] + begin[i] + end[i] - ((kernel[i] - 1) * dil[i] + 1)
        o = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (o - 1) * strides[i] >= in_hw[i] + begin[i]:
            o -= 1
        out_hw.append(o)
    return begin, end, list(strides), list(dil), out_hw


def windows(x: np.ndarray, kernel, begin, end, strides, dil, out_hw, pad_value) -> np.ndarray:
    """View [N, C, OH, OW, KH, KW] of the (padded copy of) 4-D x: every sliding window."""
    n, c, h, w = x.shape
    extra_h = max(0, (out_hw[0] - 1) * strides[0] + (kernel[0] - 1) * dil[0] + 1 - (h + begin[0] + end[0]))
    extra_w = max(0, (out_hw[1] - 1) * strides[1] + (kernel[1] - 1) * dil[1] + 1 - (w + begin[1] + end[1]))
    xp = np.full((n, c, h + begin[0] + end[0] + extra_h, w + begin[1] + end[1] + extra_w), pad_value, x.dtype)
    xp[:, :, begin[0]:begin[0] + h, begin[1]:begin[1] + w] = x
    sn, sc, sh, sw = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, (n, c, out_hw[0], out_hw[1], kernel[0], kernel[1]),
        (sn, sc, sh * strides[0], sw * strides[1], sh * dil[0], sw * dil[1]), writeable=False)


def _need_2d(node, x):
    if x.ndim != 4:
        raise ValueError(f"{node}: only 2-D spatial (4-D NCHW) inputs are supported, got rank {x.ndim}")


@op("Conv")
def _conv(node, x, w, b=None):
    _need_2d(node, x)
    group = node.attrs.get("group", 1)
    cout, cin_g, kh, kw = w.shape
    begin, end, strides, dil, out_hw = conv_geometry(node, x.shape[2:], (kh, kw))
    win = windows(x, (kh, kw), begin, end, strides, dil, out_hw, 0)
    n = x.shape[0]
    # [N, G, Cin_g*KH*KW, OH*OW] x [G, Cout_g, Cin_g*KH*KW]
    col = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, group, cin_g * kh * kw, out_hw[0] * out_hw[1])
    wg = w.reshape(group, cout // group, cin_g * kh * kw)
    y = np.matmul(wg[None], col).reshape(n, cout, out_hw[0], out_hw[1])
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return (y.astype(x.dtype),)


@op("MaxPool")
def _max_pool(node, x):
    _need_2d(node, x)
    if len(node.outputs) > 1 and node.outputs[1]:
        raise ValueError(f"{node}: the Indices output is not supported")
    kernel = node.attrs["kernel_shape"]
    begin, end, strides, dil, out_hw = conv_geometry(node, x.shape[2:], kernel)
    low = np.finfo(x.dtype).min if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    return (windows(x, kernel, begin, end, strides, dil, out_hw, low).max(axis=(4, 5)),)


@op("AveragePool")
def _avg_pool(node, x):
    _need_2d(node, x)
    kernel = node.attrs["kernel_shape"]
    begin, end, strides, dil, out_hw = conv_geometry(node, x.shape[2:], kernel)
    s = windows(x, kernel, begin, end, strides, dil, out_hw, 0).sum(axis=(4, 5), dtype=np.float32)
    if node.attrs.get("count_include_pad", 0) or not any(begin + end):
        return ((s / (kernel[0] * kernel[1])).astype(x.dtype),)
    ones = np.ones((1, 1) + x.shape[2:], np.float32)
    cnt = windows(ones, kernel, begin, end, strides, dil, out_hw, 0).sum(axis=(4, 5))
    return ((s / cnt).astype(x.dtype),)


@op("GlobalAveragePool")
def _gap(node, x):
    return (x.mean(axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype),)


@op("GlobalMaxPool")
def _gmp(node, x):
    return (x.max(axis=tuple(range(2, x.ndim)), keepdims=True),)


# ----------------------------------------------------------------------------- quantization

def _per_axis(v, x, axis, block_size=0):
    """Broadcast a scale / zero point along `axis` of x (per tensor, per axis or blocked)."""
    v = np.asarray(v)
    if v.size == 1 and not block_size:
        return v.reshape(())
    axis = axis + x.ndim if axis < 0 else axis
    if block_size:
        v = np.repeat(v, block_size, axis=axis)
        v = np.take(v, np.arange(x.shape[axis]), axis=axis)
        return v
    shape = [1] * x.ndim
    shape[axis] = -1
    return v.reshape(shape)


@op("DequantizeLinear")
def _dequantize(node, x, scale, zp=None):
    axis, block = node.attrs.get("axis", 1), node.attrs.get("block_size", 0)
    s = _per_axis(scale, x, axis, block).astype(np.float32)
    z = 0 if zp is None else _per_axis(zp, x, axis, block).astype(np.int32)
    return (((x.astype(np.int32) - z).astype(np.float32) * s).astype(scale.dtype),)


@op("QuantizeLinear")
def _quantize(node, x, scale, zp=None):
    axis, block = node.attrs.get("axis", 1), node.attrs.get("block_size", 0)
    dtype = np.dtype(np.uint8) if zp is None else zp.dtype
    s = _per_axis(scale, x, axis, block).astype(np.float32)
    z = 0 if zp is None else _per_axis(zp, x, axis, block).astype(np.float32)
    info = np.iinfo(dtype)
    q = np.clip(np.rint(x.astype(np.float32) / s) + z, info.min, info.max)
    return (q.astype(dtype),)


@op("DynamicQuantizeLinear")
def _dynamic_quantize(node, x):
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
    zp = np.clip(np.rint(-lo / scale), 0, 255)
    q = np.clip(np.rint(x.astype(np.float32) / scale) + zp, 0, 255).astype(np.uint8)
    return q, np.asarray(scale, np.float32), np.asarray(zp, np.uint8)


@op("MatMulInteger")
def _matmul_integer(node, a, b, a_zp=None, b_zp=None):
    a32 = a.astype(np.int32) - (0 if a_zp is None else a_zp.astype(np.int32))
    b32 = b.astype(np.int32) - (0 if b_zp is None else b_zp.astype(np.int32))
    return (np.matmul(a32, b32).astype(np.int32),)


@op("ConvInteger")
def _conv_integer(node, x, w, x_zp=None, w_zp=None):
    x32 = x.astype(np.int32) - (0 if x_zp is None else int(np.asarray(x_zp).reshape(-1)[0]))
    w32 = w.astype(np.int32) - (0 if w_zp is None else np.asarray(w_zp, np.int32).reshape(-1, 1, 1, 1)
                                if np.asarray(w_zp).size > 1 else int(np.asarray(w_zp).reshape(-1)[0]))
    y = _conv(node, x32.astype(np.float64), w32.astype(np.float64))[0]
    return (np.rint(y).astype(np.int32),)
