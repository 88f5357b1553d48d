"""The bench's backends at work: the files each needs (made once per model) and its runner.

What each name runs is a record of :mod:`.catalog`: ``onnxruntime-fp16`` is ONNX Runtime on the FP16 graph,
``torch-bf16`` eager PyTorch in BF16. Runners come from :func:`effattn.runtime.load`, the one backend -> runner
dispatch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import metadata, precisions
from ..engines import build_engine
from ..engines.precision import check_onnx
from ..engines.tensorrt_build import tensorrt_available
from ..errors import BackendError
from ..export import export_onnx, quantize
from ..export.exporter import default_output_names
from ..export.precision import CONVERTERS
from ..export.quantize import nncf_available
from ..files import require_file
from ..models import ModelSource, list_models, load_model
from ..runtime import Runner, load
from ..runtime.openvino_runner import OpenVINORunner, choose_precision, ir_beside, openvino_available
from ..shapes import ShapeProfile
from .catalog import BACKENDS, DEFAULT_BACKENDS, EAGER, BenchBackend, check_backends
from .memory import PeakMemory, probe

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKENDS",
    "EAGER",
    "FILE_SUFFIXES",
    "WARM_MEANS",
    "Backends",
    "BenchBackend",
    "FileBackends",
    "check_backends",
    "is_file",
]

#: what the bench times as a file (as it is) rather than as a model source (exported first)
FILE_SUFFIXES = (".onnx", ".plan", ".engine")

#: what "warm" start-up means per runtime backend
WARM_MEANS = {
    "onnxruntime": "second session of the same file (the CPU/CUDA providers have no compile cache)",
    "tensorrt": "engine from the engine cache (cold: built)",
    "torch": "n/a",
    "openvino": "second compile of the same file (no OpenVINO model cache set)",
}


class Backends:
    """Makes each bench backend's runner for one model; exported/converted files are made once, lazily."""

    def __init__(
        self,
        source: ModelSource,
        profile: ShapeProfile,
        folder: Path,
        device: str,
        threads: int,
        output_names: list[str],
    ) -> None:
        self.name, self.source, self.profile, self.folder = source.name, source, profile, folder
        self.device, self.threads, self.output_names = device, threads, output_names
        self._files: dict[str, Path] = {}

    def onnx(self, precision: str) -> Path:
        """The model's graph in ``precision`` (FP32, converted, or INT8/FP8 QDQ), exported (and converted or
        quantized) on first use."""
        stem = _file_stem(self.name)
        if "fp32" not in self._files:
            self._files["fp32"] = export_onnx(self.source, self.profile, self.folder / f"{stem}.onnx", force=True).path
        if precision not in self._files:
            out, row = self.folder / f"{stem}.{precision}.onnx", precisions.get(precision)
            self._files[precision] = (
                quantize(self._files["fp32"], out, precision=precision, force=True).path
                if row.quantized
                else CONVERTERS[precision](self._files["fp32"], out, force=True)
            )
        return self._files[precision]

    @staticmethod
    def missing(backend: str) -> str | None:
        """What ``backend`` needs that is not installed (its rows are skipped, with this reason), or None."""
        if BACKENDS[backend].nncf is not None and not nncf_available():
            return "nncf is not installed (pip install 'effattn[cpu,nncf]')"
        return None

    def file(self, backend: str) -> Path:
        """The file ``backend`` runs (the graph in its precision, or NNCF's OpenVINO IR), made on first use."""
        record = BACKENDS[backend]
        if record.nncf is None:
            return self.onnx(record.graph or "fp32")
        preset, keep_float = record.nncf
        key = f"nncf-{preset}-{keep_float}"
        if key not in self._files:
            if self.missing(backend):
                raise BackendError(f"bench backend {backend}: {self.missing(backend)}")
            out = self.folder / f"{_file_stem(self.name)}.{key}.xml"
            self._files[key] = quantize(self.onnx("fp32"), out, preset=preset, keep_float=keep_float, force=True).path
        return self._files[key]

    def make(self, backend: str) -> Runner:
        """The runner for ``backend``; TensorRT engines go through an engine cache in the bench folder, so
        a second call loads the plan the first one built."""
        record = BACKENDS[backend]
        if record.graph is None:  # eager PyTorch, in the record's dtype
            dtype = getattr(torch, precisions.get(record.precision).element)
            return load(
                self.source.model,
                backend="torch",
                device=self.device,
                profile=self.profile,
                output_names=self.output_names,
                dtype=dtype,
                **record.options,
            )
        path = self.file(backend)
        if record.plain:
            return PlainOpenVINO(path, self.threads)
        if record.runtime == "tensorrt":
            path = build_engine(path, precision=record.graph, cache_dir=self.folder / "engines", progress=False).plan
        return load(path, backend=record.runtime, device=self.device, threads=self.threads, **record.options)

    def peak_memory(self, backend: str, runner: Runner, feed: dict) -> PeakMemory:
        """Peak memory of one run: in a fresh process where one can be made cheaply (see
        :func:`.memory.probe`), else (torch.compile, TensorRT, OpenVINO) in this one."""
        shape = next(iter(feed.values())).shape
        record = BACKENDS[backend]
        if record.runtime == "onnxruntime":
            path = self.onnx(record.precision)
            return probe(backend, str(path), shape, self.device, self.threads)
        if backend in ("torch", "torch-fp16"):
            return probe(
                backend,
                self.name,
                shape,
                self.device,
                self.threads,
                self.source.checkpoint is not None,
                profile=self.profile,
            )
        with PeakMemory(cuda=self.device == "cuda") as peak:
            runner.infer(feed)
        return peak


class PlainOpenVINO(Runner):
    """OpenVINO as its users call it, without effattn's runner: ``core.compile_model(file, "CPU")`` with OpenVINO's
    defaults (one dynamic-shape compile, its own inference precision), one request, ``infer(x, share_inputs=True)``
    and no input checks. The bench's yardstick for the runner's own overhead (docs/benchmarks.md)."""

    backend = "openvino-plain"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import openvino as ov

        self.metadata = metadata.read_metadata(path)
        self.precision = choose_precision(metadata.precision_of(self.metadata))[0]  # what OpenVINO's default runs
        config = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        profile = metadata.profile_of(self.metadata)
        super().__init__(
            [OpenVINORunner._spec(p, profile) for p in self.compiled.inputs],
            [OpenVINORunner._spec(p, None) for p in self.compiled.outputs],
        )

    def infer(self, feed) -> dict[str, np.ndarray]:
        """No checks: a plain loop does none (the bench feeds valid inputs)."""
        return self._infer(feed)

    def _infer(self, feed) -> dict[str, np.ndarray]:
        result = self.request.infer(feed, share_inputs=True)
        return {name: result[name] for name in self.outputs}

    def close(self) -> None:
        self.request = self.compiled = None


def _file_stem(name: str) -> str:
    """A file name for a model: a user factory's ``package.module:factory`` without the colon."""
    return name.replace(":", "--").replace("/", "_")


def is_file(name: str) -> bool:
    """``name`` is an .onnx or engine file to time as it is (a model source never ends so)."""
    return Path(name).suffix.lower() in FILE_SUFFIXES


class FileBackends:
    """Runs one .onnx or TensorRT engine file as it is, trtexec-style, on each backend that loads it (:meth:`fits`),
    plus eager PyTorch FP32 when the file's metadata names a zoo model: that model is built with random weights,
    since only its time is read (files never choose code, so a ``package.module:factory`` gets no eager row)."""

    def __init__(self, path: str | Path, device: str, threads: int) -> None:
        self.path = require_file(path, "an .onnx or .plan file to bench", BackendError)
        self.name, self.device, self.threads = str(path), device, threads
        self.plan = self.path.suffix.lower() != ".onnx"
        self.precision = None if self.plan else check_onnx(self.path)  # a foreign or broken file fails here
        meta = {} if self.plan else metadata.read_metadata(self.path)
        named = meta.get(metadata.MODEL, "")
        self.profile = metadata.profile_of(meta)  # None: a plan, or a file from another tool
        self.eager = None
        if named in list_models() and self.profile is not None:  # not a factory, nor a module's class name
            self.eager = load_model(named, **metadata.model_args_of(meta))
        beside = ir_beside(self.path) if self.precision == "int8" else None  # what auto runs in its place
        self.ir = beside if beside is not None and beside.problem is None else None

    def defaults(self) -> list[str]:
        """The backends a file is timed on when none are named: per runtime installed here that runs on the
        device, the first catalog record for the file's precision."""
        runtimes = ["tensorrt"] if self.plan else ["onnxruntime", "openvino", "tensorrt"]
        installed = {"onnxruntime": True, "openvino": openvino_available(), "tensorrt": tensorrt_available()}
        names = []
        for runtime in runtimes:
            fit = [b.name for b in BACKENDS.values() if b.runtime == runtime and not self.fits(b.name)]
            if fit and installed[runtime]:
                names.append(fit[0])
        return names + [b.name for b in BACKENDS.values() if b.nncf is not None and self.ir and not self.fits(b.name)]

    def fits(self, backend: str) -> str | None:
        """Why ``backend`` cannot time this file (another runtime or precision, or device), or None."""
        record = BACKENDS[backend]
        if self.device not in record.devices:
            return f"skipped: {backend} runs on {' or '.join(record.devices)}, not {self.device}"
        if record.runtime == "torch":
            return (
                None
                if backend == EAGER and self.eager
                else "skipped: eager PyTorch runs a zoo model the file's metadata names; this one names none"
            )
        if record.nncf is not None:  # the IR quantize --cpu-ir kept beside the file, if NNCF made it so
            recipe = metadata.nncf_recipe(*record.nncf)
            if self.ir is not None and (self.ir.recipe + " ").startswith(recipe + " "):
                return None
            return (
                f"skipped: {backend} times NNCF's IR ({recipe}) made from a model source, or kept beside an INT8 "
                "file by 'effattn quantize --cpu-ir'; this file has no such IR beside it"
            )
        if self.plan:
            return None if record.runtime == "tensorrt" else f"skipped: {backend} does not run TensorRT engines"
        if record.graph != self.precision:
            return f"skipped: {backend} runs the {record.graph} graph; this file is {self.precision}"
        return None

    def make(self, backend: str) -> Runner:
        """The runner for ``backend`` on the file (eager: the zoo model its metadata names)."""
        record = BACKENDS[backend]
        if record.runtime == "torch":
            if self.eager is None or self.profile is None:
                raise BackendError(f"{self.name} names no zoo model to run on eager PyTorch")
            return load(
                self.eager.model,
                backend="torch",
                device=self.device,
                profile=self.profile,
                output_names=default_output_names(self.eager.model, self.eager.task),
            )
        if record.plain:
            return PlainOpenVINO(self.path, self.threads)
        path = self.ir.path if record.nncf is not None and self.ir is not None else self.path
        return load(path, backend=record.runtime, device=self.device, threads=self.threads, **record.options)

    def peak_memory(self, backend: str, runner: Runner, feed: dict) -> PeakMemory:
        """Peak memory of one run: ONNX Runtime on a one-input file in a fresh process (:func:`.memory.probe`),
        the rest in this one."""
        if BACKENDS[backend].runtime == "onnxruntime" and len(feed) == 1:
            return probe(backend, str(self.path), next(iter(feed.values())).shape, self.device, self.threads)
        with PeakMemory(cuda=self.device == "cuda") as peak:
            runner.infer(feed)
        return peak
