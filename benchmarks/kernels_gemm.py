"""Our kernels against onnxruntime on the same shapes, in one run.

    python -m benchmarks.kernels_gemm            # full grid, a couple of minutes
    python -m benchmarks.kernels_gemm --quick    # N = K only

For every M in {1, 32, 128}, N and K in {384, 1536, 4096}, and 1 and 2 threads, prints:
  int8  ours: kernels.qd8_linear (fp32 in, dynamic per-row int8, int8 per-channel weights)
        ORT:  the same MatMul after onnxruntime.quantization.quantize_dynamic (per-channel QInt8)
  fp32  ours: kernels.f32_linear           ORT: MatMul
  int4  ours: kernels.qb_linear (groups of 32)
        ORT:  com.microsoft MatMulNBits (bits=4, block 32), the faster of accuracy_level 0 and 4
  sparse ours: kernels.sparse_linear on int8 weights with 75% (and 50%) unstructured zeros, packed with
        pack_sparse(layout="auto") (what a user asking for the fastest int8 layout gets: "permute", vpermb gathers,
        on CPUs with AVX-512 VBMI while it fits ~L2, else the fastest native layout timed at packing; the layout of
        each size is printed), against our dense int8 GEMM (kernels.qs8_linear) on the same symmetric int8 input;
        both called with the same arguments (int8 [M, K], float32 [M] scales, zero point 0)
with times (fastest of repeated calls, as timeit does; see best_time), ratio theirs/ours (> 1 means we are faster), and the
fraction of this CPU's peak multiply-adds per cycle (cpu_peak: AMD Zen 3 to 5, Intel AVX-512 VNNI / AMX Xeons, else the
issue's Zen 3 figures) at the core clock measured by kernels._kernels.core_ghz() (/proc/cpuinfo's where it cannot be).
Ends with the issue-4 goals and whether they hold.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

import kernels
from kernels import quant

GROUP = 32  # int4 group / MatMulNBits block size


@dataclass(frozen=True)
class Peak:
    """Multiply-adds per cycle per core of the CPU's widest units, for the % columns.
    int8_mac_tiles: AMX's rate, which the int8 GEMM (M > 1) uses where the kernels run AMX."""
    int8_mac: int
    fp32_fma: int
    what: str
    int8_mac_tiles: int | None = None


# Per core and cycle, from published descriptions of the cores (two vector multiply pipes
# on each of these): Zen 3, AVX2 without VNNI: 2 x 8-wide FMA, 2 x vpmaddwd (16 pairs), the
# issue's figures; Zen 4: AVX-512 on 256-bit pipes (2 x 8 FMA, 2 x 32 vpdpbusd bytes);
# Zen 5 (server parts): full 512-bit pipes (2 x 16 FMA, 2 x 64 vpdpbusd bytes). Intel Xeons
# with AVX-512 VNNI (Cascade Lake on; the Gold and Platinum parts have two 512-bit FMA pipes,
# and vpdpbusd zmm issues on both: 2 per cycle measured on the session-10 Xeon), plus AMX
# where present: one 16 x 16 x 64 tdpbusd per 16 cycles, 1024 int8 multiply-adds per cycle.
ZEN3 = Peak(32, 16, "Zen 3 (the issue's figures)")
_AMD_PEAKS = {(25, False): ZEN3, (25, True): Peak(64, 16, "Zen 4"), (26, True): Peak(128, 32, "Zen 5")}
_INTEL_AVX512_VNNI = Peak(128, 32, "Intel Xeon, AVX-512 VNNI on two 512-bit pipes (Gold/Platinum parts)")
_INTEL_AMX = Peak(128, 32, "Intel Xeon, AVX-512 VNNI on two 512-bit pipes; AMX tiles for int8 GEMM", 1024)


def cpu_peak() -> Peak:
    """The peak of this CPU where its kind is known (AMD Zen 3 to 5, Intel Xeons with AVX-512
    VNNI or AMX), else the issue's Zen 3 figures, said so in the header."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family", "").isdigit():
        known = _AMD_PEAKS.get((int(info["cpu family"]), "avx512f" in info.get("flags", "").split()))
        if known is not None:
            return known
    flags = info.get("flags", "").split()
    if info.get("vendor_id") == "GenuineIntel" and "avx512_vnni" in flags:
        return _INTEL_AMX if "amx_int8" in flags else _INTEL_AVX512_VNNI
    return Peak(ZEN3.int8_mac, ZEN3.fp32_fma, "not known for this CPU: the issue's Zen 3 figures")


def cpu_clock_ghz() -> float:
    mhz = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    mhz.append(float(line.split(":")[1]))
    except OSError:
        pass
    return max(mhz) / 1000 if mhz else 3.0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def best_time(fn, budget: float, min_reps: int = 5) -> float:
    """Fastest call (seconds) after one warm-up, like timeit: on a CPU shared with other work
    the slower calls measure the neighbours' load, not the kernel. Both sides get the same
    treatment and the same time budget."""
    fn()
    times = []
    end = time.perf_counter() + budget
    while len(times) < min_reps or (time.perf_counter() < end and len(times) < 5000):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# ----------------------------------------------------------------------------- ONNX graphs


def _model(nodes, inputs, outputs, inits, opsets) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "bench", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 9
    return model


def fp32_matmul_model(w: np.ndarray) -> onnx.ModelProto:
    n, k = w.shape
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
                  [numpy_helper.from_array(np.ascontiguousarray(w.T), "W")], [("", 17)])


def int8_dynamic_model(w: np.ndarray, tmp: str) -> bytes:
    """The fp32 MatMul passed through onnxruntime's own quantize_dynamic (per-channel QInt8)."""
    src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
    onnx.save(fp32_matmul_model(w), src)
    quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)
    with open(dst, "rb") as f:
        return f.read()


def matmulnbits_model(q: np.ndarray, scales: np.ndarray, zero_point: int, accuracy_level: int) -> onnx.ModelProto:
    """com.microsoft MatMulNBits with 4-bit blocks along K: value = (q - zero_point) * scale."""
    n, k = q.shape
    blocks = -(-k // GROUP)
    qp = np.zeros((n, blocks * GROUP), np.uint8)
    qp[:, :k] = q
    qp = qp.reshape(n, blocks, GROUP // 2, 2)
    packed = (qp[..., 0] | (qp[..., 1] << 4)).astype(np.uint8)  # element 2j low nibble, 2j+1 high
    zp_nibbles = np.full((n, -(-blocks // 2)), zero_point | (zero_point << 4), np.uint8)
    node = helper.make_node("MatMulNBits", ["x", "B", "scales", "zp"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=GROUP, accuracy_level=accuracy_level)
    return _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
                  [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales.reshape(-1).astype(np.float32), "scales"),
                   numpy_helper.from_array(zp_nibbles.reshape(-1), "zp")],
                  [("", 17), ("com.microsoft", 1)])


def session(model, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- one shape


@dataclass
class Row:
    m: int
    n: int
    k: int
    threads: int
    times_us: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    def ratio(self, theirs: str, ours: str) -> float:
        return self.times_us[theirs] / self.times_us[ours]


@dataclass
class Weights:
    """Everything derived from one random fp32 weight matrix, prepared once per (N, K)."""

    n: int
    k: int
    qs8: object
    qs8_int8: np.ndarray
    f32: object
    q4: object
    sparse75: object
    sparse50: object
    ort_models: dict


def prepare(n: int, k: int, rng, tmp: str) -> Weights:
    w = rng.standard_normal((n, k)).astype(np.float32)
    wq, ws, _ = quant.quantize_per_channel(w)
    # int4: symmetric-style groups (offset = -8 * scale) so MatMulNBits (zero point 8) is the same matrix
    amax = np.abs(np.pad(w, ((0, 0), (0, -k % GROUP)))).reshape(n, -1, GROUP).max(axis=2)
    d = np.where(amax > 0, amax / 7.0, 1.0).astype(np.float32)
    q4 = np.clip(np.rint(w / np.repeat(d, GROUP, axis=1)[:, :k]) + 8, 0, 15).astype(np.uint8)
    models = {
        "fp32": fp32_matmul_model(w),
        "int8": int8_dynamic_model(w, tmp),
        "int4_acc0": matmulnbits_model(q4, d, 8, 0),
        "int4_acc4": matmulnbits_model(q4, d, 8, 4),
    }
    return Weights(
        n, k,
        qs8=kernels.pack_qs8(wq, ws),
        qs8_int8=wq,
        f32=kernels.pack_f32(w),
        q4=kernels.pack_qb(q4, d, -8 * d, 4, GROUP),
        sparse75=kernels.pack_sparse(quant.prune_unstructured(wq, 0.75), ws, layout="auto"),
        sparse50=kernels.pack_sparse(quant.prune_unstructured(wq, 0.50), ws, layout="auto"),
        ort_models=models,
    )


def bench_shape(m: int, wts: Weights, threads: int, rng, budget: float) -> Row:
    row = Row(m, wts.n, wts.k, threads)
    x = rng.standard_normal((m, wts.k)).astype(np.float32)
    # symmetric per-row int8 activations for the dense-vs-sparse comparison
    xq = np.stack([quant.quantize_row_symmetric_int8(r)[0] for r in x])
    xs = np.array([quant.quantize_row_symmetric_int8(r)[1] for r in x], np.float32)
    xz = 0
    kernels.set_num_threads(threads)
    t = row.times_us

    t["ours_int8"] = 1e6 * best_time(lambda: kernels.qd8_linear(x, wts.qs8), budget)
    t["ours_fp32"] = 1e6 * best_time(lambda: kernels.f32_linear(x, wts.f32), budget)
    t["ours_int4"] = 1e6 * best_time(lambda: kernels.qb_linear(x, wts.q4), budget)
    t["ours_dense_int8_kernel"] = 1e6 * best_time(lambda: kernels.qs8_linear(xq, xs, xz, wts.qs8), budget)
    t["ours_sparse75"] = 1e6 * best_time(lambda: kernels.sparse_linear(xq, wts.sparse75, xs, xz), budget)
    t["ours_sparse50"] = 1e6 * best_time(lambda: kernels.sparse_linear(xq, wts.sparse50, xs, xz), budget)
    row.notes["stream_bytes"] = {"dense": wts.n * wts.k, "sparse75": wts.sparse75.nbytes, "sparse50": wts.sparse50.nbytes}

    feeds = {"x": x}
    outputs = {}
    for name, model in wts.ort_models.items():
        s = session(model, threads)
        t["ort_" + name] = 1e6 * best_time(lambda: s.run(None, feeds), budget)
        outputs[name] = s.run(None, feeds)[0]
    # MatMulNBits: the faster accuracy level is "theirs"
    best = min(("int4_acc0", "int4_acc4"), key=lambda nm: t["ort_" + nm])
    t["ort_int4"] = t["ort_" + best]
    row.notes["ort_int4_level"] = best[-1]

    # Sanity: the two sides compute the same layer (relative to the output's scale).
    def rel(a, b):
        return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))

    row.notes["int8_vs_ort_rel"] = rel(kernels.qd8_linear(x, wts.qs8), outputs["int8"])
    row.notes["fp32_vs_ort_rel"] = rel(kernels.f32_linear(x, wts.f32), outputs["fp32"])
    row.notes["int4_vs_ort_rel"] = rel(kernels.qb_linear(x, wts.q4), outputs["int4_acc0"])
    return row


# ----------------------------------------------------------------------------- report


def peak_fraction(macs: float, us: float, per_cycle: int, threads: int, ghz: float) -> float:
    return macs / (us * 1e-6) / (per_cycle * threads * ghz * 1e9)


def print_row(r: Row, ghz: float, peak: Peak, tiles: bool) -> None:
    t, macs = r.times_us, r.m * r.n * r.k
    int8_peak = peak.int8_mac_tiles if tiles and r.m > 1 and peak.int8_mac_tiles else peak.int8_mac
    p8 = peak_fraction(macs, t["ours_int8"], int8_peak, r.threads, ghz)
    pf = peak_fraction(macs, t["ours_fp32"], peak.fp32_fma, r.threads, ghz)
    print(f"{r.m:4d} {r.n:5d} {r.k:5d} {r.threads:2d} |"
          f" {t['ours_int8']:9.1f} {t['ort_int8']:9.1f} {r.ratio('ort_int8', 'ours_int8'):5.2f} {100 * p8:5.1f}% |"
          f" {t['ours_fp32']:9.1f} {t['ort_fp32']:9.1f} {r.ratio('ort_fp32', 'ours_fp32'):5.2f} {100 * pf:5.1f}% |"
          f" {t['ours_int4']:9.1f} {t['ort_int4']:9.1f}{r.notes['ort_int4_level']} {r.ratio('ort_int4', 'ours_int4'):5.2f} |"
          f" {t['ours_dense_int8_kernel']:9.1f} {t['ours_sparse75']:9.1f} {r.ratio('ours_dense_int8_kernel', 'ours_sparse75'):5.2f}"
          f" {r.ratio('ours_dense_int8_kernel', 'ours_sparse50'):5.2f}", flush=True)


def geomean(xs) -> float:
    xs = list(xs)
    return math.exp(sum(math.log(v) for v in xs) / len(xs)) if xs else float("nan")


def summarize(rows: list[Row]) -> list[tuple[str, float, float, bool]]:
    gemv = [r for r in rows if r.m == 1]
    gemm = [r for r in rows if r.m > 1]
    goals = []

    def goal(name, ratios, target):
        ratios = list(ratios)
        g, worst = geomean(ratios), min(ratios)
        goals.append((name, g, worst, g >= target))

    goal("int8 GEMV (M=1) >= 1.2x onnxruntime int8", (r.ratio("ort_int8", "ours_int8") for r in gemv), 1.2)
    goal("int8 GEMM (M>1) >= 0.8x onnxruntime int8", (r.ratio("ort_int8", "ours_int8") for r in gemm), 0.8)
    goal("int4 GEMV (M=1) >= 1.0x MatMulNBits", (r.ratio("ort_int4", "ours_int4") for r in gemv), 1.0)
    goal("sparse int8 GEMV 75% >= 2x our dense int8", (r.ratio("ours_dense_int8_kernel", "ours_sparse75") for r in gemv), 2.0)
    goal("sparse int8 GEMV 50% >= 1x our dense int8", (r.ratio("ours_dense_int8_kernel", "ours_sparse50") for r in gemv), 1.0)
    return goals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only N = K shapes")
    ap.add_argument("--budget", type=float, default=0.08, help="seconds of timing per measurement")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", help="also write the raw numbers here")
    args = ap.parse_args(argv)

    # the running clock, measured (a dependent multiply chain in the kernels); /proc/cpuinfo's
    # figure is often the nominal one, below the boost clock the cores run at
    measured = kernels._kernels.core_ghz()
    ghz, clock_source = (measured, "measured") if measured > 0 else (cpu_clock_ghz(), "/proc/cpuinfo")
    rng = np.random.default_rng(0)
    sizes = [384, 1536, 4096]
    nk = [(s, s) for s in sizes] if args.quick else [(n, k) for n in sizes for k in sizes]
    feats = kernels.cpu_features()
    print(f"CPU: {cpu_model()}, {ghz:.2f} GHz ({clock_source}), {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} (other work on the machine inflates every time), kernels ISA {feats['isa']},"
          f" onnxruntime {ort.__version__}")
    peak = cpu_peak()
    tiles = feats["isa"] == "amx"
    tile_note = f" ({peak.int8_mac_tiles} for int8 M > 1: AMX tiles)" if tiles and peak.int8_mac_tiles else ""
    print(f"peak used for %: {peak.int8_mac} int8 MAC{tile_note} and {peak.fp32_fma} fp32 FMA per cycle per core"
          f" ({peak.what}), at the clock above")
    print("times in microseconds (fastest call); ratio = theirs / ours, > 1 means ours is faster;"
          " int4 ORT column suffix = MatMulNBits accuracy_level used (faster of 0 and 4)")
    print(f"{'M':>4} {'N':>5} {'K':>5} {'T':>2} | {'int8 ours':>9} {'ORT':>9} {'ratio':>5} {'peak':>6} |"
          f" {'fp32 ours':>9} {'ORT':>9} {'ratio':>5} {'peak':>6} | {'int4 ours':>9} {'ORT':>10} {'ratio':>5} |"
          f" {'dense i8':>9} {'sparse75':>9} {'x75':>5} {'x50':>5}")
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n, k in nk:
            wts = prepare(n, k, rng, tmp)
            print(f"  sparse layouts for {n}x{k} (pack_sparse auto): 75% {wts.sparse75.kind}"
                  f" {wts.sparse75.nbytes / (n * k):.3f} B/weight, 50% {wts.sparse50.kind}"
                  f" {wts.sparse50.nbytes / (n * k):.3f} B/weight (dense int8 GEMV reads 1)")
            for m in (1, 32, 128):
                for threads in args.threads:
                    row = bench_shape(m, wts, threads, rng, args.budget)
                    rows.append(row)
                    print_row(row, ghz, peak, tiles)
    kernels.set_num_threads(0)

    print("\nM=1 weight stream, GB/s (bytes a GEMV reads / its time; dense int8 reads 1 byte per weight):"
          " the sparse/dense time ratio follows the bytes where the rates match")
    for r in rows:
        if r.m == 1:
            rates = "  ".join(f"{name} {r.notes['stream_bytes'][name] / r.times_us[key] / 1e3:6.1f}" for name, key in
                              (("dense", "ours_dense_int8_kernel"), ("sparse75", "ours_sparse75"),
                               ("sparse50", "ours_sparse50")))
            print(f"  {r.n:5d} x {r.k:5d}, {r.threads} thread(s): {rates}")

    worst_rel = {key: max(r.notes[key] for r in rows) for key in ("int8_vs_ort_rel", "fp32_vs_ort_rel", "int4_vs_ort_rel")}
    print(f"\nsame-layer check, max |ours - ORT| / max|ORT|: " + ", ".join(f"{k} {v:.2e}" for k, v in worst_rel.items()))
    print(f"ran in {time.perf_counter() - started:.0f} s\n\nissue-4 goals (geometric mean over the shapes and thread counts, worst case):")
    for name, g, worst, ok in summarize(rows):
        print(f"  {'MET ' if ok else 'MISS'} {name}: {g:.2f}x (worst {worst:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
