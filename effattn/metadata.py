"""The ``effattn.*`` keys written into ONNX ``metadata_props`` and read back by runners and tools.

They make a file self-describing: which model and checkpoint it came from, its shape profile (so a
runner validates inputs without being told), and which output is a residual of which input (so
parity checks can measure the attention branch). A file comes from elsewhere, so every reader here
checks what it reads and raises :class:`MetadataError` (or :class:`ProfileError`) on one line.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Collection, Mapping
from pathlib import Path

import onnx

from .errors import ExportError, MetadataError, first_line
from .shapes import ShapeProfile

PREFIX = "effattn."
VERSION, MODEL, TASK, PROFILE = "effattn.version", "effattn.model", "effattn.task", "effattn.profile"
CHECKPOINT_SHA256, EXPORTER, RESIDUAL, PRECISION = (
    "effattn.checkpoint_sha256", "effattn.exporter", "effattn.residual", "effattn.precision")
MODEL_ARGS = "effattn.model_args"  # JSON keyword arguments of the factory
FP32_OPS = "effattn.fp32_ops"  # ops the precision stage kept in FP32

#: Graph precisions the toolkit writes (and has parity tolerances for: effattn.runtime.parity.TOLERANCES).
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
#: The longest metadata value read (a profile of many inputs is a few KiB).
MAX_VALUE_CHARS = 64 * 1024
_SCALARS = (str, int, float, bool, type(None))


def _text(meta: Mapping[str, str], key: str) -> str | None:
    value = meta.get(key)
    if value is not None and len(value) > MAX_VALUE_CHARS:
        raise MetadataError(f"metadata {key} is {len(value)} characters long (limit {MAX_VALUE_CHARS}); "
                            "the file is not one effattn wrote")
    return value


def profile_of(meta: Mapping[str, str]) -> ShapeProfile | None:
    text = _text(meta, PROFILE)
    return ShapeProfile.from_json(text) if text else None


def precision_of(meta: Mapping[str, str]) -> str:
    """The graph's precision (``fp32`` when unrecorded); anything else effattn never writes is refused."""
    value = _text(meta, PRECISION) or "fp32"
    if value not in PRECISIONS:
        raise MetadataError(f"metadata {PRECISION} is {reprlib.repr(value)}; expected one of {', '.join(PRECISIONS)}")
    return value


def model_args_of(meta: Mapping[str, str]) -> dict:
    """The factory's keyword arguments: a JSON object of names to numbers, strings, booleans or lists of them."""
    text = _text(meta, MODEL_ARGS) or "{}"
    try:
        args = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise MetadataError(f"metadata {MODEL_ARGS} is not valid JSON: {reprlib.repr(text)}") from None
    def plain(v) -> bool:
        return isinstance(v, _SCALARS) or (isinstance(v, list) and all(isinstance(x, _SCALARS) for x in v))
    if not isinstance(args, dict) or not all(k.isidentifier() and plain(v) for k, v in args.items()):
        raise MetadataError(f"metadata {MODEL_ARGS} must map argument names to numbers, strings, booleans or "
                            f"flat lists of them; got {reprlib.repr(args)}")
    return args


def residuals_of(meta: Mapping[str, str], inputs: Collection[str] | None = None,
                 outputs: Collection[str] | None = None) -> dict[str, str]:
    """``"output=input"`` -> ``{"output": "input"}``: output names whose value is input + a branch.

    With ``inputs`` and ``outputs`` (the model's names) a pair naming anything else is refused."""
    text = _text(meta, RESIDUAL) or ""
    pairs = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    unknown = [f"{o}={i}" for o, i in pairs.items()
               if (outputs is not None and o not in outputs) or (inputs is not None and i not in inputs)]
    if unknown:
        raise MetadataError(f"metadata {RESIDUAL} names {reprlib.repr(unknown)}, which are not an output and an "
                            f"input of the model (outputs {list(outputs or [])}, inputs {list(inputs or [])})")
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


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (weights are not loaded)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise ExportError(f"{path} does not exist") from None
    except Exception as e:  # protobuf's DecodeError and friends
        raise ExportError(f"{path} is not an ONNX model ({type(e).__name__}: {first_line(e)})") from None
    return {p.key: p.value for p in proto.metadata_props}
