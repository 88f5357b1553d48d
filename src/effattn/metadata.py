"""The ``effattn.*`` keys in ONNX ``metadata_props``: model, checkpoint, shape profile, residual outputs.
A file comes from elsewhere, so every reader checks what it reads and raises :class:`MetadataError` (or
:class:`ProfileError`); :func:`check_onnx_file` is what every command checks before it trusts an ONNX file.
See docs/architecture.md#ground-floor and #trust-and-errors."""

from __future__ import annotations

import math
import reprlib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx
from onnx.external_data_helper import ExternalDataInfo

from . import precisions
from .errors import ExportError, MetadataError, ProfileError, first_line
from .files import require_file
from .shapes import MAX_ELEMENTS, ShapeProfile, format_shape, read_json

VERSION, MODEL, TASK, PROFILE = "effattn.version", "effattn.model", "effattn.task", "effattn.profile"
CHECKPOINT_SHA256, EXPORTER, RESIDUAL, PRECISION = (
    "effattn.checkpoint_sha256",
    "effattn.exporter",
    "effattn.residual",
    "effattn.precision",
)
MODEL_ARGS = "effattn.model_args"  # JSON keyword arguments of the factory
FP32_OPS = "effattn.fp32_ops"  # ops the precision stage kept in FP32
FLOAT_TYPE = "effattn.float_type"  # a QDQ graph's unquantized (float) part: fp32 (CPU runtimes) or fp16 (TensorRT)
#: In NNCF's OpenVINO IR (``effattn quantize -o model.xml``): how NNCF made it, :func:`nncf_recipe`'s words
NNCF = "effattn.nncf"
#: In the OpenVINO IR ``effattn quantize --cpu-ir`` keeps beside an INT8 .onnx (its rt_info): the sha256 of the .onnx
#: it stands for and of its own weights (.bin, which the .xml names by nothing but its file name), the two medians it
#: was kept on (ms, the QDQ graph's and its own), the CPU and OpenVINO that ran them
CPU_IR_ONNX_SHA256, CPU_IR_BIN_SHA256, CPU_IR_QDQ_MS, CPU_IR_MS, CPU_IR_CPU, CPU_IR_OPENVINO = (
    "effattn.cpu_ir.onnx_sha256",
    "effattn.cpu_ir.bin_sha256",
    "effattn.cpu_ir.qdq_ms",
    "effattn.cpu_ir.ir_ms",
    "effattn.cpu_ir.cpu",
    "effattn.cpu_ir.openvino",
)

#: The longest metadata value read (a profile of many inputs is a few KiB).
MAX_VALUE_CHARS = 64 * 1024
_SCALARS = (str, int, float, bool, type(None))


def _text(meta: Mapping[str, str], key: str) -> str | None:
    value = meta.get(key)
    if value is not None and len(value) > MAX_VALUE_CHARS:
        raise MetadataError(
            f"metadata {key} is {len(value)} characters long (limit {MAX_VALUE_CHARS}); "
            "the file is not one effattn wrote"
        )
    return value


def nncf_recipe(preset: str, keep_float: str) -> str:
    """How an NNCF IR was made, as its :data:`NNCF` entry begins (the nodes kept float follow, in brackets)."""
    return f"preset={preset} keep_float={keep_float}"


def profile_of(meta: Mapping[str, str], inputs: Collection[str] | None = None) -> ShapeProfile | None:
    """The recorded shape profile; with ``inputs`` (the model's input names) one naming any other is refused."""
    text = _text(meta, PROFILE)
    profile = ShapeProfile.from_json(text) if text else None
    ghosts = [name for name in profile or () if inputs is not None and name not in inputs]
    if ghosts:
        raise ProfileError(
            f"metadata {PROFILE} names input {reprlib.repr(ghosts[0])}, which the model does not have "
            f"(its inputs: {reprlib.repr(list(inputs or ()))})"
        )
    return profile


def precision_of(meta: Mapping[str, str]) -> str:
    """The graph's precision (``fp32`` when unrecorded); anything else effattn never writes is refused."""
    value = _text(meta, PRECISION) or "fp32"
    if value not in precisions.names():
        raise MetadataError(
            f"metadata {PRECISION} is {reprlib.repr(value)}; expected one of {', '.join(precisions.names())}"
        )
    return value


def model_args_of(meta: Mapping[str, str]) -> dict:
    """The factory's keyword arguments: a JSON object of names to numbers, strings, booleans or lists of them."""
    text = _text(meta, MODEL_ARGS) or "{}"
    try:
        args = read_json(text)
    except (ValueError, RecursionError) as e:
        raise MetadataError(
            f"metadata {MODEL_ARGS} is not valid JSON ({first_line(e)}): {reprlib.repr(text)}"
        ) from None

    def plain(v) -> bool:
        return isinstance(v, _SCALARS) or (isinstance(v, list) and all(isinstance(x, _SCALARS) for x in v))

    if not isinstance(args, dict) or not all(k.isidentifier() and plain(v) for k, v in args.items()):
        raise MetadataError(
            f"metadata {MODEL_ARGS} must map argument names to numbers, strings, booleans or "
            f"flat lists of them; got {reprlib.repr(args)}"
        )
    return args


def residuals_of(
    meta: Mapping[str, str], inputs: Collection[str] | None = None, outputs: Collection[str] | None = None
) -> dict[str, str]:
    """``"output=input"`` -> ``{"output": "input"}``: output names whose value is input + a branch.

    With ``inputs`` and ``outputs`` (the model's names) a pair naming anything else is refused."""
    text = _text(meta, RESIDUAL) or ""
    pairs = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    unknown = [
        f"{o}={i}"
        for o, i in pairs.items()
        if (outputs is not None and o not in outputs) or (inputs is not None and i not in inputs)
    ]
    if unknown:
        raise MetadataError(
            f"metadata {RESIDUAL} names {reprlib.repr(unknown)}, which are not an output and an "
            f"input of the model (outputs {list(outputs or [])}, inputs {list(inputs or [])})"
        )
    return pairs


def format_residuals(residuals: Mapping[str, str]) -> str:
    return ",".join(f"{out}={inp}" for out, inp in residuals.items())


def set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set ``metadata_props`` keys, replacing existing ones of the same name."""
    kept = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=str(value))


def get_metadata(proto: onnx.ModelProto) -> dict[str, str]:
    """The ``metadata_props`` of a loaded model, as a dict."""
    return {p.key: p.value for p in proto.metadata_props}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (weights are not loaded)."""
    return get_metadata(_load(path))


def _load(path: str | Path) -> onnx.ModelProto:
    """The model at ``path`` without its external data; a device, FIFO or folder is refused before it is read."""
    path = require_file(path, "an .onnx file", ExportError)
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ExportError(f"{path} is not an ONNX model ({type(e).__name__}: {first_line(e)})") from None


# ------------------------------------------------------------------------------- the file itself
#: Operator domains ONNX Runtime implements, with the newest opset of each it knows; a node in any other domain
#: needs a custom-op library, which effattn never loads.
KNOWN_DOMAINS = {
    "": onnx.defs.onnx_opset_version(),
    "ai.onnx": onnx.defs.onnx_opset_version(),
    "ai.onnx.ml": onnx.helper.VERSION_TABLE[-1][3],
    "com.microsoft": 1,
}


@dataclass(frozen=True)
class OnnxFile:
    """An ONNX file that passed :func:`check_onnx_file`: its graph (no weights loaded) and the external data
    files it references, relative to its folder."""

    path: Path
    model: onnx.ModelProto
    external: tuple[str, ...]

    @property
    def inputs(self) -> list[str]:
        weights = {i.name for i in self.model.graph.initializer}
        return [v.name for v in self.model.graph.input if v.name not in weights]


def check_onnx_file(path: str | Path) -> OnnxFile:
    """``path`` as an :class:`OnnxFile`, or :class:`ExportError` (:class:`ProfileError` for its profile) naming
    the first thing about it no runner should be handed."""
    path = require_file(path, "an .onnx file", ExportError)
    if path.stat().st_size == 0:
        raise ExportError(f"{path} is empty (0 bytes), not an ONNX model")
    model = _load(path)
    _check_versions(path, model)
    _check_dims(path, model)
    checked = OnnxFile(path, model, _external_files(path, model))
    profile_of(get_metadata(model), checked.inputs)
    return checked


def _graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto | onnx.FunctionProto]:
    """The main graph, every subgraph (If, Loop, Scan bodies) and every model-local function."""
    todo: list = [model.graph, *model.functions]
    while todo:
        graph = todo.pop()
        yield graph
        todo += [
            g for n in graph.node for a in n.attribute for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)
        ]


def _check_versions(path: Path, model: onnx.ModelProto) -> None:
    if not 1 <= model.ir_version <= onnx.IR_VERSION:
        raise ExportError(f"{path} has IR version {model.ir_version}; ONNX Runtime reads 1 to {onnx.IR_VERSION}")
    local = {f.domain for f in model.functions}
    for opset in model.opset_import:
        newest = KNOWN_DOMAINS.get(opset.domain)
        if newest is not None and not 1 <= opset.version <= newest:
            raise ExportError(
                f"{path} asks for opset {opset.version} of {opset.domain or 'ai.onnx'}; ONNX Runtime "
                f"knows 1 to {newest}"
            )
    for graph in _graphs(model):
        for node in graph.node:
            if node.domain not in KNOWN_DOMAINS and node.domain not in local:
                raise ExportError(
                    f"{path}: node {reprlib.repr(node.name)} is {reprlib.repr(node.op_type)} of the "
                    f"custom domain {reprlib.repr(node.domain)}; effattn runs only ONNX and ONNX Runtime "
                    f"operators ({', '.join(d for d in KNOWN_DOMAINS if d)})"
                )


def _check_dims(path: Path, model: onnx.ModelProto) -> None:
    """Inputs and outputs whose fixed dims ask more elements than any tensor effattn allocates (2^40 rows...)."""
    for value in [*model.graph.input, *model.graph.output]:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim if d.HasField("dim_value")]
        if any(d < 0 for d in dims) or math.prod(dims) > MAX_ELEMENTS:
            shape = format_shape([d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim])
            why = (
                "a negative dimension"
                if any(d < 0 for d in dims)
                else (f"over {MAX_ELEMENTS} elements, more than any tensor effattn allocates")
            )
            raise ExportError(f"{path}: tensor {reprlib.repr(value.name)} is declared {shape}: {why}")


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for graph in _graphs(model):
        if isinstance(graph, onnx.GraphProto):
            yield from graph.initializer
            yield from (t for s in graph.sparse_initializer for t in (s.values, s.indices))
        yield from (
            t for n in graph.node for a in n.attribute for t in ([a.t] if a.HasField("t") else []) + list(a.tensors)
        )


def _external_files(path: Path, model: onnx.ModelProto) -> tuple[str, ...]:
    """The external data files the model reads, each a relative name of a regular file inside its folder."""
    folder, files = path.parent.resolve(), set()
    for tensor in _tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        try:
            info = ExternalDataInfo(tensor)
        except ValueError as e:
            raise ExportError(
                f"{path}: tensor {reprlib.repr(tensor.name)} has malformed external data: {first_line(e)}"
            ) from None
        where = f"{path}: tensor {reprlib.repr(tensor.name)} keeps its data in {reprlib.repr(info.location)}"
        name = PurePosixPath(info.location.replace("\\", "/"))
        if (
            not info.location
            or "\0" in info.location
            or name.is_absolute()
            or PureWindowsPath(info.location).drive
            or ".." in name.parts
        ):
            raise ExportError(f"{where}; external data must be named relative to the model's folder, without '..'")
        target = (folder / name).resolve()
        if not target.is_relative_to(folder):
            raise ExportError(f"{where}, which leads out of the model's folder ({target})")
        target = require_file(target, f"the external data of {path}", ExportError)
        end = (info.offset or 0) + (info.length if info.length is not None else _nbytes(tensor))
        if end > target.stat().st_size:
            raise ExportError(f"{where}, which holds {target.stat().st_size} bytes; the tensor needs {end}")
        files.add(str(name))
    return tuple(sorted(files))


def _nbytes(tensor: onnx.TensorProto) -> int:
    """The bytes a tensor's external data must hold when its entry gives no length (0 for types of no fixed size)."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError):
        return 0
    return math.prod(tensor.dims) * itemsize
