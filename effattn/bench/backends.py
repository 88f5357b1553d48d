"""The bench's backends: what each name runs, the files it needs (made once per model) and its runner.

A bench backend is a runtime backend (:data:`effattn.runtime.BACKENDS`) plus the graph or dtype it runs:
``onnxruntime-fp16`` is ONNX Runtime on the FP16 graph, ``torch-bf16`` eager PyTorch in BF16. Runners
come from :func:`effattn.runtime.load`, the one backend -> runner dispatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..engines import build_engine
from ..errors import BackendError
from ..export import export_onnx, quantize, to_fp16
from ..export.quantize import QUANT_PRECISIONS
from ..models import ModelSource
from ..runtime import Runner, load
from ..shapes import ShapeProfile
from .memory import PeakMemory, probe

EAGER = "torch"
#: name -> (devices it runs on, what it is)
BACKENDS = {
    "torch": (("cpu", "cuda"), "eager PyTorch FP32: the baseline, always measured"),
    "torch-fp16": (("cuda",), "eager PyTorch in FP16"),
    "torch-compile": (("cpu", "cuda"), "torch.compile (inductor), FP32"),
    "onnxruntime": (("cpu", "cuda"), "ONNX Runtime, the FP32 graph"),
    "onnxruntime-fp16": (("cpu", "cuda"), "ONNX Runtime, the FP16 graph (FP32 I/O)"),
    "tensorrt": (("cuda",), "TensorRT engine of the FP32 graph"),
    "tensorrt-fp16": (("cuda",), "TensorRT engine of the FP16 graph (strongly typed)"),
    "tensorrt-int8": (("cuda",), "TensorRT engine of the INT8 QDQ graph of effattn quantize (explicit quantization)"),
    "tensorrt-fp8": (("cuda",), "TensorRT engine of the FP8 E4M3 QDQ graph of effattn quantize --precision fp8 "
                                "(GPUs of compute capability 8.9+)"),
    "torch-bf16": (("cpu",), "eager PyTorch in BF16 (weights and activations)"),
    "onnxruntime-int8": (("cpu",), "ONNX Runtime, the INT8 QDQ graph of effattn quantize"),
    "openvino": (("cpu",), "OpenVINO's default on the FP32 graph: one dynamic-shape compile, BF16 where the "
                           "CPU has it, LATENCY hint (OpenVINO's CPU defaults)"),
    "openvino-static": (("cpu",), "effattn's OpenVINO runner on the FP32 graph: BF16 where the CPU has it, "
                                  "compiled per input shape"),
    "openvino-fp32": (("cpu",), "OpenVINO on the FP32 graph, FP32 inference precision, compiled per input shape"),
    "openvino-int8": (("cpu",), "OpenVINO, the INT8 QDQ graph of effattn quantize, compiled per input shape"),
    "openvino-dynamic-int8": (("cpu",), "OpenVINO, the INT8 QDQ graph, one dynamic-shape compile"),
}
DEFAULT_BACKENDS = {"cpu": ("onnxruntime",),
                    "cuda": ("torch-fp16", "torch-compile", "onnxruntime", "onnxruntime-fp16", "tensorrt-fp16")}
TORCH_DTYPES = {"torch-fp16": torch.float16, "torch-bf16": torch.bfloat16}
#: what "warm" start-up means per runtime backend
WARM_MEANS = {"onnxruntime": "second session of the same file (the CPU/CUDA providers have no compile cache)",
              "tensorrt": "engine from the engine cache (cold: built)", "torch": "n/a",
              "openvino": "second compile of the same file (no OpenVINO model cache set)"}


def precision_of(backend: str) -> str:
    """The graph a bench backend runs: ``fp16``/``int8``/``fp8`` files for ``*-fp16``/``*-int8``/``*-fp8``, else
    the FP32 one."""
    suffix = backend.rsplit("-", 1)[-1]
    return suffix if suffix == "fp16" or suffix in QUANT_PRECISIONS else "fp32"


def runtime_backend(backend: str) -> str:
    """The :func:`effattn.runtime.load` backend a bench backend runs on (``openvino-int8`` -> ``openvino``)."""
    return backend.split("-")[0]


def check_backends(backends: Sequence[str] | None, device: str) -> list[str]:
    """The backends to time besides eager (default: the device's set), each known and able to run on ``device``."""
    backends = [b for b in (DEFAULT_BACKENDS[device] if backends is None else backends) if b != EAGER]
    for b in backends:
        if b not in BACKENDS:
            raise BackendError(f"unknown bench backend {b!r}; choose from {', '.join(BACKENDS)}")
        if device not in BACKENDS[b][0]:
            raise BackendError(f"backend {b!r} runs on {' or '.join(BACKENDS[b][0])}, not {device}")
    return backends


class Backends:
    """Makes each bench backend's runner for one model; exported/converted files are made once, lazily."""

    def __init__(self, source: ModelSource, profile: ShapeProfile, folder: Path, device: str, threads: int,
                 output_names: list[str]) -> None:
        self.name, self.source, self.profile, self.folder = source.name, source, profile, folder
        self.device, self.threads, self.output_names = device, threads, output_names
        self._files: dict[str, Path] = {}

    def onnx(self, precision: str) -> Path:
        """The model's FP32, FP16 or INT8/FP8 QDQ graph, exported (and converted) on first use."""
        stem = _file_stem(self.name)
        if "fp32" not in self._files:
            self._files["fp32"] = export_onnx(self.source, self.profile, self.folder / f"{stem}.onnx",
                                              force=True).path
        if precision == "fp16" and "fp16" not in self._files:
            self._files["fp16"] = to_fp16(self._files["fp32"], self.folder / f"{stem}.fp16.onnx", force=True)
        if precision in QUANT_PRECISIONS and precision not in self._files:
            self._files[precision] = quantize(self._files["fp32"], self.folder / f"{stem}.{precision}.onnx",
                                              precision=precision, force=True).path
        return self._files[precision]

    def make(self, backend: str) -> Runner:
        """The runner for ``backend``; TensorRT engines go through an engine cache in the bench folder, so
        a second call loads the plan the first one built."""
        kind = runtime_backend(backend)
        if kind == "torch":
            return load(self.source.model, backend="torch", device=self.device, profile=self.profile,
                        output_names=self.output_names, dtype=TORCH_DTYPES.get(backend, torch.float32),
                        compile=backend == "torch-compile")
        precision = precision_of(backend)
        path = self.onnx(precision)
        if kind == "tensorrt":
            path = build_engine(path, precision=precision, cache_dir=self.folder / "engines", progress=False).plan
        options: dict[str, Any] = {"precision": "fp32"} if backend == "openvino-fp32" else {}
        if backend in ("openvino", "openvino-dynamic-int8"):
            options["static_shapes"] = False
        return load(path, backend=kind, device=self.device, threads=self.threads, **options)

    def peak_memory(self, backend: str, runner: Runner, feed: dict) -> PeakMemory:
        """Peak memory of one run: in a fresh process where one can be made cheaply (see
        :func:`.memory.probe`), else (torch.compile, TensorRT, OpenVINO) in this one."""
        shape = next(iter(feed.values())).shape
        if backend.startswith("onnxruntime"):
            path = self.onnx(precision_of(backend))
            return probe(backend, str(path), shape, self.device, self.threads)
        if backend in ("torch", "torch-fp16"):
            return probe(backend, self.name, shape, self.device, self.threads, self.source.checkpoint is not None,
                         profile=self.profile)
        with PeakMemory(cuda=self.device == "cuda") as peak:
            runner.infer(feed)
        return peak


def _file_stem(name: str) -> str:
    """A file name for a model: a user factory's ``package.module:factory`` without the colon."""
    return name.replace(":", "--").replace("/", "_")
