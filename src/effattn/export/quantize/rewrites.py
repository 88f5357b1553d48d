"""Graph surgery before quantization: which Convs stay float, and splitting Convs that read a Concat."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


def after_concat(model: onnx.ModelProto, ops: Sequence[str]) -> list[str]:
    """Names of the ``ops`` nodes that read a Concat's output: they stay float.

    OpenVINO moves the quantizer of a Concat's output onto its inputs, which cost points of argmax agreement
    that ONNX Runtime did not lose (docs/decisions.md#what-stays-in-float). :func:`split_concat_convs` runs
    first, so only Convs it cannot split (grouped, unknown channel counts) are left here.
    """
    concat_outputs = {o for n in model.graph.node if n.op_type == "Concat" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in ops and n.input and n.input[0] in concat_outputs]


def _channels(model: onnx.ModelProto) -> dict[str, int]:
    """Static channel counts (axis 1) of the graph's tensors, from ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    channels = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 1 and dims[1].HasField("dim_value"):
            channels[value.name] = dims[1].dim_value
    return channels


def split_concat_convs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` where each plain Conv reading a channel Concat is one Conv per Concat input,
    summed: ``Conv(Concat(a, b), W) == Conv(a, W[:, :Ca]) + Conv(b, W[:, Ca:])`` (bias on the first).

    Each of those Convs reads one tensor, so each gets its own INT8 scale and no quantizer sits on a
    Concat: OpenVINO moves a Concat's quantizer onto its inputs and lost agreement there, even with one scale
    shared by both inputs; with the split that Conv runs in INT8 at the same agreement as the rest
    (docs/precision.md#a-conv-that-reads-a-concat-is-split). Returns the new model and the names of
    the Convs split; Convs whose split is not known (grouped, channel counts not inferable) are left as
    they are (and stay float: :func:`after_concat`).
    """
    model = copy.deepcopy(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    channels = None
    split, nodes = [], []
    for node in graph.node:
        concat = producer.get(node.input[0]) if node.op_type == "Conv" and node.input else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            concat is None
            or concat.op_type != "Concat"
            or attrs.get("group", 1) != 1
            or len(node.input) < 2
            or node.input[1] not in inits
            or {a.name: helper.get_attribute_value(a) for a in concat.attribute}.get("axis") not in (1, -3)
        ):
            nodes.append(node)
            continue
        channels = _channels(model) if channels is None else channels
        weight = numpy_helper.to_array(inits[node.input[1]])
        known = [channels.get(i) for i in concat.input]
        if known.count(None) == 1:  # e.g. a Resize's output: the Conv's weight gives the rest
            known[known.index(None)] = weight.shape[1] - sum(c for c in known if c is not None)
        sizes = [c for c in known if c is not None]
        if len(sizes) < len(known) or sum(sizes) != weight.shape[1] or min(sizes) <= 0 or weight.ndim < 3:
            nodes.append(node)
            continue
        offsets = np.cumsum([0, *sizes])
        partial = []
        for k, source in enumerate(concat.input):
            w = numpy_helper.from_array(weight[:, offsets[k] : offsets[k + 1]].copy(), f"{node.input[1]}_split{k}")
            graph.initializer.append(w)
            inputs = [source, w.name] + ([node.input[2]] if k == 0 and len(node.input) > 2 and node.input[2] else [])
            partial.append(f"{node.output[0]}_split{k}")
            nodes.append(helper.make_node("Conv", inputs, [partial[-1]], name=f"{node.name}_split{k}", **attrs))
        total = partial[0]
        for k in range(1, len(partial)):
            total_out = node.output[0] if k == len(partial) - 1 else f"{node.output[0]}_sum{k}"
            nodes.append(helper.make_node("Add", [total, partial[k]], [total_out], name=f"{node.name}_sum{k}"))
            total = total_out
        split.append(node.name)
    if split:
        del graph.node[:]
        graph.node.extend(nodes)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        # a Concat read by nothing else now, and a weight no node reads, go
        kept = [n for n in graph.node if n.op_type != "Concat" or any(o in used for o in n.output)]
        del graph.node[:]
        graph.node.extend(kept)
        used = {i for n in graph.node for i in n.input}
        for t in [t for t in graph.initializer if t.name not in used]:
            graph.initializer.remove(t)
    return model, split
