"""Inference engines behind one interface (see base.py). onnxruntime is always registered.

The native engine (kernels.engine) is registered as "native", and "auto" picks the faster of
native and onnxruntime per variant (native_engine.py); select one with AgentConfig.engine.
"""

from agent.engines.base import (Engine, IOSpec, Session, available_engines, get_engine, load_variant,
                                register_engine, variant_session_config)
from agent.engines.native_engine import AutoEngine, NativeEngine
from agent.engines.onnxruntime_engine import OnnxRuntimeEngine

register_engine("onnxruntime", OnnxRuntimeEngine)
register_engine("native", NativeEngine)
register_engine("auto", AutoEngine)

__all__ = ["Engine", "IOSpec", "Session", "available_engines", "get_engine", "load_variant",
           "register_engine", "variant_session_config", "OnnxRuntimeEngine", "NativeEngine", "AutoEngine"]
