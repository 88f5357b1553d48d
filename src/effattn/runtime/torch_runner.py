"""The eager PyTorch reference as a Runner, so parity and benchmarks treat it like any backend.

On CUDA the runner can replay CUDA graphs per input shape (``torch.cuda.graphs``), which is what
an eager baseline with its launch overhead removed looks like; ``compile=True`` gives the
``torch.compile`` baseline. Graph replays share their buffers, so they hold a lock. Host copies on CUDA go
through pinned buffers, new per call (torch's caching host allocator reuses them), so threads share nothing.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BackendError
from ..models import fuse
from ..shapes import ShapeProfile, random_inputs
from .base import Runner, TensorSpec, to_numpy
from .cudagraphs import GraphPolicy, ShapeGraphs


def _converted(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``model`` in eval mode on ``device`` in ``dtype`` -- a copy unless it already is, so a runner never
    changes the module it was given (the bench makes FP32, FP16 and compiled runners and the export from one)."""
    tensors = [*model.parameters(), *model.buffers()]
    floats = [t for t in tensors if t.is_floating_point()]
    same_device = all(t.device.type == device.type and device.index in (None, t.device.index) for t in tensors)
    if not any(m.training for m in model.modules()) and same_device and all(t.dtype == dtype for t in floats):
        return model
    return copy.deepcopy(model).eval().to(device, dtype)


def pinned(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty page-locked host tensor (CUDA only: pinning needs a CUDA driver). Per call, never cached here: a
    numpy output is a view of its buffer, and torch's caching host allocator reuses a block only once it is freed
    and the copies recorded on it are done."""
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def pin_fp32() -> None:
    """FP32 means FP32 on CUDA: turn TF32 off for cuDNN convolutions (on by default in torch) and matmuls.
    The flags are process-wide; an FP32 reference sets them once, as ``effattn bench`` does."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


class TorchRunner(Runner):
    """Eager ``model`` on ``device`` in ``dtype`` (float32 is the reference every check compares to; on
    CUDA it pins TF32 off, see :func:`pin_fp32`)."""

    def __init__(
        self,
        model: nn.Module,
        profile: ShapeProfile,
        output_names: list[str] | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        cuda_graph: bool | None = False,
        compile: bool | str = False,
        fused: bool = False,
        pin_host: bool = True,
    ) -> None:
        """``cuda_graph`` (CUDA only): True, False (default: the plain eager reference), or None to capture
        repeated shapes; ``compile``: run ``torch.compile(model)`` instead of the eager module (a string: its
        ``mode``, e.g. ``"max-autotune"``); ``fused``: its Efficient-Attention blocks on the fused Triton kernel
        (:func:`effattn.models.fuse`); ``pin_host`` (CUDA only): copy numpy inputs in and outputs out through
        pinned host buffers, asynchronously (False: plain pageable copies, the slow path a large output pays)."""
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch backend on cuda asked for, but torch sees no CUDA device")
        self.device = torch.device(device)
        self.dtype = dtype
        if self.device.type == "cuda" and dtype == torch.float32:
            pin_fp32()
        if compile and fused:
            raise BackendError("compile and fused are two ways to run the model: pick one")
        suffix = ("" if dtype == torch.float32 else f"-{str(dtype)[6:]}") + ("-compile" if compile else "")
        self.backend = f"torch-{self.device.type}{suffix}{'-fused' if fused else ''}"
        self.model = _converted(model, self.device, dtype)
        if fused:
            self.model = fuse(self.model)  # a copy: the module given is never changed
        mode = compile if isinstance(compile, str) else None
        self._call = torch.compile(self.model, mode=mode) if compile else self.model
        inputs = [TensorSpec(p.name, np.dtype(p.dtype), p.symbolic_shape, p) for p in profile.inputs]
        names = output_names or ["output"]
        super().__init__(inputs, [TensorSpec(n, np.dtype(np.float32), None) for n in names])
        use_graphs = self.device.type == "cuda" and cuda_graph is not False and not compile
        self._graphs = ShapeGraphs(GraphPolicy(cuda_graph, profile.static)) if use_graphs else None
        self._stream = torch.cuda.Stream() if use_graphs else None
        self._lock = threading.Lock()
        self._pin = pin_host and self.device.type == "cuda"

    def _forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            result = self._call(*inputs.values())
        values = result if isinstance(result, (tuple, list)) else (result,)
        if len(values) != len(self.outputs):  # zip would drop outputs, or leave a name without one
            raise BackendError(
                f"the model returned {len(values)} output(s) but the runner names {len(self.outputs)}: "
                f"{list(self.outputs)}; give one name per output (output_names)"
            )
        return dict(zip(self.outputs, values))

    def _to_device(self, value: Any) -> torch.Tensor:
        """``value`` on the device in the compute dtype; a host array goes through a pinned buffer on CUDA."""
        tensor = torch.as_tensor(value)
        if self._pin and tensor.device.type == "cpu" and not tensor.is_pinned():
            staging = pinned(tuple(tensor.shape), tensor.dtype)
            staging.copy_(tensor)
            tensor = staging
        return tensor.to(self.device, non_blocking=self._pin).to(self.dtype)

    def _infer_torch(self, feed: dict[str, Any]) -> dict[str, torch.Tensor]:
        args = {name: self._to_device(feed[name]) for name in self.inputs}
        if self._graphs is None:
            return self._forward(args)
        with self._lock:
            return self._graphs.run(self._forward, args, self._stream)

    def _infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        # the outputs are declared float32 whatever the compute dtype; integer outputs keep their type
        outputs = {name: v.float() if v.is_floating_point() else v for name, v in self._infer_torch(feed).items()}
        if not self._pin:
            return {name: to_numpy(v) for name, v in outputs.items()}
        hosts = {}
        for name, value in outputs.items():
            hosts[name] = pinned(tuple(value.shape), value.dtype)
            hosts[name].copy_(value.detach(), non_blocking=True)  # on the stream the outputs were made on
        torch.cuda.current_stream(self.device).synchronize()  # the copies have landed before numpy reads them
        return {name: host.numpy() for name, host in hosts.items()}

    def probe(self, which: str = "min") -> None:
        """Run once on random inputs at the profile's ``which`` shape and declare each output's dtype and rank
        from what came back (every axis unnamed: eager code says nothing of which axis holds the batch), so a
        server describes the outputs and a model that cannot run fails at start, not at its first request."""
        profile = self.profile
        if profile is None:
            raise BackendError("probe() needs the runner's shape profile")
        outputs = self.infer(random_inputs(profile, which, seed=0))
        self.outputs = {name: TensorSpec(name, value.dtype, (None,) * value.ndim) for name, value in outputs.items()}

    def close(self) -> None:
        self._graphs = None
        self.model = self._call = None  # type: ignore[assignment]  # closed: nothing runs after close()
