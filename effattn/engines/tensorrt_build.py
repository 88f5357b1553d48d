"""TensorRT engines through Polygraphy's loaders, for TensorRT 10 and 11 (and TensorRT for RTX).

Precision lives in the ONNX graph: an FP16 graph (``effattn.export.to_fp16``) is built as a
strongly typed network, the only kind TensorRT 11 builds (it removed ``BuilderFlag.FP16``) and the
kind TensorRT >= 10.12 prefers. On TensorRT 10 the weakly typed FP16 builder flag stays available
as an option (``fp16_flag=True``). After each build the engine inspector counts the layers that
really run in FP16: an "FP16 engine" with none is refused.

References: TensorRT Python API (``IBuilderConfig``, ``IProgressMonitor``, ``IEngineInspector``,
``ICudaEngine.get_tensor_profile_shape``), docs.nvidia.com/deeplearning/tensorrt/latest/
inference-library/python-api-docs.html and the TensorRT 11 migration guide (strong typing only);
Polygraphy ``backend/trt/loader.py`` and ``config.py`` (``NetworkFromOnnxPath(strongly_typed=)``,
``CreateConfig(profiles=, load_timing_cache=, memory_pool_limits=, builder_optimization_level=,
progress_monitor=)``, ``EngineBytesFromNetwork(save_timing_cache=)``); ``POLYGRAPHY_USE_TENSORRT_RTX=1``
selects TensorRT for RTX. Checked against the packages themselves: polygraphy 0.53.6 (``config.py:61``
reads the RTX switch once; ``backend/trt/loader.py:802-831`` and ``config.py:319-344`` load and merge
the timing cache under its own file lock), tensorrt-cu13-bindings 11.4 (``EngineInspector.execution_context``,
``IProgressMonitor``), NvInferRuntime.h (IEngineInspector: without a context, formats of a dynamic-shape
engine are not shown).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import metadata
from ..errors import BackendError, first_line
from ..shapes import ShapeProfile
from .cache import EngineCache, EngineKey, Sidecar, sidecar_path

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")


def import_tensorrt(rtx: bool = False):
    """The ``tensorrt`` (or ``tensorrt_rtx``) module, or a BackendError that says how to get it."""
    name = "tensorrt_rtx" if rtx else "tensorrt"
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise BackendError(f"{name} is not installed ({e}); on a CUDA machine: pip install 'effattn[gpu]' "
                           f"(TensorRT wheels come from NVIDIA's index)") from None


def tensorrt_available(rtx: bool = False) -> bool:
    try:
        import_tensorrt(rtx)
    except BackendError:
        return False
    return gpu_identity(required=False) is not None


def major_version(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def gpu_identity(device: int = 0, required: bool = True) -> tuple[str, str] | None:
    """(GPU name, compute capability "9.0") of ``device`` as torch sees it."""
    import torch

    if not torch.cuda.is_available():
        if required:
            raise BackendError("no CUDA GPU is visible (torch.cuda.is_available() is False); TensorRT needs one")
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


@dataclass
class EngineBuild:
    plan: Path
    sidecar: Sidecar
    cache_hit: bool
    seconds: float = 0.0


RTX_SWITCH = "POLYGRAPHY_USE_TENSORRT_RTX"


def polygraphy_loaders(rtx: bool):
    """Polygraphy's TensorRT loaders, bound to ``tensorrt`` or ``tensorrt_rtx``.

    Polygraphy reads ``POLYGRAPHY_USE_TENSORRT_RTX`` once, when ``polygraphy.config`` is first imported,
    and its ``backend.trt`` modules bind their ``trt`` then. So the choice is made here, at that first
    import (the variable is restored afterwards), and a later call wanting the other library is refused
    instead of mixing modules: one process builds for one of them.
    """
    if "polygraphy.config" not in sys.modules:
        before = os.environ.get(RTX_SWITCH)
        os.environ[RTX_SWITCH] = "1" if rtx else "0"
        try:
            import polygraphy.backend.trt  # noqa: F401  (binds its trt module now)
        finally:
            if before is None:
                os.environ.pop(RTX_SWITCH, None)
            else:
                os.environ[RTX_SWITCH] = before
    from polygraphy import config

    if config.USE_TENSORRT_RTX != rtx:
        have, want = ("TensorRT-RTX", "TensorRT") if config.USE_TENSORRT_RTX else ("TensorRT", "TensorRT-RTX")
        raise BackendError(f"Polygraphy in this process is bound to {have} (chosen when it was first imported; "
                           f"{RTX_SWITCH}); build {want} engines in another process")
    from polygraphy import backend

    return backend.trt


def _progress_monitor(trt, bar):
    """A TensorRT IProgressMonitor driving a tqdm bar (TensorRT >= 10); the caller keeps it alive.
    TensorRT calls it from its own threads, so the bar is updated under a lock."""
    if not hasattr(trt, "IProgressMonitor"):
        return None
    lock = threading.Lock()

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                with lock:
                    bar.reset(total=max(num_steps, 1))
                    bar.set_description(phase_name)

        def step_complete(self, phase_name, step):
            with lock:
                if bar.desc.startswith(phase_name):
                    bar.n = step + 1
                    bar.refresh()
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            pass

    return Monitor()


def _tensor_type(tensor: Mapping) -> str | None:
    """The precision class of one inspector tensor entry, or None when the inspector did not say.

    TensorRT <= 10 writes one ``"Format/Datatype"`` string ("Row major linear FP16 format", "Half",
    "N/A due to dynamic shapes"); TensorRT 11 splits it into ``"Datatype"`` ("Half", "BFloat16", ...)
    and ``"Format"`` (polygraphy 0.53.6 ``tools/inspect/subtool/model/extractors/_trt.py``).
    """
    text = str(tensor.get("Datatype") or tensor.get("Format/Datatype") or "").lower()
    if not text or "n/a" in text or "not available" in text:
        return None
    for kind, words in (("bf16", ("bfloat16", "bf16")), ("fp16", ("half", "fp16")), ("fp8", ("fp8",)),
                        ("int8", ("int8",)), ("fp32", ("float", "fp32"))):
        if any(w in text for w in words):
            return kind
    return "other"


def census(info: Mapping) -> dict:
    """Layers by output precision from the inspector's JSON: {"layers": n, "fp16": k, "fp32": m, ...};
    ``"formats": "unknown"`` when the inspector gave no types (a dynamic-shape engine without a context)."""
    layers = [layer for layer in info.get("Layers", []) if isinstance(layer, Mapping)]
    result: dict = {"layers": len(layers)}
    kinds = [[_tensor_type(o) for o in layer.get("Outputs", []) if isinstance(o, Mapping)] for layer in layers]
    if layers and not any(k for ks in kinds for k in ks):
        return result | {"formats": "unknown"}
    for ks in kinds:
        known = [k for k in ks if k]
        kind = next((k for k in ("fp8", "int8", "fp16", "bf16", "fp32") if k in known), "other")
        result[kind] = result.get(kind, 0) + 1
    return result


def layer_precisions(trt, engine) -> dict:
    """:func:`census` of ``engine``, inspected through an execution context set to each input's opt shape
    of profile 0: without one, TensorRT shows no per-layer formats for a dynamic-shape engine."""
    try:
        context = engine.create_execution_context()
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                context.set_input_shape(name, tuple(engine.get_tensor_profile_shape(name, 0)[1]))
        inspector = engine.create_engine_inspector()
        inspector.execution_context = context
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception as e:  # older engines or a stripped build: report that it could not be told
        return {"error": first_line(e)}
    return census(info)


def fp16_refusal(layers: Mapping) -> str | None:
    """Why an engine must not be called FP16 -- only when the census *knows* no layer runs in FP16."""
    if layers.get("layers") and "formats" not in layers and "error" not in layers and not layers.get("fp16"):
        return f"runs 0 of {layers['layers']} layers in FP16"
    return None


def fp16_scratch_path(cache_root: Path, onnx_path: Path) -> Path:
    """Where the FP16 graph of an FP32 file goes: named by its content, so two ``model.onnx`` never collide."""
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
    return cache_root / f"{onnx_path.stem}.{digest}.fp16.onnx"


def build_engine(
    onnx_path: str | Path,
    profiles: ShapeProfile | Sequence[ShapeProfile] | None = None,
    precision: str = "fp16",
    *,
    output: str | Path | None = None,
    cache_dir: str | Path = Path.home() / ".cache" / "effattn" / "engines",
    workspace_gib: float | None = None,
    optimization_level: int = 3,
    fp16_flag: bool = False,
    rtx: bool = False,
    force: bool = False,
    progress: bool = True,
) -> EngineBuild:
    """Build (or take from the cache) a TensorRT plan for ``onnx_path``; returns its path and sidecar.

    ``precision="fp16"`` wants an FP16 graph (an FP32 file is converted first, into the cache);
    ``fp16_flag=True`` instead builds the FP32 graph weakly typed with the FP16 flag (TensorRT 10 only).
    ``profiles`` default to the file's own shape profile. ``output`` copies the plan (and sidecar) there.
    """
    import time

    from tqdm.auto import tqdm

    from ..metadata import read_metadata
    from ..export.precision import to_fp16

    start = time.perf_counter()
    if precision not in PRECISIONS:
        raise BackendError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    onnx_path = Path(onnx_path)
    output = Path(output) if output else None
    if output and output.exists() and not force:
        raise BackendError(f"{output} exists; pass force=True (--force) to overwrite it")
    trt = import_tensorrt(rtx)
    polygraphy_loaders(rtx)  # refuses a process already bound to the other TensorRT
    gpu_name, capability = gpu_identity()
    trt11 = major_version(trt) >= 11
    if fp16_flag and (trt11 or rtx):
        raise BackendError(f"TensorRT {trt.__version__} has no FP16 builder flag (strongly typed only); build the "
                           "FP16 graph instead (the default: precision='fp16' without fp16_flag)")
    meta = read_metadata(onnx_path)
    graph_precision = metadata.precision_of(meta)
    cache = EngineCache(cache_dir)
    if precision == "fp16" and graph_precision == "fp32" and not fp16_flag:
        onnx_path = to_fp16(onnx_path, fp16_scratch_path(cache.root, onnx_path), force=True)
    elif precision == "fp32" and graph_precision != "fp32":
        raise BackendError(f"{onnx_path} is an {graph_precision} graph; an FP32 engine needs the FP32 export")
    if profiles is None:
        profiles = metadata.profile_of(meta)
        if profiles is None:
            raise BackendError(f"{onnx_path} has no shape profile in its metadata; pass profiles")
    profiles = [profiles] if isinstance(profiles, ShapeProfile) else list(profiles)
    options = {"optimization_level": optimization_level, "workspace_gib": workspace_gib,
               "strongly_typed": not fp16_flag, "fp16_flag": fp16_flag, "tf32": False}
    key = EngineKey.create(onnx_path.read_bytes(), precision, [p.to_json() for p in profiles], options,
                           "tensorrt_rtx" if rtx else "tensorrt", str(trt.__version__), gpu_name, capability)
    plan = cache.lookup(key)
    hit = plan is not None
    if plan is None:
        plan = _build(trt, onnx_path, profiles, key, options, cache, progress and tqdm, rtx, meta)
    sidecar = Sidecar.read(sidecar_path(plan))
    refusal = fp16_refusal(sidecar.layers) if precision == "fp16" else None
    if refusal:
        raise BackendError(f"the engine built from {onnx_path} {refusal}; refusing to call it an FP16 engine "
                           "(check the FP16 graph)")
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(plan.read_bytes())
        sidecar.write(sidecar_path(output))
        plan = output
    return EngineBuild(plan, sidecar, hit, time.perf_counter() - start)


def _build(trt, onnx_path: Path, profiles: list[ShapeProfile], key: EngineKey, options: dict,
           cache: EngineCache, tqdm, rtx: bool, meta: Mapping[str, str]) -> Path:
    """Build through Polygraphy. The shared timing cache is loaded and merged back under Polygraphy's own
    file lock (a lock held only while reading or writing it, not for the whole build)."""
    loaders = polygraphy_loaders(rtx)
    CreateConfig, Profile = loaders.CreateConfig, loaders.Profile

    trt_profiles = []
    for shape_profile in profiles:
        p = Profile()
        for inp in shape_profile.inputs:
            p.add(inp.name, min=inp.min, opt=inp.opt, max=inp.max)
        trt_profiles.append(p)
    bar = tqdm(total=1, desc="TensorRT build", leave=False) if tqdm else None
    monitor = _progress_monitor(trt, bar) if bar is not None else None  # referenced until the build ends
    config_kwargs = dict(profiles=trt_profiles, builder_optimization_level=options["optimization_level"],
                         load_timing_cache=str(cache.timing_cache) if cache.timing_cache.exists() else None,
                         progress_monitor=monitor, profiling_verbosity=trt.ProfilingVerbosity.DETAILED)
    if options["workspace_gib"]:
        config_kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(options["workspace_gib"] * 2**30)}
    if options["fp16_flag"]:
        config_kwargs.update(fp16=True, tf32=False)
    elif major_version(trt) < 11:
        config_kwargs["tf32"] = False  # FP32 references stay FP32 (TF32 pinned off)
    network = loaders.NetworkFromOnnxPath(str(onnx_path), strongly_typed=options["strongly_typed"])
    log.info("building TensorRT %s engine for %s (%d profile(s))", key.precision, onnx_path.name, len(profiles))
    cache.root.mkdir(parents=True, exist_ok=True)
    try:
        plan_bytes = loaders.EngineBytesFromNetwork(network, config=CreateConfig(**config_kwargs),
                                                    save_timing_cache=str(cache.timing_cache))()
    except Exception as e:  # Polygraphy raises PolygraphyException with TensorRT's log in it
        raise BackendError(f"TensorRT could not build {onnx_path}: {first_line(e)}") from e
    finally:
        if bar is not None:
            bar.close()
    engine = loaders.EngineFromBytes(bytes(plan_bytes))()
    io = [{"name": engine.get_tensor_name(i), "mode": engine.get_tensor_mode(engine.get_tensor_name(i)).name,
           "dtype": engine.get_tensor_dtype(engine.get_tensor_name(i)).name,
           "shape": list(engine.get_tensor_shape(engine.get_tensor_name(i)))} for i in range(engine.num_io_tensors)]
    return cache.store(key, bytes(plan_bytes), io=io, layers=layer_precisions(trt, engine), metadata=meta)
