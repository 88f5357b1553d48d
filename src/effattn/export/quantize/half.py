"""QDQ graphs whose float part is FP16, for TensorRT: scales, the unquantized layers and the residual path in FP16,
the EA softmax inputs (key/query projections, found by graph structure) in FP32, FP32 inputs and outputs.
As NVIDIA ModelOpt's ``high_precision_dtype="fp16"``; why: docs/precision.md#int8-and-fp8-for-tensorrt."""

from __future__ import annotations

import warnings

import onnx
from onnx import TensorProto, numpy_helper, version_converter

from ...errors import ExportError, first_line
from ..precision import attention_projections, restore_float_outputs
from .qdq import check_qdq

#: The first opset whose QuantizeLinear/DequantizeLinear take FP16 scales (and so give FP16 outputs).
FP16_SCALE_OPSET = 19
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def softmax_fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that stay FP32: each EA block's key and query projections with the layout ops and
    Softmax after them (:func:`effattn.export.precision.attention_projections`, the FP16 graph's rule), and the
    Q/DQ nodes on those projections' inputs (so TensorRT still fuses them into an INT8 projection)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    by_name = {node.name: node for node in model.graph.node}
    keep: dict[str, None] = {}
    for projection in attention_projections(model):
        keep.update(dict.fromkeys(projection.nodes))
        for name in by_name[projection.conv].input:
            quantizer = producers.get(name)
            while quantizer is not None and quantizer.op_type in _QDQ:
                keep.setdefault(quantizer.name)
                quantizer = producers.get(quantizer.input[0])
    return list(keep)


def float_type(model: onnx.ModelProto) -> str:
    """``fp16`` when any Q/DQ scale of ``model`` is FP16 (its dequantized tensors, and so its float part, are
    FP16), else ``fp32``."""
    inits = {t.name: t.data_type for t in model.graph.initializer}
    scales = {inits.get(n.input[1]) for n in model.graph.node if n.op_type in _QDQ and len(n.input) > 1}
    return "fp16" if TensorProto.FLOAT16 in scales else "fp32"


def _own_scales(model: onnx.ModelProto, kept: set[str]) -> None:
    """A scale initializer shared by a kept (FP32) and a converted Q/DQ gets an FP32 copy for the kept ones, so
    the converter turns the other into FP16 instead of putting a Cast between an initializer and its Q/DQ."""
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, set[bool]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.name in kept)
    for node in model.graph.node:
        if node.name not in kept or node.op_type not in _QDQ:
            continue
        scale = node.input[1]
        if scale in inits and users[scale] == {True, False}:
            copy = f"{scale}_fp32"
            if copy not in inits:
                inits[copy] = numpy_helper.from_array(numpy_helper.to_array(inits[scale]), copy)
                model.graph.initializer.append(inits[copy])
            node.input[1] = copy


def qdq_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The FP16-float form of an FP32-float QDQ graph (a new model; ``model`` is left alone): opset 19, every
    scale and float tensor FP16 except :func:`softmax_fp32_nodes`, FP32 inputs and outputs. What ModelOpt's ONNX
    PTQ does with ``high_precision_dtype="fp16"`` (modelopt/onnx/quantization/int8.py: ``convert_to_f16(...,
    keep_io_types=True)`` after quantizing), with the softmax inputs kept FP32 by node."""
    from onnxconverter_common import float16

    if not any(n.op_type in _QDQ for n in model.graph.node):
        raise ExportError("the graph has no QuantizeLinear/DequantizeLinear nodes; quantize the FP32 export first")
    if float_type(model) == "fp16":
        raise ExportError("the QDQ graph's float part is already FP16 (its scales are FP16)")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), FP16_SCALE_OPSET)
    if opset < FP16_SCALE_OPSET:
        try:
            model = version_converter.convert_version(model, FP16_SCALE_OPSET)
        except Exception as e:  # the converter raises bare RuntimeErrors
            raise ExportError(f"cannot move the graph from opset {opset} to {FP16_SCALE_OPSET}: {first_line(e)}") from e
    kept = set(softmax_fp32_nodes(model))  # names every node first: the converter blocks by name
    _own_scales(model, kept)
    float_outputs = {o.name for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    del model.graph.value_info[:]  # the converter trusts stale FP32 entries (see export/precision.py)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns about every value it clamps to the FP16 range
            half = float16.convert_float_to_float16(
                model,
                keep_io_types=True,
                op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST),  # Resize etc. stay FP32, as in the FP16 stage
                node_block_list=sorted(kept),
            )
    except Exception as e:  # the converter raises plain Exceptions
        raise ExportError(f"FP16 conversion of the QDQ graph's float part failed: {first_line(e)}") from e
    restore_float_outputs(half, float_outputs)
    check_qdq(half, "the QDQ graph with an FP16 float part (a scale beyond FP16's range?)")
    return half
