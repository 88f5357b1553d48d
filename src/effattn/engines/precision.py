"""Which precision an engine is built in: decided from the ONNX graph alone, in this one place.
A request gets what the graph gives or the one conversion effattn makes (FP32 -> FP16/BF16); anything else
is refused with the step that would make it possible. :func:`precision_refusal` refuses an engine whose
layer census shows none in its precision. See docs/architecture.md#engines-and-runtime."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_model

from .. import dtypes, metadata, precisions
from ..errors import BackendError, ExportError, InputError, first_line
from ..export.precision import CONVERTERS
from ..export.quantize import qdq_float_to_fp16
from ..export.quantize.half import float_type as qdq_float_type
from ..export.quantize.qdq import check_qdq, qdq_summary
from ..files import open_regular

#: The ONNX element type of each converted (float) precision, narrowest mantissa first: BF16 before FP16.
_FLOAT_TYPES = {
    dtypes.lookup("torch", p.element).onnx: p.name for p in reversed(precisions.TABLE) if p.made_by == "convert"
}
_QDQ = ("QuantizeLinear", "DequantizeLinear")
#: A QDQ graph is the last-listed quantized precision any of its zero points belongs to (FP8 wins over INT8);
#: zero points of no family (uint8: no zero point) read as the default quantized precision.
_QDQ_ORDER = [p for p in reversed(precisions.TABLE) if p.quantized]


def _family(row: precisions.Precision) -> str:
    """The zero-point types a precision's graphs are recognised by: every ``float8`` kind is FP8, ``int8`` INT8."""
    return (row.zero_point_type or row.element).split("_")[0]


@dataclass(frozen=True)
class EnginePrecision:
    """The decision: the engine's precision, the graph's, and how the build gets from one to the other."""

    precision: str  # what the engine is: fp32, fp16, bf16, int8 or fp8
    graph: str  # what the file holds
    convert: str | None = None  # "fp16"/"bf16": convert the FP32 graph (a QDQ graph's float part) first
    fp16_flag: bool = False  # TensorRT 10 only: weakly typed, FP16 builder flag (FP32 or QDQ graphs)
    float_type: str | None = None  # a QDQ engine's unquantized layers: "fp16" or "fp32" (None: not quantized)


#: The float type each target runs a QDQ graph's unquantized part in. TensorRT builds strongly typed, so a layer
#: runs in its tensors' types: FP32 scales would leave every softmax, MatMul and Add in FP32 (TF32 off); the
#: FP16-float graph (:func:`effattn.export.quantize.qdq_float_to_fp16`) is converted for it. The CPU runtimes
#: run the file as quantize writes it (FP32 float; measured: docs/precision.md#int8-and-fp8-for-tensorrt).
QDQ_FLOAT_TYPE = {"tensorrt": "fp16", "onnxruntime": "fp32", "openvino": "fp32"}


def _float_types(model: onnx.ModelProto) -> set[int]:
    """Element types of the initializers, Cast targets, Constants and typed values of ``model``."""
    types = {t.data_type for t in model.graph.initializer}
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    types |= {v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type")}
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to":
                types.add(attr.i)
            elif attr.type == onnx.AttributeProto.TENSOR:
                types.add(attr.t.data_type)
    return types


def graph_precision(model: onnx.ModelProto) -> str:
    """What ``model`` computes in, read from the graph: ``int8``/``fp8`` where it holds Q/DQ nodes (by their
    zero points' type), else ``bf16``/``fp16`` where any tensor has that type, else ``fp32``."""
    if any(n.op_type in _QDQ for n in model.graph.node):
        types = qdq_summary(model).zero_point_types
        return next(
            (p.name for p in _QDQ_ORDER if any(t.startswith(_family(p)) for t in types)), precisions.DEFAULT_QUANTIZED
        )
    elements = _float_types(model)
    return next((name for t, name in _FLOAT_TYPES.items() if t in elements), "fp32")


def qdq_problems(model: onnx.ModelProto) -> list[str]:
    """Why ``model`` is not a QDQ graph TensorRT's explicit quantization takes (one of signed INT8 or FP8 E4M3,
    zero point 0, one scale per activation tensor)."""
    summary = qdq_summary(model)
    problems = []
    if not summary.quantized:
        problems.append("no op reads both its data and its weight through DequantizeLinear (no quantized layer)")
    foreign = sorted(summary.zero_point_types - {p.zero_point_type for p in precisions.TABLE if p.quantized})
    if foreign:
        problems.append(
            f"zero points of type {', '.join(foreign)} (TensorRT takes signed INT8 or FP8 E4M3; a "
            "missing zero point means uint8)"
        )
    elif len(summary.zero_point_types) > 1:
        problems.append(
            f"INT8 and FP8 quantizers mixed ({', '.join(sorted(summary.zero_point_types))}); "
            "quantize the FP32 export to one of them"
        )
    if summary.per_channel_activations:
        problems.append(
            f"{summary.per_channel_activations} activation quantizers with per-channel scales "
            "(TensorRT takes one scale per activation tensor)"
        )
    if summary.nonzero_zero_points:
        problems.append(
            f"{summary.nonzero_zero_points} non-zero zero points (asymmetric; TensorRT needs symmetric "
            "quantization, zero point 0)"
        )
    return problems


def _load(path: Path) -> onnx.ModelProto:
    """The graph at ``path`` with its external data, read from a regular file only (a FIFO named .onnx must
    not block)."""
    try:
        with open_regular(path) as f:
            model = onnx.load_model_from_string(f.read())
    except InputError as e:
        raise BackendError(str(e)) from None
    except Exception:  # protobuf decode errors
        raise BackendError(f"{path} is not a readable ONNX model (protobuf cannot parse it)") from None
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as e:  # missing files, locations outside the model's folder
        raise BackendError(f"{path}: cannot read its external data ({type(e).__name__}: {first_line(e)})") from None
    return model


def check_onnx(onnx_path: str | Path, model: onnx.ModelProto | None = None) -> str:
    """The graph's precision, after the checks every command runs before any backend runs (or builds, or
    publishes) a file: the file itself (without ``model``: :func:`effattn.metadata.check_onnx_file`), its
    ``effattn.precision`` metadata, if any, agrees with the graph (the graph decides what a file is: fp8
    metadata on an FP32 graph would buy it FP8's loose parity tolerance), and a QDQ graph's scales and zero
    points are valid (:func:`effattn.export.quantize.check_qdq`)."""
    onnx_path = Path(onnx_path)
    if model is None:
        try:
            model = metadata.check_onnx_file(onnx_path).model
        except ExportError as e:
            raise BackendError(str(e)) from None
    meta = metadata.get_metadata(model)
    seen = graph_precision(model)
    if metadata.PRECISION in meta and (said := metadata.precision_of(meta)) != seen:
        raise BackendError(
            f"{onnx_path}: metadata {metadata.PRECISION} says {said} but the graph holds {seen} "
            "tensors; re-export it instead of editing it"
        )
    if any(n.op_type in _QDQ for n in model.graph.node):
        if metadata.FLOAT_TYPE in meta and (said := meta[metadata.FLOAT_TYPE]) != (floats := qdq_float_type(model)):
            raise BackendError(
                f"{onnx_path}: metadata {metadata.FLOAT_TYPE} says {said!r} but the graph's scales make its float "
                f"part {floats}; re-quantize it instead of editing it"
            )
        try:
            check_qdq(model, str(onnx_path), str(onnx_path.parent))
        except ExportError as e:
            raise BackendError(str(e)) from None
    return seen


def read_graph_precision(onnx_path: Path, model: onnx.ModelProto | None = None) -> str:
    """The graph's precision for a TensorRT build: :func:`check_onnx`, and a QDQ graph must be one TensorRT's
    explicit quantization takes (:func:`qdq_problems`). Files without effattn metadata are taken at the
    graph's word."""
    model = model if model is not None else _load(onnx_path)
    seen = check_onnx(onnx_path, model)
    if precisions.get(seen).quantized and (problems := qdq_problems(model)):
        raise BackendError(
            f"{onnx_path} is not a QDQ graph TensorRT can build: {'; '.join(problems)}. Write it "
            "with 'effattn quantize' (signed symmetric INT8, or --precision fp8)"
        )
    return seen


#: What "auto" builds from each graph precision: the graph's own, except that an FP32 export becomes the FP16
#: engine (through the FP16 graph, which keeps the sensitive ops in FP32) - the engine TensorRT users ship.
AUTO = {"fp32": "fp16"}


def decide(
    graph: str,
    requested: str | None,
    fp16_flag: bool = False,
    *,
    float_type: str | None = None,
    target: str = "onnxruntime",
) -> EnginePrecision:
    """The decision table (pure): ``requested`` None takes the graph's precision, "auto" as :data:`AUTO` says.
    ``float_type``: a QDQ graph's float part as read (:func:`effattn.export.quantize.half.float_type`); for
    ``target`` "tensorrt" an FP32 one is converted to FP16 (:data:`QDQ_FLOAT_TYPE`), unless ``fp16_flag`` lets
    TensorRT 10 pick FP16 itself."""
    if target not in QDQ_FLOAT_TYPE:
        raise BackendError(f"target must be one of {', '.join(QDQ_FLOAT_TYPE)}; got {target!r}")
    want = graph if requested is None else AUTO.get(graph, graph) if requested == "auto" else requested
    if want not in precisions.names():
        raise BackendError(f"precision must be one of auto, {', '.join(precisions.names())}; got {requested!r}")
    quantized = precisions.get(want).quantized
    if fp16_flag and not ((want == "fp16" and graph == "fp32") or (want == graph and quantized)):
        raise BackendError(
            f"fp16_flag builds an FP32 graph as FP16 or lets a QDQ graph's float layers run in "
            f"FP16 (TensorRT 10 only); it does not apply to a {want} engine of a {graph} graph"
        )
    if want == graph and quantized and float_type is not None:
        if QDQ_FLOAT_TYPE[target] == "fp16" and float_type == "fp32" and not fp16_flag:
            return EnginePrecision(want, graph, convert="fp16", float_type="fp16")
        return EnginePrecision(want, graph, fp16_flag=fp16_flag, float_type=float_type)
    if want == graph:
        return EnginePrecision(want, graph, fp16_flag=fp16_flag)
    if graph == "fp32" and want in precisions.converted():
        return EnginePrecision(want, graph, convert=None if fp16_flag else want, fp16_flag=fp16_flag)
    if quantized:
        flag = "" if want == precisions.DEFAULT_QUANTIZED else f" --precision {want}"
        raise BackendError(
            f"an {want.upper()} engine needs an {want.upper()} QDQ graph and this one is {graph}: "
            f"quantize the FP32 export first ('effattn quantize{flag}', calibrated), then build that file"
        )
    if want == "fp32":
        raise BackendError(f"the graph is {graph}; an FP32 engine needs the FP32 export")
    raise BackendError(
        f"the graph is {graph}, so its engine is {graph}: precision lives in the graph (TensorRT builds "
        f"strongly typed networks). For a {want} engine build the FP32 export with precision={want!r}"
    )


def engine_precision(
    onnx_path: str | Path, requested: str | None = None, *, fp16_flag: bool = False, target: str = "onnxruntime"
) -> EnginePrecision:
    """What ``build_engine`` (``target="tensorrt"``) or an ONNX Runtime/OpenVINO session will build from
    ``onnx_path`` when asked for ``requested`` (None: the graph's own precision), or a BackendError saying why
    not and what to do. Needs no TensorRT."""
    onnx_path = Path(onnx_path)
    model = _load(onnx_path)
    graph = read_graph_precision(onnx_path, model)
    floats = qdq_float_type(model) if precisions.get(graph).quantized else None
    return decide(graph, requested, fp16_flag, float_type=floats, target=target)


def converted_graph(decision: EnginePrecision, onnx_path: str | Path, out: str | Path) -> Path:
    """The file to build for ``decision``: ``onnx_path`` itself, or its conversion written to ``out`` (replacing
    it): the FP16/BF16 graph of an FP32 file, or the FP16-float form of a QDQ graph."""
    if decision.convert is None:
        return Path(onnx_path)
    if precisions.get(decision.graph).quantized:
        return qdq_float_to_fp16(onnx_path, out, force=True)
    return CONVERTERS[decision.convert](onnx_path, out, force=True)


#: GPU generations from each compute capability on, for the refusal's message.
_GENERATIONS = {(8, 9): "Ada, Hopper, Blackwell", (9, 0): "Hopper, Blackwell", (10, 0): "Blackwell"}


def capability_refusal(precision: str, capability: str) -> str | None:
    """Why this GPU (compute capability "9.0") cannot run a ``precision`` engine, or None. TensorRT builds FP8
    layers only where FP8 tensor cores are (8.9+); elsewhere it would fail deep in the build or fall back."""
    have = tuple(int(x) for x in capability.split(".")[:2])
    row = precisions.get(precision)
    if row.min_capability is not None and have < row.min_capability:
        need = ".".join(map(str, row.min_capability))
        gpus = f": {_GENERATIONS[row.min_capability]}" if row.min_capability in _GENERATIONS else ""
        return (
            f"{row.label} engines need {row.hardware} (compute capability {need}+{gpus}); this GPU is "
            f"{capability}. Build the {precisions.get(precisions.DEFAULT_QUANTIZED).label} file "
            "('effattn quantize') instead"
        )
    return None


# ------------------------------------------------------------------------------------------ the census
#: Census words are matched quantized precisions first, then the narrowest floats, FP32's generic "float" last.
_CENSUS_ORDER = sorted(precisions.TABLE, key=lambda p: (not p.quantized, p.weight_bytes))
#: Layer types that only move or convert data: a Reformat from FP32 to INT8 is not an INT8 layer.
_DATA_MOVEMENT = ("reformat", "quantize", "dequantize")


#: How much of the inspector's own output a refusal quotes (and the sidecar keeps) when it gave no layer types.
INSPECTOR_EXCERPT = 600


def _key(name: object) -> str:
    """A JSON key as the census compares it: lower case, letters and digits only ("Format/DataType" ->
    "formatdatatype", "LayerType" and "layer_type" -> "layertype")."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _get(entry: Mapping, *names: str) -> object:
    """The value of the first of ``names`` (compared by :func:`_key`) that ``entry`` holds, else None."""
    keys = {_key(k): v for k, v in entry.items()}
    return next((keys[n] for n in names if keys.get(n) not in (None, "")), None)


def _tensor_type(tensor: Mapping) -> str | None:
    """The precision class of one inspector tensor entry, or None when the inspector did not say.

    TensorRT <= 10 writes one ``"Format/Datatype"`` string ("Row major linear FP16 format", "Half",
    "N/A due to dynamic shapes"); TensorRT 11 splits it into ``"Datatype"`` ("Half", "BFloat16", ...)
    and ``"Format"`` (Polygraphy's ``tools/inspect/subtool/model/extractors/_trt.py``). Keys are matched
    whatever their case or punctuation; the type is read from the datatype, else the combined field, else
    the format text.
    """
    value = _get(tensor, "datatype", "formatdatatype", "format")
    text = str(value or "").lower()
    if not text or "n/a" in text or "not available" in text:
        return None
    for row in _CENSUS_ORDER:
        if any(w in text for w in row.census_words):
            return row.name
    return "other"


def _tensors(layer: Mapping, name: str) -> list[Mapping]:
    value = _get(layer, name)
    return [t for t in value if isinstance(t, Mapping)] if isinstance(value, list) else []


def _layer_kind(layer: Mapping) -> str | None:
    """One layer's class: by its outputs' types, except that a layer reading INT8/FP8 is an INT8/FP8 layer
    (an INT8 convolution with a float output: Q/DQ on inputs only) and a Reformat/Q/DQ layer is "reformat"."""

    def types(key: str) -> list[str]:
        return [k for t in _tensors(layer, key) if (k := _tensor_type(t))]

    outs, ins = types("outputs"), types("inputs")
    if not outs and not ins:
        return None
    if str(_get(layer, "layertype") or "").lower().endswith(_DATA_MOVEMENT):
        return "reformat"
    return next((p.name for p in _CENSUS_ORDER if p.name in outs or (p.quantized and p.name in ins)), "other")


def _layers(info: object) -> list[Mapping]:
    """The per-layer entries of the inspector's JSON: ``{"Layers": [...]}`` (any case), or a bare list. An entry
    that is a JSON object in a string is parsed; a bare name (ProfilingVerbosity.LAYER_NAMES_ONLY) is kept as a
    layer without types."""
    found = _get(info, "layers") if isinstance(info, Mapping) else info
    layers: list[Mapping] = []
    for entry in found if isinstance(found, list) else []:
        if isinstance(entry, str):
            try:
                entry = json.loads(entry)
            except ValueError:
                entry = {"Name": entry}
        layers.append(entry if isinstance(entry, Mapping) else {})
    return layers


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= INSPECTOR_EXCERPT else text[:INSPECTOR_EXCERPT] + " ..."


def census(info: object, raw: str | None = None) -> dict:
    """Layers by precision from the inspector's JSON: {"layers": n, "fp16": k, "fp32": m, "reformat": r, ...}.
    When no layer type can be read (a dynamic-shape engine without a context, no layers, another spelling),
    ``"formats": "unknown"`` and ``"inspector"``: the start of its output (``raw``, else ``info`` re-dumped),
    which :func:`precision_refusal` quotes."""
    layers = _layers(info)
    kinds = [_layer_kind(layer) for layer in layers]
    if not any(kinds):
        text = raw if raw is not None else json.dumps(info, default=str)
        return {"layers": len(layers), "formats": "unknown", "inspector": _excerpt(text)}
    return {"layers": len(layers), **Counter(k or "other" for k in kinds)}


def precision_refusal(precision: str, layers: Mapping) -> str | None:
    """Why an engine must not be called ``precision`` (anything but FP32): its census shows no layer in it, or
    could not be read at all (an inspector error, no layers, no layer types) -- a census that reads nothing
    must not pass."""
    if precision == "fp32":
        return None
    name = precision.upper()
    if "error" in layers:
        return f"could not be inspected ({layers['error']}), so no layer is known to run in {name}"
    if "formats" in layers or not layers.get("layers"):
        said = layers.get("inspector", "nothing")
        return (
            f"has no layer types in its inspector output ({layers.get('layers', 0)} layers), so no layer is known "
            f"to run in {name}; the inspector said: {said}"
        )
    return None if layers.get(precision) else f"runs 0 of {layers['layers']} layers in {name}"
