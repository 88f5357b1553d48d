"""QDQ inspection: what a quantized graph holds and whether its scales and zero points are valid.

The part of the quantize stage that engines and every command import (:func:`check_qdq`, :func:`qdq_summary`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ... import precisions
from ...errors import ExportError, first_line

#: Op types that get INT8 inputs; the attention softmaxes and context products stay in float
#: (docs/decisions.md#what-stays-in-float).
QUANTIZED_OPS: tuple[str, ...] = ("Conv", "Gemm")
#: Ops that must never be quantized (the attention core); listed in the file's metadata.
FLOAT_OPS: tuple[str, ...] = ("MatMul", "Softmax")


@dataclass
class QdqSummary:
    """What a QDQ graph holds, read from the graph itself: the properties TensorRT needs."""

    quantized: Counter  # op type -> nodes whose two operands both come from DequantizeLinear
    zero_point_types: set[str]  # numpy dtype names of every Q/DQ zero point
    nonzero_zero_points: int
    per_channel_weights: int
    float_ops: Counter  # op types in FLOAT_OPS fed by no DequantizeLinear
    per_channel_activations: int = 0  # quantizers of run-time tensors with more than one scale

    @property
    def precision(self) -> str | None:
        """``int8`` or ``fp8`` when every zero point has that one TensorRT type, else None."""
        row = (
            precisions.by_zero_point_type(next(iter(self.zero_point_types)))
            if len(self.zero_point_types) == 1
            else None
        )
        return row.name if row is not None else None

    @property
    def tensorrt_compatible(self) -> bool:
        return (
            self.precision is not None
            and self.nonzero_zero_points == 0
            and not self.per_channel_activations
            and bool(self.quantized)
        )


def qdq_summary(model: onnx.ModelProto) -> QdqSummary:
    """Summarise the Q/DQ nodes of ``model`` (zero-point types and values, quantized consumers)."""
    inits = {t.name: t for t in model.graph.initializer}
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    types: set[str] = set()
    nonzero = per_channel = per_channel_activations = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = inits.get(node.input[1])
        per_channel_activations += int(
            node.op_type == "QuantizeLinear"
            and node.input[0] not in inits
            and scale is not None
            and int(np.prod(scale.dims)) > 1
        )
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zp is None:  # no zero point: uint8 by the ONNX spec
            types.add("uint8")
            continue
        value = numpy_helper.to_array(zp)
        types.add(value.dtype.name)
        nonzero += int(np.count_nonzero(value))
        per_channel += int(value.size > 1 and node.input[0] in inits)  # INT8-stored weight (DQ) or float weight (Q)
    fed = Counter(
        n.op_type
        for n in model.graph.node  # both operands (data and weight) dequantized from INT8
        if len(n.input) >= 2 and n.input[0] in dq_outputs and n.input[1] in dq_outputs
    )
    unfed = Counter(n.op_type for n in model.graph.node if n.op_type in FLOAT_OPS and not set(n.input) & dq_outputs)
    return QdqSummary(fed, types, nonzero, per_channel, unfed, per_channel_activations)


#: The largest magnitude each zero-point type holds: scale x this must stay finite, or dequantizing overflows.
_QUANT_MAX = {
    "int8": 128,
    "uint8": 255,
    "int16": 32768,
    "uint16": 65535,
    "int32": 2**31,
    "int4": 8,
    "uint4": 15,
    "float8_e4m3fn": 448,
    "float8_e4m3fnuz": 240,
    "float8_e5m2": 57344,
    "float8_e5m2fnuz": 57344,
}


def _constants(model: onnx.ModelProto, names: set[str], base_dir: str) -> dict[str, np.ndarray]:
    """The values of the initializers and Constant nodes called ``names`` (external data read from ``base_dir``)."""
    tensors = {t.name: t for t in model.graph.initializer if t.name in names}
    tensors |= {
        n.output[0]: a.t
        for n in model.graph.node
        if n.op_type == "Constant" and n.output[0] in names
        for a in n.attribute
        if a.name == "value"
    }
    try:
        return {name: numpy_helper.to_array(t, base_dir) for name, t in tensors.items()}
    except Exception as e:  # external data missing or outside the folder, malformed raw data
        raise ExportError(f"cannot read the quantization parameters: {first_line(e)}") from None


def _scale_problems(where: str, scale: np.ndarray, zero_type: str) -> list[str]:
    if scale.dtype.name not in ("float32", "float16", "bfloat16"):
        return [f"{where} has type {scale.dtype.name}; a scale is float32, float16 or bfloat16"]
    values = scale.astype(np.float32).ravel()
    finfo = np.finfo(np.float16 if scale.dtype == np.float16 else np.float32)
    bad = ~(np.isfinite(values) & (values >= finfo.tiny))
    if bad.any():
        return [
            f"{where} is {float(values[bad][0]):g} ({int(bad.sum())} of {values.size} values): a scale must "
            "be a finite, positive, normal float"
        ]
    if float(values.max()) * _QUANT_MAX.get(zero_type, 1) > float(finfo.max):
        return [f"{where} is {float(values.max()):g}: times the {zero_type} range it overflows {scale.dtype.name}"]
    return []


def _axis_problems(where: str, node: onnx.NodeProto, scale: np.ndarray, dims: list[int] | None) -> list[str]:
    """Scale shapes as ONNX defines them: a scalar (per tensor), 1-D along ``axis`` (per axis), or, with
    ``block_size``, the input's rank (blocked)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("block_size", 0):
        return (
            []
            if dims is None or scale.ndim == len(dims)
            else [f"{where} has rank {scale.ndim}; a blocked scale has the input's rank {len(dims)}"]
        )
    if scale.ndim > 1:
        return [f"{where} has shape {scale.shape}; a scale is a scalar or 1-D (one value per channel)"]
    if scale.ndim == 0 or scale.size == 1 or dims is None:
        return []
    axis = attrs.get("axis", 1)
    if not -len(dims) <= axis < len(dims):
        return [f"{where}: axis {axis} is outside the input's rank {len(dims)}"]
    if dims[axis] > 0 and scale.size not in (1, dims[axis]):
        return [f"{where} has {scale.size} values but axis {axis} of {node.input[0]!r} has {dims[axis]}"]
    return []


def qdq_problems_of_values(model: onnx.ModelProto, base_dir: str = "") -> list[str]:
    """What is wrong with the scales and zero points of ``model``'s QuantizeLinear/DequantizeLinear nodes,
    one line each, naming the node, the initializer and the value. Scales computed at run time cannot be
    checked here and are not. A scale of 0, a negative, NaN, infinite or subnormal one, or one whose product
    with the type's range overflows, makes every value it touches wrong; so does a zero point of a type ONNX
    does not quantize to, a NaN float8 zero point, or a shape that disagrees with the scale or the axis."""
    quantizers = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    wanted = {i for n in quantizers for i in n.input[1:3] if i}
    values = _constants(model, wanted, base_dir)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.HasField("shape") and v.name not in shapes:
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    problems, seen = [], set()
    for node in quantizers:
        if tuple(node.input[1:3]) in seen:  # one scale and zero point often serve several Q/DQ pairs: say it once
            continue
        seen.add(tuple(node.input[1:3]))
        scale = values.get(node.input[1])
        zero = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        zero_type = "uint8" if zero is None else zero.dtype.name
        where = f"{node.op_type} {node.name!r} scale {node.input[1]!r}"
        if zero is not None and zero_type not in _QUANT_MAX:
            problems.append(
                f"{node.op_type} {node.name!r} zero point {node.input[2]!r} has type {zero_type}, "
                f"not one ONNX quantizes to ({', '.join(_QUANT_MAX)})"
            )
        elif zero is not None and zero_type.startswith("float8") and not np.isfinite(zero.astype(np.float32)).all():
            problems.append(f"{node.op_type} {node.name!r} zero point {node.input[2]!r} is not finite")
        if scale is None:
            continue
        if zero is not None and zero.shape != scale.shape:
            problems.append(f"{where} has shape {scale.shape} but zero point {node.input[2]!r} {zero.shape}")
        problems += _scale_problems(where, scale, zero_type) + _axis_problems(
            where, node, scale, shapes.get(node.input[0])
        )
    return problems


def check_qdq(model: onnx.ModelProto, source: str, base_dir: str = "") -> None:
    """Refuse ``model`` (an :class:`ExportError` saying what ``source`` is) if any Q/DQ scale or zero point is
    wrong (:func:`qdq_problems_of_values`): the one check quantize runs before it writes a file and every
    command runs before it runs one."""
    problems = qdq_problems_of_values(model, base_dir)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ExportError(f"{source} has invalid quantization parameters: {'; '.join(problems[:3])}{more}")
