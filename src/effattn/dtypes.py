"""One table of tensor element types and their names in numpy, KServe, Triton, ONNX, ONNX Runtime,
TensorRT and torch; plain data, so every layer can read it. Types numpy has no dtype for (BF16, FP8, INT4,
FP4) appear only where a runner can convert them. See docs/architecture.md#ground-floor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from .errors import BackendError, InputError


@dataclass(frozen=True)
class DType:
    numpy: str | None  # numpy dtype name; None where numpy has none (bfloat16)
    kserve: str  # KServe v2 / Triton protocol datatype
    onnx: int  # onnx.TensorProto element type
    ort: str  # ONNX Runtime NodeArg.type
    tensorrt: str | None  # tensorrt.DataType member name
    torch: str | None  # torch dtype attribute name

    @property
    def triton(self) -> str:
        """Triton's model-config DataType name (``TYPE_FP32``)."""
        return f"TYPE_{self.kserve}"


TABLE = (
    DType("float32", "FP32", TensorProto.FLOAT, "tensor(float)", "FLOAT", "float32"),
    DType("float16", "FP16", TensorProto.FLOAT16, "tensor(float16)", "HALF", "float16"),
    DType(None, "BF16", TensorProto.BFLOAT16, "tensor(bfloat16)", "BF16", "bfloat16"),
    DType("float64", "FP64", TensorProto.DOUBLE, "tensor(double)", None, "float64"),
    DType("int64", "INT64", TensorProto.INT64, "tensor(int64)", "INT64", "int64"),
    DType("int32", "INT32", TensorProto.INT32, "tensor(int32)", "INT32", "int32"),
    DType("int16", "INT16", TensorProto.INT16, "tensor(int16)", None, "int16"),
    DType("int8", "INT8", TensorProto.INT8, "tensor(int8)", "INT8", "int8"),
    DType("uint64", "UINT64", TensorProto.UINT64, "tensor(uint64)", None, None),
    DType("uint32", "UINT32", TensorProto.UINT32, "tensor(uint32)", None, None),
    DType("uint16", "UINT16", TensorProto.UINT16, "tensor(uint16)", None, None),
    DType("uint8", "UINT8", TensorProto.UINT8, "tensor(uint8)", "UINT8", "uint8"),
    DType("bool", "BOOL", TensorProto.BOOL, "tensor(bool)", "BOOL", "bool"),
)


def _index(field: str) -> dict:
    return {getattr(d, field): d for d in TABLE if getattr(d, field) is not None}


_LIBRARY = {
    "numpy": "numpy",
    "kserve": "KServe",
    "onnx": "ONNX",
    "ort": "ONNX Runtime",
    "tensorrt": "TensorRT",
    "torch": "torch",
}
_BY = {field: _index(field) for field in ("numpy", "kserve", "onnx", "ort", "tensorrt", "torch")}


def lookup(field: str, value, what: str = "tensor") -> DType:
    """The row whose ``field`` (``numpy``, ``kserve``, ``onnx``, ``ort``, ``tensorrt``, ``torch``) is ``value``.

    Raises :class:`InputError` naming ``what`` and the types that are supported."""
    key = np.dtype(value).name if field == "numpy" else value
    row = _BY[field].get(key)
    if row is None:
        known = ", ".join(str(k) for k in _BY[field])
        raise InputError(
            f"{what} has {_LIBRARY[field]} type {key}, which effattn cannot feed or read (supported: {known})"
        )
    return row


def of_numpy(dtype, what: str = "tensor") -> DType:
    return lookup("numpy", dtype, what)


def numpy_dtype(row: DType) -> np.dtype:
    """The host dtype: numpy's own, and float32 for BF16 (numpy has none; runners cast on the device)."""
    return np.dtype(row.numpy or "float32")


def io_dtypes(trt_dtype_name: str, tensor: str) -> tuple[str, str]:
    """(device buffer torch dtype, host numpy dtype) for an engine I/O tensor; BF16 is fed and returned as
    float32 (numpy has no bfloat16) and cast on the device. Types with no buffer this runner can fill (FP8,
    INT4, FP4, E8M0: quantized internals, never model I/O here) are refused by name."""
    try:
        row = lookup("tensorrt", trt_dtype_name, f"engine tensor {tensor!r}")
    except InputError as e:
        raise BackendError(str(e)) from None
    if row.torch is None:  # a row TensorRT names but torch cannot hold (none today): refused, not fed as None
        raise BackendError(f"engine tensor {tensor!r} has TensorRT type {trt_dtype_name}, which torch has no dtype for")
    return row.torch, numpy_dtype(row).name
