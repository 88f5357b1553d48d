"""State dicts from files: read safely, loaded strictly, hashed by their tensors.
``torch.load(weights_only=True)`` or safetensors, never unrestricted pickle; a checkpoint that does not fit
is refused with its keys named; the hash is over the tensors, not the file."""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, first_line

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint, unwrapped from common training wrappers."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: object  # whatever the file holds, checked below
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(_unpickling_refused(path, str(e))) from None
    except (zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {first_line(_ANSI.sub('', str(e)) or repr(e))}. Expected a state_dict "
            "saved with torch.save or safetensors"
        ) from None
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(f"checkpoint {path} holds no state_dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _unpickling_refused(path: Path, torch_message: str) -> str:
    """torch's weights_only refusal (several paragraphs with ANSI codes) as one sentence that says what to do."""
    text = _ANSI.sub("", torch_message)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"checkpoint {path} holds pickled Python objects ({found.group(1)}), not only tensors - e.g. a whole "
            "model saved with torch.save(model). effattn never unpickles objects (that would run code from the "
            "file): save the weights with torch.save(model.state_dict(), path) or safetensors, and load those"
        )
    reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    return (
        f"cannot read checkpoint {path}: not a torch or safetensors checkpoint"
        + (f" ({reason.group(1).strip()})" if reason else "")
        + ". Expected a state_dict saved with torch.save "
        "or safetensors"
    )


def weights_sha256(state: Mapping[str, Tensor]) -> str:
    """A hash of the tensors themselves (sorted names, dtypes, shapes, bytes): the same weights give the same
    hash whether saved as .pt or .safetensors, or wrapped in a training checkpoint."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _dtype_kind(t: Tensor) -> str:
    """float, complex, bool or int: weights may change precision within a kind (fp16 -> fp32), never kind."""
    return (
        "complex"
        if t.is_complex()
        else "float"
        if t.is_floating_point()
        else "bool"
        if t.dtype == torch.bool
        else "int"
    )


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into ``model`` strictly; a mismatch names the missing, extra, misshapen and mistyped keys."""
    return fit_weights(model, read_state_dict(path), path)


def fit_weights(model: nn.Module, state: Mapping[str, Tensor], path: str | Path) -> nn.Module:
    """Load ``state`` (read from ``path``) into ``model`` strictly, or say every way it does not fit."""
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
            f"checkpoint {path} does not fit {type(model).__name__}: "
            + "; ".join(problems)
            + ". Check the model name and its arguments (channels, heads) match the checkpoint"
        )
    model.load_state_dict(state, strict=True)
    return model
