"""onnxruntime engine: every variant must load here (the fallback for everything).

A variant may carry onnxruntime session config entries in its manifest details
(`details["onnxruntime_session_config"]`, e.g. {"session.disable_quant_qdq": "1"} on int4
weight-only variants, so their blocked DequantizeLinear nodes fold into fp32 weights once at
load instead of running on every call). Only the keys in SAFE_SESSION_CONFIG, with the values
listed there, are applied: nothing in a manifest may make onnxruntime write files, load
external data from elsewhere or change how memory is owned. Anything else is logged and ignored.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np
import onnxruntime as ort

from agent.engines.base import SESSION_CONFIG_DETAIL, IOSpec

log = logging.getLogger(__name__)

# onnxruntime type strings -> numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}

_FLAG = frozenset({"0", "1"})

# Session config keys a manifest may set, and the values each may take. All of them only
# change graph optimisation or threading behaviour inside the process; none touch files.
SAFE_SESSION_CONFIG: dict[str, frozenset[str]] = {
    # Fold Q/DQ pairs into float weights at load (weight-only int4/int8 without a fused kernel).
    "session.disable_quant_qdq": _FLAG,
    "session.enable_quant_qdq_cleanup": _FLAG,
    "session.disable_double_qdq_remover": _FLAG,
    # Accuracy level of MatMulNBits (int4) kernels: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8.
    "session.qdq_matmulnbits_accuracy_level": frozenset({"0", "1", "2", "3", "4"}),
    "session.disable_prepacking": _FLAG,
    # Busy-waiting threads burn battery; a variant may turn spinning off.
    "session.intra_op.allow_spinning": _FLAG,
    "session.inter_op.allow_spinning": _FLAG,
    "session.set_denormal_as_zero": _FLAG,
}

def safe_session_config(raw: Any, variant_id: str = "?") -> dict[str, str]:
    """The allowed entries of a manifest's session config; every other entry is logged and dropped."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        log.warning("variant %s: %s is not a mapping (%r); ignored", variant_id, SESSION_CONFIG_DETAIL,
                    type(raw).__name__)
        return {}
    out = {}
    for key, value in raw.items():
        allowed = SAFE_SESSION_CONFIG.get(key) if isinstance(key, str) else None
        if allowed is None:
            log.warning("variant %s: onnxruntime session config key %r is not on the allow-list; ignored",
                        variant_id, key)
        elif not isinstance(value, str) or value not in allowed:
            log.warning("variant %s: onnxruntime session config %s=%r is not one of %s; ignored",
                        variant_id, key, value, sorted(allowed))
        else:
            out[key] = value
    return out


def _spec(arg) -> IOSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return IOSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))


class OnnxRuntimeSession:
    def __init__(self, path: str | os.PathLike, intra_op_threads: int,
                 session_config: Mapping[str, str] | None = None):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3          # warnings from ORT are noise on a device
        self.session_config = safe_session_config(session_config, os.path.basename(str(path)))
        for key, value in self.session_config.items():
            options.add_session_config_entry(key, value)
        self._session = ort.InferenceSession(str(path), sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self.input_specs = [_spec(a) for a in self._session.get_inputs()]
        self.output_specs = [_spec(a) for a in self._session.get_outputs()]
        self._output_names = [s.name for s in self.output_specs]

    def config_entry(self, key: str) -> str | None:
        """The session config value onnxruntime holds for `key` (None if unset)."""
        try:
            return self._session.get_session_options().get_session_config_entry(key)
        except RuntimeError:                # onnxruntime raises for a key it does not hold
            return None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe; no lock needed here.
        results = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results))


class OnnxRuntimeEngine:
    name = "onnxruntime"
    accepts_session_config = True

    def __init__(self, intra_op_threads: int = 1):
        self.intra_op_threads = intra_op_threads

    def load(self, path: str | os.PathLike, session_config: Mapping[str, str] | None = None
             ) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(path, self.intra_op_threads, session_config)
