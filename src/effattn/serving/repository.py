"""``effattn triton``: a Triton model repository (``REPO/NAME/config.pbtxt``, ``REPO/NAME/N/model.onnx`` or
``model.plan``) from one config dict, shared with ``effattn serve``. A model is batched only when every input
and output shares a symbolic first axis (:func:`batch_dimension`); ``max_batch_size`` is decided once here.
Versions are added beside each other under one config; each version folder records the files effattn wrote
(:data:`RECORD`), so ``--force`` replaces those and nothing else. See docs/serving.md#on-triton-inference-server."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.text_encoding import CEscape, CUnescape

from .. import dtypes, metadata
from ..engines.cache import Sidecar, sidecar_path
from ..engines.onnxruntime_session import holds_float8
from ..engines.precision import check_onnx
from ..errors import BackendError, ConfigError, FileExistsNoForceError, InputError
from ..files import atomic_folder, atomic_output, require_file
from ..metadata import OnnxFile
from ..names import check_model_name, name_from_file
from ..shapes import ShapeProfile, format_shape

#: Triton's platform (or, for OpenVINO, backend) and model file for each; "pytorch" only describes a model
#: `effattn serve --backend torch` serves (eager code, not the TorchScript file Triton's PyTorch backend would
#: need: `effattn triton` never writes it). Triton's OpenVINO backend reads model.xml unless the config names
#: another file (``default_model_filename``, openvino_backend README and src/openvino.cc ReadModel).
PLATFORMS = {
    "onnxruntime": ("onnxruntime_onnx", "model.onnx"),
    "openvino": ("openvino", "model.onnx"),
    "tensorrt": ("tensorrt_plan", "model.plan"),
    "pytorch": ("pytorch_libtorch", "model.pt"),
}
#: The file in each version folder that lists what effattn wrote there (JSON: {"written": [relative paths]}):
#: all ``--force`` may replace. Hidden, so Triton and KServe's storage initializer treat it as any stray file.
RECORD = ".effattn-files.json"


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
    kind: str = "auto"  # KIND_CPU, KIND_GPU, or auto: what the model runs on (instance_kind)
    trt_accelerator: bool = False  # onnxruntime platform: TensorRT execution accelerator
    fp16: bool = False  # with trt_accelerator: precision_mode FP16
    #: with trt_accelerator: where ONNX Runtime keeps built engines and timing caches, inside the container
    #: (a volume there keeps them across restarts; the model's name is appended)
    trt_cache_path: str = "/trt_cache"
    #: threads per instance: ONNX Runtime's intra_op_thread_count, OpenVINO's INFERENCE_NUM_THREADS (0: the
    #: backend picks, from the cores it sees); None writes nothing (the backend's own default)
    threads: int | None = None
    inter_op_threads: int | None = None  # ONNX Runtime's inter_op_thread_count (used in parallel mode only)
    streams: int | None = None  # OpenVINO's NUM_STREAMS (default: one per instance)
    version_policy: str | None = None  # "latest" (the newest version only), "all", None: Triton's default (latest)
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
    kind = instance_kind(platform, options)
    if options.max_batch_size < 0 or options.instances < 1 or options.max_queue_delay_us < 0:
        raise ConfigError(
            f"need max_batch_size >= 0, instances >= 1 and max_queue_delay_us >= 0; got "
            f"{options.max_batch_size}, {options.instances} and {options.max_queue_delay_us}"
        )
    max_batch = _max_batch(inputs, outputs, profile, options)
    config: dict[str, Any] = {"name": check_model_name(name)}
    if platform == "openvino":
        config |= {"backend": "openvino", "default_model_filename": PLATFORMS[platform][1]}
    else:
        config["platform"] = PLATFORMS[platform][0]
    config |= {
        "max_batch_size": max_batch,
        "input": [_tensor(t, max_batch) for t in inputs],
        "output": [_tensor(t, max_batch) for t in outputs],
    }
    if options.version_policy is not None:
        if options.version_policy not in ("latest", "all"):
            raise ConfigError(f"version policy must be latest or all, got {options.version_policy!r}")
        policy = {"latest": {"num_versions": 1}} if options.version_policy == "latest" else {"all": {}}
        config["version_policy"] = policy
    if max_batch:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": options.max_queue_delay_us}
        if options.preferred_batch_sizes:
            config["dynamic_batching"]["preferred_batch_size"] = list(options.preferred_batch_sizes)
    config["instance_group"] = [{"count": options.instances, "kind": kind}]
    if platform == "onnxruntime" and options.basic_graph_optimization:
        config["optimization"] = {"graph": {"level": -1}}
    if platform == "onnxruntime" and options.trt_accelerator:
        accelerator = {"name": "tensorrt", "parameters": _trt_parameters(name, profile, options)}
        config.setdefault("optimization", {})["execution_accelerators"] = {"gpu_execution_accelerator": [accelerator]}
    parameters = _backend_parameters(platform, max_batch, options)
    if parameters:
        config["parameters"] = {key: {"string_value": value} for key, value in parameters.items()}
    if options.warmup and profile is not None:
        config["model_warmup"] = [_warmup(profile, max_batch)]
    return config


def instance_kind(platform: str, options: TritonOptions) -> str:
    """``KIND_GPU`` or ``KIND_CPU`` for ``options.kind`` (``auto``: what the model runs on - a plan or the
    TensorRT accelerator on the GPU, the rest on the CPU); a kind its backend cannot run on is refused here,
    as Triton would refuse it at load (or, for the accelerator on a CPU instance, silently ignore it)."""
    kind = options.kind
    if kind == "auto":
        kind = "KIND_GPU" if platform == "tensorrt" or options.trt_accelerator else "KIND_CPU"
    if kind not in ("KIND_GPU", "KIND_CPU"):
        raise InputError(f"instance kind must be auto, KIND_GPU or KIND_CPU, got {kind!r}")
    if platform == "tensorrt" and kind == "KIND_CPU":
        raise InputError("a TensorRT plan runs on the GPU only; use --kind gpu or ship the ONNX file")
    if platform == "openvino" and (kind == "KIND_GPU" or options.trt_accelerator):
        raise InputError("Triton's OpenVINO backend runs on the CPU only (KIND_CPU, no TensorRT accelerator)")
    if options.trt_accelerator and (platform != "onnxruntime" or kind == "KIND_CPU"):
        raise InputError("the TensorRT accelerator is ONNX Runtime's, on GPU instances: use --kind gpu (or auto)")
    return kind


def _trt_parameters(name: str, profile: ShapeProfile | None, options: TritonOptions) -> dict[str, str]:
    """The TensorRT accelerator's parameters (onnxruntime_backend README, "Parameter mapping"): precision, an
    engine and timing cache so a restart loads engines instead of building them, and the profile's shapes so
    the one engine built covers min..max (without them ONNX Runtime rebuilds whenever a shape leaves the range
    seen so far)."""
    cache = f"{check_container_path(options.trt_cache_path).rstrip('/')}/{name}"
    parameters = {
        "precision_mode": "FP16" if options.fp16 else "FP32",
        "max_workspace_size_bytes": "1073741824",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache,
    }
    if profile is not None:
        for p in profile.inputs:
            if re.search(r"[,:\s]", p.name):  # the option's own separators: "name:1x3x32x32,other:..."
                raise InputError(f"input {p.name!r} cannot be named in TensorRT profile shapes (',', ':' or space)")
        for which in ("min", "opt", "max"):
            parameters[f"trt_profile_{which}_shapes"] = ",".join(
                f"{p.name}:{format_shape(getattr(p, which))}" for p in profile.inputs
            )
    return parameters


def check_container_path(path: str) -> str:
    """``path`` if it is an absolute path in the container that a config, a shell line and a Dockerfile can all
    hold as it is (letters, digits, ``_ . / -``; no ``..``), else :class:`ConfigError`."""
    if not re.fullmatch(r"/[A-Za-z0-9_./-]{0,200}", path) or ".." in path.split("/"):
        raise ConfigError(f"{path!r} is not an absolute container path of letters, digits, '_', '.', '/' or '-'")
    return path


def _backend_parameters(platform: str, max_batch: int, options: TritonOptions) -> dict[str, str]:
    """Model-level ``parameters``: thread counts (onnxruntime_backend README "Model Config Options"; OpenVINO:
    openvino_backend README and src/openvino.cc ParseParameterHelper). Triton's OpenVINO backend fixes the
    batch at max_batch_size (``ov::set_batch``) and refuses smaller batches unless padding is on."""
    parameters = {}
    if platform == "onnxruntime":
        if options.threads is not None:
            parameters["intra_op_thread_count"] = str(options.threads)
        if options.inter_op_threads is not None:
            parameters["inter_op_thread_count"] = str(options.inter_op_threads)
    elif platform == "openvino":
        parameters["NUM_STREAMS"] = str(options.streams or options.instances)
        if options.threads is not None:
            parameters["INFERENCE_NUM_THREADS"] = str(options.threads)
        if max_batch:
            parameters["ENABLE_BATCH_PADDING"] = "YES"
    return parameters


def profile_comment(profile: ShapeProfile | None, max_batch: int) -> str:
    """The shape profile as ``#`` lines atop ``config.pbtxt``: Triton checks only ranks, fixed sizes and
    max_batch_size, so a size outside min..max reaches the backend (``effattn serve`` answers 400)."""
    if profile is None:
        return ""
    lines = [
        "# effattn shape profile (Triton does not check these ranges; only the rank, fixed sizes and",
        f"# max_batch_size {max_batch} are enforced, and --trt-accelerator builds its engine for this range):",
    ]
    lines += [
        f'#   "{_quote(p.name)}": min {format_shape(p.min)}, opt {format_shape(p.opt)}, max {format_shape(p.max)}'
        for p in profile.inputs
    ]
    return "\n".join(lines) + "\n"


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
    backend: str = "onnxruntime",
    version: int = 1,
) -> Path:
    """Write ``repository/name/{config.pbtxt, VERSION/model.*}`` for an effattn ONNX file (checked as ``effattn
    run`` checks it, its external data copied beside it; served by ``backend``: onnxruntime or openvino) or a
    TensorRT plan.

    Other versions and files effattn did not write are kept. An existing version is replaced only with
    ``force`` and only if it holds nothing but what its :data:`RECORD` lists; a version added beside others
    must have their I/O (one config serves them all), and a config that changes needs ``force``."""
    options = options or TritonOptions()
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**63:
        raise ConfigError(f"version must be an integer from 1 to 2^63-1 (a Triton version folder), got {version!r}")
    model_file = require_file(model_file, "an .onnx file or a TensorRT .plan/.engine")
    suffix, external = model_file.suffix.lower(), tuple[str, ...]()
    if suffix == ".onnx":
        if backend not in ("onnxruntime", "openvino"):
            raise ConfigError(f"an ONNX file is served by the onnxruntime or openvino backend, not {backend!r}")
        checked = metadata.check_onnx_file(model_file)
        check_onnx(model_file, checked.model)  # and the rest of what `run` checks before any backend sees a file
        platform, (inputs, outputs, profile), external = backend, _onnx_io(checked), checked.external
        if backend == "onnxruntime" and holds_float8(model_file):
            options = replace(options, basic_graph_optimization=True)
    elif suffix in (".plan", ".engine"):
        if backend != "onnxruntime":
            raise ConfigError(f"a TensorRT plan is served by Triton's TensorRT backend; --backend {backend} takes ONNX")
        platform, (inputs, outputs, profile) = "tensorrt", _plan_io(model_file)
    else:
        raise InputError(f"{model_file}: expected an .onnx file or a TensorRT .plan/.engine")
    name = check_model_name(name) if name is not None else name_from_file(model_file)
    config = config_dict(name, platform, inputs, outputs, profile, options)
    text = profile_comment(profile, config["max_batch_size"]) + to_pbtxt(config)
    files = {PLATFORMS[platform][1]: model_file}
    files |= {data: model_file.parent / data for data in external}  # where ONNX Runtime looks: beside the model
    if platform == "tensorrt" and sidecar_path(model_file).exists():
        files[PLATFORMS[platform][1] + ".json"] = sidecar_path(model_file)
    folder = Path(repository) / name
    if _mode(folder) is None:
        with atomic_folder(folder, force, owned="config.pbtxt") as tmp:
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from a server running as another user
            _write_version(tmp / str(version), files)
            (tmp / "config.pbtxt").write_text(text)
        return folder
    config_file = folder / "config.pbtxt"
    if not (stat.S_ISDIR(_mode(folder) or 0) and stat.S_ISREG(_mode(config_file) or 0)):
        raise FileExistsNoForceError(
            f"{folder} exists and is not a folder effattn wrote (no config.pbtxt); remove or rename it yourself"
        )
    old_text = config_file.read_text(errors="replace")
    others = [v for v in _versions(folder) if v != version]
    if others and old_text != text:
        _check_same_io(config_file, old_text, text, others, model_file)
    version_folder = folder / str(version)
    if _mode(version_folder) is not None and not force:
        raise FileExistsNoForceError(f"{version_folder} exists; pass --force to replace the files effattn wrote there")
    if old_text != text and not force:
        raise FileExistsNoForceError(
            f"{config_file} differs from the config for {model_file.name} (options or I/O); pass --force to "
            f"replace it{f' (versions {others} are then served with it)' if others else ''}"
        )
    if _mode(version_folder) is not None:
        _check_only_recorded(version_folder)
    with atomic_folder(version_folder, force, owned=RECORD) as tmp:
        _write_version(tmp, files)
    if old_text != text:
        with atomic_output(config_file, force=True) as tmp:
            tmp.write_text(text)
    return folder


def _mode(path: Path) -> int | None:
    try:
        return path.lstat().st_mode
    except FileNotFoundError:
        return None


def _versions(folder: Path) -> list[int]:
    """The version folders Triton would see in a model folder (integer names)."""
    return sorted(int(p.name) for p in folder.iterdir() if re.fullmatch(r"[0-9]{1,19}", p.name) and p.is_dir())


def _write_version(folder: Path, files: dict[str, Path]) -> None:
    folder.mkdir(exist_ok=True)  # atomic_folder made it; a new model's version folder is made here
    folder.chmod(0o755)
    for relative, source in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / relative)
    (folder / RECORD).write_text(json.dumps({"written": sorted(files)}, indent=1) + "\n")


def _check_only_recorded(folder: Path) -> None:
    """Refuse to replace a version folder holding anything its record does not list (a link, a file someone
    put there, a version written by hand): ``--force`` replaces what effattn wrote, nothing else."""
    written: set[str] = set()
    if stat.S_ISREG(_mode(folder / RECORD) or 0):
        try:
            listed = json.loads((folder / RECORD).read_text())["written"]
            written = {w for w in listed if isinstance(w, str)} if isinstance(listed, list) else set()
        except (ValueError, KeyError, TypeError, OSError, RecursionError):
            written = set()
    foreign = []
    for root, dirs, names in os.walk(folder):  # links are not followed: a link is foreign itself
        for entry in dirs + names:
            path = Path(root) / entry
            relative = path.relative_to(folder).as_posix()
            mode = _mode(path) or 0
            if stat.S_ISDIR(mode):
                ours = any(w.startswith(relative + "/") for w in written)
            else:
                ours = stat.S_ISREG(mode) and (relative in written or relative == RECORD)
            if not ours:
                foreign.append(relative)
    if foreign:
        raise FileExistsNoForceError(
            f"{folder} holds what effattn did not write there ({', '.join(sorted(foreign)[:5])}); "
            "move it away or choose another --version"
        )


_TOKEN = re.compile(r"""\s+|#[^\n]*|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[{}\[\]:,;<>]|[^\s{}\[\]:,;<>"'#]+""")


def parse_pbtxt(text: str) -> dict[str, list]:
    """Protobuf text format as nested dicts (every field a list of values: strings unescaped, the rest raw
    tokens), enough to compare the I/O of an existing ``config.pbtxt``; Triton's ModelConfig descriptor ships
    only with tritonclient, which effattn does not need. Malformed text is an :class:`InputError`."""
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise InputError(f"cannot read protobuf text at character {position}")
        token, position = match.group(), match.end()
        if not token[0].isspace() and token[0] != "#":
            tokens.append(token)
    try:
        fields, _ = _parse_fields(tokens, 0, None)
    except (IndexError, ValueError) as e:
        raise InputError(f"cannot read protobuf text: {e or 'it ends early'}") from None
    return fields


def _parse_fields(tokens: list[str], i: int, close: str | None) -> tuple[dict[str, list], int]:
    fields: dict[str, list] = {}
    while (tokens[i] if i < len(tokens) else None) != close:
        key = tokens[i]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"expected a field name, got {key!r}")
        i += 2 if tokens[i + 1] == ":" else 1
        if tokens[i] == "[":
            i += 1
            while tokens[i] != "]":
                value, i = _parse_value(tokens, i)
                fields.setdefault(key, []).append(value)
                i += tokens[i] == ","
            i += 1
        else:
            value, i = _parse_value(tokens, i)
            fields.setdefault(key, []).append(value)
        i += i < len(tokens) and tokens[i] in (",", ";")
    return fields, i + 1


def _parse_value(tokens: list[str], i: int) -> tuple[Any, int]:
    token = tokens[i]
    if token in ("{", "<"):
        return _parse_fields(tokens, i + 1, "}" if token == "{" else ">")
    if token[0] in "\"'":
        return CUnescape(token[1:-1]).decode("utf-8", errors="replace"), i + 1
    if token in "}]>:,;":
        raise ValueError(f"unexpected {token!r}")
    return token, i + 1


def _io_signature(text: str) -> dict[str, str]:
    """What every version of a model must share: platform or backend, max_batch_size, each tensor's
    name, type and dims."""
    fields = parse_pbtxt(text)

    def one(message: dict, key: str, default: str = "") -> str:
        return str(message.get(key, [default])[-1])

    def tensors(key: str) -> str:
        return "; ".join(
            f"{one(t, 'name')!r} {one(t, 'data_type')} dims [{', '.join(map(str, t.get('dims', [])))}]"
            for t in fields.get(key, [])
            if isinstance(t, dict)
        )

    return {
        "platform": one(fields, "platform") or f"backend {one(fields, 'backend')}",
        "max_batch_size": one(fields, "max_batch_size", "0"),
        "input": tensors("input"),
        "output": tensors("output"),
    }


def _check_same_io(config_file: Path, old: str, new: str, others: list[int], model_file: Path) -> None:
    try:
        before = _io_signature(old)
    except InputError as e:
        raise InputError(f"{config_file}: {e}; versions {others} depend on it: fix or move it yourself") from None
    after = _io_signature(new)
    differ = [key for key in before if before[key] != after[key]]
    if differ:
        raise InputError(
            f"{config_file} serves versions {others} with {', '.join(f'{k} {before[k] or None}' for k in differ)}; "
            f"{model_file.name} needs {', '.join(f'{k} {after[k] or None}' for k in differ)}: versions of a model "
            "share one config - give it another --name"
        )


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
