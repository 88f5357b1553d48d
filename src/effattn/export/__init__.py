"""Export stages: PyTorch -> checked, simplified, self-describing ONNX; then FP16, BF16, INT8 and FP8 graphs.

The exporter (and torch with it) loads on first use of its names: the engines and runtimes read this stage's ONNX
checks, and a machine that only runs ONNX files needs no torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..metadata import read_metadata, set_metadata
from .precision import DEFAULT_FP32_OPS, to_bf16, to_fp16
from .quantize import QUANTIZED_OPS, QuantizeResult, qdq_summary, quantize

if TYPE_CHECKING:
    from .exporter import EXPORTERS, ExportResult, export_onnx

_EXPORTER = ("EXPORTERS", "ExportResult", "export_onnx")


def __getattr__(name: str) -> Any:
    if name in _EXPORTER:
        return getattr(importlib.import_module(".exporter", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_FP32_OPS",
    "EXPORTERS",
    "QUANTIZED_OPS",
    "ExportResult",
    "QuantizeResult",
    "export_onnx",
    "qdq_summary",
    "quantize",
    "read_metadata",
    "set_metadata",
    "to_bf16",
    "to_fp16",
]
