"""``effattn triton``: a Triton Inference Server model repository for an exported model or engine.

Layout (Triton's): ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/model.onnx`` (or ``model.plan``).
Dims come from the file's ShapeProfile: with batching on, the batch axis becomes ``max_batch_size``
and is left out of ``dims``; every other dynamic axis is -1. A TensorRT plan only runs on the GPU
model and TensorRT version it was built with, so the ONNX platform (optionally with the TensorRT
execution accelerator) is the portable choice; a plan's sidecar is copied with it as the record.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from google.protobuf.text_encoding import CEscape

from ..errors import BackendError, ConfigError, InputError, first_line
from ..files import atomic_folder
from ..names import check_model_name, name_from_file
from ..shapes import ShapeProfile

PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
_TYPES = {np.dtype(np.float32): "TYPE_FP32", np.dtype(np.float16): "TYPE_FP16", np.dtype(np.float64): "TYPE_FP64",
          np.dtype(np.int64): "TYPE_INT64", np.dtype(np.int32): "TYPE_INT32", np.dtype(np.int8): "TYPE_INT8",
          np.dtype(np.uint8): "TYPE_UINT8", np.dtype(np.bool_): "TYPE_BOOL"}


@dataclass
class TensorConfig:
    name: str
    dtype: np.dtype
    dims: list[int]  # full shape, -1 for dynamic axes (batch included)


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


def _quote(text: str) -> str:
    """``text`` escaped for a protobuf text-format string (quotes, backslashes, newlines from the file)."""
    return CEscape(text, as_utf8=True)


def _type_of(name: str, dtype: np.dtype) -> str:
    if dtype not in _TYPES:
        raise InputError(f"tensor {name!r} has dtype {dtype}, which Triton's config cannot express")
    return _TYPES[dtype]


def model_config(name: str, platform: str, inputs: Sequence[TensorConfig], outputs: Sequence[TensorConfig],
                 profile: ShapeProfile | None, options: TritonOptions) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ModelConfig)."""
    if platform not in PLATFORMS:
        raise BackendError(f"unknown Triton platform {platform!r}; choose {', '.join(PLATFORMS)}")
    if options.kind not in ("KIND_GPU", "KIND_CPU"):
        raise InputError(f"instance kind must be KIND_GPU or KIND_CPU, got {options.kind!r}")
    if platform == "tensorrt" and options.kind == "KIND_CPU":
        raise InputError("a TensorRT plan runs on the GPU only; use --kind KIND_GPU or the onnxruntime platform")
    if options.max_batch_size < 0 or options.instances < 1 or options.max_queue_delay_us < 0:
        raise ConfigError(f"need max_batch_size >= 0, instances >= 1 and max_queue_delay_us >= 0; got "
                          f"{options.max_batch_size}, {options.instances} and {options.max_queue_delay_us}")
    profile_batch = profile.batch_range[1] if profile else None
    batching = options.max_batch_size > 0 and all(t.dims and t.dims[0] == -1 for t in inputs)
    max_batch = min(options.max_batch_size, profile_batch or options.max_batch_size) if batching else 0
    for size in options.preferred_batch_sizes:
        if not 1 <= size <= max_batch:
            raise InputError(f"preferred batch size {size} is outside 1..max_batch_size ({max_batch})")

    def tensor(t: TensorConfig) -> str:
        dims = t.dims[1:] if max_batch else t.dims
        return f'  {{\n    name: "{_quote(t.name)}"\n    data_type: {_type_of(t.name, t.dtype)}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'

    lines = [f'name: "{_quote(check_model_name(name))}"', f'platform: "{PLATFORMS[platform][0]}"', f"max_batch_size: {max_batch}",
             "input [\n" + ",\n".join(tensor(t) for t in inputs) + "\n]",
             "output [\n" + ",\n".join(tensor(t) for t in outputs) + "\n]"]
    if max_batch:
        preferred = f"  preferred_batch_size: [ {', '.join(map(str, options.preferred_batch_sizes))} ]\n" \
            if options.preferred_batch_sizes else ""
        lines.append("dynamic_batching {\n" + preferred +
                     f"  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {options.instances}\n    kind: {options.kind}\n  }}\n]")
    if platform == "onnxruntime" and options.trt_accelerator:
        precision = "FP16" if options.fp16 else "FP32"
        lines.append("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n"
                     '      name : "tensorrt"\n'
                     f'      parameters {{ key: "precision_mode" value: "{precision}" }}\n'
                     '      parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
                     "    } ]\n  }\n}")
    if options.warmup and profile is not None:
        warm = []
        for p in profile.inputs:
            dims = list(p.opt[1:]) if max_batch else list(p.opt)
            dtype = _type_of(p.name, np.dtype(p.dtype))
            warm.append(f'    inputs {{\n      key: "{_quote(p.name)}"\n      value: {{\n        data_type: {dtype}\n'
                        f'        dims: [ {", ".join(map(str, dims))} ]\n        random_data: true\n      }}\n    }}')
        batch = f"    batch_size: {min(p.opt[0] for p in profile.inputs)}\n" if max_batch else ""
        lines.append('model_warmup [\n  {\n    name: "opt shape"\n' + batch + "\n".join(warm) + "\n  }\n]")
    return "\n".join(lines) + "\n"


def write_repository(model_file: str | Path, repository: str | Path, name: str | None = None,
                     options: TritonOptions | None = None, force: bool = False) -> Path:
    """Write ``repository/name/{config.pbtxt, 1/model.*}`` for an effattn ONNX file or TensorRT plan."""
    options = options or TritonOptions()
    model_file = Path(model_file)
    if not model_file.is_file():
        raise InputError(f"{model_file} does not exist")
    suffix = model_file.suffix.lower()
    if suffix == ".onnx":
        platform, (inputs, outputs, profile) = "onnxruntime", _onnx_io(model_file)
    elif suffix in (".plan", ".engine"):
        platform, (inputs, outputs, profile) = "tensorrt", _plan_io(model_file)
    else:
        raise InputError(f"{model_file}: expected an .onnx file or a TensorRT .plan/.engine")
    name = check_model_name(name) if name is not None else name_from_file(model_file)
    folder = Path(repository) / name
    text = model_config(name, platform, inputs, outputs, profile, options)
    with atomic_folder(folder, force, owned="config.pbtxt") as tmp:
        (tmp / "1").mkdir()
        shutil.copyfile(model_file, tmp / "1" / PLATFORMS[platform][1])
        if platform == "tensorrt":
            from ..engines.cache import sidecar_path

            sidecar = sidecar_path(model_file)
            if sidecar.exists():
                shutil.copyfile(sidecar, tmp / "1" / (PLATFORMS[platform][1] + ".json"))
        (tmp / "config.pbtxt").write_text(text)
    return folder


def _onnx_io(path: Path) -> tuple[list[TensorConfig], list[TensorConfig], ShapeProfile | None]:
    import onnx

    from .. import metadata
    from ..export.onnx import read_metadata

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise InputError(f"{path} is not a readable ONNX file: {first_line(e)}") from None

    def tensors(values) -> list[TensorConfig]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out.append(TensorConfig(v.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), dims))
        return out

    init = {i.name for i in model.graph.initializer}
    return (tensors([v for v in model.graph.input if v.name not in init]), tensors(model.graph.output),
            metadata.profile_of(read_metadata(path)))


def _plan_io(path: Path) -> tuple[list[TensorConfig], list[TensorConfig], ShapeProfile | None]:
    """A plan's I/O from its sidecar (the plan itself needs TensorRT and the right GPU to open)."""
    from ..engines.cache import Sidecar, sidecar_path

    sidecar_file = sidecar_path(path)
    if not sidecar_file.exists():
        raise InputError(f"{path} has no sidecar {sidecar_file.name}; build it with 'effattn build' so its I/O is known")
    sidecar = Sidecar.read(sidecar_file)
    return _sidecar_io(sidecar)


_TRT_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "INT8": np.int8,
               "UINT8": np.uint8, "BOOL": np.bool_}


def _sidecar_io(sidecar) -> tuple[list[TensorConfig], list[TensorConfig], ShapeProfile | None]:
    """I/O as the builder recorded it (TensorRT dtype names, -1 for dynamic axes) and the first profile."""
    profiles = sidecar.key.get("profiles") or ()
    profile = ShapeProfile.from_json(profiles[0]) if profiles else None
    tensors = {"INPUT": [], "OUTPUT": []}
    for t in sidecar.io:
        dtype = np.dtype(_TRT_DTYPES.get(t["dtype"], np.float32))
        tensors[t["mode"]].append(TensorConfig(t["name"], dtype, [d if d >= 0 else -1 for d in t["shape"]]))
    return tensors["INPUT"], tensors["OUTPUT"], profile
