"""Export stages: PyTorch -> checked, simplified, verified ONNX; then the FP16 graph."""

from .onnx import EXPORTERS, ExportResult, export_onnx, read_metadata, set_metadata, validate_onnx
from .precision import DEFAULT_FP32_OPS, to_fp16

__all__ = ["DEFAULT_FP32_OPS", "EXPORTERS", "ExportResult", "export_onnx", "read_metadata", "set_metadata",
           "to_fp16", "validate_onnx"]
