"""One Runner interface over ONNX Runtime, OpenVINO, eager PyTorch and (with a GPU) TensorRT, and the one place
that picks a backend for a file (:func:`choose_backend`, :func:`load`). Importing it loads no torch: the torch
runner (and torch) load when a module is run, so a serving image of ONNX files needs no torch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .. import metadata
from ..engines.onnxruntime_session import available_devices
from ..engines.precision import check_onnx
from ..engines.tensorrt_build import build_engine, tensorrt_available
from ..errors import BackendError, EffattnError
from ..shapes import ShapeProfile
from .base import Runner, TensorSpec, loaded_torch
from .onnxruntime_runner import OnnxRuntimeRunner
from .openvino_runner import OpenVINORunner, ir_beside, openvino_available
from .parity import TOLERANCES, Report, Tolerance, compare, profile_inputs, random_inputs
from .tensorrt_runner import TensorRTRunner

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino", "torch")


@dataclass(frozen=True)
class Choice:
    """Which runner ``load`` builds for a file, and why (so callers can say it once, in their own words)."""

    backend: str  # tensorrt | onnxruntime | openvino
    device: str  # cpu | cuda
    reason: str
    path: Path | None = None  # the file it runs in the given one's place (the IR kept beside an INT8 .onnx), or None


def choose_backend(path: str | Path, backend: str = "auto", device: str | None = None, rtx: bool = False) -> Choice:
    """The backend ``load`` picks for an ONNX file: TensorRT when ``tensorrt`` and a GPU are present, else ONNX
    Runtime on CUDA when its provider is, else on the CPU OpenVINO for INT8 graphs (when installed; why:
    docs/precision.md#which-backend-auto-picks-on-a-cpu) and ONNX Runtime for the rest. On that CPU path ``auto``
    runs the OpenVINO IR kept beside the file (``path``) when it records this file's sha256
    (:func:`~.openvino_runner.ir_beside`); one that does not is named in the reason, and not run. An explicit
    ``backend``/``device`` is checked, not second-guessed, and runs the file itself."""
    if backend not in BACKENDS or backend == "torch":
        raise BackendError(
            f"unknown backend {backend!r} for a file; choose one of auto, tensorrt, onnxruntime, openvino"
        )
    if backend == "tensorrt" or (backend == "auto" and device is None and tensorrt_available(rtx)):
        return Choice("tensorrt", "cuda", f"TensorRT{'-RTX' if rtx else ''} (a GPU and tensorrt are present)")
    if rtx:
        raise BackendError(f"rtx=True (--rtx) is for TensorRT; backend {backend!r} on device {device!r} is not")
    on_cpu = device == "cpu" or (device is None and "cuda" not in available_devices())
    if backend == "openvino" or (backend == "auto" and on_cpu and _openvino_is_faster(Path(path))):
        if device not in (None, "cpu"):
            raise BackendError(f"the openvino backend runs on the CPU, not {device}")
        reason = (
            "OpenVINO (INT8 graph: OpenVINO's INT8 kernels, compiled per input shape, are the fastest CPU path "
            "measured; docs/precision.md)"
        )
        ir = ir_beside(path) if backend == "auto" else None
        if ir is not None and ir.problem is None:
            return Choice(
                "openvino",
                "cpu",
                f"OpenVINO on {ir.path}, NNCF's INT8 IR kept beside the file by 'effattn quantize --cpu-ir' "
                f"({ir.speedup:.2f}x the QDQ graph's speed: {ir.ir_ms:.3f} vs {ir.qdq_ms:.3f} ms on {ir.cpu}, "
                f"OpenVINO {ir.openvino})",
                ir.path,
            )
        return Choice("openvino", "cpu", reason + (f"; {ir.path} beside it not run: {ir.problem}" if ir else ""))
    device = device or ("cpu" if on_cpu else "cuda")
    why = ""
    if on_cpu and backend == "auto":
        why = " (no GPU runtime found"
        if _float32_file(Path(path)) and openvino_available():
            why += (
                "; an FP32 file stays FP32: OpenVINO would run it in BF16 where the CPU has it. The fastest CPU "
                "path is `effattn quantize` and the INT8 file on OpenVINO"
            )
        why += ")"
    return Choice("onnxruntime", device, f"ONNX Runtime on {device}{why}")


#: The runner options each backend takes: :func:`load` refuses any other, by name.
RUNNER_OPTIONS = {
    "tensorrt": ("cuda_graph", "contexts"),
    "onnxruntime": ("cuda_graph", "io_binding", "spinning"),
    "openvino": ("precision", "static_shapes", "resize_as_matmul"),
    "torch": ("cuda_graph", "output_names", "dtype", "compile", "fused"),
}


def load(
    source: str | Path | nn.Module,
    backend: str = "auto",
    device: str | None = None,
    profile: ShapeProfile | None = None,
    threads: int | None = None,
    *,
    rtx: bool | None = None,
    cuda_graph: bool | None = None,
    contexts: int | None = None,
    io_binding: bool | None = None,
    spinning: bool | None = None,
    precision: str | None = None,
    static_shapes: bool | None = None,
    resize_as_matmul: bool | None = None,
    output_names: list[str] | None = None,
    dtype: torch.dtype | None = None,
    compile: bool | str | None = None,
    fused: bool | None = None,
) -> Runner:
    """A Runner for an ONNX file or TensorRT plan (or an ``nn.Module`` for the eager reference).

    ``backend="auto"`` picks as :func:`choose_backend` says and logs which it picked; TensorRT builds the engine
    through the engine cache, in the graph's own precision. ``device`` forces ``cpu`` or ``cuda``. ``.plan``/
    ``.engine`` files go to TensorRT, OpenVINO IR (``.xml``, ``effattn quantize -o model.xml``) to OpenVINO.
    ``threads``: CPU threads, where the backend has them; ``profile``: the inputs of an ``nn.Module``
    (the torch backend); ``rtx=True``: TensorRT for RTX (a plan's sidecar says otherwise). The rest are runner
    options, None meaning the runner's default; each backend takes those :data:`RUNNER_OPTIONS` names (see its
    runner), and any other is a :class:`BackendError`: ``cuda_graph`` (TensorRT, ONNX Runtime, torch),
    ``contexts`` (TensorRT), ``io_binding`` and ``spinning`` (ONNX Runtime), ``precision`` (OpenVINO: ``auto``,
    BF16 where the CPU has it, or ``fp32``/``bf16``), ``static_shapes`` and ``resize_as_matmul`` (OpenVINO),
    ``output_names``, ``dtype``, ``compile`` (True or a ``torch.compile`` mode) and ``fused`` (torch).
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    options = _given(
        cuda_graph=cuda_graph,
        contexts=contexts,
        io_binding=io_binding,
        spinning=spinning,
        precision=precision,
        static_shapes=static_shapes,
        resize_as_matmul=resize_as_matmul,
        output_names=output_names,
        dtype=dtype,
        compile=compile,
        fused=fused,
    )
    loaded = loaded_torch()  # an nn.Module exists only once torch is loaded
    is_module = loaded is not None and isinstance(source, loaded.nn.Module)
    if is_module or backend == "torch":
        if not is_module:
            raise BackendError("backend 'torch' runs an nn.Module; load the model with effattn.models.load_model")
        if profile is None:
            raise BackendError("the torch backend needs a ShapeProfile to know its inputs")
        if rtx:
            raise BackendError("rtx=True (--rtx) is for TensorRT; backend 'torch' is not")
        from .torch_runner import TorchRunner

        return TorchRunner(cast("nn.Module", source), profile, device=device or "cpu", **_taken("torch", options))
    path = Path(cast("str | Path", source))
    if path.suffix.lower() in (".plan", ".engine"):
        if backend not in ("auto", "tensorrt"):
            raise BackendError(f"{path} is a TensorRT engine; only the tensorrt backend runs it")
        return TensorRTRunner(path, rtx=rtx, **_taken("tensorrt", options))
    if path.suffix.lower() == ".xml":  # OpenVINO IR (effattn quantize -o model.xml): OpenVINO's alone
        if backend not in ("auto", "openvino") or device not in (None, "cpu") or rtx:
            raise BackendError(f"{path} is OpenVINO IR; only the openvino backend runs it, on the CPU")
        ir = OpenVINORunner(path, threads=threads, **_taken("openvino", options))
        if backend == "auto":
            log.info("backend auto: OpenVINO (OpenVINO IR)")
        return ir
    if path.suffix.lower() != ".onnx":
        raise BackendError(f"{path}: expected an .onnx file, OpenVINO IR (.xml) or a TensorRT .plan/.engine")
    check_onnx(path)  # before any backend sees it: the file itself, metadata against the graph, QDQ scales
    choice = choose_backend(path, backend, device, bool(rtx))
    runner = _onnx_runner(choice.path or path, choice, rtx, threads, _taken(choice.backend, options))
    if backend == "auto":  # said once the runner exists: never before an error about the file
        log.info("backend auto: %s", choice.reason)
    return runner


def _given(**options: Any) -> dict[str, Any]:
    """The options given a value (None: the runner's own default)."""
    return {name: value for name, value in options.items() if value is not None}


def _taken(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options``, each checked to be one ``backend``'s runner takes."""
    takes = RUNNER_OPTIONS[backend]
    for name, value in options.items():
        if name not in takes:
            raise BackendError(
                f"the {backend} backend does not take {name}={value!r}; its options are {', '.join(takes)}"
            )
    return options


def _onnx_runner(path: Path, choice: Choice, rtx: bool | None, threads: int | None, options: dict[str, Any]) -> Runner:
    if choice.backend == "tensorrt":
        # precision=None: the graph's own (engines.precision decides, from the metadata checked against the graph)
        return TensorRTRunner(build_engine(path, rtx=bool(rtx)).plan, rtx=rtx, **options)
    if choice.backend == "openvino":
        return OpenVINORunner(path, threads=threads, **options)
    return OnnxRuntimeRunner(path, device=choice.device, threads=threads, **options)


def _float32_file(path: Path) -> bool:
    try:
        return metadata.precision_of(metadata.read_metadata(path)) == "fp32"
    except EffattnError:
        return False


def _openvino_is_faster(path: Path) -> bool:
    """On the CPU, OpenVINO wins for INT8 graphs (docs/precision.md#which-backend-auto-picks-on-a-cpu); FP32 and FP16
    files stay on ONNX Runtime, which runs them in their own precision (OpenVINO's default would be BF16)."""
    try:
        precision = metadata.precision_of(metadata.read_metadata(path))
    except EffattnError:  # missing, foreign or tampered: the ONNX Runtime path names the problem if it has one
        return False
    return precision == "int8" and openvino_available()


__all__ = [
    "BACKENDS",
    "RUNNER_OPTIONS",
    "TOLERANCES",
    "Choice",
    "Report",
    "Runner",
    "TensorSpec",
    "Tolerance",
    "choose_backend",
    "compare",
    "load",
    "profile_inputs",
    "random_inputs",
]
