"""One record per precision a graph or engine can be in: the table every stage and the CLI read.

Plain data (nothing heavy is imported: ``effattn --help`` takes its choices from here). A new precision
is one row here plus its conversion function and its tests.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .errors import InputError

__all__ = [
    "CALIBRATION_SAMPLES",
    "DEFAULT_QUANTIZED",
    "MAX_CALIBRATION_SAMPLES",
    "TABLE",
    "Precision",
    "Tolerance",
    "by_zero_point_type",
    "converted",
    "get",
    "names",
    "quantized",
]


@dataclass(frozen=True)
class Tolerance:
    """Limits of relative L2 error (output and attention branch) and of argmax disagreement, vs eager FP32."""

    rel_l2: float
    branch_rel_l2: float
    argmax_agreement: float


@dataclass(frozen=True)
class Precision:
    """What effattn knows about one precision, read by metadata, export, engines, runtime, bench and the CLI."""

    name: str  # as files (effattn.precision), engines and the CLI spell it
    element: str  # the element type its tensors are stored in, as numpy/torch name it ("float16", "float8_e4m3fn")
    made_by: str  # "export" (the FP32 graph), "convert" (export.to_fp16/to_bf16) or "quantize" (a QDQ graph)
    weight_bytes: int  # bytes per stored weight (the bench's roofline)
    tolerance: Tolerance  # parity limits vs eager FP32 (effattn.runtime.parity)
    census_words: tuple[str, ...]  # how TensorRT's engine inspector names a tensor of this type (lower case)
    runs_on: tuple[tuple[str, str], ...]  # (runtime backend, device) pairs that run a graph of it
    description: str  # one line for the CLI's output
    min_capability: tuple[int, int] | None = None  # the oldest compute capability whose TensorRT builds it
    hardware: str = ""  # what that capability stands for, for the refusal on older GPUs

    @property
    def quantized(self) -> bool:
        """A QDQ graph (Q/DQ nodes whose zero points have type :attr:`zero_point_type`), written by quantize."""
        return self.made_by == "quantize"

    @property
    def zero_point_type(self) -> str | None:
        """The numpy dtype name of the zero points TensorRT takes for it (signed INT8; FP8 E4M3), or None."""
        return self.element if self.quantized else None

    @property
    def label(self) -> str:
        return self.name.upper()


_CPU, _CUDA = "cpu", "cuda"
#: The rows, FP32 first. The measurements behind each tolerance row: docs/precision.md#tolerances.
TABLE: tuple[Precision, ...] = (
    Precision(
        "fp32",
        "float32",
        "export",
        4,
        Tolerance(rel_l2=1e-5, branch_rel_l2=1e-5, argmax_agreement=0.999),
        ("float", "fp32"),
        (
            ("onnxruntime", _CPU),
            ("onnxruntime", _CUDA),
            ("openvino", _CPU),
            ("tensorrt", _CUDA),
            ("torch", _CPU),
            ("torch", _CUDA),
        ),
        "FP32, as exported",
    ),
    Precision(
        "fp16",
        "float16",
        "convert",
        2,
        Tolerance(rel_l2=1e-2, branch_rel_l2=5e-3, argmax_agreement=0.995),
        ("half", "fp16"),
        (("onnxruntime", _CPU), ("onnxruntime", _CUDA), ("openvino", _CPU), ("tensorrt", _CUDA), ("torch", _CUDA)),
        "FP16 graph with FP32 inputs and outputs",
    ),
    # BF16: an 8-bit mantissa; the same limits hold the BF16 graph (effattn.export.to_bf16) on TensorRT.
    Precision(
        "bf16",
        "bfloat16",
        "convert",
        2,
        Tolerance(rel_l2=2e-2, branch_rel_l2=1e-2, argmax_agreement=0.995),
        ("bfloat16", "bf16"),
        (("openvino", _CPU), ("tensorrt", _CUDA), ("torch", _CPU)),
        "BF16 graph with FP32 inputs and outputs",
    ),
    # INT8 and FP8: loose, because parity mixes in noise inputs outside the calibrated ranges; the task-level
    # gate (>= 99 % argmax, <= 1 point IoU drop per class on held-out task images) is tests/export/test_quantize.py's.
    Precision(
        "int8",
        "int8",
        "quantize",
        1,
        Tolerance(rel_l2=0.2, branch_rel_l2=5e-2, argmax_agreement=0.95),
        ("int8",),
        (("onnxruntime", _CPU), ("onnxruntime", _CUDA), ("openvino", _CPU), ("tensorrt", _CUDA)),
        "INT8 QDQ, signed symmetric",
    ),
    # FP8 E4M3: on the CPU ONNX Runtime and OpenVINO emulate it (for parity), as TensorRT computes it on an FP8 GPU.
    Precision(
        "fp8",
        "float8_e4m3fn",
        "quantize",
        1,
        Tolerance(rel_l2=0.2, branch_rel_l2=5e-2, argmax_agreement=0.95),
        ("fp8", "float8", "e4m3"),
        (("onnxruntime", _CPU), ("openvino", _CPU), ("tensorrt", _CUDA)),
        "FP8 E4M3 QDQ, for GPUs of compute capability 8.9+",
        min_capability=(8, 9),
        hardware="FP8 tensor cores",
    ),
)
_BY_NAME = {p.name: p for p in TABLE}

#: What ``effattn quantize`` writes unless asked for another quantized precision.
DEFAULT_QUANTIZED = "int8"
#: Calibration samples ``effattn quantize`` draws without calibration data, and the most one run takes: MinMax
#: ranges settle long before, and ONNX Runtime's calibrator keeps every sample's outputs in memory.
CALIBRATION_SAMPLES = 32
MAX_CALIBRATION_SAMPLES = 4096
#: ``effattn quantize -o model.xml`` (NNCF's INT8 OpenVINO IR): NNCF's presets (``performance``: symmetric
#: activations, ``mixed``: asymmetric; ``default``: none passed, what an OpenVINO user gets) and what stays float
#: (``attention``: the EA softmax products; ``none``: NNCF decides alone).
NNCF_PRESETS = ("performance", "mixed", "default")
NNCF_KEEP_FLOAT = ("attention", "none")
#: ``effattn quantize -o model.int8.onnx --cpu-ir``: ``off`` (the QDQ graph alone), ``auto`` (NNCF's IR beside it
#: when within the INT8 row and its median at least ``1 + CPU_IR_MARGIN`` times as fast), ``always`` (when within it)
CPU_IR_MODES = ("off", "auto", "always")
#: the speed-up ``auto`` asks of the IR: interleaved medians on a shared CPU still move by a few %
CPU_IR_MARGIN = 0.03


def names() -> tuple[str, ...]:
    """Every precision's name, FP32 first."""
    return tuple(_BY_NAME)


def quantized() -> tuple[str, ...]:
    """The precisions ``effattn quantize`` writes (QDQ graphs)."""
    return tuple(p.name for p in TABLE if p.quantized)


def converted() -> tuple[str, ...]:
    """The precisions made from the FP32 graph by a conversion (``effattn.export.to_fp16`` / ``to_bf16``)."""
    return tuple(p.name for p in TABLE if p.made_by == "convert")


def get(name: str) -> Precision:
    """The record of ``name``, or :class:`InputError` listing the precisions (and the nearest, if any)."""
    row = _BY_NAME.get(name) if isinstance(name, str) else None
    if row is None:
        close = difflib.get_close_matches(str(name).lower(), _BY_NAME, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"unknown precision {name!r}{hint}; effattn knows {', '.join(_BY_NAME)}")
    return row


def by_zero_point_type(zero_point_type: str) -> Precision | None:
    """The quantized precision whose zero points have this numpy dtype name, or None."""
    return next((p for p in TABLE if p.zero_point_type == zero_point_type), None)
