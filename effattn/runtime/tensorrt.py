"""A Runner over a serialized TensorRT engine (TensorRT 10/11 tensor-name API), torch CUDA tensors as buffers.

Inputs that are already CUDA tensors of the engine's dtype are bound as they are (no host copy);
the engine runs on the caller's current CUDA stream unless one is given. An execution context is
not thread-safe: one runner serves one thread at a time (a pool comes with the concurrency work).
The plan is loaded only after its sidecar proves it was built by this TensorRT on this GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..engines.cache import verify_plan
from ..engines.tensorrt import gpu_identity, import_tensorrt
from ..errors import BackendError, InputError
from ..shapes import InputProfile
from .base import Runner, TensorSpec

_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                 "INT8": "int8", "BOOL": "bool", "UINT8": "uint8"}


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, plan: str | Path, stream=None, rtx: bool = False) -> None:
        import torch

        self.trt = trt = import_tensorrt(rtx)
        gpu_name, capability = gpu_identity()
        self.plan = Path(plan)
        self.sidecar = verify_plan(self.plan, backend="tensorrt_rtx" if rtx else "tensorrt",
                                   backend_version=str(trt.__version__), gpu_name=gpu_name,
                                   compute_capability=capability)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialize {self.plan}; rebuild it with 'effattn build'")
        self.context = self.engine.create_execution_context()
        self.stream = stream
        self.torch = torch
        inputs, outputs = [], []
        self._dtypes = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = _TORCH_DTYPES.get(self.engine.get_tensor_dtype(name).name, "float32")
            self._dtypes[name] = getattr(torch, dtype)
            shape = tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(name))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                lo, opt, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))
                profile = InputProfile(name, lo, opt, hi, dtype)
                inputs.append(TensorSpec(name, np.dtype(dtype), profile.symbolic_shape, profile))
            else:
                outputs.append(TensorSpec(name, np.dtype(dtype if dtype != "bfloat16" else "float32"), shape))
        super().__init__(inputs, outputs)

    def infer_torch(self, feed) -> dict[str, Any]:
        """Like :meth:`infer` but returns CUDA tensors (no copy to the host); checks the feed the same way."""
        return self._run(self.check_feed(feed))

    def _run(self, feed: dict[str, Any]) -> dict[str, Any]:
        torch = self.torch
        keep = []
        for name in self.inputs:
            x = torch.as_tensor(feed[name]).to("cuda", self._dtypes[name]).contiguous()
            keep.append(x)
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise InputError(f"TensorRT refused shape {tuple(x.shape)} for input {name!r} (outside the profile)")
            self.context.set_tensor_address(name, x.data_ptr())
        outputs = {}
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name], device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        stream = self.stream or torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BackendError(f"TensorRT execution of {self.plan} failed (see the TensorRT log above)")
        stream.synchronize()
        return outputs

    def _infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: v.float().cpu().numpy() for k, v in self._run(feed).items()}

    def close(self) -> None:
        self.context = self.engine = self.runtime = None
