"""The eager PyTorch reference as a Runner, so parity and benchmarks treat it like any backend."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BackendError
from ..shapes import ShapeProfile
from .base import Runner, TensorSpec


class TorchRunner(Runner):
    """Eager ``model`` on ``device`` in ``dtype`` (float32 is the reference every check compares to)."""

    def __init__(self, model: nn.Module, profile: ShapeProfile, output_names: list[str] | None = None,
                 device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch backend on cuda asked for, but torch sees no CUDA device")
        self.device = torch.device(device)
        self.dtype = dtype
        self.backend = f"torch-{self.device.type}" + ("" if dtype == torch.float32 else f"-{str(dtype)[6:]}")
        self.model = model.eval().to(self.device, dtype)
        inputs = [TensorSpec(p.name, np.dtype(p.dtype), p.symbolic_shape, p) for p in profile.inputs]
        names = output_names or ["output"]
        super().__init__(inputs, [TensorSpec(n, np.dtype(np.float32), None) for n in names])

    def _infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        args = [torch.as_tensor(feed[name]).to(self.device, self.dtype) for name in self.inputs]
        with torch.inference_mode():
            result = self.model(*args)
        values = result if isinstance(result, (tuple, list)) else (result,)
        return {name: v.float().cpu().numpy() for name, v in zip(self.outputs, values)}

    def close(self) -> None:
        self.model = None
