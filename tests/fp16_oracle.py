"""FP16/BF16 arithmetic on the CPU: onnx's ReferenceEvaluator runs each node in numpy and stores its output at
its own type, as a GPU does (ONNX Runtime's CPU provider computes most FP16 nodes in FP32). Conv and Softmax
accumulate in FP32 and round once, as numpy's FP16 matmul and GPU kernels do (numpy sums BF16 in BF16)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_conv import Conv as _ReferenceConv
from onnx.reference.ops.op_softmax import Softmax as _ReferenceSoftmax

from effattn.metadata import read_metadata
from effattn.runtime.base import Runner, TensorSpec


class Conv(_ReferenceConv):  # named as the op it replaces: ReferenceEvaluator matches new_ops by class name
    """The reference Conv on FP32 copies of FP16/BF16 inputs, its output rounded to the input's type once."""

    op_domain = ""

    def _run(self, x, w, b=None, **attrs):  # type: ignore[override]
        if x.dtype == np.float32:
            return super()._run(x, w, b, **attrs)
        wide = [None if t is None else t.astype(np.float32) for t in (x, w, b)]
        (y,) = super()._run(*wide, **attrs)
        return (y.astype(x.dtype),)


class Softmax(_ReferenceSoftmax):  # FP32 inside, like GPU softmax kernels: numpy would sum BF16 in BF16
    """The reference Softmax on an FP32 copy of an FP16/BF16 input, its output rounded to the input's type once."""

    op_domain = ""

    def _run(self, x, axis=None):  # type: ignore[override]
        if x.dtype == np.float32:
            return super()._run(x, axis=axis)
        (y,) = super()._run(x.astype(np.float32), axis=axis)
        return (y.astype(x.dtype),)


class Fp16Oracle(Runner):
    """A runner for an FP16 or BF16 graph of ours with each node's output stored at its own type (``compare``
    takes it beside ONNX Runtime). ``fp32_accumulation=False`` runs onnx's own Conv and Softmax instead."""

    backend = "fp16-oracle"

    def __init__(self, path: str | Path, *, fp32_accumulation: bool = True, name: str | None = None) -> None:
        model = onnx.load(str(path))
        self.metadata = read_metadata(path)

        def spec(v: onnx.ValueInfoProto) -> TensorSpec:
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in v.type.tensor_type.shape.dim
            )
            return TensorSpec(
                v.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)), dims
            )

        super().__init__([spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output], name)
        new_ops = [Conv, Softmax] if fp32_accumulation else None
        self._evaluator = ReferenceEvaluator(model, new_ops=new_ops)

    def _infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        feed = {k: np.asarray(v) for k, v in feed.items()}
        with np.errstate(over="ignore"):  # an FP16 overflow is an inf in the output, which parity reports
            values = self._evaluator.run(None, feed)
        return dict(zip(self.outputs, values, strict=True))
