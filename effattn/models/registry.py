"""A timm-style model registry: adding a model is one decorated function, nothing else changes."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError, first_line
from ..shapes import ShapeProfile


@dataclass(frozen=True)
class ModelEntry:
    """What the toolkit knows about a registered model beyond its constructor."""

    name: str
    factory: Callable[..., nn.Module]
    profile: ShapeProfile  # default input shapes: export, engines and demo use them
    task: str  # "block" | "classification" | "segmentation"
    description: str
    pretrained: str | None = None  # file under effattn/models/weights/
    #: (batch, height, width, generator) -> images of the data the pretrained weights saw
    samples: Callable[..., torch.Tensor] | None = None

    @property
    def pretrained_path(self) -> Path | None:
        if self.pretrained is None:
            return None
        return Path(str(resources.files("effattn.models") / "weights" / self.pretrained))

    def require_pretrained(self) -> Path:
        if self.pretrained_path is None:
            have = [e.name for e in _REGISTRY.values() if e.pretrained]
            raise ModelError(f"model {self.name!r} has no pretrained weights; models with weights: {', '.join(have)}")
        return self.pretrained_path


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    profile: ShapeProfile, task: str, pretrained: str | None = None, samples: Callable | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory under its function name; its docstring's first line describes it."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = factory.__name__
        if name in _REGISTRY:
            raise ModelError(f"model {name!r} is registered twice")
        doc = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(name, factory, profile, task, doc[0] if doc else "", pretrained, samples)
        return factory

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        if ":" in name:  # "unknown model ... (or give your own as package.module:factory)" would be absurd here
            raise ModelError(f"model {name!r} is a user factory (package.module:factory), not a registered name: "
                             "effattn.models.load_model builds it; registry look-ups take zoo names only") from None
        close = [n for n in _REGISTRY if name.lower() in n or n in name.lower()]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelError(
            f"unknown model {name!r}{hint}. Known models: {', '.join(list_models())} "
            "(or give your own as package.module:factory)"
        ) from None


def create_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a registered model in eval mode; ``pretrained=True`` loads its shipped weights."""
    entry = get_entry(name)
    try:
        model = entry.factory(**kwargs)
    except (TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as e:  # wrong names, invalid values, an allocation that failed
        raise ModelError(f"model {name!r}: bad arguments {kwargs}: {first_line(e)}") from None
    if pretrained:
        from .checkpoint import load_weights

        load_weights(model, entry.require_pretrained())
    return model.eval()
