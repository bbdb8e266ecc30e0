"""Measure a variant the way a device will run it: through an onnxruntime session.

quality   task metric on held-out data (accuracy by default), from the exported file
size      bytes of the .onnx file
latency   batch-1 p50/p95 after warmup, with a fixed thread count (1 by default: the machine
          is shared and small models do not scale with threads; say what you measured)
memory    an estimate: bytes of the stored initializers + every intermediate tensor at batch 1
          (an upper bound, onnxruntime reuses buffers); stable across runs, unlike RSS deltas
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx


@dataclass
class LatencyConfig:
    """Args:
        warmup: untimed runs first (allocations, caches).
        repeats: timed runs; p50 and p95 over them.
        threads: onnxruntime intra-op threads.
    """

    warmup: int = 20
    repeats: int = 200
    threads: int = 1

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 0 or self.threads < 1:
            raise ValueError(f"bad latency config: {self}")


@dataclass(frozen=True)
class Measurement:
    quality: float
    size_bytes: int
    latency_p50_seconds: float
    latency_p95_seconds: float
    memory_bytes: int


def session(model: bytes | onnx.ModelProto, threads: int = 1,
            config: dict[str, str] | None = None):
    """An onnxruntime session for the model. Where this CPU makes onnxruntime's fused int8
    inexact (kernels.int8_dot_saturates), pass {"session.disable_quant_qdq": "1"} to run a QDQ
    graph as written (exact, slower)."""
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    for k, v in (config or {}).items():
        opts.add_session_config_entry(k, v)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def run(sess, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: np.ascontiguousarray(x[s:s + batch_size], np.float32)})[0]
            for s in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def accuracy_fn(x: np.ndarray, y: np.ndarray) -> Callable:
    """An eval_fn: top-1 accuracy (0..1) of a session's first output on (x, y)."""
    def fn(sess) -> float:
        return float((run(sess, x).argmax(1) == np.asarray(y)).mean())
    return fn


_LATENCY_ROUNDS = 5
_LATENCY_ROUND_PAUSE = 0.01


def measure_latency(sess, sample: np.ndarray | dict[str, np.ndarray],
                    cfg: LatencyConfig = LatencyConfig()) -> tuple[float, float]:
    """p50/p95 of batch-1 runs. `sample` is a float array for the first input, or a dict
    {input name: array} for models with several (or integer) inputs; row 0 is fed."""
    if isinstance(sample, dict):
        feeds = {k: np.ascontiguousarray(v[:1]) for k, v in sample.items()}
    else:
        feeds = {sess.get_inputs()[0].name: np.ascontiguousarray(sample[:1], np.float32)}
    for _ in range(cfg.warmup):
        sess.run(None, feeds)
    times = np.empty(cfg.repeats)
    # In rounds with short pauses between, and p50 = the least disturbed round's median: 200
    # runs of a 20 us model last 4 ms, and one burst of other work on a shared machine doubled
    # a whole measurement (the search's front then changed with the noise). p95 is over all.
    rounds = np.array_split(np.arange(cfg.repeats), min(_LATENCY_ROUNDS, cfg.repeats))
    for r, idx in enumerate(rounds):
        if r:
            time.sleep(_LATENCY_ROUND_PAUSE)
        for k in idx:
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times[k] = time.perf_counter() - t0
    p50 = min(float(np.median(times[idx])) for idx in rounds)
    return p50, float(np.percentile(times, 95))


_ELEM_BYTES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.UINT8: 1, onnx.TensorProto.INT8: 1,
               onnx.TensorProto.INT32: 4, onnx.TensorProto.INT64: 8, onnx.TensorProto.FLOAT16: 2,
               onnx.TensorProto.INT16: 2, onnx.TensorProto.UINT16: 2}


def estimate_memory(model: onnx.ModelProto) -> int:
    """Stored initializer bytes + all intermediate tensors at batch 1 (upper bound)."""
    weights = sum(len(t.raw_data) or _proto_numel(t) * _ELEM_BYTES.get(t.data_type, 4)
                  for t in model.graph.initializer)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i in m.graph.input:
        d = i.type.tensor_type.shape.dim
        if d and not d[0].HasField("dim_value"):
            d[0].dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:
        return weights
    acts = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        acts += int(np.prod(dims)) * _ELEM_BYTES.get(tt.elem_type, 4)
    return int(weights + acts)


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of Conv/Gemm/MatMul at batch 1 (from inferred shapes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i in m.graph.input:
        d = i.type.tensor_type.shape.dim
        if d and not d[0].HasField("dim_value"):
            d[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(m)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1
                           for d in vi.type.tensor_type.shape.dim]
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)
    # the weight of a quantized op comes out of a DequantizeLinear / Reshape: follow it back
    producer = {o: n for n in m.graph.node for o in n.output}

    def wshape(name):
        while name not in shapes or not shapes[name]:
            n = producer.get(name)
            if n is None:
                return None
            name = n.input[0] if n.op_type != "Reshape" else n.output[0]
            if n.op_type == "Reshape" and n.input[1] in m.graph.initializer:
                break
        return shapes.get(name)

    macs = 0
    for n in m.graph.node:
        if n.op_type not in ("Conv", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger"):
            continue
        out = shapes.get(n.output[0])
        w = wshape(n.input[1])
        if not out or not w:
            continue
        if n.op_type.startswith("Conv") or n.op_type == "QLinearConv":
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        else:
            k = w[0] if n.op_type != "Gemm" or not any(
                a.name == "transB" and a.i for a in n.attribute) else w[1]
            macs += int(np.prod(out)) * int(k)
    return macs


def _proto_numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims)) if t.dims else 1


def measure(model: onnx.ModelProto, eval_fn: Callable, sample: np.ndarray | dict[str, np.ndarray],
            latency: LatencyConfig = LatencyConfig(),
            session_config: dict[str, str] | None = None) -> Measurement:
    data = model.SerializeToString()
    sess = session(data, latency.threads, session_config)
    quality = float(eval_fn(sess))
    p50, p95 = measure_latency(sess, sample, latency)
    return Measurement(quality=quality, size_bytes=len(data), latency_p50_seconds=p50,
                       latency_p95_seconds=p95, memory_bytes=estimate_memory(model))
