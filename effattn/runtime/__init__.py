"""One Runner interface over ONNX Runtime, eager PyTorch and (with a GPU) TensorRT."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from ..errors import BackendError
from ..shapes import ShapeProfile
from .base import Runner, TensorSpec
from .parity import TOLERANCES, Report, Tolerance, compare, random_inputs
from .timing import LatencyStats, measure

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "torch")


def load(source: str | Path | nn.Module, backend: str = "auto", device: str | None = None,
         profile: ShapeProfile | None = None, threads: int | None = None) -> Runner:
    """A Runner for an ONNX file (or an ``nn.Module`` for the eager reference).

    ``backend="auto"`` picks ONNX Runtime on CUDA when the CUDA provider is present, else on the CPU,
    and logs which it picked. ``device`` forces ``cpu`` or ``cuda``.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if isinstance(source, nn.Module) or backend == "torch":
        if not isinstance(source, nn.Module):
            raise BackendError("backend 'torch' runs an nn.Module; load the model with effattn.models.load_model")
        if profile is None:
            raise BackendError("the torch backend needs a ShapeProfile to know its inputs")
        from .torch import TorchRunner

        return TorchRunner(source, profile, device=device or "cpu")
    path = Path(source)
    if path.suffix.lower() != ".onnx":
        raise BackendError(f"{path}: expected an .onnx file (engines come with the TensorRT backend)")
    from ..engines.onnxruntime import available_devices
    from .onnxruntime import OnnxRuntimeRunner

    if device is None:
        device = "cuda" if "cuda" in available_devices() else "cpu"
        log.info("backend auto: ONNX Runtime on %s", device)
    return OnnxRuntimeRunner(path, device=device, threads=threads)


__all__ = ["BACKENDS", "LatencyStats", "Report", "Runner", "TOLERANCES", "TensorSpec", "Tolerance", "compare",
           "load", "measure", "random_inputs"]
