"""The one dtype table: each library's name maps to the same row; a type nobody can feed is refused by name."""

import numpy as np
import pytest
from onnx import TensorProto

from effattn import dtypes
from effattn.errors import InputError


def test_every_name_of_a_row_finds_that_row():
    for row in dtypes.TABLE:
        for field in ("numpy", "kserve", "onnx", "ort", "tensorrt", "torch"):
            if getattr(row, field) is not None:
                assert dtypes.lookup(field, getattr(row, field)) == row
    assert dtypes.of_numpy(np.float16).triton == "TYPE_FP16"
    assert dtypes.numpy_dtype(dtypes.lookup("kserve", "BF16")) == np.float32  # numpy has no bfloat16


def test_unknown_types_are_refused_by_name():
    with pytest.raises(
        InputError,
        match=r"ONNX tensor 'x' has ONNX Runtime type tensor\(float8e4m3fn\), which "
        r"effattn cannot feed or read \(supported: tensor\(float\)",
    ):
        dtypes.lookup("ort", "tensor(float8e4m3fn)", "ONNX tensor 'x'")
    with pytest.raises(InputError, match="has numpy type complex64"):
        dtypes.of_numpy(np.complex64)
    with pytest.raises(InputError, match="has ONNX type 17"):
        dtypes.lookup("onnx", TensorProto.FLOAT8E4M3FN)
