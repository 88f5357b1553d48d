"""A timm-style model registry: adding a model is one decorated function, nothing else changes.

Every name a user gives is either a registered zoo name or their own ``package.module:factory``;
:func:`build` and :func:`create_model` take both.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError, first_line
from ..shapes import ShapeProfile
from .weights import load_weights


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
            raise ModelError(
                f"model {name!r} is a user factory (package.module:factory), not a registered name: "
                "effattn.models.load_model builds it; registry look-ups take zoo names only"
            ) from None
        hint = f" (did you mean {', '.join(close)}?)" if (close := _close_names(name)) else ""
        raise ModelError(
            f"unknown model {name!r}{hint}. Known models: {', '.join(list_models())} "
            "(or give your own as package.module:factory)"
        ) from None


def _close_names(name: str) -> list[str]:
    """Zoo names nearest ``name`` by spelling (difflib), the best and any nearly as close: ``ea_segnet_tiyn`` (a
    typo) suggests ``ea_segnet_tiny`` alone, not ``ea_segnet``, which it merely contains; else names holding it."""
    name = name.lower()
    ratio = {n: difflib.SequenceMatcher(None, name, n).ratio() for n in _REGISTRY}
    best = max(ratio.values(), default=0.0)
    close = sorted((n for n, r in ratio.items() if r >= max(0.75, best - 0.1)), key=lambda n: -ratio[n])
    return close or [n for n in sorted(_REGISTRY) if name in n]


def import_factory(spec: str):
    """The callable named by ``package.module:factory`` (imported: only for names a user gave)."""
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


def build(spec: str, **kwargs) -> tuple[nn.Module, ModelEntry | None]:
    """The model named by ``spec`` (a zoo name or ``package.module:factory``) and its zoo entry, if any.

    Arguments the factory does not take are told apart from an error inside the factory's own code."""
    entry = None if ":" in spec else get_entry(spec)
    factory = entry.factory if entry else import_factory(spec)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise ModelError(
            f"model {spec!r} does not take the arguments {kwargs}: {e}; its signature is "
            f"{spec.split(':')[-1]}{inspect.signature(factory)}"
        ) from None
    except ValueError:  # no signature to read (a builtin): the call below says what is wrong
        pass
    try:
        model = factory(**kwargs)
    except Exception as e:  # the factory's own code failed: say it is the factory's, not effattn's
        raise ModelError(
            f"model {spec!r} failed while building with arguments {kwargs}: {type(e).__name__}: "
            f"{first_line(e)} (raised inside the factory)"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model, entry


def create_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a registered model or ``package.module:factory`` in eval mode; ``pretrained=True`` loads the
    zoo's shipped weights."""
    model, entry = build(name, **kwargs)
    if pretrained:
        if entry is None:
            raise ModelError(f"{name} is your own factory: give its checkpoint (load_model(..., checkpoint=...))")
        load_weights(model, entry.require_pretrained())
    return model.eval()
