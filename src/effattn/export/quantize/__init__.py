"""The INT8 (and FP8) stage: an explicitly quantized (QDQ) ONNX graph that TensorRT, ONNX Runtime and OpenVINO run.

:func:`quantize` orchestrates; :mod:`.calibration` (the data), :mod:`.qdq` (inspection, which engines import),
:mod:`.rewrites` (graph surgery) and :mod:`.fp8` (the FP8 E4M3 form) do the work.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ... import metadata, precisions
from ...errors import ExportError, InputError, first_line
from ...files import atomic_output, check_writable
from ...metadata import read_metadata, set_metadata
from .calibration import (
    DEFAULT_SAMPLES,
    MAX_SAMPLES,
    _Reader,
    _refuse_constant,
    calibration_feeds,
    random_samples,
    read_calibration,
    zoo_samples,
)
from .fp8 import FP8_MAX, FP8_OPSET, INT8_MAX, fp8_ineligible, int8_to_fp8
from .half import float_type, qdq_to_fp16, softmax_fp32_nodes
from .nncf_openvino import check_ir_output, nncf_available, quantize_ir
from .qdq import FLOAT_OPS, QUANTIZED_OPS, QdqSummary, check_qdq, qdq_problems_of_values, qdq_summary
from .rewrites import after_concat, split_concat_convs

__all__ = [
    "CALIBRATION",
    "DEFAULT_SAMPLES",
    "FLOAT_OPS",
    "FP8_MAX",
    "FP8_OPSET",
    "INT8_MAX",
    "MAX_SAMPLES",
    "QUANTIZED_OPS",
    "RECIPES",
    "QdqSummary",
    "QuantizeResult",
    "Recipe",
    "after_concat",
    "calibration_feeds",
    "check_qdq",
    "float_type",
    "fp8_ineligible",
    "int8_to_fp8",
    "nncf_available",
    "qdq_float_to_fp16",
    "qdq_problems_of_values",
    "qdq_summary",
    "qdq_to_fp16",
    "quantize",
    "random_samples",
    "read_calibration",
    "softmax_fp32_nodes",
    "split_concat_convs",
    "zoo_samples",
]

log = logging.getLogger(__name__)

#: Q/DQ on the *inputs* of the quantized ops only, as TensorRT's explicit quantization expects: no Q/DQ on
#: their outputs (ONNX Runtime's default would round the softmax logits to INT8) and a dedicated pair per
#: consumer (so the residual Add and Shape ops read the float tensor, not its INT8 rounding).
_PLACEMENT = {"OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS), "DedicatedQDQPair": True}
CALIBRATION = "effattn.calibration"  # metadata key: where the activation ranges came from


def _nothing(model: onnx.ModelProto) -> list[str]:
    return []


@dataclass(frozen=True)
class Recipe:
    """How :func:`quantize` makes one quantized precision from the INT8 pass (the conversion its row needs)."""

    keep_float: Callable[[onnx.ModelProto], list[str]] = _nothing  # names of nodes of ``ops`` left in float
    float_weights: bool = False  # weights stay float behind a Q/DQ pair instead of stored quantized
    finish: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None  # the pass after calibration
    none_left: str = ""  # the refusal when keep_float leaves no node of ``ops``


#: One recipe per quantized precision of :mod:`effattn.precisions` (tests check the two agree).
RECIPES: dict[str, Recipe] = {
    "int8": Recipe(),
    "fp8": Recipe(
        fp8_ineligible,
        float_weights=True,
        finish=int8_to_fp8,
        none_left="has no Conv TensorRT runs in FP8 (each has 16 or fewer input or output channels or a "
        "filter over 32 taps: NVIDIA's rule for FP8 convolutions); quantize it to INT8 instead",
    ),
}


@dataclass
class QuantizeResult:
    path: Path
    precision: str  # int8 or fp8
    calibration: str  # where the calibration data came from
    samples: int
    quantized: dict[str, int] = field(default_factory=dict)  # op type -> nodes whose operands are both quantized
    seconds: float = 0.0


def _refuse_unquantizable(path: Path, model: onnx.ModelProto, meta: Mapping[str, str]) -> None:
    """One clear line for every file this stage cannot turn into a TensorRT-compatible INT8 graph."""
    precision = metadata.precision_of(meta)
    if precision != "fp32":
        raise ExportError(f"{path} is already {precision}; quantize the FP32 export instead")
    ops = Counter(n.op_type for n in model.graph.node)
    if ops["QuantizeLinear"] or ops["DequantizeLinear"] or ops["QLinearConv"]:
        raise ExportError(f"{path} already holds quantized nodes; quantize the FP32 export instead")
    if not any(ops[op] for op in QUANTIZED_OPS):
        raise ExportError(
            f"{path} has no {' or '.join(QUANTIZED_OPS)} node to quantize (ops: {', '.join(sorted(ops)) or 'none'})"
        )
    inits = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in inits and value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"{path}: input {value.name!r} is not float32; calibration needs float32 inputs")


def _refuse_nothing_to_quantize(path: Path, model: onnx.ModelProto, ops: Sequence[str], recipe: Recipe) -> None:
    """The refusal when no node of ``ops`` would be quantized: the recipe's (FP8: NVIDIA's rule keeps each Conv
    float) where the graph holds some of ``ops``; otherwise the graph has none of them (custom ``ops``)."""
    if recipe.none_left and any(n.op_type in ops for n in model.graph.node):
        raise ExportError(f"{path} {recipe.none_left}")
    raise ExportError(
        f"{path} has no {' or '.join(ops) or 'op'} node to quantize (ops: "
        f"{', '.join(sorted({n.op_type for n in model.graph.node})) or 'none'})"
    )


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends
        raise ExportError(f"{path} is not an ONNX model ({type(e).__name__}: {first_line(e)})") from None


@contextlib.contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantizer logs to the root logger and prints to stdout: keep both in the debug log."""
    root = logging.getLogger()

    def to_debug(record: logging.LogRecord) -> bool:
        log.debug("onnxruntime.quantization: %s", record.getMessage())
        return False

    root.addFilter(to_debug)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(to_debug)


def _run_quantizer(
    src: onnx.ModelProto,
    feeds: list[dict[str, np.ndarray]],
    ops: Sequence[str],
    exclude: Sequence[str] = (),
    float_weights: bool = False,
) -> onnx.ModelProto:
    """ONNX Runtime's quantize_static with TensorRT's rules and MinMax calibration, which takes the profile's
    min, opt and max sizes (why MinMax: docs/decisions.md#calibration-minmax). ``float_weights``: keep the
    weights in float behind a Q/DQ pair instead of storing them as INT8 (what the FP8 graph needs)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    with tempfile.TemporaryDirectory(prefix="effattn-quantize-") as tmp, _quiet_quantizer():
        out, ranges = Path(tmp) / "int8.onnx", Path(tmp) / "ranges.json"
        try:
            quantize_static(
                src,
                str(out),
                _Reader(feeds),
                calibration_cache_path=ranges,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=list(ops),
                nodes_to_exclude=[*after_concat(src, ops), *exclude],
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                    "AddQDQPairToWeight": float_weights,
                    **_PLACEMENT,
                },
            )
        except Exception as e:  # the quantizer and the calibration session raise many types
            raise ExportError(f"INT8 quantization failed: {first_line(e)}") from e
        qdq = onnx.load(str(out))
        _refuse_empty_ranges(qdq, load_tensors_data(ranges))
        return qdq


def _refuse_empty_ranges(qdq: onnx.ModelProto, ranges) -> None:
    """Refuse an activation whose calibrated range is empty (0 everywhere on the calibration data, e.g. a ReLU
    that never fired): ONNX Runtime writes scale 1.0 for it (``compute_scale_zp``), a valid-looking number that
    rounds every real value of the tensor to a whole number. The ranges are those ``quantize_static`` used,
    from its calibration cache (onnxruntime's ``quantize.py``, ``calibration_cache_path``)."""
    inits = {t.name for t in qdq.graph.initializer}
    for node in qdq.graph.node:
        name = node.input[0] if node.op_type == "QuantizeLinear" else None
        if name is None or name in inits or name not in ranges:
            continue
        amax = max(float(np.max(np.abs(v))) for v in ranges[name].range_value)
        if amax / 127 < np.finfo(np.float32).tiny:  # ONNX Runtime's test: a scale (range / 254) below tiny -> 1.0
            size = "0" if amax == 0 else f"at most {amax:.3g}"
            raise ExportError(
                f"tensor {name!r} (quantized by {node.name!r}) is {size} on all the calibration data, "
                "too small a range to scale; calibrate on inputs that exercise it. Nothing was written"
            )


def quantize(
    onnx_in: str | Path,
    onnx_out: str | Path,
    *,
    calibration: str | Path | Sequence[Mapping[str, np.ndarray]] | None = None,
    samples: int = DEFAULT_SAMPLES,
    ops: Sequence[str] = QUANTIZED_OPS,
    seed: int = 0,
    precision: str = precisions.DEFAULT_QUANTIZED,
    float_type: str = "fp32",
    preset: str = "performance",
    keep_float: str = "attention",
    force: bool = False,
) -> QuantizeResult:
    """Write a signed symmetric INT8 (or, ``precision="fp8"``, FP8 E4M3) QDQ copy of the FP32 export
    ``onnx_in`` to ``onnx_out``.

    TensorRT builds explicit-quantization networks from QDQ graphs only with *signed, symmetric* INT8 (zero
    point 0) for activations as well as weights, and keeps biases in float; ONNX Runtime's ``quantize_static``
    defaults (unsigned activations with zero points, INT32 biases) do not fit it. So this asks ONNX Runtime's
    quantizer for exactly that: QInt8 activations and weights, both symmetric, per-channel weights, float
    biases, QDQ format. Before the file is written the graph is checked for those properties; a graph that
    breaks one is an error, not a file. Each quantized precision follows its :data:`RECIPES` entry.

    ``calibration``: a folder of ``.npy``/``.npz`` files, one such file, or a list of feeds; without it
    ``samples`` images come from the zoo model's generator, else random inputs (with a warning).
    ``ops``: op types given INT8 inputs (see ``QUANTIZED_OPS`` for why the attention stays float).
    ``float_type``: the unquantized part's type, "fp32" (for the CPU runtimes; TensorRT builds convert it) or
    "fp16" (:func:`qdq_to_fp16`: the graph TensorRT runs, softmax inputs FP32).

    A ``.xml`` ``onnx_out`` is the CPU's INT8 artifact instead: NNCF's quantization on OpenVINO, written as OpenVINO
    IR (:mod:`.nncf_openvino`), with NNCF's ``preset`` and ``keep_float`` (``attention``: the EA softmax products
    stay float), from the same calibration feeds; ``ops``, ``precision`` and ``float_type`` are the QDQ graph's.
    """
    start = time.perf_counter()
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    ir = onnx_out.suffix.lower() == ".xml"
    if ir:  # precision, float_type and ops shape the QDQ graph; NNCF places its own INT8
        check_ir_output(onnx_out, force, preset, keep_float, (precision, float_type, *ops) != _IR_QDQ_OPTIONS)
    else:
        check_writable(onnx_out, force)
    _check_options(samples, precision, float_type)
    meta = read_metadata(onnx_in)
    model = _load(onnx_in)
    _refuse_unquantizable(onnx_in, model, meta)
    split, recipe = split_concat_convs(model)[0], RECIPES[precision]
    exclude = recipe.keep_float(split)
    if not any(n.op_type in ops and n.name not in exclude for n in split.graph.node):
        _refuse_nothing_to_quantize(onnx_in, split, ops, recipe)
    feeds, where = _feeds(model, meta, calibration, samples, seed)
    if ir:
        values = {metadata.PRECISION: precision, CALIBRATION: where}
        counts = quantize_ir(onnx_in, model, feeds, onnx_out, values, preset=preset, keep_float=keep_float, force=force)
        return QuantizeResult(onnx_out, precision, where, len(feeds), counts, time.perf_counter() - start)
    qdq = _run_quantizer(split, feeds, ops, exclude, float_weights=recipe.float_weights)
    if recipe.finish is not None:
        qdq = recipe.finish(qdq)
    summary = qdq_summary(qdq)
    if not summary.tensorrt_compatible or summary.precision != precision:
        raise ExportError(
            f"quantized {onnx_in} is not a TensorRT-compatible {precision} graph (zero points "
            f"{sorted(summary.zero_point_types)}, {summary.nonzero_zero_points} non-zero, "
            f"{summary.per_channel_activations} per-channel activations); nothing was written"
        )
    check_qdq(qdq, f"the {precision} graph calibrated on {where} (nothing was written; is the data in range?)")
    if float_type == "fp16":
        qdq = qdq_to_fp16(qdq)
    set_metadata(
        qdq,
        {
            metadata.PRECISION: precision,
            metadata.FP32_OPS: ",".join(FLOAT_OPS),
            metadata.FLOAT_TYPE: float_type,
            CALIBRATION: where,
        },
    )
    with atomic_output(onnx_out, force) as tmp:
        onnx.save(qdq, tmp)
    log.debug("wrote %s QDQ graph %s (%s; calibration %s)", precision, onnx_out, dict(summary.quantized), where)
    return QuantizeResult(onnx_out, precision, where, len(feeds), dict(summary.quantized), time.perf_counter() - start)


#: The float types a QDQ graph's unquantized part can have (``quantize(float_type=...)``).
FLOAT_TYPES = ("fp32", "fp16")
#: ``quantize``'s QDQ options at their defaults: the only ones a .xml output (NNCF's IR) takes
_IR_QDQ_OPTIONS = ("int8", "fp32", *QUANTIZED_OPS)


def _check_options(samples: int, precision: str, float_type: str) -> None:
    if not 0 < samples <= MAX_SAMPLES:
        raise InputError(f"samples must be 1 to {MAX_SAMPLES}, got {samples}")
    if precision not in precisions.quantized():
        raise InputError(f"precision must be one of {', '.join(precisions.quantized())}; got {precision!r}")
    if float_type not in FLOAT_TYPES:
        raise InputError(f"float_type must be one of {', '.join(FLOAT_TYPES)}; got {float_type!r}")


def _feeds(model: onnx.ModelProto, meta, calibration, samples: int, seed: int) -> tuple[list[dict], str]:
    """The calibration feeds of the model's inputs (not its initializers) and where they came from, refused when
    an input is constant."""
    inits = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in inits]
    feeds, where = calibration_feeds(calibration, meta, names, metadata.profile_of(meta), samples, seed)
    _refuse_constant(feeds)
    return feeds, where


def qdq_float_to_fp16(onnx_in: str | Path, onnx_out: str | Path, *, force: bool = False) -> Path:
    """Write the FP16-float form (:func:`qdq_to_fp16`) of the FP32-float QDQ file ``onnx_in`` to ``onnx_out``,
    with its metadata and ``effattn.float_type`` fp16: what a TensorRT build of an INT8/FP8 file runs."""
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    check_writable(onnx_out, force)
    model = _load(onnx_in)
    try:
        half = qdq_to_fp16(model)
    except ExportError as e:
        raise ExportError(f"{onnx_in}: {e}") from None
    set_metadata(half, {**read_metadata(onnx_in), metadata.FLOAT_TYPE: "fp16"})
    with atomic_output(onnx_out, force) as tmp:
        onnx.save(half, tmp)
    return onnx_out
