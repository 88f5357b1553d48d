"""Export stages: PyTorch -> checked, simplified, verified ONNX."""

from .onnx import EXPORTERS, ExportResult, export_onnx, read_metadata, set_metadata, validate_onnx

__all__ = ["EXPORTERS", "ExportResult", "export_onnx", "read_metadata", "set_metadata", "validate_onnx"]
