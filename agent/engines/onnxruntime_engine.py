"""onnxruntime engine: every variant must load here (the fallback for everything)."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from agent.engines.base import IOSpec

# onnxruntime type strings -> numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}


def _spec(arg) -> IOSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return IOSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))


class OnnxRuntimeSession:
    def __init__(self, path: str | os.PathLike, intra_op_threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3          # warnings from ORT are noise on a device
        self._session = ort.InferenceSession(str(path), sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self.input_specs = [_spec(a) for a in self._session.get_inputs()]
        self.output_specs = [_spec(a) for a in self._session.get_outputs()]
        self._output_names = [s.name for s in self.output_specs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe; no lock needed here.
        results = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results))


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def __init__(self, intra_op_threads: int = 1):
        self.intra_op_threads = intra_op_threads

    def load(self, path: str | os.PathLike) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(path, self.intra_op_threads)
