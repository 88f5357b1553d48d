"""A model ready to export: zoo name or ``package.module:factory``, arguments, checkpoint and shapes.

:class:`ModelSource` carries what an export records in the ONNX metadata (name, arguments, weights
hash, task) so the eager reference can be rebuilt from the file alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ModelError
from ..shapes import ShapeProfile
from .registry import build
from .weights import fit_weights, read_state_dict, weights_sha256


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
        return [
            {name: self.samples(*getattr(p, which)[:1], *getattr(p, which)[2:], g).numpy()}
            for which in ("min", "opt", "max")
        ]


def load_model(
    spec: str,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    profile: ShapeProfile | None = None,
    **kwargs,
) -> ModelSource:
    """A registered name or ``package.module:factory``, optionally with a checkpoint, in eval mode.

    ``pretrained`` loads the zoo's shipped weights (ignored when ``checkpoint`` is given). ``profile`` sets
    the input shapes (a zoo model has its own; a user model may expose ``default_profile`` and ``task``
    attributes instead, or the caller gives one here).
    """
    model, entry = build(spec, **kwargs)
    task, samples = (entry.task, entry.samples) if entry else (getattr(model, "task", "custom"), None)
    profile = profile or (entry.profile if entry else getattr(model, "default_profile", None))
    if profile is not None and not isinstance(profile, ShapeProfile):
        raise ModelError(f"the profile of {spec} is a {type(profile).__name__}, not an effattn ShapeProfile")
    if entry and pretrained and checkpoint is None:
        checkpoint = entry.require_pretrained()
    source = ModelSource(model.eval(), spec, task, profile, samples=samples)
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        fit_weights(model, state, checkpoint)
        source.checkpoint, source.checkpoint_sha256 = Path(checkpoint), weights_sha256(state)
    return source
