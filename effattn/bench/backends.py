"""The bench's backends at work: the files each needs (made once per model) and its runner.

What each name runs is a record of :mod:`.catalog`: ``onnxruntime-fp16`` is ONNX Runtime on the FP16 graph,
``torch-bf16`` eager PyTorch in BF16. Runners come from :func:`effattn.runtime.load`, the one backend -> runner
dispatch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import precisions
from ..engines import build_engine
from ..errors import BackendError
from ..export import export_onnx, quantize
from ..export.precision import CONVERTERS
from ..export.quantize import nncf_available
from ..models import ModelSource
from ..runtime import Runner, load
from ..shapes import ShapeProfile
from .catalog import BACKENDS, DEFAULT_BACKENDS, EAGER, BenchBackend, check_backends
from .memory import PeakMemory, probe

__all__ = ["BACKENDS", "DEFAULT_BACKENDS", "EAGER", "WARM_MEANS", "Backends", "BenchBackend", "check_backends"]

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


def _file_stem(name: str) -> str:
    """A file name for a model: a user factory's ``package.module:factory`` without the colon."""
    return name.replace(":", "--").replace("/", "_")
