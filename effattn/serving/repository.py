"""``effattn triton``: a Triton model repository (``REPO/NAME/config.pbtxt``, ``REPO/NAME/1/model.onnx`` or
``model.plan``) from one config dict, shared with ``effattn serve``. A model is batched only when every input
and output shares a symbolic first axis (:func:`batch_dimension`); ``max_batch_size`` is decided once here.
See docs/serving.md#on-triton-inference-server."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.text_encoding import CEscape

from .. import dtypes, metadata
from ..engines.cache import Sidecar, sidecar_path
from ..engines.onnxruntime_session import holds_float8
from ..engines.precision import check_onnx
from ..errors import BackendError, ConfigError, InputError
from ..files import atomic_folder, require_file
from ..metadata import OnnxFile
from ..names import check_model_name, name_from_file
from ..shapes import ShapeProfile

#: Triton's platform and model file for each; "pytorch" only describes a model `effattn serve --backend torch`
#: serves (eager code, not the TorchScript file Triton's PyTorch backend would need: `effattn triton` never writes it)
PLATFORMS = {
    "onnxruntime": ("onnxruntime_onnx", "model.onnx"),
    "tensorrt": ("tensorrt_plan", "model.plan"),
    "pytorch": ("pytorch_libtorch", "model.pt"),
}


@dataclass
class TensorConfig:
    name: str
    dtype: np.dtype
    dims: list[int | str]  # full shape: sizes, the graph's names of symbolic axes, -1 for unnamed dynamic axes


@dataclass
class TritonOptions:
    max_batch_size: int = 8
    preferred_batch_sizes: Sequence[int] = ()
    max_queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "KIND_GPU"  # or KIND_CPU
    trt_accelerator: bool = False  # onnxruntime platform: TensorRT execution accelerator
    fp16: bool = False  # with trt_accelerator: precision_mode FP16
    warmup: bool = True
    #: onnxruntime platform: ONNX Runtime's basic graph optimizations only (``optimization { graph { level: -1 } }``,
    #: the onnxruntime_backend README). Set for FP8 QDQ files: Triton cannot turn off the one rewrite that is
    #: wrong for them (see ``effattn.engines.onnxruntime_session.UNSAFE_REWRITES``); basic level is right.
    basic_graph_optimization: bool = False


def _quote(text: str) -> str:
    """``text`` escaped for a protobuf text-format string (quotes, backslashes, newlines from the file)."""
    return CEscape(text, as_utf8=True)


def _type_of(name: str, dtype: np.dtype) -> str:
    try:
        return dtypes.of_numpy(dtype).triton
    except InputError:
        raise InputError(f"tensor {name!r} has dtype {dtype}, which Triton's config cannot express") from None


def config_dict(
    name: str,
    platform: str,
    inputs: Sequence[TensorConfig],
    outputs: Sequence[TensorConfig],
    profile: ShapeProfile | None,
    options: TritonOptions,
) -> dict:
    """Triton's ModelConfig as a dict in its JSON form (proto field names, enums by name, maps as objects).

    The one source of a model's config: :func:`to_pbtxt` writes it as ``config.pbtxt`` and ``effattn
    serve`` answers it as JSON (``GET /v2/models/NAME/config``) and as protobuf (gRPC ModelConfig)."""
    if platform not in PLATFORMS:
        raise BackendError(f"unknown Triton platform {platform!r}; choose {', '.join(PLATFORMS)}")
    if options.kind not in ("KIND_GPU", "KIND_CPU"):
        raise InputError(f"instance kind must be KIND_GPU or KIND_CPU, got {options.kind!r}")
    if platform == "tensorrt" and options.kind == "KIND_CPU":
        raise InputError("a TensorRT plan runs on the GPU only; use --kind KIND_GPU or the onnxruntime platform")
    if options.max_batch_size < 0 or options.instances < 1 or options.max_queue_delay_us < 0:
        raise ConfigError(
            f"need max_batch_size >= 0, instances >= 1 and max_queue_delay_us >= 0; got "
            f"{options.max_batch_size}, {options.instances} and {options.max_queue_delay_us}"
        )
    max_batch = _max_batch(inputs, outputs, profile, options)
    config: dict[str, Any] = {
        "name": check_model_name(name),
        "platform": PLATFORMS[platform][0],
        "max_batch_size": max_batch,
        "input": [_tensor(t, max_batch) for t in inputs],
        "output": [_tensor(t, max_batch) for t in outputs],
    }
    if max_batch:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": options.max_queue_delay_us}
        if options.preferred_batch_sizes:
            config["dynamic_batching"]["preferred_batch_size"] = list(options.preferred_batch_sizes)
    config["instance_group"] = [{"count": options.instances, "kind": options.kind}]
    if platform == "onnxruntime" and options.basic_graph_optimization:
        config["optimization"] = {"graph": {"level": -1}}
    if platform == "onnxruntime" and options.trt_accelerator:
        parameters = {"precision_mode": "FP16" if options.fp16 else "FP32", "max_workspace_size_bytes": "1073741824"}
        config.setdefault("optimization", {})["execution_accelerators"] = {
            "gpu_execution_accelerator": [{"name": "tensorrt", "parameters": parameters}]
        }
    if options.warmup and profile is not None:
        config["model_warmup"] = [_warmup(profile, max_batch)]
    return config


def batch_dimension(tensors: Sequence[TensorConfig]) -> str | None:
    """The symbolic first axis every tensor (inputs and outputs) shares, or None: only then does axis 0 hold
    one item per request, so requests may be stacked on it and the outputs split back (a Transpose, a
    reduction over axis 0, a scalar or an unnamed axis would hand each request someone else's answer). The name
    must appear on no other axis: ``y[n, n] = x[n, n] @ x^T`` holds a request's rows and every request's columns."""
    names = {t.dims[0] if t.dims and isinstance(t.dims[0], str) else None for t in tensors}
    name = names.pop() if len(names) == 1 and None not in names else None
    return None if any(name in t.dims[1:] for t in tensors) else name


def batch_limit(requested: int, tensors: Sequence[TensorConfig], profile: ShapeProfile | None) -> int:
    """Triton's ``max_batch_size`` for ``requested``: 0 (no batch axis) unless the graph has one
    (:func:`batch_dimension` of every input and output), and never above the profile's largest batch.
    The one place the limit meets the profile: ``effattn triton`` writes it and ``effattn serve`` batches up to it."""
    if requested <= 0 or batch_dimension(tensors) is None:
        return 0
    return min(requested, profile.batch_range[1]) if profile is not None else requested


def _max_batch(
    inputs: Sequence[TensorConfig],
    outputs: Sequence[TensorConfig],
    profile: ShapeProfile | None,
    options: TritonOptions,
) -> int:
    max_batch = batch_limit(options.max_batch_size, [*inputs, *outputs], profile)
    for size in options.preferred_batch_sizes:
        if not 1 <= size <= max_batch:
            raise InputError(f"preferred batch size {size} is outside 1..max_batch_size ({max_batch})")
    return max_batch


def _tensor(t: TensorConfig, max_batch: int) -> dict:
    dims = [d if isinstance(d, int) else -1 for d in (t.dims[1:] if max_batch else t.dims)]
    return {"name": t.name, "data_type": _type_of(t.name, t.dtype), "dims": dims}


def _warmup(profile: ShapeProfile, max_batch: int) -> dict:
    inputs = {
        p.name: {
            "data_type": _type_of(p.name, np.dtype(p.dtype)),
            "dims": list(p.opt[1:] if max_batch else p.opt),
            "random_data": True,
        }
        for p in profile.inputs
    }
    batch = {"batch_size": min(p.opt[0] for p in profile.inputs)} if max_batch else {}
    return {"name": "opt shape", **batch, "inputs": inputs}


#: ModelConfig fields whose values are enum names (unquoted in text format) and fields that are maps.
_ENUMS = {"data_type", "kind", "format", "priority"}
_MAPS = {"parameters", "inputs"}


def to_pbtxt(config: dict) -> str:
    """``config`` (ModelConfig in its JSON form) in protobuf text format, as ``config.pbtxt`` holds it."""
    return "".join(_field(key, value, 0) for key, value in config.items())


def _field(key: str, value, depth: int) -> str:
    pad = "  " * depth
    if key in _MAPS:
        return "".join(
            f'{pad}{key} {{\n{pad}  key: "{_quote(k)}"\n{_message("value", v, depth + 1)}{pad}}}\n'
            for k, v in value.items()
        )
    if isinstance(value, dict):
        return _message(key, value, depth)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "".join(_message(key, v, depth) for v in value)
    if isinstance(value, list):
        return f"{pad}{key}: [ {', '.join(_scalar(key, v) for v in value)} ]\n"
    return f"{pad}{key}: {_scalar(key, value)}\n"


def _message(key: str, value: dict, depth: int) -> str:
    pad = "  " * depth
    if not isinstance(value, dict):  # a map's scalar value (string parameters of the TensorRT accelerator)
        return f"{pad}{key}: {_scalar(key, value)}\n"
    return f"{pad}{key} {{\n" + "".join(_field(k, v, depth + 1) for k, v in value.items()) + f"{pad}}}\n"


def _scalar(key: str, value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if key in _ENUMS else f'"{_quote(value)}"'
    return str(value)


def model_config(
    name: str,
    platform: str,
    inputs: Sequence[TensorConfig],
    outputs: Sequence[TensorConfig],
    profile: ShapeProfile | None,
    options: TritonOptions,
) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ModelConfig)."""
    return to_pbtxt(config_dict(name, platform, inputs, outputs, profile, options))


def write_repository(
    model_file: str | Path,
    repository: str | Path,
    name: str | None = None,
    options: TritonOptions | None = None,
    force: bool = False,
) -> Path:
    """Write ``repository/name/{config.pbtxt, 1/model.*}`` for an effattn ONNX file (checked as ``effattn run``
    checks it, its external data copied beside it) or a TensorRT plan."""
    options = options or TritonOptions()
    model_file = require_file(model_file, "an .onnx file or a TensorRT .plan/.engine")
    suffix, external = model_file.suffix.lower(), tuple[str, ...]()
    if suffix == ".onnx":
        checked = metadata.check_onnx_file(model_file)
        check_onnx(model_file, checked.model)  # and the rest of what `run` checks before any backend sees a file
        platform, (inputs, outputs, profile), external = "onnxruntime", _onnx_io(checked), checked.external
        if holds_float8(model_file):
            options = replace(options, basic_graph_optimization=True)
    elif suffix in (".plan", ".engine"):
        platform, (inputs, outputs, profile) = "tensorrt", _plan_io(model_file)
    else:
        raise InputError(f"{model_file}: expected an .onnx file or a TensorRT .plan/.engine")
    name = check_model_name(name) if name is not None else name_from_file(model_file)
    folder = Path(repository) / name
    text = model_config(name, platform, inputs, outputs, profile, options)
    with atomic_folder(folder, force, owned="config.pbtxt") as tmp:
        version = tmp / "1"
        version.mkdir()
        shutil.copyfile(model_file, version / PLATFORMS[platform][1])
        for data in external:  # where ONNX Runtime looks for them: relative to the model file
            (version / data).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_file.parent / data, version / data)
        if platform == "tensorrt":
            sidecar = sidecar_path(model_file)
            if sidecar.exists():
                shutil.copyfile(sidecar, version / (PLATFORMS[platform][1] + ".json"))
        (tmp / "config.pbtxt").write_text(text)
    return folder


def _onnx_io(checked: OnnxFile) -> tuple[list[TensorConfig], list[TensorConfig], ShapeProfile | None]:
    model = checked.model

    def tensors(values) -> list[TensorConfig]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or -1 for d in t.shape.dim]
            out.append(TensorConfig(v.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), dims))
        return out

    init = {i.name for i in model.graph.initializer}
    return (
        tensors([v for v in model.graph.input if v.name not in init]),
        tensors(model.graph.output),
        metadata.profile_of(metadata.get_metadata(model)),
    )


def _plan_io(path: Path) -> tuple[list[TensorConfig], list[TensorConfig], ShapeProfile | None]:
    """A plan's I/O from its sidecar (the plan itself needs TensorRT and the right GPU to open)."""
    sidecar_file = sidecar_path(path)
    if not sidecar_file.exists():
        raise InputError(
            f"{path} has no sidecar {sidecar_file.name}; build it with 'effattn build' so its I/O is known"
        )
    sidecar = Sidecar.read(sidecar_file)
    return _sidecar_io(sidecar)


def _sidecar_io(sidecar) -> tuple[list[TensorConfig], list[TensorConfig], ShapeProfile | None]:
    """I/O as the builder recorded it (TensorRT dtype names, -1 for dynamic axes) and the first profile.
    Types map as the TensorRT runner maps them; one it cannot feed is refused by name, never taken as FP32."""
    profiles = sidecar.key.get("profiles") or ()
    profile = ShapeProfile.from_json(profiles[0]) if profiles else None
    tensors: dict[str, list[TensorConfig]] = {"INPUT": [], "OUTPUT": []}
    for t in sidecar.io:
        device_dtype, host_dtype = dtypes.io_dtypes(t["dtype"], t["name"])
        if device_dtype == "bfloat16":
            raise InputError(f"engine tensor {t['name']!r} is BF16, which effattn's Triton configs do not express yet")
        tensors[t["mode"]].append(
            TensorConfig(t["name"], np.dtype(host_dtype), [-1 if d is None else d for d in Sidecar.named_shape(t)])
        )
    return tensors["INPUT"], tensors["OUTPUT"], profile


def runner_tensors(specs) -> list[TensorConfig]:
    """A runner's input or output specs as TensorConfigs (names of symbolic axes kept, -1 for unnamed ones)."""
    return [
        TensorConfig(s.name, np.dtype(s.dtype), [d if isinstance(d, (int, str)) else -1 for d in (s.shape or ())])
        for s in specs.values()
    ]


def served_config(name: str, runner, max_batch_size: int, max_queue_delay_us: int, instances: int) -> dict:
    """The ModelConfig of a model ``effattn serve`` serves: what ``effattn triton`` writes for the same file
    with the server's batching (no warm-up: the server runs none)."""
    backend = runner.backend
    platform = "tensorrt" if backend == "tensorrt" else "pytorch" if backend.startswith("torch") else "onnxruntime"
    kind = "KIND_CPU" if str(getattr(runner, "device", "cpu")) == "cpu" else "KIND_GPU"
    options = TritonOptions(
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        kind=kind,
        warmup=False,
    )
    return config_dict(
        name, platform, runner_tensors(runner.inputs), runner_tensors(runner.outputs), runner.profile, options
    )
