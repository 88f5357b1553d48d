"""One Runner interface over ONNX Runtime, eager PyTorch and (with a GPU) TensorRT."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from .. import metadata
from ..errors import BackendError
from ..shapes import ShapeProfile
from .base import Runner, TensorSpec
from .parity import TOLERANCES, Report, Tolerance, compare, profile_inputs, random_inputs
from .timing import LatencyStats, measure

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")


def load(source: str | Path | nn.Module, backend: str = "auto", device: str | None = None,
         profile: ShapeProfile | None = None, threads: int | None = None, **options) -> Runner:
    """A Runner for an ONNX file (or an ``nn.Module`` for the eager reference).

    ``backend="auto"`` picks TensorRT when ``tensorrt`` and a GPU are present (building the engine
    through the engine cache, in the graph's own precision), else ONNX Runtime on CUDA when its
    provider is present, else ONNX Runtime on the CPU, and logs which it picked. ``device`` forces
    ``cpu`` or ``cuda`` for ONNX Runtime. ``.plan``/``.engine`` files go to TensorRT. ``options`` go to
    the runner: ``cuda_graph`` (all GPU runners), ``contexts`` and ``rtx`` (TensorRT; ``rtx=True`` builds
    and runs with TensorRT for RTX, a plan's sidecar otherwise says which), ``io_binding`` (ONNX Runtime).
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    rtx = options.pop("rtx", None)
    if isinstance(source, nn.Module) or backend == "torch":
        if not isinstance(source, nn.Module):
            raise BackendError("backend 'torch' runs an nn.Module; load the model with effattn.models.load_model")
        if profile is None:
            raise BackendError("the torch backend needs a ShapeProfile to know its inputs")
        from .torch import TorchRunner

        return TorchRunner(source, profile, device=device or "cpu", **options)
    path = Path(source)
    if path.suffix.lower() in (".plan", ".engine"):
        if backend not in ("auto", "tensorrt"):
            raise BackendError(f"{path} is a TensorRT engine; only the tensorrt backend runs it")
        from .tensorrt import TensorRTRunner

        return TensorRTRunner(path, rtx=rtx, **options)
    if path.suffix.lower() != ".onnx":
        raise BackendError(f"{path}: expected an .onnx file or a TensorRT .plan/.engine")
    from ..engines.onnxruntime import available_devices
    from ..engines.tensorrt import tensorrt_available

    rtx = bool(rtx)
    if backend == "tensorrt" or (backend == "auto" and device is None and tensorrt_available(rtx)):
        from ..engines.tensorrt import build_engine
        from ..export.onnx import read_metadata
        from .tensorrt import TensorRTRunner

        precision = metadata.precision_of(read_metadata(path))
        log.info("backend %s: TensorRT%s (%s engine, through the engine cache)", backend, "-RTX" if rtx else "",
                 precision)
        return TensorRTRunner(build_engine(path, precision=precision, rtx=rtx).plan, rtx=rtx, **options)
    from .onnxruntime import OnnxRuntimeRunner

    if rtx:
        raise BackendError("rtx=True (--rtx) is for TensorRT; ONNX Runtime was chosen (backend "
                           f"{backend!r}, device {device!r})")
    if device is None:
        device = "cuda" if "cuda" in available_devices() else "cpu"
        log.info("backend auto: ONNX Runtime on %s", device)
    return OnnxRuntimeRunner(path, device=device, threads=threads, **options)


__all__ = ["BACKENDS", "LatencyStats", "Report", "Runner", "TOLERANCES", "TensorSpec", "Tolerance", "compare",
           "load", "measure", "profile_inputs", "random_inputs"]
