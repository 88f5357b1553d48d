"""Export stages: PyTorch -> checked, simplified, self-describing ONNX; then FP16, BF16, INT8 and FP8 graphs."""

from ..metadata import read_metadata, set_metadata
from .exporter import EXPORTERS, ExportResult, export_onnx
from .precision import DEFAULT_FP32_OPS, to_bf16, to_fp16
from .quantize import QUANTIZED_OPS, QuantizeResult, qdq_summary, quantize

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
