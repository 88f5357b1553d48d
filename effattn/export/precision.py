"""The precision stage: an FP16 (or BF16) ONNX graph with FP32 inputs and outputs, so precision is a
property of the file every backend builds. FP16 is onnxconverter-common's ``float16`` pass; ops named in
``op_block_list`` stay FP32. Why: docs/precision.md#fp16-the-precision-lives-in-the-graph."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter
from onnxconverter_common import float16

from .. import metadata
from ..errors import ExportError, first_line
from ..files import atomic_output, check_writable
from ..metadata import read_metadata, set_metadata

log = logging.getLogger(__name__)

#: Ops kept in FP32 on top of onnxconverter-common's own list (which holds Resize, TopK, Min/Max, ...): none,
#: by measurement (docs/decisions.md#fp16-no-op-is-kept-in-fp32-by-default). Pass ``fp32_ops=("Softmax",)``
#: where a backend's FP16 softmax is worse.
DEFAULT_FP32_OPS: tuple[str, ...] = ()
#: The first ONNX opset whose Conv (and MaxPool, AveragePool, ConvTranspose) accept bfloat16.
BF16_OPSET = 22


def _load_fp32(onnx_in: Path) -> onnx.ModelProto:
    """The FP32 export at ``onnx_in``; any other precision is refused (convert the FP32 export instead)."""
    meta = read_metadata(onnx_in)
    if (graph := metadata.precision_of(meta)) != "fp32":
        raise ExportError(f"{onnx_in} is already {graph}; convert the FP32 export instead")
    try:
        model = onnx.load(str(onnx_in))
    except Exception as e:  # protobuf decode errors, external data outside the file's folder, ...
        raise ExportError(f"cannot load {onnx_in}: {first_line(e)}") from None
    # The converter trusts value_info types; stale FP32 entries from export would leave a Concat of
    # FP16 and FP32 inputs behind a blocked op. Let it infer types afresh.
    del model.graph.value_info[:]
    return model


def _half(model: onnx.ModelProto, onnx_in: Path, fp32_ops: Sequence[str]) -> onnx.ModelProto:
    """onnxconverter-common's FP16 pass: FP32 I/O, FP16 weights, casts at the edges of blocked ops."""
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(fp32_ops))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns about every value it clamps to the FP16 range
            half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    except Exception as e:  # the converter raises plain Exceptions
        raise ExportError(f"half-precision conversion of {onnx_in} failed: {first_line(e)}") from e
    return _float_outputs(
        half, {o.name for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    )


def _float_outputs(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """Outputs ``names`` typed FP32 again. onnxconverter-common 1.16 with ``keep_io_types=True`` leaves an output
    FP16 when a blocked op produces it (ea_segnet_tiny's logits come from a Resize: Resize -> Cast(FP16) ->
    output). A producing Cast is retargeted to FP32 (no FP16 rounding of the output); any other producer gets
    a Cast to FP32 after it."""
    producers = {o: node for node in model.graph.node for o in node.output}
    for out in model.graph.output:
        if out.name not in names or out.type.tensor_type.elem_type == TensorProto.FLOAT:
            continue
        out.type.tensor_type.elem_type = TensorProto.FLOAT
        node = producers[out.name]
        if node.op_type == "Cast":
            next(a for a in node.attribute if a.name == "to").i = TensorProto.FLOAT
            continue
        inner = f"{out.name}_before_float_cast"
        for other in model.graph.node:
            other.input[:] = [inner if i == out.name else i for i in other.input]
            other.output[:] = [inner if o == out.name else o for o in other.output]
        model.graph.node.append(
            helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT, name=f"{out.name}_to_float")
        )
    return model


def _write(
    model: onnx.ModelProto, onnx_out: Path, force: bool, precision: str, fp32_ops: Sequence[str], onnx_in: Path
) -> Path:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # ValidationError and shape-inference errors
        raise ExportError(f"{precision.upper()} conversion of {onnx_in} failed: {first_line(e)}") from e
    set_metadata(model, {metadata.PRECISION: precision, metadata.FP32_OPS: ",".join(sorted(fp32_ops))})
    with atomic_output(onnx_out, force) as tmp:
        onnx.save(model, tmp)
    log.debug("wrote %s graph %s (FP32 ops: %s)", precision, onnx_out, ", ".join(fp32_ops))
    return onnx_out


def to_fp16(
    onnx_in: str | Path,
    onnx_out: str | Path,
    *,
    fp32_ops: Sequence[str] = DEFAULT_FP32_OPS,
    force: bool = False,
) -> Path:
    """Write an FP16 copy of ``onnx_in`` to ``onnx_out`` (FP32 I/O, FP16 weights, ``fp32_ops`` in FP32).

    The effattn metadata is carried over with ``effattn.precision = fp16``.
    """
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    check_writable(onnx_out, force)
    half = _half(_load_fp32(onnx_in), onnx_in, fp32_ops)
    return _write(half, onnx_out, force, "fp16", fp32_ops, onnx_in)


def bf16_tensor(name: str, values: np.ndarray) -> TensorProto:
    """A BFLOAT16 initializer of ``values``: FP32 rounded to nearest even (the top 16 bits), as torch rounds."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return helper.make_tensor(name, TensorProto.BFLOAT16, values.shape, rounded.tobytes(), raw=True)


def _fp16_to_bf16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every FLOAT16 of ``model`` (weights, Cast targets, Constants, typed values) becomes BFLOAT16, in place.
    Values are rounded from FP32 (FP16 -> FP32 is exact), so a weight is what ``torch.bfloat16`` would give
    for the FP16-clamped value."""
    half, bf16 = TensorProto.FLOAT16, TensorProto.BFLOAT16

    def as_bf16(t: TensorProto) -> TensorProto:
        return bf16_tensor(t.name, numpy_helper.to_array(t))

    for t in model.graph.initializer:
        if t.data_type == half:
            t.CopyFrom(as_bf16(t))
    for v in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if v.type.tensor_type.elem_type == half:
            v.type.tensor_type.elem_type = bf16
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == half:
                attr.i = bf16
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == half:
                attr.t.CopyFrom(as_bf16(attr.t))
    return model


def to_bf16(
    onnx_in: str | Path,
    onnx_out: str | Path,
    *,
    fp32_ops: Sequence[str] = DEFAULT_FP32_OPS,
    force: bool = False,
) -> Path:
    """Write a BF16 copy of ``onnx_in`` (FP32 I/O, BF16 weights and compute, ``fp32_ops`` in FP32) for
    TensorRT's strongly typed BF16 engines.

    The FP16 pass with every FLOAT16 turned into BFLOAT16; the graph moves to opset 22 first (ONNX's
    ``version_converter``), the first opset whose Conv, MaxPool and pooling ops take bfloat16. BF16 has
    FP32's range, so nothing is clamped, but the FP16 pass clamps weights to the FP16 range on the way
    (harmless for trained weights, which lie far inside it). ONNX Runtime's CPU provider has no BF16 Conv
    (NOT_IMPLEMENTED for Conv(22)): the file is for TensorRT, checked here by ``onnx.checker``.
    """
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    check_writable(onnx_out, force)
    model = _load_fp32(onnx_in)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), BF16_OPSET)
    if opset < BF16_OPSET:
        try:
            model = version_converter.convert_version(model, BF16_OPSET)
        except Exception as e:  # the converter raises RuntimeError/ValidationError for ops it cannot adapt
            raise ExportError(
                f"cannot move {onnx_in} from opset {opset} to {BF16_OPSET} for BF16: {first_line(e)}"
            ) from e
    bf16 = _fp16_to_bf16(_half(model, onnx_in, fp32_ops))
    return _write(bf16, onnx_out, force, "bf16", fp32_ops, onnx_in)


#: The conversion that makes each ``made_by="convert"`` precision of :mod:`effattn.precisions` from the FP32 graph.
CONVERTERS = {"fp16": to_fp16, "bf16": to_bf16}
