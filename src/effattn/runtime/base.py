"""The Runner protocol: one small interface over TensorRT, ONNX Runtime and eager PyTorch.

As in Polygraphy, the public :meth:`Runner.infer` checks the feed (names, dtypes, ranks, static
dims, profile range) so every backend sees only valid inputs and the user sees one clear error;
each backend implements :meth:`Runner._infer` alone. torch is optional here (a serving image may lack it): a
value can be a torch tensor only once something imported torch, so the checks look for it and never load it.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

from ..errors import InputError
from ..shapes import InputProfile, ShapeProfile, format_shape, random_inputs


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of a runner input or output; dynamic axes are named strings or None."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None  # None: known only after a run (eager models)
    profile: InputProfile | None = None

    def __str__(self) -> str:
        shape = "?" if self.shape is None else format_shape(self.shape)
        return f"{self.name}: {np.dtype(self.dtype).name}[{shape}]"


def loaded_torch() -> ModuleType | None:
    """torch if it is imported already, else None: nothing can be a torch tensor or module before torch is loaded,
    so a check for one needs no import (4 s, and a dependency that ONNX-only installs drop)."""
    return sys.modules.get("torch")


def _dtype_of(value: Any) -> np.dtype:
    if isinstance(value, np.ndarray):
        return value.dtype
    import torch  # loaded already: value is a torch tensor

    return torch.empty((), dtype=value.dtype).numpy().dtype


def _is_tensor(value: Any) -> bool:
    torch = loaded_torch()
    return isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor))


def to_numpy(value: torch.Tensor) -> np.ndarray:
    """A host numpy copy; floating types numpy lacks (bfloat16) become float32, integers stay integers."""
    import torch

    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.detach().cpu().numpy()


class Runner(abc.ABC):
    """Run a model on one backend. Use as a context manager so resources are freed on every path."""

    #: e.g. "onnxruntime-cpu", "torch-cpu", "tensorrt"
    backend: str = "?"
    #: the model file's effattn.* metadata (model, profile, residual pairing); empty for eager modules
    metadata: Mapping[str, str] = MappingProxyType({})
    #: the file it runs (``load`` may run another in the given one's place: the IR kept beside an INT8 .onnx)
    path: Path | None = None

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec], name: str | None = None) -> None:
        self.inputs = {s.name: s for s in inputs}
        self.outputs = {s.name: s for s in outputs}
        self.name = name or self.backend

    @property
    def profile(self) -> ShapeProfile | None:
        profiles = [s.profile for s in self.inputs.values() if s.profile is not None]
        return ShapeProfile(tuple(profiles)) if len(profiles) == len(self.inputs) else None

    def infer(self, feed: Mapping[str, Any] | Any) -> dict[str, np.ndarray]:
        """Outputs by name for ``feed`` (numpy arrays or torch tensors; a bare array if one input)."""
        return self._infer(self.check_feed(feed))

    def check_feed(self, feed: Mapping[str, Any] | Any) -> dict[str, Any]:
        """``feed`` as a dict, or :class:`InputError` naming the first thing wrong with it."""
        if not isinstance(feed, Mapping):
            if len(self.inputs) == 1 and _is_tensor(feed):
                feed = {next(iter(self.inputs)): feed}
            else:
                raise InputError(
                    f"feed must map input names to arrays; inputs are {', '.join(map(str, self.inputs.values()))}"
                )
        missing = [n for n in self.inputs if n not in feed]
        unknown = [n for n in feed if n not in self.inputs]
        if missing or unknown:
            raise InputError(
                f"feed names {sorted(feed)} do not match the model's inputs {list(self.inputs)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else "")
            )
        for name, spec in self.inputs.items():
            value = feed[name]
            if not _is_tensor(value):
                raise InputError(f"input {name!r} is a {type(value).__name__}; pass a numpy array or torch tensor")
            dtype = _dtype_of(value)
            if dtype != spec.dtype:
                raise InputError(
                    f"input {name!r} has dtype {dtype.name}, expected {np.dtype(spec.dtype).name}; "
                    f"convert it first (e.g. x.astype(np.{np.dtype(spec.dtype).name}))"
                )
            shape = tuple(value.shape)
            expected = spec.shape if spec.shape is not None else shape  # None: any shape
            if len(shape) != len(expected):
                raise InputError(
                    f"input {name!r} has rank {len(shape)} (shape {format_shape(shape)}), expected rank "
                    f"{len(expected)} like {format_shape(expected)}"
                )
            for axis, (size, want) in enumerate(zip(shape, expected)):
                if isinstance(want, int) and size != want:
                    axis_name = spec.profile.axis_names[axis] if spec.profile else f"axis {axis}"
                    raise InputError(
                        f"input {name!r} axis {axis} ({axis_name}) is {size}, expected {want} "
                        f"(shape {format_shape(shape)}, model takes {format_shape(expected)})"
                    )
                if size <= 0:
                    raise InputError(f"input {name!r} has an empty axis {axis} (shape {format_shape(shape)})")
            if spec.profile is not None:
                spec.profile.check(shape)
        return dict(feed)

    def infer_torch(self, feed: Mapping[str, Any] | Any) -> dict[str, Any]:
        """Like :meth:`infer` but returns torch tensors; GPU runners keep them on the device (no host copy)."""
        return self._infer_torch(self.check_feed(feed))

    def _infer_torch(self, feed: dict[str, Any]) -> dict[str, Any]:
        import torch

        return {name: torch.from_numpy(value) for name, value in self._infer(feed).items()}

    @abc.abstractmethod
    def _infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run on a feed already checked by :meth:`check_feed`."""

    def terminate(self, thread: int) -> bool:
        """Ask the run that thread ``thread`` (a ``threading.get_ident()``) is in to stop with an error; False if
        this backend cannot stop a run (the default) or that thread is in none. A server calls it for engine
        calls that outlived their timeout, so a model that never finishes does not hold a worker forever."""
        return False

    def stop_spinning(self) -> None:  # noqa: B027  (a default every backend may keep, not an abstract method)
        """Let the backend's idle threads sleep between runs instead of spinning for the next one; a no-op for
        backends whose threads do not spin (the default). A server calls it for every model it serves: between
        engine calls its own threads (HTTP, gRPC, batching) need the cores."""

    def warmup(self, iterations: int = 3) -> None:
        """Run a few times at the profile's opt shape so lazy allocations happen before timing."""
        if self.profile is None:
            return
        feed = random_inputs(self.profile, "opt", seed=0)
        for _ in range(iterations):
            self.infer(feed)

    def close(self) -> None:  # noqa: B027  (a default every backend may keep, not an abstract method)
        """Free backend resources; idempotent."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        ins = ", ".join(map(str, self.inputs.values()))
        outs = ", ".join(map(str, self.outputs.values()))
        return f"<{type(self).__name__} {self.name} ({ins}) -> ({outs})>"
