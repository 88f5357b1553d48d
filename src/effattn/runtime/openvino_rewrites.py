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


def interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of ONNX Resize mode ``linear``, ``half_pixel`` coordinates, along one axis: output
    i reads source x = (i + 0.5) * size_in / size_out - 0.5, clamped to the edges, from its two neighbours. In FP32,
    as torch and the runtimes compute the coordinates."""
    f32 = np.float32
    x = np.clip((np.arange(size_out, dtype=f32) + f32(0.5)) * (f32(size_in) / f32(size_out)) - f32(0.5), 0, size_in - 1)
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
        shapes = _resized_shapes(op)
        if shapes is None:
            continue
        (h_in, w_in), (h_out, w_out) = shapes
        # H first, then W: the last MatMul's constant operand is its second, so the CPU plugin runs it as a
        # FullyConnected in the model's inference precision (the other order left it an FP32 MatMul, and slower)
        y = op.input_value(0)
        if h_in != h_out:
            a_h = interpolation_matrix(h_in, h_out)
            if precision == "bf16":  # the plugin keeps a constant first operand's FP32: make it BF16 itself
                product = ops.matmul(ops.constant(a_h, Type.bf16), ops.convert(y, Type.bf16), False, False)
                y = ops.convert(product, Type.f32).output(0)
            else:
                y = ops.matmul(ops.constant(a_h), y, False, False).output(0)
        if w_in != w_out:
            y = ops.matmul(y, ops.constant(interpolation_matrix(w_in, w_out).T.copy()), False, False).output(0)
        name = op.get_friendly_name()
        y.get_node().set_friendly_name(name)
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(y)
        rewritten.append(name)
    if rewritten:
        model.validate_nodes_and_infer_types()
        log.debug("OpenVINO: output resizes %s run as MatMuls", rewritten)
    return rewritten


def _resized_shapes(op) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((H, W) in, (H, W) out) of an Interpolate the matrices compute exactly and that only feeds graph outputs,
    else None."""
    if op.get_type_name() != "Interpolate":
        return None
    attrs = op.get_attributes()
    source, result = op.input_value(0), op.output(0)
    if not (source.get_partial_shape().is_static and result.get_partial_shape().is_static):
        return None
    shape_in, shape_out = list(source.get_shape()), list(result.get_shape())
    coordinates = attrs.get("coordinate_transformation_mode")
    exact = (
        attrs.get("mode") == "linear_onnx"
        and (coordinates == "half_pixel" or (coordinates == "pytorch_half_pixel" and min(shape_out[2:]) > 1))
        and not attrs.get("antialias")
        and not any([*attrs.get("pads_begin", []), *attrs.get("pads_end", [])])
        and source.get_element_type().get_type_name() == "f32"
        and len(shape_in) == 4
        and shape_in[:2] == shape_out[:2]
        and max(shape_in[2:]) <= MAX_INPUT_SIZE
    )
    outputs_only = all(t.get_node().get_type_name() == "Result" for t in result.get_target_inputs())
    if not (exact and outputs_only):
        return None
    return (shape_in[2], shape_in[3]), (shape_out[2], shape_out[3])
