"""ONNX Runtime sessions as engines: the CPU, CUDA and TensorRT execution providers.
A session checks which provider it really got and refuses ONNX Runtime's silent CPU fallback. Packaging
(``onnxruntime`` or ``onnxruntime-gpu``, never both): docs/decisions.md."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import onnx

from ..errors import BackendError, first_line

log = logging.getLogger(__name__)

#: ONNX Runtime graph rewrites every effattn session turns off. ReluQuantRewrite drops a Relu in front of a
#: float8 QuantizeLinear whose zero point is 0, so negative values come back; off for every graph, not only
#: FP8 ones (docs/decisions.md#onnx-runtimes-reluquantrewrite-is-off).
UNSAFE_REWRITES = ("ReluQuantRewrite",)
_FLOAT8 = {
    onnx.TensorProto.FLOAT8E4M3FN,
    onnx.TensorProto.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ,
}

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def import_onnxruntime():
    """The ``onnxruntime`` module, or a BackendError that says which extra installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(
            "ONNX Runtime is not installed: pip install 'effattn[cpu]' (or 'effattn[gpu]' on a CUDA machine)"
        ) from None
    return onnxruntime


def conflicting_installs() -> list[str]:
    """The ONNX Runtime distributions installed here when there is more than one (they share one folder,
    and uninstalling either breaks the other)."""
    from importlib import metadata

    names = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            names.append(f"{name} {metadata.version(name)}")
    return names if len(names) > 1 else []


def available_devices() -> list[str]:
    """The ``device`` names (``cpu``, ``cuda``, ``tensorrt``) whose providers this onnxruntime build has."""
    ort = import_onnxruntime()
    have = set(ort.get_available_providers())
    return [device for device, provider in PROVIDERS.items() if provider in have]


def default_threads() -> int:
    """Intra-op threads: every core this process may use (ONNX Runtime's own default counts all cores)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


def holds_float8(path: str | Path) -> bool:
    """Whether the graph at ``path`` has float8 initializers or constants (an FP8 QDQ graph's zero points), for
    runtimes that cannot turn :data:`UNSAFE_REWRITES` off one by one (Triton's ONNX Runtime backend); False
    for a file onnx cannot read (ONNX Runtime then says what is wrong with it)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf decode errors: the session's own load reports them
        return False
    constants = [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    return any(t.data_type in _FLOAT8 for t in [*model.graph.initializer, *constants])


def create_session(
    path: str | Path,
    device: str = "cpu",
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    cuda_graph: bool = False,
    spinning: bool = True,
    compute_stream: int | None = None,
):
    """An ``onnxruntime.InferenceSession`` for ``path`` on ``device``, with full graph optimisation.

    ``cache_dir`` holds the TensorRT execution provider's engine and timing caches; ``cuda_graph``
    turns on the GPU providers' CUDA-graph capture (runs must then go through I/O binding).
    ``spinning=False``: idle intra-/inter-op threads sleep instead of spinning for the next run (ONNX
    Runtime's default spins: the lowest latency back to back, but it burns the cores a server's own
    threads need between runs). ``compute_stream``: the address of a CUDA stream the GPU provider runs
    every kernel on (``user_compute_stream``), so torch work on that stream is ordered with it."""
    ort = import_onnxruntime()
    path = Path(path)
    if device not in PROVIDERS:
        raise BackendError(f"unknown ONNX Runtime device {device!r}; choose one of {', '.join(PROVIDERS)}")
    if not path.is_file():
        raise BackendError(f"ONNX file {path} does not exist")
    provider = PROVIDERS[device]
    if provider not in ort.get_available_providers():
        both = conflicting_installs()
        fix = (
            f"{' and '.join(both)} are both installed and share one folder: pip uninstall -y onnxruntime "
            "onnxruntime-gpu, then pip install 'effattn[gpu]'"
            if both
            else "for GPUs install onnxruntime-gpu (pip install 'effattn[gpu]')"
        )
        raise BackendError(
            f"{provider} is not in this onnxruntime build (have {', '.join(ort.get_available_providers())}); {fix}"
        )
    if device != "cpu" and hasattr(ort, "preload_dlls"):
        _preload_cuda_libraries(ort)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if cuda_graph and device == "cpu":
        raise BackendError("CUDA graphs need device 'cuda' or 'tensorrt', not 'cpu'")
    ep_options = provider_options(device, cache_dir, cuda_graph, compute_stream)
    providers: list[str | tuple[str, dict]] = [(provider, ep_options)]
    providers += [] if device == "cpu" else ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=providers, disabled_optimizers=list(UNSAFE_REWRITES)
        )
    except Exception as e:  # onnxruntime raises its own pybind exception types
        first = first_line(e)
        raise BackendError(
            f"ONNX Runtime cannot load {path}: {first}. Is it an ONNX model written by effattn export?"
        ) from None
    if session.get_providers()[0] != provider:
        raise BackendError(
            f"ONNX Runtime fell back from {provider} to {session.get_providers()[0]} for {path}: "
            "the GPU libraries (CUDA, cuDNN) did not load; check the onnxruntime-gpu and CUDA versions"
        )
    log.debug("ONNX Runtime session on %s with %d threads: %s", provider, options.intra_op_num_threads, path)
    return session


def _preload_cuda_libraries(ort) -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels torch brought (``onnxruntime.preload_dlls``, ORT >= 1.21),
    so the CUDA provider finds them without LD_LIBRARY_PATH; libraries already loaded are kept."""
    try:
        ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
    except Exception as e:  # the provider may still find system libraries; its own load says if not
        log.debug("onnxruntime.preload_dlls failed: %s", first_line(e))


def optimize_model(path: str | Path, output: str | Path, device: str = "cpu") -> Path:
    """Save ONNX Runtime's optimised graph (fused, constant-folded), to inspect or to ship (it does not
    shorten start-up: docs/decisions.md).

    Uses the extended level: the "all" level adds layout changes tied to the machine that made them.
    """
    ort = import_onnxruntime()
    output = Path(output)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(output)
    options.log_severity_level = 3
    provider = PROVIDERS.get(device, "CPUExecutionProvider")
    try:
        ort.InferenceSession(
            str(path), sess_options=options, providers=[provider], disabled_optimizers=list(UNSAFE_REWRITES)
        )
    except Exception as e:
        raise BackendError(f"ONNX Runtime cannot optimise {path}: {first_line(e)}") from None
    return output


def provider_options(
    device: str, cache_dir: str | Path | None = None, cuda_graph: bool = False, compute_stream: int | None = None
) -> dict:
    """Options for the GPU providers: TensorRT EP engine and timing caches under ``cache_dir``,
    CUDA graphs (``enable_cuda_graph`` / ``trt_cuda_graph_enable``), and the CUDA stream to compute on
    (``user_compute_stream``, both providers: an address, as ONNX Runtime parses it; refused on the CPU).

    Precision comes from the graph (an FP16 graph runs FP16): ``trt_fp16_enable`` stays off and the
    CUDA provider's ``use_tf32`` (on by default, so FP32 convolutions and matmuls would run in TF32 on
    Ampere and later) is turned off, so an FP32 graph is not silently lowered.
    """
    stream = {} if compute_stream is None else {"user_compute_stream": str(compute_stream)}
    if stream and device not in ("cuda", "tensorrt"):
        raise BackendError(f"a CUDA compute stream needs device 'cuda' or 'tensorrt', not {device!r}")
    if device == "tensorrt":
        options: dict[str, bool | str] = stream | {
            "trt_fp16_enable": False,
            "trt_engine_cache_enable": cache_dir is not None,
            "trt_timing_cache_enable": cache_dir is not None,
            "trt_cuda_graph_enable": cuda_graph,
        }
        if cache_dir is not None:
            options |= {"trt_engine_cache_path": str(cache_dir), "trt_timing_cache_path": str(cache_dir)}
        return options
    if device == "cuda":
        graphs = {"enable_cuda_graph": "1"} if cuda_graph else {}
        return {"cudnn_conv_algo_search": "EXHAUSTIVE", "use_tf32": "0"} | graphs | stream
    return {}
