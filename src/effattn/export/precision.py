"""The precision stage: an FP16 (or BF16) ONNX graph with FP32 inputs and outputs, so precision is a
property of the file every backend builds. FP16 is onnxconverter-common's ``float16`` pass; ops named in
``op_block_list`` and each EA block's key/query projections and softmaxes (found by graph structure) stay
FP32. Why: docs/precision.md#fp16-the-precision-lives-in-the-graph."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
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

#: Op types kept in FP32 on top of onnxconverter-common's own list (which holds Resize, TopK, Min/Max, ...): none.
#: Keeping every Softmax does not help (docs/precision.md#which-nodes-stay-fp32); the attention projections
#: that need FP32 are kept by node (``attention_fp32``), not by op type.
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


#: Ops that only move or select elements: the walk from a Softmax back to its projection (and on to its MatMul)
#: crosses them. Reshape to heads, per-head Slice/Split, Transpose, ... (and Cast, in a graph already converted)
_LAYOUT_OPS = frozenset(
    {"Reshape", "Slice", "Split", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"}
)


@dataclass(frozen=True)
class AttentionProjection:
    """A Conv whose output, through layout ops only, is normalised by a Softmax that feeds a MatMul (or Einsum):
    an EA block's ``keys`` (the softmax over positions, the last axis) or ``queries`` (over channels, the axis
    before it). ``nodes`` names the Conv, the layout ops between, and the Softmax: what stays FP32; ``matmul`` the
    product the Softmax feeds (the context product, or the context's use by the queries)."""

    role: str
    conv: str
    softmax: str
    nodes: tuple[str, ...]
    matmul: str = ""


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed or duplicate-named node a unique name (the converter blocks nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_effattn_{i}"
        seen.add(node.name)


def attention_projections(model: onnx.ModelProto) -> list[AttentionProjection]:
    """The key and query projections of every EA block in ``model`` (vectorised or one head at a time), found
    from the graph's structure: Conv -> layout ops -> Softmax -> layout ops -> MatMul. Names its nodes first."""
    _name_nodes(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    producers = {o: n for n in model.graph.node for o in n.output if o}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info}
    except Exception:  # a graph shape inference cannot follow: only negative Softmax axes are read
        ranks = {}

    def matmul_fed(name: str) -> str | None:
        """The MatMul (or Einsum) ``name`` reaches through layout ops, or None."""
        for n in consumers.get(name, []):
            if n.op_type in ("MatMul", "Einsum"):
                return n.name
            # a layout op's data input only: a Reshape's shape or a Slice's starts is not a path
            if n.op_type in _LAYOUT_OPS and n.input[0] == name:
                found = next(filter(None, map(matmul_fed, n.output)), None)
                if found is not None:
                    return found
        return None

    found = []
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        path, node = [], producers.get(softmax.input[0])
        while node is not None and node.op_type in _LAYOUT_OPS:
            path.append(node)
            node = producers.get(node.input[0])
        matmul = matmul_fed(softmax.output[0])
        if node is None or node.op_type != "Conv" or matmul is None:
            continue
        axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
        rank = ranks.get(softmax.input[0])
        if axis >= 0 and rank is None:
            continue
        axis = axis - rank if axis >= 0 and rank is not None else axis
        role = {-1: "keys", -2: "queries"}.get(axis)
        if role is not None:
            names = (node.name, *(p.name for p in reversed(path)), softmax.name)
            found.append(AttentionProjection(role, node.name, softmax.name, names, matmul))
    return found


def _half(
    model: onnx.ModelProto, onnx_in: Path, fp32_ops: Sequence[str], attention_fp32: bool = True
) -> onnx.ModelProto:
    """onnxconverter-common's FP16 pass: FP32 I/O, FP16 weights, casts at the edges of blocked ops and nodes."""
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(fp32_ops))
    nodes = sorted({n for p in attention_projections(model) for n in p.nodes}) if attention_fp32 else []
    log.debug("kept in FP32 by node: %s", ", ".join(nodes) or "none")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns about every value it clamps to the FP16 range
            half = float16.convert_float_to_float16(
                model, keep_io_types=True, op_block_list=block, node_block_list=nodes
            )
    except Exception as e:  # the converter raises plain Exceptions
        raise ExportError(f"half-precision conversion of {onnx_in} failed: {first_line(e)}") from e
    _drop_round_trips(half, set(nodes))
    return restore_float_outputs(
        half, {o.name for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    )


def _drop_round_trips(model: onnx.ModelProto, fp32_nodes: set[str]) -> None:
    """Remove FP32 -> FP16 -> FP32 round trips between nodes kept in FP32, in place. onnxconverter-common 1.16
    leaves one when a kept node feeds several kept nodes (a per-head block: Reshape -> Slice per head), which
    would round the key/query logits to FP16 after all. The consumers' Casts read the FP32 value instead."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}

    def cast_to(n: onnx.NodeProto) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    drop: list[onnx.NodeProto] = []
    for down in model.graph.node:
        src = producers.get(down.input[0]) if down.input else None
        if cast_to(down) != TensorProto.FLOAT16 or src is None or src.name not in fp32_nodes:
            continue
        ups = consumers.get(down.output[0], [])
        if not ups or down.output[0] in outputs or any(cast_to(u) != TensorProto.FLOAT for u in ups):
            continue
        if any(u.output[0] in outputs for u in ups):
            continue
        for up in ups:
            for n in consumers.get(up.output[0], []):
                n.input[:] = [down.input[0] if i == up.output[0] else i for i in n.input]
        drop += [down, *ups]
    for n in drop:
        model.graph.node.remove(n)


def restore_float_outputs(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
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
    attention_fp32: bool = True,
    force: bool = False,
) -> Path:
    """Write an FP16 copy of ``onnx_in`` to ``onnx_out`` (FP32 I/O, FP16 weights, ``fp32_ops`` in FP32).

    With ``attention_fp32`` each EA block's key and query projection Convs and their Softmaxes stay FP32
    (:func:`attention_projections`); the value and reprojection Convs are FP16. The effattn metadata is
    carried over with ``effattn.precision = fp16``.
    """
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    check_writable(onnx_out, force)
    half = _half(_load_fp32(onnx_in), onnx_in, fp32_ops, attention_fp32)
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
    attention_fp32: bool = True,
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
    bf16 = _fp16_to_bf16(_half(model, onnx_in, fp32_ops, attention_fp32))
    return _write(bf16, onnx_out, force, "bf16", fp32_ops, onnx_in)


#: The conversion that makes each ``made_by="convert"`` precision of :mod:`effattn.precisions` from the FP32 graph.
CONVERTERS = {"fp16": to_fp16, "bf16": to_bf16}
