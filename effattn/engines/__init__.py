"""Engines: ONNX Runtime sessions (CPU, CUDA, TensorRT EP) and, with a GPU, TensorRT plans."""

from .onnxruntime import available_devices, create_session

__all__ = ["available_devices", "create_session"]
