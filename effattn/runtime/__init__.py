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

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino", "torch")


def load(source: str | Path | nn.Module, backend: str = "auto", device: str | None = None,
         profile: ShapeProfile | None = None, threads: int | None = None, **options) -> Runner:
    """A Runner for an ONNX file (or an ``nn.Module`` for the eager reference).

    ``backend="auto"`` picks TensorRT when ``tensorrt`` and a GPU are present (building the engine
    through the engine cache, in the graph's own precision), else ONNX Runtime on CUDA when its
    provider is present, else on the CPU OpenVINO for INT8 graphs (when installed) and ONNX Runtime
    for the rest, and logs which it picked. ``device`` forces ``cpu`` or ``cuda`` for ONNX Runtime.
    ``.plan``/``.engine`` files go to TensorRT. ``options`` go to the runner: ``cuda_graph`` (all GPU
    runners), ``contexts`` and ``rtx`` (TensorRT; ``rtx=True`` builds and runs with TensorRT for RTX, a
    plan's sidecar otherwise says which), ``io_binding`` (ONNX Runtime), ``precision`` (OpenVINO:
    ``auto``, BF16 where the CPU has it, or ``fp32``/``bf16``).
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    rtx = options.pop("rtx", None)
    if isinstance(source, nn.Module) or backend == "torch":
        if not isinstance(source, nn.Module):
            raise BackendError("backend 'torch' runs an nn.Module; load the model with effattn.models.load_model")
        if profile is None:
            raise BackendError("the torch backend needs a ShapeProfile to know its inputs")
        from .torch_runner import TorchRunner

        return TorchRunner(source, profile, device=device or "cpu", **options)
    path = Path(source)
    if path.suffix.lower() in (".plan", ".engine"):
        if backend not in ("auto", "tensorrt"):
            raise BackendError(f"{path} is a TensorRT engine; only the tensorrt backend runs it")
        from .tensorrt_runner import TensorRTRunner

        return TensorRTRunner(path, rtx=rtx, **options)
    if path.suffix.lower() != ".onnx":
        raise BackendError(f"{path}: expected an .onnx file or a TensorRT .plan/.engine")
    from ..engines.onnxruntime_session import available_devices
    from ..engines.tensorrt_build import tensorrt_available

    rtx = bool(rtx)
    if backend == "tensorrt" or (backend == "auto" and device is None and tensorrt_available(rtx)):
        from ..engines.tensorrt_build import build_engine
        from ..metadata import read_metadata
        from .tensorrt_runner import TensorRTRunner

        precision = metadata.precision_of(read_metadata(path))
        log.info("backend %s: TensorRT%s (%s engine, through the engine cache)", backend, "-RTX" if rtx else "",
                 precision)
        return TensorRTRunner(build_engine(path, precision=precision, rtx=rtx).plan, rtx=rtx, **options)
    on_cpu = device == "cpu" or (device is None and "cuda" not in available_devices())
    if backend == "openvino" or (backend == "auto" and on_cpu and not rtx and _openvino_is_faster(path)):
        from .openvino_runner import OpenVINORunner

        if device not in (None, "cpu") or rtx:
            raise BackendError(f"the openvino backend runs on the CPU, not {'TensorRT for RTX' if rtx else device}")
        if backend == "auto":
            log.info("backend auto: OpenVINO (INT8 graph: OpenVINO's INT8 kernels ran such graphs 1.4-5x faster "
                     "than ONNX Runtime in benchmarks/results/cpu-lowprec-*.json)")
        return OpenVINORunner(path, threads=threads, **options)
    from .onnxruntime_runner import OnnxRuntimeRunner

    if rtx:
        raise BackendError("rtx=True (--rtx) is for TensorRT; ONNX Runtime was chosen (backend "
                           f"{backend!r}, device {device!r})")
    if device is None:
        device = "cuda" if "cuda" in available_devices() else "cpu"
        log.info("backend auto: ONNX Runtime on %s", device)
    return OnnxRuntimeRunner(path, device=device, threads=threads, **options)


def _openvino_is_faster(path: Path) -> bool:
    """On the CPU, OpenVINO wins for INT8 graphs (measured, benchmarks/results/cpu-lowprec-*.json); FP32 and FP16
    files stay on ONNX Runtime, which runs them in their own precision (OpenVINO's default would be BF16)."""
    from ..errors import EffattnError
    from ..metadata import read_metadata
    from .openvino_runner import openvino_available

    try:
        precision = metadata.precision_of(read_metadata(path))
    except EffattnError:  # missing, foreign or tampered: the ONNX Runtime path names the problem if it has one
        return False
    return precision == "int8" and openvino_available()


__all__ = ["BACKENDS", "Report", "Runner", "TOLERANCES", "TensorSpec", "Tolerance", "compare",
           "load", "profile_inputs", "random_inputs"]
