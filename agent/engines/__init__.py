"""Inference engines behind one interface (see base.py). onnxruntime is always registered.

Hook for the native engine: `kernels` registers itself with
`agent.engines.register_engine("native", factory)`; select it with AgentConfig.engine.
"""

from agent.engines.base import (Engine, IOSpec, Session, available_engines, get_engine,
                                register_engine)
from agent.engines.onnxruntime_engine import OnnxRuntimeEngine

register_engine("onnxruntime", OnnxRuntimeEngine)

__all__ = ["Engine", "IOSpec", "Session", "available_engines", "get_engine", "register_engine",
           "OnnxRuntimeEngine"]
