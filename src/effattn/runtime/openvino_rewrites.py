"""Rewrites OpenVINORunner applies to a model compiled for one input shape: a bilinear resize that produces a graph
output becomes two MatMuls with constant interpolation matrices (what the Resize computes, exactly). Why: on the CPU
plugin the output resize runs in a blocked NHWC layout and a Reorder then writes the planar FP32 output, a third of
a segmenter's time; the MatMuls write the planar output at once. Where the CPU has AMX: without it the dense products
cost more than the resize (docs/decisions.md#the-output-resize-as-matmuls)."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

#: the largest input height/width rewritten: the dense matrices cost 2 * (input size) FLOPs per output value, so
#: beyond this the Interpolate kernel is cheaper (measured: 1.1x at 64 -> 256, 1.01x at 128 -> 512)
MAX_INPUT_SIZE = 128


def interpolation_matrix(size_in: int, size_out: int, scale: float | None = None) -> np.ndarray:
    """(size_out, size_in) weights of ONNX Resize mode ``linear``, ``half_pixel`` coordinates, along one axis: output
    i reads source x = (i + 0.5) / scale - 0.5, clamped to the edges, from its two neighbours. ``scale``: the one the
    Resize was given (ONNX uses it, not size_out / size_in, which it defaults to). In FP32, as torch and the runtimes
    compute the coordinates."""
    f32 = np.float32
    step = f32(size_in) / f32(size_out) if scale is None else f32(1) / f32(scale)
    x = np.clip((np.arange(size_out, dtype=f32) + f32(0.5)) * step - f32(0.5), 0, size_in - 1)
    return np.maximum(f32(0), f32(1) - np.abs(x[:, None] - np.arange(size_in, dtype=f32)[None, :]))


def output_resizes_as_matmuls(model, precision: str = "f32") -> list[str]:
    """Rewrite, in place, each bilinear Interpolate of ``model`` (static shapes) that only feeds graph outputs as
    ``A_h @ x @ A_w^T`` (:func:`interpolation_matrix`); returns the names rewritten. Only what the matrices compute
    exactly: ``linear_onnx`` mode, ``half_pixel`` coordinates (or ``pytorch_half_pixel`` with both output sizes
    above 1), no antialias or padding, a 4-D FP32 tensor resized along H and W only. ``precision``: the model's
    inference precision; with ``bf16`` the first product is BF16 (its constant, its input), as the plugin runs
    everything else there: an FP32 constant would keep that MatMul on FP32 kernels (1.19x vs 1.12x over the
    Interpolate on ea_segnet @ 256)."""
    from openvino import Type
    from openvino import opset13 as ops

    rewritten = []
    for op in model.get_ordered_ops():
        axes = _resized_axes(op)
        if axes is None:
            continue
        (h_in, h_out, scale_h), (w_in, w_out, scale_w) = axes
        # H first, then W: the last MatMul's constant operand is its second, so the CPU plugin runs it as a
        # FullyConnected in the model's inference precision (the other order left it an FP32 MatMul, and slower)
        y = op.input_value(0)
        if (scale_h or h_out / h_in) != 1:  # scale 1 is the identity, even where ONNX was given no scale
            a_h = interpolation_matrix(h_in, h_out, scale_h)
            if precision == "bf16":  # the plugin keeps a constant first operand's FP32: make it BF16 itself
                product = ops.matmul(ops.constant(a_h, Type.bf16), ops.convert(y, Type.bf16), False, False)
                y = ops.convert(product, Type.f32).output(0)
            else:
                y = ops.matmul(ops.constant(a_h), y, False, False).output(0)
        if (scale_w or w_out / w_in) != 1:
            y = ops.matmul(y, ops.constant(interpolation_matrix(w_in, w_out, scale_w).T.copy()), False, False).output(0)
        name = op.get_friendly_name()
        y.get_node().set_friendly_name(name)
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(y)
        rewritten.append(name)
    if rewritten:
        model.validate_nodes_and_infer_types()
        log.debug("OpenVINO: output resizes %s run as MatMuls", rewritten)
    return rewritten


def _resized_axes(op) -> tuple[tuple[int, int, float | None], ...] | None:
    """(size in, size out, scale) along H and W of an Interpolate the matrices compute exactly and that only feeds
    graph outputs, else None. The scale is the constant one a ``scales`` Interpolate computes its coordinates with
    (ONNX Resize given scales: 1.5 takes 5 to 7, its coordinates (i + 0.5) / 1.5 - 0.5), None when given sizes."""
    if op.get_type_name() != "Interpolate":
        return None
    attrs = op.get_attributes()
    source, result = op.input_value(0), op.output(0)
    if not (source.get_partial_shape().is_static and result.get_partial_shape().is_static):
        return None
    shape_in, shape_out = list(source.get_shape()), list(result.get_shape())
    coordinates = attrs.get("coordinate_transformation_mode")
    scales: list[float | None] | None = [None] * len(shape_in)
    if attrs.get("shape_calculation_mode") == "scales":
        scales = _scales(op, len(shape_in))
    if scales is None:  # not constants
        return None
    exact = (
        attrs.get("mode") == "linear_onnx"
        and (coordinates == "half_pixel" or (coordinates == "pytorch_half_pixel" and min(shape_out[2:]) > 1))
        and not attrs.get("antialias")
        and not any([*attrs.get("pads_begin", []), *attrs.get("pads_end", [])])
        and source.get_element_type().get_type_name() == "f32"
        and len(shape_in) == 4
        and shape_in[:2] == shape_out[:2]
        and all(s in (None, 1) for s in scales[:2])
        and max(shape_in[2:]) <= MAX_INPUT_SIZE
    )
    outputs_only = all(t.get_node().get_type_name() == "Result" for t in result.get_target_inputs())
    axes = tuple((shape_in[axis], shape_out[axis], scales[axis]) for axis in (2, 3))
    identity = all((scale or size_out / size_in) == 1 for size_in, size_out, scale in axes)
    return None if identity or not (exact and outputs_only) else axes


def _scales(op, rank: int) -> list[float | None] | None:
    """Per axis, the scales of a ``scales`` Interpolate (v4: its third input, v11: its second; then the axes they
    are for, all by default), or None where they are not constants."""
    inputs = op.input_values()
    first = 2 if op.get_type_info().version_id == "opset4" else 1
    scales = _constant(inputs[first])
    axes = _constant(inputs[first + 1]) if len(inputs) > first + 1 else np.arange(rank)
    if scales is None or axes is None:
        return None
    per_axis: list[float | None] = [1.0] * rank
    for axis, scale in zip(axes, scales):
        per_axis[int(axis)] = float(scale)
    return per_axis


def _constant(value) -> np.ndarray | None:
    """The data of the Constant producing ``value``, else None."""
    node = value.get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None
