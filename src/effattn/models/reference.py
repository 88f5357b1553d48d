"""The eager model an ONNX file was exported from, rebuilt from the file's metadata - safely.
A ``package.module:factory`` named by a file is imported only when the caller names it too (``allow``) or
passes ``trust_metadata=True``; zoo arguments are checked first. See docs/architecture.md#trust-and-errors."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import torch

from .. import metadata
from ..errors import ModelError, TrustError
from ..files import sha256_file
from .checkpoint import ModelSource, load_model
from .registry import create_model, get_entry
from .weights import read_state_dict, weights_sha256

#: The largest zoo model (in parameters) built from a file's arguments; ea_resnet has 12 M.
MAX_PARAMETERS = 2**28


def reference_from_metadata(
    meta: Mapping[str, str],
    checkpoint: str | Path | None = None,
    allow: Collection[str] = (),
    trust_metadata: bool = False,
) -> ModelSource:
    """Rebuild the model named by ``meta`` (an ONNX file's ``metadata_props``) with its checkpoint.

    Raises :class:`TrustError` if the file names a factory that is neither in ``allow`` nor trusted,
    :class:`MetadataError` for malformed metadata, :class:`ModelError` for anything else missing."""
    name = meta.get(metadata.MODEL)
    if not name:
        raise ModelError("the ONNX file has no effattn metadata; give the model (and --checkpoint) for the reference")
    if ":" in name and not trust_metadata and name not in allow:
        raise TrustError(
            f"the file's metadata names the factory {name[:200]!r}; effattn runs no code a file names. "
            "If you trust it, name it yourself (effattn compare FILE MODULE:FACTORY) or pass "
            "--trust-metadata"
        )
    kwargs = metadata.model_args_of(meta)
    if ":" not in name:
        _check_size(name, kwargs)
    want = meta.get(metadata.CHECKPOINT_SHA256)
    if want is None:
        raise ModelError(
            f"{name} was exported with random weights, which cannot be rebuilt; re-export with "
            "--checkpoint or --pretrained to compare against eager PyTorch"
        )
    if checkpoint is None and ":" not in name:
        shipped = get_entry(name).pretrained_path
        if shipped is not None and _same_weights(want, shipped):
            checkpoint = shipped
    if checkpoint is None:
        raise ModelError(f"{name} was exported from a checkpoint (sha256 {want[:12]}…); give it with --checkpoint")
    source = load_model(name, checkpoint=checkpoint, **kwargs)
    # the weights' hash; files exported before it recorded the checkpoint file's hash, still accepted
    if want != source.checkpoint_sha256 and want != sha256_file(checkpoint):
        got = source.checkpoint_sha256 or "none"
        raise ModelError(
            f"checkpoint {checkpoint} (sha256 {got[:12]}…) is not the one the "
            f"file was exported from (sha256 {want[:12]}…)"
        )
    return source


def _same_weights(want: str, checkpoint: Path) -> bool:
    """Whether ``checkpoint`` holds the weights hashed as ``want`` (their tensors; older files: the file)."""
    return want == weights_sha256(read_state_dict(checkpoint)) or want == sha256_file(checkpoint)


def _check_size(name: str, kwargs: dict) -> None:
    """Build the zoo model on the ``meta`` device (no memory) and refuse arguments that make it huge."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise ModelError(
            f"model {name} with the file's arguments {kwargs} would have {count:,} parameters "
            f"(limit {MAX_PARAMETERS:,}); the file's metadata is not plausible"
        )
