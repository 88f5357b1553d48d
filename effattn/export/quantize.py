"""The INT8 (and FP8) stage: an explicitly quantized (QDQ) ONNX graph that TensorRT, ONNX Runtime and OpenVINO run.

TensorRT builds explicit-quantization networks from QDQ graphs only with *signed, symmetric* INT8
(zero point 0) for activations as well as weights, and keeps biases in float; ONNX Runtime's
``quantize_static`` defaults (unsigned activations with zero points, INT32 biases) do not fit it.
So this stage asks ONNX Runtime's quantizer for exactly that: QInt8 activations and weights, both
symmetric, per-channel weights, float biases, QDQ format. Before the file is written the graph is
checked for those properties; a graph that breaks one is an error, not a file.

FP8 (E4M3, for TensorRT on compute capability 8.9+: Ada, Hopper) is the same graph with another code:
the INT8 pass runs with the weights left in float behind a Q/DQ pair (TensorRT quantizes them with
that scale), then every scale amax/127 becomes amax/448 - the same max-calibrated range, mapped onto
E4M3's largest finite value instead of 127 - and the zero points become FP8 zeros (opset 19, the first
whose Q/DQ take float8). Convs too small for TensorRT's FP8 kernels and the classifier Gemm stay float
(:func:`fp8_ineligible`).
NVIDIA ModelOpt's ONNX PTQ makes its FP8 graphs from an INT8 max calibration too (nvidia-modelopt 0.47.0
``onnx/quantization/fp8.py`` ``int8_to_fp8``) but multiplies the scales by 448/127, which maps amax onto
36 (127**2/448) instead of 448; on the trained ea_segnet_tiny at 256 x 256 that doubled the IoU drop
(1.41 vs 0.77 points; 3.70 vs 0.75 with every Conv in FP8), so this stage maps amax onto 448. ONNX
Runtime's own FP8 mode accepts only its "Distribution" calibration.

Calibration data (activation ranges) come from, in order: the caller (a folder of ``.npy``/``.npz``
files, one ``.npz``, or arrays), the zoo model's own sample generator (the data its shipped weights
were trained on), or random normal inputs with a warning, because noise has other activation ranges
than real images and the scales it gives may clip real activations or waste the INT8 range.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper, version_converter

from .. import metadata
from ..errors import ExportError, InputError, ModelError, first_line
from ..files import MAX_ARRAY_BYTES, atomic_output, check_writable, read_arrays
from ..metadata import read_metadata, set_metadata
from ..models import get_entry
from ..shapes import ShapeProfile, random_inputs

log = logging.getLogger(__name__)

#: Op types that get INT8 inputs. Measured (2026-11, 2-core EPYC, trained ea_segnet_tiny on 64 held-out
#: task images, MinMax calibration on 32 task images): Conv only -> argmax agreement 99.77 % vs eager FP32;
#: Conv + the attention MatMuls -> 99.77 % but a larger IoU drop (up to 0.14 points) and no speed gain
#: (OpenVINO on ea_resnet@224 35.3 vs 37.9 ms); ONNX Runtime's default op set, which quantizes the
#: Softmax too -> 69.5 %. So the attention softmaxes and context products stay in float.
QUANTIZED_OPS: tuple[str, ...] = ("Conv", "Gemm")
#: What this stage writes: INT8 (every TensorRT GPU, and the fast path on x86 CPUs through OpenVINO) or FP8 E4M3
#: (TensorRT on compute capability 8.9+; CPUs run it for parity only: ONNX Runtime and OpenVINO emulate it).
#: The zero-point type of each, the one TensorRT takes for it (signed INT8; FP8 E4M3, not E5M2 or the FNUZ kinds).
ZERO_POINT_TYPES = {"int8": "int8", "fp8": "float8_e4m3fn"}
QUANT_PRECISIONS = tuple(ZERO_POINT_TYPES)
FP8_MAX = 448.0  # the largest finite float8e4m3fn
INT8_MAX = 127.0  # symmetric INT8 (ONNX Runtime's symmetric range is -127..127)
FP8_OPSET = 19  # the first opset whose QuantizeLinear/DequantizeLinear take float8
#: Ops that must never be quantized (the attention core); listed in the file's metadata.
FLOAT_OPS: tuple[str, ...] = ("MatMul", "Softmax")
#: Q/DQ on the *inputs* of the quantized ops only, as TensorRT's explicit quantization expects: no Q/DQ on
#: their outputs (ONNX Runtime's default would round the softmax logits to INT8) and a dedicated pair per
#: consumer (so the residual Add and Shape ops read the float tensor, not its INT8 rounding).
_PLACEMENT = {"OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS), "DedicatedQDQPair": True}
DEFAULT_SAMPLES = 32
#: The most calibration samples one run takes: MinMax ranges settle long before (32 is the default), and ONNX
#: Runtime's calibrator keeps every sample's intermediate outputs in memory until it computes the ranges.
MAX_SAMPLES = 4096
CALIBRATION = "effattn.calibration"  # metadata key: where the activation ranges came from


@dataclass
class QuantizeResult:
    path: Path
    precision: str  # int8 or fp8
    calibration: str  # where the calibration data came from
    samples: int
    quantized: dict[str, int] = field(default_factory=dict)  # op type -> nodes whose operands are both quantized
    seconds: float = 0.0


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
        return next((p for p, t in ZERO_POINT_TYPES.items() if self.zero_point_types == {t}), None)

    @property
    def tensorrt_compatible(self) -> bool:
        return (self.precision is not None and self.nonzero_zero_points == 0 and not self.per_channel_activations
                and bool(self.quantized))


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
        per_channel_activations += int(node.op_type == "QuantizeLinear" and node.input[0] not in inits
                                       and scale is not None and int(np.prod(scale.dims)) > 1)
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zp is None:  # no zero point: uint8 by the ONNX spec
            types.add("uint8")
            continue
        value = numpy_helper.to_array(zp)
        types.add(value.dtype.name)
        nonzero += int(np.count_nonzero(value))
        per_channel += int(value.size > 1 and node.input[0] in inits)  # INT8-stored weight (DQ) or float weight (Q)
    fed = Counter(n.op_type for n in model.graph.node  # both operands (data and weight) dequantized from INT8
                  if len(n.input) >= 2 and n.input[0] in dq_outputs and n.input[1] in dq_outputs)
    unfed = Counter(n.op_type for n in model.graph.node if n.op_type in FLOAT_OPS and not set(n.input) & dq_outputs)
    return QdqSummary(fed, types, nonzero, per_channel, unfed, per_channel_activations)


#: The largest magnitude each zero-point type holds: scale x this must stay finite, or dequantizing overflows.
_QUANT_MAX = {"int8": 128, "uint8": 255, "int16": 32768, "uint16": 65535, "int32": 2**31, "int4": 8, "uint4": 15,
              "float8_e4m3fn": 448, "float8_e4m3fnuz": 240, "float8_e5m2": 57344, "float8_e5m2fnuz": 57344}


def _constants(model: onnx.ModelProto, names: set[str], base_dir: str) -> dict[str, np.ndarray]:
    """The values of the initializers and Constant nodes called ``names`` (external data read from ``base_dir``)."""
    tensors = {t.name: t for t in model.graph.initializer if t.name in names}
    tensors |= {n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant" and n.output[0] in names
                for a in n.attribute if a.name == "value"}
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
        return [f"{where} is {float(values[bad][0]):g} ({int(bad.sum())} of {values.size} values): a scale must "
                "be a finite, positive, normal float"]
    if float(values.max()) * _QUANT_MAX.get(zero_type, 1) > float(finfo.max):
        return [f"{where} is {float(values.max()):g}: times the {zero_type} range it overflows {scale.dtype.name}"]
    return []


def _axis_problems(where: str, node: onnx.NodeProto, scale: np.ndarray, dims: list[int] | None) -> list[str]:
    """Scale shapes as ONNX defines them: a scalar (per tensor), 1-D along ``axis`` (per axis), or, with
    ``block_size``, the input's rank (blocked)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("block_size", 0):
        return [] if dims is None or scale.ndim == len(dims) else [f"{where} has rank {scale.ndim}; a blocked "
                                                                    f"scale has the input's rank {len(dims)}"]
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
            problems.append(f"{node.op_type} {node.name!r} zero point {node.input[2]!r} has type {zero_type}, "
                            f"not one ONNX quantizes to ({', '.join(_QUANT_MAX)})")
        elif zero is not None and zero_type.startswith("float8") and not np.isfinite(zero.astype(np.float32)).all():
            problems.append(f"{node.op_type} {node.name!r} zero point {node.input[2]!r} is not finite")
        if scale is None:
            continue
        if zero is not None and zero.shape != scale.shape:
            problems.append(f"{where} has shape {scale.shape} but zero point {node.input[2]!r} {zero.shape}")
        problems += _scale_problems(where, scale, zero_type) + _axis_problems(where, node, scale,
                                                                              shapes.get(node.input[0]))
    return problems


def check_qdq(model: onnx.ModelProto, source: str, base_dir: str = "") -> None:
    """Refuse ``model`` (an :class:`ExportError` saying what ``source`` is) if any Q/DQ scale or zero point is
    wrong (:func:`qdq_problems_of_values`): the one check quantize runs before it writes a file and every
    command runs before it runs one."""
    problems = qdq_problems_of_values(model, base_dir)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ExportError(f"{source} has invalid quantization parameters: {'; '.join(problems[:3])}{more}")


# ------------------------------------------------------------------------------------------ calibration
def _check_finite(value: np.ndarray, name: str, where: str) -> None:
    """Refuse NaN or infinity in a calibration batch, naming the first bad sample: one gives a scale of inf or
    NaN (ONNX Runtime's MinMax takes the range as it comes), and with it a file that answers garbage."""
    with np.errstate(over="ignore", invalid="ignore"):  # finite as the model reads it: float64 1e300 is inf in FP32
        bad = ~np.isfinite(value.astype(np.float32)).reshape(len(value), -1).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(f"calibration input {name!r} from {where} holds NaN or infinity (as float32) in sample "
                         f"{first} ({int(bad.sum())} of {len(value)} samples); calibrate on finite data")


def _split(value: np.ndarray, name: str, where: str, profile: ShapeProfile | None) -> list[np.ndarray]:
    """One array (batch axis first) -> batch-1 items, checked against the input's profile."""
    if not np.issubdtype(value.dtype, np.floating):
        raise InputError(f"calibration input {name!r} from {where} has dtype {value.dtype}; expected float32 images")
    rank = profile[name].rank if profile is not None and name in profile else max(value.ndim, 1)
    if value.ndim != rank or not value.size:
        raise InputError(f"calibration input {name!r} from {where} has shape {value.shape}; expected rank {rank} "
                         "with the batch axis first")
    _check_finite(value, name, where)
    items = [x[None] for x in value.astype(np.float32, copy=False)]
    if profile is not None and name in profile:
        profile[name].check(items[0].shape)
    return items


def _read_npz_or_npy(path: Path, names: list[str], profile: ShapeProfile | None, max_bytes: int
                     ) -> tuple[list[dict[str, np.ndarray]], int]:
    """The batch-1 feeds of one file and the array bytes it held (counted against ``max_bytes``)."""
    data = read_arrays(path, names, max_bytes)
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise InputError(f"{path} holds one array but the model has inputs {names}; use .npz files keyed by name")
        data = {names[0]: data}
    columns = {n: _split(np.asarray(data[n]), n, str(path), profile) for n in names}
    return [dict(zip(names, row)) for row in zip(*columns.values())], sum(a.nbytes for a in data.values())


def read_calibration(source: str | Path, names: list[str], profile: ShapeProfile | None = None
                     ) -> list[dict[str, np.ndarray]]:
    """Batch-1 feeds from a folder of ``.npy``/``.npz`` files or one ``.npz``/``.npy`` file (batch axis first):
    at most :data:`~effattn.files.MAX_ARRAY_BYTES` of array data and :data:`MAX_SAMPLES` samples in all,
    regular files only (a FIFO or device among them is refused, never waited on)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix in (".npy", ".npz"))
        if not files:
            raise InputError(f"calibration folder {source} holds no .npy or .npz files")
    else:
        files = [source]
    feeds: list[dict[str, np.ndarray]] = []
    budget = MAX_ARRAY_BYTES
    for path in files:
        more, size = _read_npz_or_npy(path, names, profile, budget)
        feeds += more
        budget -= size
        if len(feeds) > MAX_SAMPLES:
            raise InputError(f"calibration data {source} holds more than {MAX_SAMPLES} samples (the most one "
                             "calibration uses); pass a subset")
    if not feeds:
        raise InputError(f"calibration data {source} holds no samples")
    return feeds


def zoo_samples(meta: Mapping[str, str], profile: ShapeProfile, count: int, seed: int = 0
                ) -> list[dict[str, np.ndarray]] | None:
    """``count`` images from the zoo model's sample generator (None if the file's model has none)."""
    name = meta.get(metadata.MODEL, "")
    if not name or ":" in name or len(profile) != 1:
        return None
    try:
        entry = get_entry(name)
    except ModelError:
        return None
    if entry.samples is None or not meta.get(metadata.CHECKPOINT_SHA256):
        return None
    (input_name, p), = profile.items()
    g = torch.Generator().manual_seed(seed)
    sizes = [p.opt[2:], p.min[2:], p.max[2:]]  # activation ranges depend on the image size too
    return [{input_name: entry.samples(1, *sizes[i % 3], g).numpy()} for i in range(count)]


def random_samples(profile: ShapeProfile, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` single-item random feeds at the profile's opt, min and max sizes in turn: activation ranges
    depend on the size (the attention averages over fewer positions at min, so its outputs are larger), and
    scales calibrated at one size clipped the EA block's reprojection input at another."""
    def at(which: str) -> ShapeProfile:
        shapes = profile.shapes(which)
        return ShapeProfile.from_dict({n: {k: (1, *s[1:]) for k in ("min", "opt", "max")} for n, s in shapes.items()})

    sizes = [at("opt"), at("min"), at("max")]
    return [random_inputs(sizes[i % 3], "opt", seed + i) for i in range(count)]


def calibration_feeds(calibration, meta: Mapping[str, str], names: list[str], profile: ShapeProfile | None,
                      samples: int, seed: int = 0) -> tuple[list[dict[str, np.ndarray]], str]:
    """The calibration feeds and a description of where they came from (recorded in the file)."""
    if calibration is not None:
        if isinstance(calibration, (str, Path)):
            return read_calibration(calibration, names, profile), f"files: {Path(calibration).name}"
        feeds = [{k: np.asarray(v, np.float32) for k, v in feed.items()} for feed in calibration]
        for k, feed in enumerate(feeds):
            for name, value in feed.items():
                _check_finite(np.atleast_1d(value), name, f"calibration feed {k}")
        return feeds, "arrays"
    if profile is None:
        raise InputError("the file has no effattn shape profile: pass calibration data (--calibration)")
    feeds = zoo_samples(meta, profile, samples, seed)
    if feeds is not None:
        return feeds, f"zoo samples: {meta[metadata.MODEL]} x{samples}"
    log.warning("calibrating on %d random normal inputs: real images have other activation ranges, so the "
                "quantization scales may clip them or waste range; pass real inputs with --calibration", samples)
    return random_samples(profile, samples, seed), f"random normal x{samples}"


def _refuse_constant(feeds: list[dict[str, np.ndarray]]) -> None:
    """Refuse an input that holds one value in every sample. All zeros is a range of width 0: its scale would be
    0, which ONNX Runtime replaces by 1.0 (``compute_scale_zp``), so real inputs round to a few levels. A
    non-zero constant c gets a valid scale |c|/127, but only for that one value: every activation behind it is
    calibrated on one point, and any other input is clipped to those ranges. Neither is calibration."""
    for name in feeds[0]:
        low = min(float(feed[name].min()) for feed in feeds)
        high = max(float(feed[name].max()) for feed in feeds)
        if low == high:
            why = ("a range of width 0 has no scale (ONNX Runtime would write 1.0)" if high == 0 else
                   "scales calibrated on one value clip every other input")
            raise InputError(f"calibration input {name!r} is the constant {high:g} in all {len(feeds)} samples: "
                             f"{why}; calibrate on real inputs")


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it: Iterator = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __len__(self) -> int:  # pragma: no cover - some ORT versions ask
        return 0


# ------------------------------------------------------------------------------------------ the stage
def _refuse_unquantizable(path: Path, model: onnx.ModelProto, meta: Mapping[str, str]) -> None:
    """One clear line for every file this stage cannot turn into a TensorRT-compatible INT8 graph."""
    precision = metadata.precision_of(meta)
    if precision != "fp32":
        raise ExportError(f"{path} is already {precision}; quantize the FP32 export instead")
    ops = Counter(n.op_type for n in model.graph.node)
    if ops["QuantizeLinear"] or ops["DequantizeLinear"] or ops["QLinearConv"]:
        raise ExportError(f"{path} already holds quantized nodes; quantize the FP32 export instead")
    if not any(ops[op] for op in QUANTIZED_OPS):
        raise ExportError(f"{path} has no {' or '.join(QUANTIZED_OPS)} node to quantize (ops: "
                          f"{', '.join(sorted(ops)) or 'none'})")
    inits = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in inits and value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"{path}: input {value.name!r} is not float32; calibration needs float32 inputs")


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


def fp8_ineligible(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv and Gemm nodes that stay float in an FP8 graph.

    Convs with 16 or fewer input or output channels, or more than 32 filter taps (a 7x7 kernel): NVIDIA
    ModelOpt's rule for TensorRT's FP8 convolutions (nvidia-modelopt 0.47.0 ``onnx/quantization/graph_utils.py``
    ``find_nodes_from_convs_to_exclude``, ``_MIN_CHANNELS_FP8 = 16``): FP8 kernels are slower than FP16 ones
    for small channel counts, and large filters have none. It also keeps accuracy: with every Conv of the
    trained ea_segnet_tiny in FP8 (the 3-channel stem and 3-class classifier too) argmax agreement at
    256 x 256 was 98.7 %, under the 99 % gate; with the rule 99.6 %.

    Every Gemm: in these networks it is the classifier head, a GEMV at batch 1 that tensor cores do not
    speed up and that ModelOpt leaves float too (``enable_gemv_detection_for_trt``). Measured on ea_resnet
    @ 224: output rel-L2 3.7e-2 with it in FP8, 2.1e-2 without.
    """
    inits = {t.name: t for t in model.graph.initializer}

    def eligible(conv: onnx.NodeProto) -> bool:
        weight = inits.get(conv.input[1]) if len(conv.input) > 1 else None  # None: a weight computed at run time
        dims = list(weight.dims) if weight is not None else []
        return len(dims) >= 3 and min(dims[:2]) > 16 and int(np.prod(dims[2:])) <= 32

    return [n.name for n in model.graph.node if n.op_type == "Gemm" or n.op_type == "Conv" and not eligible(n)]


def after_concat(model: onnx.ModelProto, ops: Sequence[str]) -> list[str]:
    """Names of the ``ops`` nodes that read a Concat's output: they stay float.

    OpenVINO moves the quantizer of a Concat's output onto its inputs; on ea_segnet_tiny (skip features
    concatenated with upsampled ReLU features) that cost 2-4 points of argmax agreement (97.6 % vs 99.7 %
    at 128 px, 94.9 % vs 99.3 % at 8x256 px) while ONNX Runtime ran the same graph as written. Keeping the
    one Conv after the Concat in float gives both runtimes 99.3-99.9 %. :func:`split_concat_convs` runs
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
    Concat. OpenVINO moves a Concat's quantizer onto its inputs, and on ea_segnet_tiny (attention output
    concatenated with upsampled ReLU features) that cost 2-4 points of argmax agreement even with one
    scale shared by both inputs; with the split that Conv runs in INT8 at the same agreement as the rest
    (it was 40 % of ea_segnet's OpenVINO INT8 time @ 256 in BF16). Returns the new model and the names of
    the Convs split; Convs whose split is not known (grouped, channel counts not inferable) are left as
    they are (and stay float: :func:`after_concat`).
    """
    from onnx import helper

    model = copy.deepcopy(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    channels = None
    split, nodes = [], []
    for node in graph.node:
        concat = producer.get(node.input[0]) if node.op_type == "Conv" and node.input else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (concat is None or concat.op_type != "Concat" or attrs.get("group", 1) != 1
                or len(node.input) < 2 or node.input[1] not in inits
                or {a.name: helper.get_attribute_value(a) for a in concat.attribute}.get("axis") not in (1, -3)):
            nodes.append(node)
            continue
        channels = _channels(model) if channels is None else channels
        weight = numpy_helper.to_array(inits[node.input[1]])
        sizes = [channels.get(i) for i in concat.input]
        if sizes.count(None) == 1:  # e.g. a Resize's output: the Conv's weight gives the rest
            sizes[sizes.index(None)] = weight.shape[1] - sum(c for c in sizes if c is not None)
        if None in sizes or sum(sizes) != weight.shape[1] or min(sizes) <= 0 or weight.ndim < 3:
            nodes.append(node)
            continue
        offsets = np.cumsum([0, *sizes])
        partial = []
        for k, source in enumerate(concat.input):
            w = numpy_helper.from_array(weight[:, offsets[k]:offsets[k + 1]].copy(), f"{node.input[1]}_split{k}")
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


def _run_quantizer(src: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], ops: Sequence[str],
                   exclude: Sequence[str] = (), float_weights: bool = False) -> onnx.ModelProto:
    """ONNX Runtime's quantize_static with TensorRT's rules. MinMax calibration: percentile and entropy
    measured no better on the trained segmenter (argmax 99.78 / 99.77 % vs 99.77 %) and need calibration
    inputs of one shape, where MinMax takes the profile's min, opt and max sizes. ``float_weights``: keep
    the weights in float behind a Q/DQ pair instead of storing them as INT8 (what the FP8 graph needs)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    with tempfile.TemporaryDirectory(prefix="effattn-quantize-") as tmp, _quiet_quantizer():
        out, ranges = Path(tmp) / "int8.onnx", Path(tmp) / "ranges.json"
        try:
            quantize_static(src, str(out), _Reader(feeds), calibration_cache_path=ranges, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                            op_types_to_quantize=list(ops), nodes_to_exclude=[*after_concat(src, ops), *exclude],
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "QuantizeBias": False, "AddQDQPairToWeight": float_weights,
                                           **_PLACEMENT})
        except Exception as e:  # the quantizer and the calibration session raise many types
            raise ExportError(f"INT8 quantization failed: {first_line(e)}") from e
        qdq = onnx.load(str(out))
        _refuse_empty_ranges(qdq, load_tensors_data(ranges))
        return qdq


def _refuse_empty_ranges(qdq: onnx.ModelProto, ranges) -> None:
    """Refuse an activation whose calibrated range is empty (0 everywhere on the calibration data, e.g. a ReLU
    that never fired): ONNX Runtime writes scale 1.0 for it (``compute_scale_zp``), a valid-looking number that
    rounds every real value of the tensor to a whole number. The ranges are those ``quantize_static`` used,
    from its calibration cache (onnxruntime 1.32 ``quantize.py``, ``calibration_cache_path``)."""
    inits = {t.name for t in qdq.graph.initializer}
    for node in qdq.graph.node:
        name = node.input[0] if node.op_type == "QuantizeLinear" else None
        if name is None or name in inits or name not in ranges:
            continue
        amax = max(float(np.max(np.abs(v))) for v in ranges[name].range_value)
        if amax / 127 < np.finfo(np.float32).tiny:  # ONNX Runtime's test: a scale (range / 254) below tiny -> 1.0
            size = "0" if amax == 0 else f"at most {amax:.3g}"
            raise ExportError(f"tensor {name!r} (quantized by {node.name!r}) is {size} on all the calibration data, "
                              "too small a range to scale; calibrate on inputs that exercise it. Nothing was written")


def int8_to_fp8(model: onnx.ModelProto) -> onnx.ModelProto:
    """The FP8 E4M3 form of a max-calibrated symmetric INT8 QDQ graph whose weights are float behind Q/DQ
    pairs: each scale (amax / 127) becomes amax / 448, each zero point an FP8 zero, the opset 19."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), FP8_OPSET)
    if opset < FP8_OPSET:
        try:
            model = version_converter.convert_version(model, FP8_OPSET)
        except Exception as e:  # the converter raises bare RuntimeErrors
            raise ExportError(f"cannot move the graph from opset {opset} to {FP8_OPSET} for FP8: {first_line(e)}") from e
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
            inits[zero_point].CopyFrom(helper.make_tensor(zero_point, TensorProto.FLOAT8E4M3FN, dims,
                                                          bytes(int(np.prod(dims))), raw=True))
        converted |= {scale, zero_point}
    quantized = {n.output[0] for n in quantizers if n.op_type == "QuantizeLinear"}
    kept = [v for v in model.graph.value_info if v.name not in quantized]  # they were typed INT8
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    return model


def quantize(
    onnx_in: str | Path,
    onnx_out: str | Path,
    *,
    calibration: str | Path | Sequence[Mapping[str, np.ndarray]] | None = None,
    samples: int = DEFAULT_SAMPLES,
    ops: Sequence[str] = QUANTIZED_OPS,
    seed: int = 0,
    precision: str = "int8",
    force: bool = False,
) -> QuantizeResult:
    """Write a signed symmetric INT8 (or, ``precision="fp8"``, FP8 E4M3) QDQ copy of the FP32 export
    ``onnx_in`` to ``onnx_out``.

    ``calibration``: a folder of ``.npy``/``.npz`` files, one such file, or a list of feeds; without it
    ``samples`` images come from the zoo model's generator, else random inputs (with a warning).
    ``ops``: op types given INT8 inputs (see ``QUANTIZED_OPS`` for why the attention stays float).
    """
    start = time.perf_counter()
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    check_writable(onnx_out, force)
    if not 0 < samples <= MAX_SAMPLES:
        raise InputError(f"samples must be 1 to {MAX_SAMPLES}, got {samples}")
    if precision not in QUANT_PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(QUANT_PRECISIONS)}; got {precision!r}")
    meta = read_metadata(onnx_in)
    model = _load(onnx_in)
    _refuse_unquantizable(onnx_in, model, meta)
    split = split_concat_convs(model)[0]
    exclude = fp8_ineligible(split) if precision == "fp8" else []
    if not any(n.op_type in ops and n.name not in exclude for n in split.graph.node):
        raise ExportError(f"{onnx_in} has no Conv TensorRT runs in FP8 (each has 16 or fewer input or output channels "
                          "or a filter over 32 taps: NVIDIA's rule for FP8 convolutions); quantize it to INT8 instead")
    inits = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in inits]
    feeds, where = calibration_feeds(calibration, meta, names, metadata.profile_of(meta), samples, seed)
    _refuse_constant(feeds)
    qdq = _run_quantizer(split, feeds, ops, exclude, float_weights=precision == "fp8")
    if precision == "fp8":
        qdq = int8_to_fp8(qdq)
    summary = qdq_summary(qdq)
    if not summary.tensorrt_compatible or summary.precision != precision:
        raise ExportError(f"quantized {onnx_in} is not a TensorRT-compatible {precision} graph (zero points "
                          f"{sorted(summary.zero_point_types)}, {summary.nonzero_zero_points} non-zero, "
                          f"{summary.per_channel_activations} per-channel activations); nothing was written")
    check_qdq(qdq, f"the {precision} graph calibrated on {where} (nothing was written; is the data in range?)")
    set_metadata(qdq, {metadata.PRECISION: precision, metadata.FP32_OPS: ",".join(FLOAT_OPS), CALIBRATION: where})
    with atomic_output(onnx_out, force) as tmp:
        onnx.save(qdq, tmp)
    log.debug("wrote %s QDQ graph %s (%s; calibration %s)", precision, onnx_out, dict(summary.quantized), where)
    return QuantizeResult(onnx_out, precision, where, len(feeds), dict(summary.quantized), time.perf_counter() - start)
