"""Inference engines behind one interface (see base.py). onnxruntime is always registered.

Hook for the native engine: `kernels` registers itself with
`agent.engines.register_engine("native", factory)`; select it with AgentConfig.engine.
"""

from agent.engines.base import (Engine, IOSpec, Session, available_engines, get_engine, load_variant,
                                register_engine, variant_session_config)
from agent.engines.onnxruntime_engine import OnnxRuntimeEngine

register_engine("onnxruntime", OnnxRuntimeEngine)

__all__ = ["Engine", "IOSpec", "Session", "available_engines", "get_engine", "load_variant",
           "register_engine", "variant_session_config", "OnnxRuntimeEngine"]
