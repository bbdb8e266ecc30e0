"""edgefleet native kernels: int8 / int4 / int2 / sparse / convolution on numpy arrays.

C kernels (portable reference, AVX2+FMA, NEON) chosen at run time from the CPU's features;
the GIL is released while they run and work is split over a small persistent thread pool.

    import kernels
    w = kernels.pack_qs8(w_q, w_scale)                 # once per model
    y = kernels.qs8_linear(a_q, a_scale, a_zp, w)      # every inference

`kernels.set_isa("scalar")` (or EDGEFLEET_KERNELS_ISA=scalar) forces the reference path.
This package imports only numpy: no torch, no onnx.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np

from . import _kernels, quant
from ._kernels import Packed

__all__ = [
    "Packed",
    "cpu_features",
    "set_isa",
    "get_isa",
    "available_isas",
    "use_isa",
    "set_num_threads",
    "get_num_threads",
    "pack_qs8",
    "qs8_linear",
    "qs8_gemm",
    "qd8_linear",
    "pack_bsr",
    "bsr_linear",
    "pack_qb",
    "qb_linear",
    "pack_sparse",
    "sparse_linear",
    "pack_f32",
    "f32_linear",
    "ConvWeights",
    "pack_conv",
    "conv2d",
    "conv2d_qs8",
    "dwconv3x3",
    "dwconv3x3_qs8",
    "quant",
]


# ----------------------------------------------------------------------------- dispatch


def cpu_features() -> dict:
    """Detected CPU features ({'avx2', 'avxvnni', 'avx512', 'amx', 'neon': bool, 'machine': str}) plus the ISA
    the dispatcher uses now ('isa') and the thread count ('threads')."""
    return _kernels.cpu_features()


def int8_dot_saturates() -> bool:
    """True on x86-64 CPUs without VNNI (AVX2 only: Zen 3 and older, Haswell to Skylake;
    conservatively also AVX-512 CPUs without the VNNI + VBMI2 our AVX-512 kernels need). Their
    fastest uint8 x int8 instruction, vpmaddubsw, adds product pairs into int16 with
    saturation, so int8 kernels built on it (onnxruntime's fused QDQ kernels, uint8
    activations x int8 weights) can be far off: on a Zen 3 a dynamic-int8 transformer layer
    came out at cosine 0.991 against its fp32 model, and the MiniLM int8 variant at 0.94, where
    VNNI CPUs and exact kernels give 0.9999 and 0.998. Our kernels are exact on every CPU.
    The agent's "auto" engine reads this to keep graphs with FUSED_INT8_OPS on the native
    engine; a QDQ graph runs exactly on onnxruntime with session.disable_quant_qdq (slower)."""
    f = _kernels.cpu_features()
    return f["machine"] in ("x86_64", "AMD64") and not (f["avxvnni"] or f["avx512"])


# ONNX ops whose int8 arithmetic onnxruntime always runs on its fused kernels (no QDQ graph to
# fall back to): inexact where int8_dot_saturates(). QDQ graphs are not listed: onnxruntime runs
# them as written with session.disable_quant_qdq.
FUSED_INT8_OPS = frozenset({"MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul"})


def set_isa(name: str) -> None:
    """Restrict dispatch: 'auto' (best available), 'scalar' (portable reference), 'avx2' (AVX2
    kernels only), 'avxvnni' (AVX2 plus the 256-bit VNNI kernels), 'avx512' (plus AVX-512 VNNI/VBMI2
    kernels), 'amx' (plus the AMX tile kernels), 'neon'. A family without a kernel for the named
    level runs its best kernel below it.
    Raises ValueError for an unknown name or an ISA this CPU lacks."""
    if not isinstance(name, str):
        raise TypeError(f"ISA name must be a str, got {type(name).__name__}")
    _kernels.set_isa(name)


def get_isa() -> str:
    return _kernels.get_isa()


def available_isas() -> list[str]:
    """ISAs this CPU can run, reference first: e.g. ['scalar', 'avx2', 'avxvnni']."""
    f = _kernels.cpu_features()
    return ["scalar"] + [isa for isa in ("avx2", "avxvnni", "avx512", "amx", "neon") if f[isa]]


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Context manager: run the block with `name` forced, then restore the previous setting."""
    previous = get_isa()
    set_isa(name)
    try:
        yield
    finally:
        _kernels.set_isa("auto")
        if previous != get_isa():
            _kernels.set_isa(previous)


def set_num_threads(n: int) -> None:
    """Threads per kernel call (the caller's thread included); n <= 0 means one per CPU."""
    _kernels.set_num_threads(int(n))


def get_num_threads() -> int:
    return _kernels.get_num_threads()


# ----------------------------------------------------------------------------- helpers


def _per_row(value, m: int, dtype, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if dtype is np.int32 and arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integers, got dtype {arr.dtype}")
    if dtype is np.float32 and arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected floats, got dtype {arr.dtype}")
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, m)):
        raise ValueError(f"{name}: expected a scalar or shape ({m},), got shape {arr.shape}")
    return np.ascontiguousarray(np.broadcast_to(arr.astype(dtype), (m,)))


def _as_2d(a: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.ndim == 1:
        return a.reshape(1, -1), True
    return a, False


_ACTIVATIONS = {None: (-np.inf, np.inf), "relu": (0.0, np.inf), "relu6": (0.0, 6.0)}


def _clamp(activation, relu: bool) -> tuple[float, float]:
    """(lo, hi) of the fused activation: None, 'relu', 'relu6' or an explicit (lo, hi)."""
    if relu:
        if activation not in (None, "relu"):
            raise ValueError("pass either relu=True or activation=..., not both")
        activation = "relu"
    if isinstance(activation, tuple):
        lo, hi = (float(v) for v in activation)
        if not lo <= hi:
            raise ValueError(f"activation clamp needs lo <= hi, got {activation}")
        return lo, hi
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'relu', 'relu6' or (lo, hi), got {activation!r}")
    return _ACTIVATIONS[activation]


def _vector(value, n: int, dtype, name: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value)
    if dtype is np.int32 and arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integers, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


# ----------------------------------------------------------------------------- int8 x int8


def pack_qs8(w: np.ndarray, w_scales, w_zero_points=None, bias=None) -> Packed:
    """Pack int8 weights w [N, K] (per-output-channel scales [N], optional zero points [N]
    in [-128, 127], optional fp32 bias [N]) into the qs8 kernels' layout. Do it once per model."""
    if not isinstance(w, np.ndarray):
        raise TypeError(f"w: expected a numpy int8 array, got {type(w).__name__}")
    if w.ndim != 2:
        raise ValueError(f"w: expected 2 dimensions [N, K], got {w.ndim}")
    n = w.shape[0]
    return _kernels.qs8_pack(
        w,
        _vector(w_scales, n, np.float32, "w_scales"),
        _vector(w_zero_points, n, np.int32, "w_zero_points"),
        _vector(bias, n, np.float32, "bias"),
    )


def qs8_linear(a: np.ndarray, a_scale, a_zero_point, w: Packed, relu: bool = False,
               out_scale: float | None = None, out_zero_point: int = 0, activation=None) -> np.ndarray:
    """y = ((a - a_zp) x (w - w_zp)^T) * a_scale * w_scale + bias, then the fused activation
    (relu=True, or activation='relu'/'relu6'/(lo, hi)).

    a: int8 [M, K] or [K]; a_scale/a_zero_point: per tensor (scalar) or per row ([M], e.g.
    from quant.quantize_rows_dynamic). Returns float32 [M, N], or int8 requantized with
    out_scale/out_zero_point when out_scale is given.
    """
    if not isinstance(w, Packed):
        raise TypeError(f"w: expected weights from pack_qs8, got {type(w).__name__}")
    return _q8_linear(_kernels.qs8_gemm, a, a_scale, a_zero_point, w, relu, out_scale, out_zero_point, activation)


def _q8_linear(gemm, a, a_scale, a_zero_point, w: Packed, relu, out_scale, out_zero_point, activation):
    """The call qs8_linear and bsr_linear share. Lean on purpose (a 384 x 384 GEMV is ~1.5 us):
    the binding takes [K] or [M, K], Python numbers or float32 / int32 [M] arrays for the scale
    and zero point, allocates a float32 output when given None, and checks every argument
    itself. Other forms of the scale and zero point (numpy scalars, lists, other dtypes, one
    value for every row) are refused there and normalized by _retry_per_row."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"a: expected a numpy array, got {type(a).__name__}")
    lo, hi = _NO_CLAMP if activation is None and not relu else _clamp(activation, relu)
    if out_scale is None:  # float32 out: the binding allocates it
        tail = (w, None, lo, hi, 1.0, 0)
    else:
        out = np.empty((a.shape[0], w.n) if a.ndim > 1 else w.n, dtype=np.int8)
        tail = (w, out, lo, hi, float(out_scale), int(out_zero_point))
    try:
        return gemm(a, a_scale, a_zero_point, *tail)
    except (TypeError, ValueError):
        return _retry_per_row(gemm, a, a_scale, a_zero_point, tail, "a")


def _retry_per_row(gemm, x, scale, zero_point, tail, xn: str):
    """The binding refused a call: convert the scale and zero point as _per_row does (which
    raises the friendly error for a value that is wrong in any form) and call again. An error
    about anything else (x, K, out, the int8 range) comes back from the second call as is."""
    m = x.shape[0] if x.ndim > 1 else 1
    return gemm(x, _row_scale(scale, m, f"{xn}_scale"), _row_zp(zero_point, m, f"{xn}_zero_point"), *tail)


def qs8_gemm(a: np.ndarray, a_scale, a_zero_point, w: np.ndarray, w_scales, w_zero_points=None,
             bias=None, relu: bool = False, out_scale: float | None = None, out_zero_point: int = 0,
             activation=None) -> np.ndarray:
    """One-shot qs8_linear on unpacked int8 weights w [N, K] (packs, then runs)."""
    return qs8_linear(a, a_scale, a_zero_point, pack_qs8(w, w_scales, w_zero_points, bias),
                      relu=relu, out_scale=out_scale, out_zero_point=out_zero_point, activation=activation)


def pack_bsr(w: np.ndarray, w_scales, w_zero_points=None, bias=None) -> Packed:
    """Pack int8 weights w [N, K] as 16 x 4 blocks (16 output channels x 4 consecutive K),
    keeping only blocks with a nonzero weight, for bsr_linear. Same arguments and results as
    pack_qs8 / qs8_linear; it pays when most blocks are zero (block-pruned weights).
    `packed.nnz / 64` is the number of stored blocks."""
    if not isinstance(w, np.ndarray):
        raise TypeError(f"w: expected a numpy int8 array, got {type(w).__name__}")
    if w.ndim != 2:
        raise ValueError(f"w: expected 2 dimensions [N, K], got {w.ndim}")
    n = w.shape[0]
    return _kernels.bsr_pack(w, _vector(w_scales, n, np.float32, "w_scales"),
                             _vector(w_zero_points, n, np.int32, "w_zero_points"), _vector(bias, n, np.float32, "bias"))


def bsr_linear(a: np.ndarray, a_scale, a_zero_point, w: Packed, relu: bool = False,
               out_scale: float | None = None, out_zero_point: int = 0, activation=None) -> np.ndarray:
    """qs8_linear on block-sparse weights from pack_bsr (bit-identical results, the same
    arguments)."""
    if not isinstance(w, Packed) or w.kind != "bsr_qs8":
        raise TypeError(f"w: expected weights from pack_bsr, got {getattr(w, 'kind', type(w).__name__)}")
    return _q8_linear(_kernels.bsr_gemm, a, a_scale, a_zero_point, w, relu, out_scale, out_zero_point, activation)


def qd8_linear(x: np.ndarray, w: Packed, relu: bool = False, activation=None) -> np.ndarray:
    """Dynamically quantized int8 linear layer: fp32 x [M, K] (or [K]) is quantized per row
    (asymmetric int8, quant.quantize_rows_dynamic) inside the call, then multiplied with the
    int8 weights from pack_qs8. Returns fp32 [M, N]; equals
    qs8_linear(*quant.quantize_rows_dynamic(x), w) bit for bit."""
    x2, squeeze = _as_2d(x, "x")
    if not isinstance(w, Packed) or w.kind != "qs8":
        raise TypeError(f"w: expected weights from pack_qs8, got {type(w).__name__}")
    out = np.empty((x2.shape[0], w.n), np.float32)
    _kernels.qd8_gemm(x2, w, out, *_clamp(activation, relu))
    return out[0] if squeeze else out


# ----------------------------------------------------------------------------- int4 / int2 groups


def pack_qb(q: np.ndarray, scales, offsets, bits: int, group_size: int, bias=None) -> Packed:
    """Pack group-quantized weights (from quant.quantize_groups): q uint8 [N, K] with values
    < 2^bits, scales/offsets float32 [N, ceil(K/group_size)], weight = scale * q + offset.
    bits: 4 or 2; group_size: 32, 64 or 128. The packed blocks are the formats in
    kernels/csrc/blocks.h (fp16 scale and offset per group: 4.25 bits per weight for int4 with
    groups of 128, 5 with groups of 32); scales/offsets are rounded to fp16 when packed."""
    if not isinstance(q, np.ndarray):
        raise TypeError(f"q: expected a numpy uint8 array, got {type(q).__name__}")
    if q.ndim != 2:
        raise ValueError(f"q: expected 2 dimensions [N, K], got {q.ndim}")
    n = q.shape[0]
    return _kernels.qb_pack(q, int(bits), int(group_size),
                            np.ascontiguousarray(scales, dtype=np.float32),
                            np.ascontiguousarray(offsets, dtype=np.float32),
                            _vector(bias, n, np.float32, "bias"))


def qb_linear(x: np.ndarray, w: Packed, relu: bool = False, activation=None) -> np.ndarray:
    """y = clamp(x @ dequant(w)^T + bias) for fp32 x [M, K] or [K]. The activations are
    quantized per row to int8 inside (dynamic quantization), then multiplied exactly with the
    4/2-bit quants; see quant.qb_linear_ref for the definition. The clamp (relu, relu6 or
    (lo, hi)) is fused: each output tile is clamped as soon as it is written."""
    x2, squeeze = _as_2d(x, "x")
    if not isinstance(w, Packed) or not w.kind.startswith(("q4_", "q2_")):
        raise TypeError(f"w: expected weights from pack_qb, got {type(w).__name__}")
    out = np.empty((x2.shape[0], w.n), np.float32)
    _kernels.qb_gemm(x2, w, out, *_clamp(activation, relu))
    return out[0] if squeeze else out


# ----------------------------------------------------------------------------- sparse


# pack_sparse(layout="auto") on int8 weights. Where AVX-512 VBMI runs the permute kernel, the
# permute layout when its packing fits AUTO_PERMUTE_CACHE_BYTES (about an L2); otherwise
# whichever of the layouts this CPU runs natively is fastest on this matrix, timed once at
# packing (a few ms, each candidate timed after a few untimed calls so that its weights are
# back in cache as far as they fit). Why timing rather than a rule: a GEMV streams the weights
# once, so out of cache time follows bytes read (bitmask 0.375 B/weight at 75% sparsity,
# permute ~0.5, windows ~0.75, dense 1) unless the kernel cannot keep up with the memory, and
# that differs by CPU. On Zen 4 (vpexpandb is slow there) permute was the fastest at every size
# kernels_gemm measures; a Xeon with AVX-512 VBMI ran bitmask 2.12x our dense at 4096 x 4096,
# 75%, against 1.31x for permute with byte columns (0.76 B/weight then); Zen 3 (AVX2, no
# vpexpandb) ran bitmask ~0.6x, while windows (one pshufb per 32 slots) was faster at every size.
AUTO_PERMUTE_CACHE_BYTES = 512 << 10


def pack_sparse(w: np.ndarray, w_scales=None, bias=None, layout: str = "rows") -> Packed:
    """Compress the nonzeros of w [N, K] (float32, or int8 with per-row scales w_scales [N]).
    Any pattern: unstructured, blocks, 2:4. `Packed.nnz` and `Packed.nbytes` report the size.

    layout="rows": compressed rows (uint16 columns, K <= 65535), int8 or fp32; gathers for
    GEMV, a transposed-activation kernel for GEMM (M >= 4).
    layout="blocks": float32 only; the 16 x 4 blocks (16 outputs x 4 consecutive K) that hold a
    nonzero, each multiplied as 4 vector FMAs per activation row, rows read and written in
    place (no transposes). Fast for block-pruned weights (compressor prune block=(16, 4));
    unstructured sparsity keeps nearly every block. The int8 twin is pack_bsr.
    layout="windows": int8 only, the gather-free GEMV layout of sparse-gemm.h (16-column
    windows x 8-row groups, byte-shuffle selection).
    layout="bitmask": int8 only, per row and 64 columns a 64-bit mask plus the nonzeros packed
    densely (density + 1/8 byte per weight: 0.375 at 75% sparsity, 0.625 at 50%); the
    kernels rebuild 64 weights per mask (AVX-512 vpexpandb + vpdpbusd, AVX2/NEON byte
    shuffles). The smallest int8 layout: the fastest when the weights stream from memory.
    layout="permute": int8 only, 16-row groups; each step gives every row 4 slots for its next
    nonzeros inside a 64-column window (6-bit column + weight: 1.75 bytes per slot, ~0.5 per
    weight at 75% sparsity, ~0.93 at 50%); AVX-512 VBMI gathers the activations with one
    vpermb per 64 slots. Other CPUs run its scalar reference (slow): use "auto" there.
    layout="auto": int8 only; "permute" where the CPU has AVX-512 VBMI
    (kernels._kernels.spp_isa() == "avx512") and it fits AUTO_PERMUTE_CACHE_BYTES, else the
    fastest here of the layouts with native kernels on this CPU (windows and bitmask, plus
    permute with VBMI), timed on these weights at packing (a few ms; see the comment above
    AUTO_PERMUTE_CACHE_BYTES). Every layout gives bit-identical results."""
    if not isinstance(w, np.ndarray):
        raise TypeError(f"w: expected a numpy int8 or float32 array, got {type(w).__name__}")
    if w.ndim != 2:
        raise ValueError(f"w: expected 2 dimensions [N, K], got {w.ndim}")
    n = w.shape[0]
    if w.dtype == np.int8 and w_scales is None:
        raise ValueError("w_scales: int8 sparse weights need per-row scales")
    if layout in ("windows", "bitmask", "permute", "auto"):
        if w.dtype != np.int8:
            raise TypeError(f"w: the {layout} layout needs int8 weights, got {w.dtype}")
        scales, b = _vector(w_scales, n, np.float32, "w_scales"), _vector(bias, n, np.float32, "bias")
        if layout == "auto":
            candidates = [_kernels.spw_pack(w, scales, b), _kernels.spb_pack(w, scales, b)]
            if _kernels.spp_isa() == "avx512":
                permute = _kernels.spp_pack(w, scales, b)
                if permute.nbytes <= AUTO_PERMUTE_CACHE_BYTES:
                    return permute
                candidates.append(permute)
            return _faster_gemv(*candidates)
        pack = {"windows": _kernels.spw_pack, "bitmask": _kernels.spb_pack, "permute": _kernels.spp_pack}[layout]
        return pack(w, scales, b)
    if layout == "blocks":
        if w.dtype != np.float32:
            raise TypeError(f"w: the blocks layout needs float32 weights (int8: pack_bsr), got {w.dtype}")
        return _kernels.f32_bsr_pack(w, _vector(bias, n, np.float32, "bias"))
    if layout != "rows":
        raise ValueError(f"layout must be 'rows', 'blocks', 'windows', 'bitmask', 'permute' or 'auto', got {layout!r}")
    return _kernels.sparse_pack(w, _vector(w_scales, n, np.float32, "w_scales"), _vector(bias, n, np.float32, "bias"))


def _faster_gemv(*candidates: Packed) -> Packed:
    """The int8 sparse packing whose GEMV (one zero activation row) is fastest here."""
    from .timing import fastest_index

    x = np.zeros(candidates[0].k, np.int8)

    def gemv(w: Packed):
        out, gemm = np.empty(w.n, _F32), _SPARSE_QS8_GEMM[w.kind]
        return lambda: gemm(x, 1.0, 0, w, out, -np.inf, np.inf)

    return candidates[fastest_index([gemv(w) for w in candidates], rounds=5, calls=3, warm=3)]


_F32, _I32 = np.dtype(np.float32), np.dtype(np.int32)
_NO_CLAMP = (-np.inf, np.inf)


def _row_scale(value, m: int, name: str):
    """A per-row float32 scale as the binding takes it: a Python number (every row) or a
    float32 array [M] pass as they are; anything else goes through _per_row's checks and
    conversions (several microseconds: as much as a whole 384 x 384 GEMV)."""
    t = type(value)
    if t is float or t is int or (t is np.ndarray and value.dtype is _F32 and value.shape == (m,)):
        return value
    return _per_row(value, m, np.float32, name)


def _row_zp(value, m: int, name: str):
    """_row_scale for int32 zero points (the binding checks the int8 range)."""
    t = type(value)
    if t is int or (t is np.ndarray and value.dtype is _I32 and value.shape == (m,)):
        return value
    return _per_row(value, m, np.int32, name)


# int8 sparse formats -> their native entry point (same arguments)
_SPARSE_QS8_GEMM = {
    "sparse_qs8_windows": _kernels.spw_gemm,
    "sparse_qs8_bitmask": _kernels.spb_gemm,
    "sparse_qs8_permute": _kernels.spp_gemm,
}


def sparse_qs8_gemm_entry(w: Packed):
    """The binding entry point of an int8 sparse packing from pack_sparse (any layout), for
    callers that prepare their own arguments (the engine's plans): gemm(x int8, x_scale
    float32 [M], x_zero_point int32 [M], w, out float32, out_min, out_max)."""
    return _SPARSE_QS8_GEMM.get(w.kind, _kernels.sparse_gemm)


def sparse_linear(x: np.ndarray, w: Packed, x_scale=None, x_zero_point=None, relu: bool = False,
                  activation=None) -> np.ndarray:
    """y = x @ W^T + bias with sparse W from pack_sparse, fp32 output [M, N] (or [N]).
    float32 weights take float32 x; int8 weights take int8 x with x_scale/x_zero_point
    (scalar or per row) and follow the qs8 definition exactly."""
    kind = w.kind if isinstance(w, Packed) else ""
    lo, hi = _NO_CLAMP if activation is None and not relu else _clamp(activation, relu)
    gemm = _SPARSE_QS8_GEMM.get(kind)
    if gemm is not None:
        # the lean path of qs8_linear (_q8_linear): the binding checks every argument and
        # allocates the output
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x: expected a numpy array, got {type(x).__name__}")
        if x_scale is None or x_zero_point is None:
            raise ValueError("int8 sparse weights need x_scale and x_zero_point")
        try:
            return gemm(x, x_scale, x_zero_point, w, None, lo, hi)
        except (TypeError, ValueError):
            return _retry_per_row(gemm, x, x_scale, x_zero_point, (w, None, lo, hi), "x")
    x2, squeeze = _as_2d(x, "x")
    if not kind.startswith("sparse"):
        raise TypeError(f"w: expected weights from pack_sparse, got {type(w).__name__}")
    m = x2.shape[0]
    out = np.empty((m, w.n), np.float32)
    if kind == "sparse_qs8":
        if x_scale is None or x_zero_point is None:
            raise ValueError("int8 sparse weights need x_scale and x_zero_point")
        _kernels.sparse_gemm(x2, _per_row(x_scale, m, np.float32, "x_scale"),
                             _per_row(x_zero_point, m, np.int32, "x_zero_point"), w, out, lo, hi)
    elif kind == "sparse_f32_blocks":
        _kernels.f32_bsr_gemm(x2, w, out, lo, hi)
    else:
        _kernels.sparse_gemm(x2, None, None, w, out, lo, hi)
    return out[0] if squeeze else out


# ----------------------------------------------------------------------------- fp32


def pack_f32(w: np.ndarray, bias=None) -> Packed:
    """Pack float32 weights w [N, K] (optional bias [N]) for f32_linear."""
    if not isinstance(w, np.ndarray):
        raise TypeError(f"w: expected a numpy float32 array, got {type(w).__name__}")
    if w.ndim != 2:
        raise ValueError(f"w: expected 2 dimensions [N, K], got {w.ndim}")
    return _kernels.f32_pack(w, _vector(bias, w.shape[0], np.float32, "bias"))


def f32_linear(x: np.ndarray, w: Packed, relu: bool = False, activation=None) -> np.ndarray:
    """y = clamp(x @ W^T + bias) for float32 x [M, K] or [K]."""
    x2, squeeze = _as_2d(x, "x")
    if not isinstance(w, Packed) or w.kind != "f32":
        raise TypeError(f"w: expected weights from pack_f32, got {type(w).__name__}")
    out = np.empty((x2.shape[0], w.n), np.float32)
    _kernels.f32_gemm(x2, w, out, *_clamp(activation, relu))
    return out[0] if squeeze else out


from .conv import ConvWeights, conv2d, conv2d_qs8, dwconv3x3, dwconv3x3_qs8, pack_conv  # noqa: E402
from .nn import attention, erf, gelu, layer_norm, softmax  # noqa: E402

__all__ += ["layer_norm", "gelu", "erf", "softmax", "attention"]
