"""The bench's backends as records: (runtime, precision, devices) and the load options that set them apart.

Plain data, so ``effattn bench --help`` lists them without importing torch; :mod:`.backends` makes the runners.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendError

__all__ = ["BACKENDS", "DEFAULT_BACKENDS", "DEFAULT_MODELS", "EAGER", "BenchBackend", "check_backends", "get"]

#: what ``effattn bench`` times when given no file and no --models: the EA block and the tiny hosts
DEFAULT_MODELS = ("efficient_attention", "ea_resnet_tiny", "ea_segnet_tiny")


@dataclass(frozen=True)
class BenchBackend:
    """One bench backend: a runtime backend (:func:`effattn.runtime.load`) running one precision on some devices."""

    name: str  # as the command line spells it
    runtime: str  # the effattn.runtime.load backend: torch, onnxruntime, tensorrt or openvino
    precision: str  # the graph it runs (ONNX runtimes) or the dtype eager PyTorch runs in (effattn.precisions)
    devices: tuple[str, ...]  # where it runs
    description: str
    default_on: tuple[str, ...] = ()  # devices whose bench runs it when no backends are named
    options: dict[str, Any] = field(default_factory=dict)  # more effattn.runtime.load keywords
    plain: bool = False  # not effattn's runner: the runtime called as its own users call it (a reference row)
    #: runs NNCF's OpenVINO IR instead of an ONNX graph: (preset, keep_float) of
    #: effattn.export.quantize.nncf_openvino.quantize_openvino; its rows need nncf
    nncf: tuple[str, str] | None = None

    @property
    def graph(self) -> str | None:
        """The precision of the ONNX graph it runs; None for eager PyTorch, which runs the module."""
        return None if self.runtime == "torch" else self.precision


EAGER = "torch"
_CPU, _CUDA, _BOTH = ("cpu",), ("cuda",), ("cpu", "cuda")
_ROWS = (
    BenchBackend("torch", "torch", "fp32", _BOTH, "eager PyTorch FP32: the baseline, always measured"),
    BenchBackend("torch-fp16", "torch", "fp16", _CUDA, "eager PyTorch in FP16", _CUDA),
    BenchBackend("torch-compile", "torch", "fp32", _BOTH, "torch.compile (inductor), FP32", _CUDA, {"compile": True}),
    BenchBackend(
        "torch-compile-fp16",
        "torch",
        "fp16",
        _CUDA,
        "torch.compile in FP16, mode max-autotune: what a PyTorch user would try",
        options={"compile": "max-autotune"},
    ),
    BenchBackend(
        "torch-fused",
        "torch",
        "fp32",
        _CUDA,
        "eager PyTorch FP32 with the fused Efficient-Attention kernel (effattn.models.fuse)",
        options={"fused": True},
    ),
    BenchBackend(
        "torch-fused-fp16",
        "torch",
        "fp16",
        _CUDA,
        "eager PyTorch FP16 with the fused Efficient-Attention kernel",
        _CUDA,
        {"fused": True},
    ),
    BenchBackend("onnxruntime", "onnxruntime", "fp32", _BOTH, "ONNX Runtime, the FP32 graph", _BOTH),
    BenchBackend("onnxruntime-fp16", "onnxruntime", "fp16", _BOTH, "ONNX Runtime, the FP16 graph (FP32 I/O)", _CUDA),
    BenchBackend("tensorrt", "tensorrt", "fp32", _CUDA, "TensorRT engine of the FP32 graph"),
    BenchBackend(
        "tensorrt-fp16", "tensorrt", "fp16", _CUDA, "TensorRT engine of the FP16 graph (strongly typed)", _CUDA
    ),
    BenchBackend(
        "tensorrt-int8",
        "tensorrt",
        "int8",
        _CUDA,
        "TensorRT engine of the INT8 QDQ graph of effattn quantize (explicit quantization)",
    ),
    BenchBackend(
        "tensorrt-fp8",
        "tensorrt",
        "fp8",
        _CUDA,
        "TensorRT engine of the FP8 E4M3 QDQ graph of effattn "
        "quantize --precision fp8 (GPUs of compute capability 8.9+)",
    ),
    BenchBackend("torch-bf16", "torch", "bf16", _CPU, "eager PyTorch in BF16 (weights and activations)"),
    BenchBackend(
        "onnxruntime-int8", "onnxruntime", "int8", _CPU, "ONNX Runtime, the INT8 QDQ graph of effattn quantize"
    ),
    BenchBackend(
        "openvino",
        "openvino",
        "fp32",
        _CPU,
        "OpenVINO's default on the FP32 graph: one dynamic-shape "
        "compile, BF16 where the CPU has it, LATENCY hint (OpenVINO's CPU defaults)",
        options={"static_shapes": False},
    ),
    BenchBackend(
        "openvino-static",
        "openvino",
        "fp32",
        _CPU,
        "effattn's OpenVINO runner on the FP32 graph: BF16 where the CPU has it, compiled per input shape",
    ),
    BenchBackend(
        "openvino-fp32",
        "openvino",
        "fp32",
        _CPU,
        "OpenVINO on the FP32 graph, FP32 inference precision, compiled per input shape",
        options={"precision": "fp32"},
    ),
    BenchBackend(
        "openvino-int8",
        "openvino",
        "int8",
        _CPU,
        "OpenVINO, the INT8 QDQ graph of effattn quantize, compiled per input shape, the output resize as MatMuls "
        "where the CPU has AMX",
    ),
    BenchBackend(
        "openvino-int8-asis",
        "openvino",
        "int8",
        _CPU,
        "as openvino-int8 without effattn's graph rewrite (the output resize left to OpenVINO's Interpolate): "
        "this row / openvino-plain-int8 = the runner's own overhead",
        options={"resize_as_matmul": False},
    ),
    BenchBackend(
        "openvino-plain-int8",
        "openvino",
        "int8",
        _CPU,
        "plain OpenVINO on the same INT8 QDQ graph, no effattn runner: compile_model(file) with OpenVINO's "
        "defaults, then infer(x, share_inputs=True); openvino-int8 / this row = the runner with its rewrite",
        plain=True,
    ),
    BenchBackend(
        "openvino-dynamic-int8",
        "openvino",
        "int8",
        _CPU,
        "OpenVINO, the INT8 QDQ graph, one dynamic-shape compile",
        options={"static_shapes": False},
    ),
    BenchBackend(
        "nncf-openvino",
        "openvino",
        "int8",
        _CPU,
        "OpenVINO on NNCF's INT8 IR with NNCF's defaults: nncf.quantize(read_model(onnx), Dataset), what an "
        "OpenVINO user makes (same calibration data), compiled per input shape, no effattn graph rewrite",
        nncf=("default", "none"),
        options={"resize_as_matmul": False},
    ),
    BenchBackend(
        "openvino-nncf",
        "openvino",
        "int8",
        _CPU,
        "OpenVINO on effattn quantize -o model.xml: NNCF's INT8 IR, performance preset, the attention products "
        "kept float, compiled per input shape",
        nncf=("performance", "attention"),
    ),
    BenchBackend(
        "openvino-nncf-mixed",
        "openvino",
        "int8",
        _CPU,
        "as openvino-nncf with NNCF's mixed preset (asymmetric activations)",
        nncf=("mixed", "attention"),
    ),
)
#: name -> record, in the order ``--help`` lists them
BACKENDS: dict[str, BenchBackend] = {b.name: b for b in _ROWS}
#: device -> the backends its bench runs besides eager when none are named
DEFAULT_BACKENDS: dict[str, tuple[str, ...]] = {d: tuple(b.name for b in _ROWS if d in b.default_on) for d in _BOTH}


def get(name: str) -> BenchBackend:
    """The record of ``name``, or :class:`BackendError` listing the bench backends."""
    if name not in BACKENDS:
        raise BackendError(f"unknown bench backend {name!r}; choose from {', '.join(BACKENDS)}")
    return BACKENDS[name]


def check_backends(backends: Sequence[str] | None, device: str) -> list[str]:
    """The backends to time besides eager (default: the device's set), each known and able to run on ``device``."""
    names = [b for b in (DEFAULT_BACKENDS[device] if backends is None else backends) if b != EAGER]
    for name in names:
        if device not in get(name).devices:
            raise BackendError(f"backend {name!r} runs on {' or '.join(get(name).devices)}, not {device}")
    return names
