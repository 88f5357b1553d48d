"""One record per precision a graph or engine can be in: the table every stage and the CLI read.

Plain data (nothing heavy is imported: ``effattn --help`` takes its choices from here). A new precision
is one row here plus its conversion function and its tests.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .errors import InputError

__all__ = ["CALIBRATION_SAMPLES", "DEFAULT_QUANTIZED", "MAX_CALIBRATION_SAMPLES", "TABLE", "Precision", "Tolerance",
           "by_zero_point_type", "converted", "get", "names", "quantized"]


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
#: The rows, FP32 first. The measurements behind each tolerance row are in docs/ and the tests that check them.
TABLE: tuple[Precision, ...] = (
    Precision("fp32", "float32", "export", 4, Tolerance(rel_l2=1e-5, branch_rel_l2=1e-5, argmax_agreement=0.999),
              ("float", "fp32"),
              (("onnxruntime", _CPU), ("onnxruntime", _CUDA), ("openvino", _CPU), ("tensorrt", _CUDA),
               ("torch", _CPU), ("torch", _CUDA)),
              "FP32, as exported"),
    Precision("fp16", "float16", "convert", 2, Tolerance(rel_l2=1e-2, branch_rel_l2=5e-3, argmax_agreement=0.995),
              ("half", "fp16"),
              (("onnxruntime", _CPU), ("onnxruntime", _CUDA), ("openvino", _CPU), ("tensorrt", _CUDA),
               ("torch", _CUDA)),
              "FP16 graph with FP32 inputs and outputs"),
    # OpenVINO BF16 (8-bit mantissa), measured 2026-11 on a 2-core EPYC: EA block output 1.6e-4, branch 2.0e-3;
    # trained ea_segnet_tiny logits 4.4e-3 on task images and 8.3e-3 on noise, argmax 99.9 % / 99.6 %.
    # The same limits hold the BF16 graph (effattn.export.to_bf16) on TensorRT: unmeasured on a GPU yet; on the
    # CPU its BF16 weights with FP32 math give 5.7e-3 on the segmenter (tests/export/test_precision.py).
    Precision("bf16", "bfloat16", "convert", 2, Tolerance(rel_l2=2e-2, branch_rel_l2=1e-2, argmax_agreement=0.995),
              ("bfloat16", "bf16"),
              (("openvino", _CPU), ("tensorrt", _CUDA), ("torch", _CPU)),
              "BF16 graph with FP32 inputs and outputs"),
    # INT8 QDQ (effattn quantize), same runs, ONNX Runtime and OpenVINO alike: EA block (16 ch, random
    # weights, 32 noise calibration samples, 150 fresh draws at min/opt/max) output <= 6.1e-3, branch median
    # 5.1e-3 (noise at 1x16x8x8, 3000 draws: p99 1.7e-2, 3 above 5e-2 where a draw exceeds the calibrated range
    # and is clipped); trained segmenter on task images rel-L2 3.2-3.6e-2, argmax 99.0-99.3 %. Parity mixes in
    # noise inputs, which lie outside the calibrated ranges (rel-L2 8-9e-2, argmax 96.4-96.6 %), so these limits
    # are loose; the task-level gate (>= 99 % argmax and <= 1 point IoU drop per class on held-out task images)
    # is tests/export/test_quantize.py's and the bench's.
    Precision("int8", "int8", "quantize", 1, Tolerance(rel_l2=0.2, branch_rel_l2=5e-2, argmax_agreement=0.95),
              ("int8",),
              (("onnxruntime", _CPU), ("onnxruntime", _CUDA), ("openvino", _CPU), ("tensorrt", _CUDA)),
              "INT8 QDQ, signed symmetric"),
    # FP8 E4M3 QDQ (effattn quantize --precision fp8; on the CPU ONNX Runtime and OpenVINO emulate it, as TensorRT
    # computes it on an FP8 GPU), measured 2026-11 on a 2-core EPYC: EA block with 32 channels (every Conv in FP8;
    # 600 draws) output <= 3.9e-3, branch median 2.2e-2, max 3.4e-2 (three mantissa bits round each value by up
    # to 6 %, where INT8's error is one step of the range); trained segmenter (the one Conv with more than 16
    # channels in FP8, NVIDIA's rule) on noise, 180 draws: rel-L2 <= 3.8e-2, argmax >= 97.0 %. The INT8 limits hold.
    Precision("fp8", "float8_e4m3fn", "quantize", 1, Tolerance(rel_l2=0.2, branch_rel_l2=5e-2, argmax_agreement=0.95),
              ("fp8", "float8", "e4m3"),
              (("onnxruntime", _CPU), ("openvino", _CPU), ("tensorrt", _CUDA)),
              "FP8 E4M3 QDQ, for GPUs of compute capability 8.9+",
              min_capability=(8, 9), hardware="FP8 tensor cores"),
)
_BY_NAME = {p.name: p for p in TABLE}

#: What ``effattn quantize`` writes unless asked for another quantized precision.
DEFAULT_QUANTIZED = "int8"
#: Calibration samples ``effattn quantize`` draws without calibration data, and the most one run takes: MinMax
#: ranges settle long before, and ONNX Runtime's calibrator keeps every sample's outputs in memory.
CALIBRATION_SAMPLES = 32
MAX_CALIBRATION_SAMPLES = 4096


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
