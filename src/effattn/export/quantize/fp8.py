"""FP8 E4M3: the INT8 QDQ graph with another code, for TensorRT on compute capability 8.9+ (Ada, Hopper).

The INT8 pass runs with the weights float behind Q/DQ pairs; :func:`int8_to_fp8` then rescales it, and
:func:`fp8_ineligible` names the nodes that stay float.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from ...errors import ExportError, first_line

FP8_MAX = 448.0  # the largest finite float8e4m3fn
INT8_MAX = 127.0  # symmetric INT8 (ONNX Runtime's symmetric range is -127..127)
FP8_OPSET = 19  # the first opset whose QuantizeLinear/DequantizeLinear take float8


def fp8_ineligible(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv and Gemm nodes that stay float in an FP8 graph.

    Convs with 16 or fewer input or output channels, or more than 32 filter taps (a 7x7 kernel): NVIDIA
    ModelOpt's rule for TensorRT's FP8 convolutions, which are slower than FP16 ones there. Every Gemm: here
    the classifier head, a GEMV at batch 1 that tensor cores do not speed up. Sources and measurements:
    docs/decisions.md#fp8-which-convs-which-scale.
    """
    inits = {t.name: t for t in model.graph.initializer}

    def eligible(conv: onnx.NodeProto) -> bool:
        weight = inits.get(conv.input[1]) if len(conv.input) > 1 else None  # None: a weight computed at run time
        dims = list(weight.dims) if weight is not None else []
        return len(dims) >= 3 and min(dims[:2]) > 16 and int(np.prod(dims[2:])) <= 32

    return [n.name for n in model.graph.node if n.op_type == "Gemm" or (n.op_type == "Conv" and not eligible(n))]


def int8_to_fp8(model: onnx.ModelProto) -> onnx.ModelProto:
    """The FP8 E4M3 form of a max-calibrated symmetric INT8 QDQ graph whose weights are float behind Q/DQ
    pairs: each scale (amax / 127) becomes amax / 448, each zero point an FP8 zero, the opset 19.

    The weights stay float because TensorRT quantizes them with their Q/DQ scale. amax maps onto 448, E4M3's
    largest finite value, not onto 36 as ModelOpt's scaling does (docs/decisions.md#fp8-which-convs-which-scale).
    Opset 19 is the first whose Q/DQ take float8.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), FP8_OPSET)
    if opset < FP8_OPSET:
        try:
            model = version_converter.convert_version(model, FP8_OPSET)
        except Exception as e:  # the converter raises bare RuntimeErrors
            raise ExportError(
                f"cannot move the graph from opset {opset} to {FP8_OPSET} for FP8: {first_line(e)}"
            ) from e
    inits = {t.name: t for t in model.graph.initializer}
    quantizers = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if any(n.op_type == "DequantizeLinear" and n.input[0] in inits for n in quantizers):
        raise ExportError("the INT8 graph stores quantized weights; FP8 needs them in float (AddQDQPairToWeight)")
    converted: set[str] = set()
    for node in quantizers:
        scale, zero_point = node.input[1], node.input[2]
        if scale not in converted:
            value = numpy_helper.to_array(inits[scale])
            inits[scale].CopyFrom(numpy_helper.from_array((value * (INT8_MAX / FP8_MAX)).astype(value.dtype), scale))
        if zero_point not in converted:
            dims = list(inits[zero_point].dims)
            inits[zero_point].CopyFrom(
                helper.make_tensor(zero_point, TensorProto.FLOAT8E4M3FN, dims, bytes(int(np.prod(dims))), raw=True)
            )
        converted |= {scale, zero_point}
    quantized = {n.output[0] for n in quantizers if n.op_type == "QuantizeLinear"}
    kept = [v for v in model.graph.value_info if v.name not in quantized]  # they were typed INT8
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    return model
