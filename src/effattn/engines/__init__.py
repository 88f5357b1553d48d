"""Engines: ONNX Runtime sessions (CPU, CUDA, TensorRT EP), TensorRT plans and the engine cache.

TensorRT itself is imported only when a TensorRT path runs, so everything here imports without it.
"""

from .cache import EngineCache, EngineKey, Sidecar, verify_plan
from .onnxruntime_session import available_devices, create_session, optimize_model
from .tensorrt_build import EngineBuild, build_engine, tensorrt_available

__all__ = [
    "EngineBuild",
    "EngineCache",
    "EngineKey",
    "Sidecar",
    "available_devices",
    "build_engine",
    "create_session",
    "optimize_model",
    "tensorrt_available",
    "verify_plan",
]
