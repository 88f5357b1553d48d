"""Loading weights and user models safely.

Checkpoints are read with ``torch.load(weights_only=True)`` or safetensors, never unrestricted
pickle. A checkpoint that does not fit the model is refused with the offending keys named.
User models come as ``package.module:factory`` so the whole toolkit works on networks outside the zoo.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ModelError, first_line
from ..shapes import ShapeProfile
from .registry import create_model, get_entry

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint, unwrapped from common training wrappers."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError,
            SafetensorError) as e:
        first = first_line(e)
        raise CheckpointError(
            f"cannot read checkpoint {path}: {first}. Expected a state_dict saved with torch.save or safetensors "
            "(pickled objects other than tensors are refused for safety)"
        ) from None
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no state_dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _dtype_kind(t: Tensor) -> str:
    """float, complex, bool or int: weights may change precision within a kind (fp16 -> fp32), never kind."""
    return "complex" if t.is_complex() else "float" if t.is_floating_point() else \
        "bool" if t.dtype == torch.bool else "int"


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into ``model`` strictly; a mismatch names the missing, extra, misshapen and mistyped keys."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    mistyped = [
        f"{k} {state[k].dtype} vs model {v.dtype}"
        for k, v in expected.items()
        if k in state and _dtype_kind(state[k]) != _dtype_kind(v)
    ]
    problems = []
    if mistyped:
        problems.append(f"dtype mismatches (refused, not cast): {_listing(mistyped)}")
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if misshapen:
        problems.append(f"shape mismatches: {_listing(misshapen)}")
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(model).__name__}: " + "; ".join(problems)
            + ". Check the model name and its arguments (channels, heads) match the checkpoint"
        )
    model.load_state_dict(state, strict=True)
    return model


def _import_factory(spec: str):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model {spec!r} must be a registered name or package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(f"cannot import module {module_name!r} for model {spec!r}: {e}") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ModelError(f"module {module_name!r} has no attribute {attr!r} (model {spec!r})") from None
    if not callable(obj):
        raise ModelError(f"{spec!r} is not callable; give a function or class that returns an nn.Module")
    return obj


@dataclass
class ModelSource:
    """A loaded model and where it came from: exports record this in the ONNX metadata."""

    model: nn.Module
    name: str  # registry name or package.module:factory
    task: str
    profile: ShapeProfile | None  # the model's default profile, if it has one
    checkpoint: Path | None = None
    checkpoint_sha256: str | None = None
    samples: Callable[..., Tensor] | None = None  # task images, for models trained on a known task

    def task_inputs(self, profile: ShapeProfile, seed: int | None = None) -> list[dict[str, np.ndarray]]:
        """In-distribution inputs at min/opt/max (empty unless trained weights of a known task are loaded).

        Argmax agreement means something on the data the weights were trained on, less on noise."""
        if self.samples is None or self.checkpoint is None or len(profile) != 1:
            return []
        g = torch.Generator().manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
        name, p = next(iter(profile.items()))
        if p.rank != 4:
            return []
        return [{name: self.samples(*getattr(p, which)[:1], *getattr(p, which)[2:], g).numpy()}
                for which in ("min", "opt", "max")]


def load_model(spec: str, checkpoint: str | Path | None = None, pretrained: bool = False, **kwargs) -> ModelSource:
    """A registered name or ``package.module:factory``, optionally with a checkpoint, in eval mode.

    ``pretrained`` loads the zoo's shipped weights (ignored when ``checkpoint`` is given).
    A user factory may expose ``default_profile`` (a ShapeProfile) and ``task`` on its model.
    """
    if ":" in spec:
        factory = _import_factory(spec)
        try:
            model = factory(**kwargs)
        except TypeError as e:
            raise ModelError(f"calling {spec} with {kwargs}: {e}") from None
        if not isinstance(model, nn.Module):
            raise ModelError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
        profile = getattr(model, "default_profile", None)
        task = getattr(model, "task", "custom")
        samples = None
    else:
        entry = get_entry(spec)
        model = create_model(spec, **kwargs)
        profile, task, samples = entry.profile, entry.task, entry.samples
        if pretrained and checkpoint is None:
            checkpoint = entry.require_pretrained()
    if checkpoint is not None:
        load_weights(model, checkpoint)
    source = ModelSource(model.eval(), spec, task, profile, samples=samples)
    if checkpoint is not None:
        source.checkpoint = Path(checkpoint)
        source.checkpoint_sha256 = sha256_file(checkpoint)
    return source
