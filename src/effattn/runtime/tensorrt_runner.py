"""A Runner over a serialized TensorRT engine (tensor-name API), torch CUDA tensors as buffers.
A pool of (context, stream) slots, each replaying CUDA graphs for repeated shapes (:mod:`.cudagraphs`); the
plan loads only after its sidecar matches this TensorRT and GPU. See docs/gpu-tensorrt.md#the-tensorrt-runner."""

from __future__ import annotations

import queue
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import io_dtypes
from ..engines.cache import Sidecar, plan_backend, verify_plan
from ..engines.tensorrt_build import gpu_identity, import_tensorrt
from ..errors import BackendError, InputError
from ..shapes import InputProfile
from .base import Runner, TensorSpec, to_numpy
from .cudagraphs import GraphPolicy, ShapeGraphs


@dataclass
class _Slot:
    context: Any  # trt.IExecutionContext
    stream: Any  # torch.cuda.Stream
    graphs: ShapeGraphs


class TensorRTRunner(Runner):
    backend = "tensorrt"  # "tensorrt-rtx" for TensorRT-for-RTX plans

    def __init__(
        self, plan: str | Path, rtx: bool | None = None, contexts: int = 2, cuda_graph: bool | None = None
    ) -> None:
        """``rtx``: a TensorRT-for-RTX plan (None: as its sidecar says); ``contexts``: execution contexts (and
        streams) for concurrent callers; ``cuda_graph``: True, False, or None to capture where shapes repeat
        (at once for a static profile)."""
        import torch

        self.plan = Path(plan)
        if rtx is None:
            rtx = plan_backend(self.plan) == "tensorrt_rtx"
        self.rtx = rtx
        self.trt = trt = import_tensorrt(rtx)
        gpu_name, capability = gpu_identity()  # required: raises without a GPU
        self.sidecar = verify_plan(
            self.plan,
            backend="tensorrt_rtx" if rtx else "tensorrt",
            backend_version=str(trt.__version__),
            gpu_name=gpu_name,
            compute_capability=capability,
        )
        self.metadata = dict(self.sidecar.metadata)
        self.backend = "tensorrt-rtx" if rtx else "tensorrt"
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialize {self.plan}; rebuild it with 'effattn build'")
        if contexts < 1:
            raise BackendError(f"contexts must be at least 1, got {contexts}")
        self.torch = torch
        super().__init__(*self._io_specs())
        self._slots: queue.Queue[_Slot] = queue.Queue()
        for _ in range(contexts):
            self._slots.put(self._new_slot(cuda_graph))
        self._all_slots = list(self._slots.queue)

    def _io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        trt, engine, torch = self.trt, self.engine, self.torch
        inputs, outputs = [], []
        self._dtypes = {}
        named = {t["name"]: Sidecar.named_shape(t) for t in self.sidecar.io}  # the ONNX graph's axis names
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            device_dtype, host_dtype = io_dtypes(engine.get_tensor_dtype(name).name, name)
            self._dtypes[name] = getattr(torch, device_dtype)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                lo, opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
                profile = InputProfile(name, lo, opt, hi, host_dtype)
                shape = tuple(_named(profile.symbolic_shape, named.get(name)))
                inputs.append(TensorSpec(name, np.dtype(host_dtype), shape, profile))
            else:
                shape = tuple(d if d >= 0 else None for d in engine.get_tensor_shape(name))
                outputs.append(TensorSpec(name, np.dtype(host_dtype), tuple(_named(shape, named.get(name)))))
        return inputs, outputs

    def _new_slot(self, cuda_graph: bool | None) -> _Slot:
        """An execution context and its stream. TensorRT-RTX compiles kernels lazily, so a manual stream
        capture is unsafe there: its own CUDA-graph strategy (runtime config) captures instead."""
        static = self.profile is not None and self.profile.static  # an engine's inputs always have a profile
        if self.rtx:
            context = self.engine.create_execution_context(self._rtx_runtime_config(cuda_graph))
            policy = GraphPolicy(False, static_profile=static)
        else:
            context = self.engine.create_execution_context()
            policy = GraphPolicy(cuda_graph, static_profile=static)
        if context is None:
            raise BackendError(f"TensorRT could not create an execution context for {self.plan} (GPU memory?)")
        return _Slot(context, self.torch.cuda.Stream(), ShapeGraphs(policy, exclusive=True))

    def _rtx_runtime_config(self, cuda_graph: bool | None):
        """TensorRT-RTX's runtime config with its whole-graph CUDA-graph strategy unless graphs are off."""
        config = self.engine.create_runtime_config()
        strategy = self.trt.CudaGraphStrategy
        config.cuda_graph_strategy = strategy.DISABLED if cuda_graph is False else strategy.WHOLE_GRAPH_CAPTURE
        return config

    @contextmanager
    def _slot(self):
        slot = self._slots.get()
        try:
            yield slot
        finally:
            self._slots.put(slot)

    def _infer_torch(self, feed: dict[str, Any]) -> dict[str, Any]:
        torch = self.torch
        cast = {name: torch.as_tensor(feed[name]).to("cuda", self._dtypes[name]).contiguous() for name in self.inputs}
        with self._slot() as slot:
            return slot.graphs.run(lambda inputs: self._enqueue(slot, inputs), cast, slot.stream)

    def _enqueue(self, slot: _Slot, inputs: dict[str, Any]) -> dict[str, Any]:
        """Bind ``inputs`` and fresh outputs to the slot's context and enqueue it on the slot's stream."""
        context = slot.context
        for name, x in inputs.items():
            if not context.set_input_shape(name, tuple(x.shape)):
                raise InputError(f"TensorRT refused shape {tuple(x.shape)} for input {name!r} (outside the profile)")
            context.set_tensor_address(name, x.data_ptr())
        outputs = {}
        for name in self.outputs:
            out = self.torch.empty(tuple(context.get_tensor_shape(name)), dtype=self._dtypes[name], device="cuda")
            context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        if not context.execute_async_v3(slot.stream.cuda_stream):
            raise BackendError(f"TensorRT execution of {self.plan} failed (see the TensorRT log above)")
        return outputs

    def _infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: to_numpy(v) for k, v in self._infer_torch(feed).items()}

    @property
    def graph_counts(self) -> dict[str, int]:
        """CUDA graph captures and replays so far, over all slots."""
        return {
            "captures": sum(s.graphs.captures for s in self._all_slots),
            "replays": sum(s.graphs.replays for s in self._all_slots),
        }

    def close(self) -> None:
        """Free graphs, contexts, engine and runtime (in that order: a context must go before its engine)."""
        for slot in getattr(self, "_all_slots", []):
            slot.graphs.clear()
        self._all_slots = []
        self._slots = queue.Queue()
        self.engine = self.runtime = None


def _named(shape, graph_shape: list | None) -> list:
    """``shape`` with each dynamic axis (a name or None) named as the ONNX graph names it, where the sidecar
    recorded that (the engine itself keeps no axis names)."""
    if not graph_shape or len(graph_shape) != len(shape):
        return list(shape)
    return [g if not isinstance(d, int) and isinstance(g, str) else d for d, g in zip(shape, graph_shape)]
