"""A Runner over OpenVINO on the CPU, reading the same ONNX files: INT8 QDQ graphs on its INT8 kernels,
float ops in BF16 where the CPU has it (:func:`choose_precision`; ``runner.precision`` says which), compiled
per input shape (a bounded cache). An ``InferRequest`` is not thread-safe: each call borrows one from its
compiled model's pool. See docs/precision.md#bf16 and #openvino-static-shapes."""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .. import metadata, precisions
from ..cpu import has_amx
from ..errors import BackendError, first_line
from ..files import require_file, sha256_file
from .base import Runner, TensorSpec
from .openvino_rewrites import output_resizes_as_matmuls

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


@lru_cache(maxsize=1)
def _core():
    """One OpenVINO Core per process: it holds the plugins and their caches."""
    try:
        import openvino as ov
    except ImportError:
        raise BackendError("OpenVINO is not installed: pip install openvino") from None
    return ov.Core()


def openvino_available() -> bool:
    try:
        _core()
    except BackendError:
        return False
    return True


def openvino_version() -> str:
    import openvino as ov

    return ov.get_version()


@dataclass(frozen=True)
class IrBeside:
    """The OpenVINO IR ``effattn quantize --cpu-ir`` keeps beside an INT8 ``.onnx`` (``m.int8.xml`` beside
    ``m.int8.onnx``) and what it records; ``problem``: why it may not run in the file's place (None: it may)."""

    path: Path
    problem: str | None = None
    qdq_ms: float = math.nan  # the QDQ graph's median on OpenVINO, when the IR was kept
    ir_ms: float = math.nan  # the IR's
    cpu: str = ""
    openvino: str = ""
    recipe: str = ""  # how NNCF made it (metadata.NNCF)

    @property
    def speedup(self) -> float:
        return self.qdq_ms / self.ir_ms


def ir_beside(onnx_path: str | Path) -> IrBeside | None:
    """The IR beside ``onnx_path`` (its name with ``.xml``), None if nothing is there. It is data: one that is not a
    regular file, does not read, records no ``.onnx`` or another one's sha256 (stale), weights (``.bin``) other than
    its own, or no valid medians, comes back with its ``problem``."""
    onnx_path = Path(onnx_path)
    xml, weights = onnx_path.with_suffix(".xml"), onnx_path.with_suffix(".bin")
    if not os.path.lexists(xml):
        return None
    try:
        require_file(xml, "OpenVINO IR")
        require_file(weights, "the IR's weights")
        meta = ir_metadata(_core().read_model(str(xml)))  # its own error: "unreadable: <why>"
        actual, actual_weights = sha256_file(onnx_path), sha256_file(weights)
    except Exception as e:  # InputError, BackendError (no OpenVINO), OpenVINO's RuntimeError with pages of context
        return IrBeside(xml, f"unreadable: {first_line(e)}")
    recorded = meta.get(metadata.CPU_IR_ONNX_SHA256)
    if recorded is None:
        return IrBeside(xml, "it records no .onnx it stands for (not kept by 'effattn quantize --cpu-ir')")
    if recorded != actual:
        return IrBeside(
            xml, f"stale: it stands for an .onnx of sha256 {recorded[:12]}..., {onnx_path.name}'s is {actual[:12]}..."
        )
    if meta.get(metadata.CPU_IR_BIN_SHA256) != actual_weights:
        return IrBeside(xml, f"its weights {weights.name} are not the ones it was kept with")
    try:
        qdq_ms, ir_ms = float(meta[metadata.CPU_IR_QDQ_MS]), float(meta[metadata.CPU_IR_MS])
    except (KeyError, ValueError):
        qdq_ms = ir_ms = math.nan
    if not (0 < qdq_ms < math.inf and 0 < ir_ms < math.inf):
        return IrBeside(xml, "its recorded medians are missing or not positive numbers")
    cpu, version = meta.get(metadata.CPU_IR_CPU, "?"), meta.get(metadata.CPU_IR_OPENVINO, "?")
    return IrBeside(xml, None, qdq_ms, ir_ms, cpu, version, meta.get(metadata.NNCF, ""))


def read_ir(path: str | Path):
    """OpenVINO's model of ``path`` (an IR, or an ONNX file), or a one-line :class:`BackendError`."""
    try:
        return _core().read_model(str(path))
    except Exception as e:  # OpenVINO raises RuntimeError with pages of context
        raise BackendError(
            f"OpenVINO cannot load {path}: {first_line(e)}. Is it a model written by effattn export or "
            "effattn quantize?"
        ) from None


def ir_metadata(model) -> dict[str, str]:
    """The ``effattn.*`` metadata of an OpenVINO model: OpenVINO keeps an ONNX file's metadata_props in the
    ``framework`` section of its rt_info, and ``save_model`` writes them into the IR."""
    info = model.get_rt_info()
    section = info["framework"] if "framework" in info else {}  # noqa: SIM401 (an RTMap has no .get)
    return {
        str(k): model.get_rt_info(["framework", str(k)]).astype(str) for k in section if str(k).startswith("effattn.")
    }


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has native BF16 here (AVX512-BF16 or AMX)."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def choose_precision(file_precision: str, asked: str | None = None) -> tuple[str, str]:
    """(the precision the runner reports, OpenVINO's inference hint for the graph's float ops).

    ``auto`` uses BF16 where the CPU has it (OpenVINO's own default there): an FP32 file then runs in
    BF16, an INT8 file runs its float ops (the attention softmaxes and products, the resizes) in BF16 (faster at the
    same argmax agreement: docs/decisions.md#openvino-bf16-float-ops-and-static-shapes). ``fp32`` keeps
    every float op FP32 (an INT8 file then computes exactly what ONNX Runtime computes). FP16 files run
    their FP16 weights with FP32 arithmetic.
    """
    asked = asked or "auto"
    if asked not in PRECISIONS:
        raise BackendError(f"unknown OpenVINO precision {asked!r}; choose one of {', '.join(PRECISIONS)}")
    if asked == "bf16" and not cpu_has_bf16():
        raise BackendError("this CPU has no BF16 arithmetic (needs AVX512-BF16 or AMX); use precision='fp32'")
    if file_precision == "fp16":
        if asked == "bf16":
            raise BackendError("the file is fp16; BF16 applies to FP32 and INT8 graphs")
        return "fp16", "f32"
    bf16 = asked == "bf16" or (asked == "auto" and cpu_has_bf16())
    if precisions.get(file_precision).quantized:  # FP8 QDQ: OpenVINO emulates the quantizers, for parity only
        return file_precision, "bf16" if bf16 else "f32"
    return ("bf16", "bf16") if bf16 else ("fp32", "f32")


class OpenVINORunner(Runner):
    #: compiled static-shape models kept per runner (least recently used goes first), like a CUDA-graph cache
    STATIC_CACHE = 8

    def __init__(
        self,
        path: str | Path,
        precision: str | None = None,
        threads: int | None = None,
        static_shapes: bool = True,
        perf_counters: bool = False,
        resize_as_matmul: bool | None = None,
    ) -> None:
        """``precision``: ``auto`` (default, see :func:`choose_precision`), ``fp32`` or ``bf16``;
        ``threads``: inference threads (default: OpenVINO's, every core); ``static_shapes``: compile the
        graph for each input shape it meets (at most :attr:`STATIC_CACHE` kept, inputs still checked
        against the profile; each new shape costs one compile and the memory of one compiled model;
        docs/precision.md#openvino-static-shapes). ``False``: one dynamic-shape compile for every shape.
        ``perf_counters``: compile with OpenVINO's per-layer counters (PERF_COUNT), for :meth:`layer_times`.
        ``resize_as_matmul``: with static shapes, run a bilinear resize of the output as two MatMuls
        (:mod:`.openvino_rewrites`: the same values); default: where the CPU has AMX, the only CPUs where it was
        measured faster. ``False`` compiles the graph as it is."""
        self.path: Path = Path(path)
        ir = self.path.suffix.lower() == ".xml"
        if not self.path.is_file():
            raise BackendError(f"{'OpenVINO IR' if ir else 'ONNX'} file {self.path} does not exist")
        if ir and not self.path.with_suffix(".bin").is_file():
            raise BackendError(f"OpenVINO IR {self.path} has no weights file {self.path.with_suffix('.bin').name}")
        model = read_ir(self.path) if ir else None  # IR: the metadata is in the model (ir_metadata)
        try:
            self.metadata = ir_metadata(model) if model is not None else metadata.read_metadata(self.path)
        except Exception as e:  # ExportError for foreign files: here it means the backend cannot load it
            raise BackendError(f"OpenVINO cannot load {self.path}: {first_line(e)}") from None
        self.precision, self.hint = choose_precision(metadata.precision_of(self.metadata), precision)
        self.backend = "openvino-cpu" + ("" if self.precision == "fp32" else f"-{self.precision}")
        self.static_shapes = static_shapes
        self.resize_as_matmul = has_amx() if resize_as_matmul is None else resize_as_matmul
        self._config: dict[str, str | int] = {"INFERENCE_PRECISION_HINT": self.hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        if perf_counters:
            self._config["PERF_COUNT"] = True
        self.model = model if model is not None else read_ir(self.path)
        self.compiled = None if static_shapes else self._compile(self.model)
        ports = self.model if self.compiled is None else self.compiled
        profile = metadata.profile_of(self.metadata)
        inputs = [self._spec(port, profile) for port in ports.inputs]
        super().__init__(inputs, [self._spec(port, None) for port in ports.outputs])
        self._pool: queue.SimpleQueue = queue.SimpleQueue()  # requests of the dynamic compile
        self._static: OrderedDict = OrderedDict()  # shapes -> (compiled model, its request pool)
        self._lock = threading.Lock()
        if static_shapes and self.profile is not None:  # compile errors at load, and the load time honest
            self._static_compiled(tuple(p.opt for p in self.profile.inputs))

    def _compile(self, model):
        try:
            return _core().compile_model(model, "CPU", self._config)
        except Exception as e:
            raise BackendError(f"OpenVINO cannot compile {self.path}: {first_line(e)}") from None

    def _static_compiled(self, shapes: tuple) -> tuple[Any, queue.SimpleQueue]:
        """The graph compiled for ``shapes`` (one per input) and its request pool, compiled on first use."""
        with self._lock:
            entry = self._static.get(shapes)
            if entry is not None:
                self._static.move_to_end(shapes)
                return entry
        model = self.model.clone()  # reshape works in place: a copy per shape keeps self.model dynamic
        try:
            model.reshape(dict(zip(self.inputs, shapes)))
        except Exception as e:
            raise BackendError(f"OpenVINO cannot reshape {self.path} to {shapes}: {first_line(e)}") from None
        if self.resize_as_matmul:
            output_resizes_as_matmuls(model, self.hint)
        compiled = self._compile(model)
        with self._lock:  # a concurrent first call may have compiled it too: keep one
            entry = self._static.setdefault(shapes, (compiled, queue.SimpleQueue()))
            self._static.move_to_end(shapes)
            while len(self._static) > self.STATIC_CACHE:
                old, _ = self._static.popitem(last=False)
                log.debug("OpenVINO static-shape cache full: dropped %s", old)
        return entry

    @staticmethod
    def _spec(port, profile) -> TensorSpec:
        name = port.get_any_name()
        if profile is not None and name in profile:
            return TensorSpec(name, np.dtype(profile[name].dtype), profile[name].symbolic_shape, profile[name])
        shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        return TensorSpec(name, np.dtype(port.get_element_type().to_dtype()), shape)

    def _infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        return self._run(feed, lambda request: {name: request.get_tensor(name).data.copy() for name in self.outputs})

    def layer_times(self, feed: Any, iterations: int = 10) -> list[LayerTime]:
        """Every executed layer of ``iterations`` runs of ``feed`` with its time (OpenVINO's performance counters,
        ``request.get_profiling_info()``; the runner must be made with ``perf_counters=True``)."""
        if not self._config.get("PERF_COUNT"):
            raise BackendError("per-layer times need OpenVINORunner(..., perf_counters=True)")
        checked = self.check_feed(feed)
        layers: list[LayerTime] = []
        for _ in range(iterations):
            layers += self._run(checked, _executed_layers)
        return layers

    def _run(self, feed: dict[str, Any], read: Callable[[Any], Any]) -> Any:
        """``read(request)`` after running ``feed`` on a request borrowed from the pool of the shape's compile."""
        arrays = {
            k: np.ascontiguousarray(v if isinstance(v, np.ndarray) else v.detach().cpu().numpy())
            for k, v in feed.items()
        }
        if self.static_shapes:
            compiled, pool = self._static_compiled(tuple(arrays[name].shape for name in self.inputs))
        else:
            compiled, pool = self.compiled, self._pool
        try:
            request = pool.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
        try:  # inputs zero-copy, outputs copied once out of the request (it goes back to the pool)
            request.infer(arrays, share_inputs=True, share_outputs=True)
            return read(request)
        finally:
            pool.put(request)

    def close(self) -> None:
        self._pool = queue.SimpleQueue()
        self._static = OrderedDict()
        self.compiled = None


@dataclass(frozen=True)
class LayerTime:
    """One executed layer of one run: OpenVINO's node name, its op type (Convolution, Softmax, Reorder, ...), the
    kernel it ran (e.g. brgconv_avx512_amx_i8, jit_avx512_bf16, ref_any_f32) and its wall time."""

    name: str
    type: str
    exec_type: str
    ms: float


def _executed_layers(request) -> list[LayerTime]:
    return [
        LayerTime(i.node_name, i.node_type, i.exec_type, i.real_time.total_seconds() * 1e3)
        for i in request.get_profiling_info()
        if i.status.name == "EXECUTED"
    ]


def summarize_layers(layers: Sequence[LayerTime], iterations: int, top: int = 15) -> dict:
    """Milliseconds per run by op type and by kernel (with their share of the layers' total, most first) and the
    ``top`` slowest layers: where the time of a network goes on OpenVINO."""
    total = sum(layer.ms for layer in layers) / iterations

    def grouped(key: Callable[[LayerTime], str]) -> list[dict]:
        ms: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        for layer in layers:
            ms[key(layer)] += layer.ms / iterations
            count[key(layer)] += 1
        return [
            {
                "name": k,
                "ms": round(v, 4),
                "share": round(v / total, 4) if total else 0.0,
                "layers": count[k] // iterations,
            }
            for k, v in sorted(ms.items(), key=lambda kv: -kv[1])
        ]

    per_layer: dict[tuple[str, str, str], float] = defaultdict(float)
    for layer in layers:
        per_layer[layer.name, layer.type, layer.exec_type] += layer.ms / iterations
    slowest = sorted(per_layer.items(), key=lambda kv: -kv[1])[:top]
    return {
        "iterations": iterations,
        "layers_ms": round(total, 4),
        "by_type": grouped(lambda layer: layer.type),
        "by_kernel": grouped(lambda layer: layer.exec_type),
        "slowest": [
            {"name": n, "type": t, "kernel": e, "ms": round(v, 4), "share": round(v / total, 4) if total else 0.0}
            for (n, t, e), v in slowest
        ],
    }
