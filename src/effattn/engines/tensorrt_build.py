"""TensorRT engines (10 and 11, and TensorRT for RTX) through Polygraphy's loaders, built strongly typed
from the graph's own precision (:mod:`.precision` decides it). After each build the inspector's census must
show layers in that precision, or the engine is refused. Rules: docs/gpu-tensorrt.md#how-engines-are-built;
sources: docs/decisions.md#tensorrt-and-polygraphy-sources."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import onnx
from tqdm.auto import tqdm

from .. import metadata, precisions
from ..errors import BackendError, first_line
from ..files import check_writable
from ..metadata import read_metadata
from ..shapes import ShapeProfile
from .cache import DEFAULT_CACHE_DIR, EngineCache, EngineKey, Sidecar, sidecar_path
from .precision import (
    INSPECTOR_EXCERPT,
    EnginePrecision,
    capability_refusal,
    census,
    converted_graph,
    engine_precision,
    precision_refusal,
)

log = logging.getLogger(__name__)


def import_tensorrt(rtx: bool = False):
    """The ``tensorrt`` (or ``tensorrt_rtx``) module, or a BackendError that says how to get it."""
    name = "tensorrt_rtx" if rtx else "tensorrt"
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise BackendError(
            f"{name} is not installed ({e}); on a CUDA machine: pip install 'effattn[gpu]' "
            f"(TensorRT wheels come from NVIDIA's index)"
        ) from None


def tensorrt_available(rtx: bool = False) -> bool:
    try:
        import_tensorrt(rtx)
    except BackendError:
        return False
    return gpu_identity(required=False) is not None


@overload
def gpu_identity(device: int = 0, required: Literal[True] = True) -> tuple[str, str]: ...
@overload
def gpu_identity(device: int = 0, *, required: bool) -> tuple[str, str] | None: ...


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

    if rtx != config.USE_TENSORRT_RTX:
        have, want = ("TensorRT-RTX", "TensorRT") if config.USE_TENSORRT_RTX else ("TensorRT", "TensorRT-RTX")
        raise BackendError(
            f"Polygraphy in this process is bound to {have} (chosen when it was first imported; "
            f"{RTX_SWITCH}); build {want} engines in another process"
        )
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


def layer_precisions(trt, engine) -> dict:
    """:func:`census` of ``engine``, inspected through an execution context set to each input's opt shape
    of profile 0: without one, TensorRT shows no per-layer formats for a dynamic-shape engine. An inspector
    that fails or answers something other than JSON gives ``{"error": ...}`` with its words, which
    :func:`precision_refusal` refuses for every precision but FP32."""
    raw = ""
    try:
        context = engine.create_execution_context()
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                context.set_input_shape(name, tuple(engine.get_tensor_profile_shape(name, 0)[1]))
        inspector = engine.create_engine_inspector()
        inspector.execution_context = context
        raw = str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        info = json.loads(raw)
    except Exception as e:  # older engines, a stripped build, text that is not JSON
        said = f"; it answered: {raw[:INSPECTOR_EXCERPT]}" if raw else ""
        return {"error": f"{type(e).__name__}: {first_line(e)}{said}"}
    return census(info, raw)


def version_tuple(version: str) -> tuple[int, int]:
    """``"10.13.3.9"`` -> ``(10, 13)``."""
    parts = [int(x) for x in re.findall(r"\d+", str(version))[:2]]
    return tuple(parts + [0] * (2 - len(parts)))  # type: ignore[return-value]


@dataclass(frozen=True)
class NetworkTyping:
    """How a network is built: strongly typed (precision from the graph), or weakly typed with builder flags."""

    strongly_typed: bool
    flags: tuple[str, ...] = ()  # Polygraphy CreateConfig precision flags: "int8", "fp8", "fp16"


def network_typing(version: str, decision: EnginePrecision, rtx: bool = False) -> NetworkTyping:
    """Strongly typed on TensorRT 11, TensorRT-RTX and TensorRT >= 10.12. On TensorRT 10 before 10.12 an INT8
    (FP8) QDQ graph is built weakly typed with the INT8 (FP8) flag, and the FP16 flag too when its float part
    is FP16; ``fp16_flag`` (TensorRT 10 only) adds the FP16 flag, weakly typed. Pure: it needs the version
    string only, so it is tested without TensorRT."""
    have = version_tuple(version)
    quantized = precisions.get(decision.precision).quantized
    if rtx or have >= (11, 0):
        if decision.fp16_flag:
            raise BackendError(
                f"TensorRT{'-RTX' if rtx else ''} {version} has no FP16 builder flag (strongly typed "
                "only); build the FP16 graph instead (precision='fp16' without fp16_flag)"
            )
        return NetworkTyping(True)
    if have < (10, 0):
        raise BackendError(f"TensorRT {version} is too old: effattn builds engines with TensorRT 10 or 11")
    # Before 10.12 a QDQ graph is built weakly typed: its FP16 float part runs in FP16 only with the FP16 flag.
    half_floats = quantized and decision.float_type == "fp16" and have < (10, 12)
    flags = ("fp16",) if decision.fp16_flag or half_floats else ()
    if quantized and (flags or have < (10, 12)):
        return NetworkTyping(False, (decision.precision, *flags))
    return NetworkTyping(not flags, flags)


def scratch_path(cache_root: Path, onnx_path: Path, precision: str) -> Path:
    """Where the FP16/BF16 graph of an FP32 file goes: named by its content, so two ``model.onnx`` never collide."""
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
    return cache_root / f"{onnx_path.stem}.{digest}.{precision}.onnx"


def _profiles_of(profiles, meta: Mapping[str, str], onnx_path: Path) -> list[ShapeProfile]:
    if profiles is None:
        profiles = metadata.profile_of(meta)
        if profiles is None:
            raise BackendError(f"{onnx_path} has no shape profile in its metadata; pass profiles")
    return [profiles] if isinstance(profiles, ShapeProfile) else list(profiles)


def build_engine(
    onnx_path: str | Path,
    profiles: ShapeProfile | Sequence[ShapeProfile] | None = None,
    precision: str | None = None,
    *,
    output: str | Path | None = None,
    cache_dir: str | Path | None = None,
    workspace_gib: float | None = None,
    optimization_level: int = 3,
    fp16_flag: bool = False,
    rtx: bool = False,
    force: bool = False,
    progress: bool = True,
) -> EngineBuild:
    """Build (or take from the cache) a TensorRT plan for ``onnx_path``; returns its path and sidecar.

    ``precision``: None (or "auto") builds the graph's own precision; "fp16"/"bf16" of an FP32 file
    converts it first (into the cache); anything the graph cannot give is refused (see
    :func:`.precision.engine_precision`, which the CLI calls to say what will be built). ``fp16_flag=True``
    builds the FP32 (or INT8) graph weakly typed with the FP16 flag (TensorRT 10 only). ``profiles`` default
    to the file's own shape profile. ``output`` copies the plan (and sidecar) there. ``cache_dir``: the engine
    cache (None: ``~/.cache/effattn/engines``).
    """
    start = time.perf_counter()
    onnx_path = Path(onnx_path)
    output = Path(output) if output else None
    if output:
        check_writable(output, force)
    trt = import_tensorrt(rtx)
    polygraphy_loaders(rtx)  # refuses a process already bound to the other TensorRT
    gpu_name, capability = gpu_identity()
    decision = engine_precision(onnx_path, precision, fp16_flag=fp16_flag, target="tensorrt")
    if refusal := capability_refusal(decision.precision, capability):
        raise BackendError(f"{onnx_path}: {refusal}")
    typing = network_typing(str(trt.__version__), decision, rtx)
    cache = EngineCache(DEFAULT_CACHE_DIR if cache_dir is None else cache_dir)
    source = (
        onnx_path
        if decision.convert is None
        else converted_graph(
            decision,
            onnx_path,
            scratch_path(cache.root, onnx_path, ".".join(dict.fromkeys([decision.precision, decision.convert]))),
        )
    )
    meta = read_metadata(source)
    profiles = _profiles_of(profiles, meta, source)
    options = {
        "optimization_level": optimization_level,
        "workspace_gib": workspace_gib,
        "tf32": False,
        "strongly_typed": typing.strongly_typed,
        "precision_flags": list(typing.flags),
        "graph_precision": decision.graph,
        "float_type": decision.float_type,
    }
    key = EngineKey.create(
        source.read_bytes(),
        decision.precision,
        [p.to_json() for p in profiles],
        options,
        "tensorrt_rtx" if rtx else "tensorrt",
        str(trt.__version__),
        gpu_name,
        capability,
    )
    plan = cache.lookup(key)
    hit = plan is not None
    if plan is None:
        plan = _build(trt, source, profiles, key, typing, cache, progress and tqdm, rtx, meta)
    sidecar = Sidecar.read(sidecar_path(plan))
    if refusal := precision_refusal(decision.precision, sidecar.layers):
        raise BackendError(
            f"the engine built from {source} {refusal}; refusing to call it a "
            f"{decision.precision.upper()} engine (check the {decision.precision} graph)"
        )
    if output:
        plan = _copy_out(plan, sidecar, output)
    return EngineBuild(plan, sidecar, hit, time.perf_counter() - start)


def _copy_out(plan: Path, sidecar: Sidecar, output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(plan.read_bytes())
    sidecar.write(sidecar_path(output))
    return output


def _create_config(
    trt, loaders, profiles: list[ShapeProfile], key: EngineKey, typing: NetworkTyping, cache: EngineCache, monitor
):
    """Polygraphy's CreateConfig: profiles, timing cache, progress, TF32 off (FP32 references stay FP32) and,
    for weakly typed networks only, the precision flags (a strongly typed network takes none)."""
    trt_profiles = []
    for shape_profile in profiles:
        p = loaders.Profile()
        for inp in shape_profile.inputs:
            p.add(inp.name, min=inp.min, opt=inp.opt, max=inp.max)
        trt_profiles.append(p)
    options = json.loads(key.builder_options)
    kwargs = dict(
        profiles=trt_profiles,
        builder_optimization_level=options["optimization_level"],
        tf32=False,
        load_timing_cache=str(timing) if (timing := cache.timing_cache(key)).exists() else None,
        progress_monitor=monitor,
        profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
    )
    if options["workspace_gib"]:
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(options["workspace_gib"] * 2**30)}
    kwargs.update(dict.fromkeys(typing.flags, True))  # CreateConfig(int8=True, fp8=True, fp16=True)
    return loaders.CreateConfig(**kwargs)


def graph_axes(model: onnx.ModelProto) -> dict[str, list[str | None]]:
    """Each graph input's and output's axis names (None where an axis has none). An engine reports -1 for
    a dynamic axis and loses its name; the sidecar keeps it, so a server can see which outputs share the
    inputs' batch axis (see :func:`effattn.serving.repository.batch_dimension`)."""
    return {
        v.name: [d.dim_param or None for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }


def _io_of(engine, axes: Mapping[str, list[str | None]]) -> list[dict]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return [
        {
            "name": n,
            "mode": engine.get_tensor_mode(n).name,
            "dtype": engine.get_tensor_dtype(n).name,
            "shape": list(engine.get_tensor_shape(n)),
            "axes": axes.get(n, []),
        }
        for n in names
    ]


def _build(
    trt,
    onnx_path: Path,
    profiles: list[ShapeProfile],
    key: EngineKey,
    typing: NetworkTyping,
    cache: EngineCache,
    tqdm,
    rtx: bool,
    meta: Mapping[str, str],
) -> Path:
    """Build through Polygraphy. The shared timing cache is loaded and merged back under Polygraphy's own
    file lock (a lock held only while reading or writing it, not for the whole build)."""
    loaders = polygraphy_loaders(rtx)
    bar = tqdm(total=1, desc="TensorRT build", leave=False) if tqdm else None
    monitor = _progress_monitor(trt, bar) if bar is not None else None  # referenced until the build ends
    network = loaders.NetworkFromOnnxPath(str(onnx_path), strongly_typed=typing.strongly_typed)
    log.info(
        "building TensorRT %s engine for %s (%d profile(s), %s)",
        key.precision,
        onnx_path.name,
        len(profiles),
        "strongly typed" if typing.strongly_typed else f"weakly typed, flags {', '.join(typing.flags)}",
    )
    cache.root.mkdir(parents=True, exist_ok=True)
    timing = cache.timing_cache(key)  # this flavour's, version's and GPU's own: TensorRT refuses a foreign one
    try:
        config = _create_config(trt, loaders, profiles, key, typing, cache, monitor)
        plan_bytes = loaders.EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing))()
    except Exception as e:  # Polygraphy raises PolygraphyException with TensorRT's log in it
        raise BackendError(f"TensorRT could not build {onnx_path}: {first_line(e)}") from e
    finally:
        if bar is not None:
            bar.close()
    engine = loaders.EngineFromBytes(bytes(plan_bytes))()
    axes = graph_axes(onnx.load(str(onnx_path), load_external_data=False))
    return cache.store(
        key,
        bytes(plan_bytes),
        io=_io_of(engine, axes),
        layers=layer_precisions(trt, engine),
        metadata=meta,
        timing_cache=timing,
    )
