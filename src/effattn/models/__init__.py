"""EfficientAttention blocks, the dot-product baseline, host networks and their registry."""

from ..files import sha256_file
from . import zoo as _zoo  # noqa: F401  (registers the models)
from .attention import DotProductAttention, DotProductAttention1d, EfficientAttention, EfficientAttention1d
from .checkpoint import ModelSource, load_model
from .fused import fuse
from .hosts import EAResNet, EASegNet
from .reference import reference_from_metadata
from .registry import build, create_model, get_entry, list_models, register_model
from .weights import load_weights, read_state_dict, weights_sha256

__all__ = [
    "DotProductAttention",
    "DotProductAttention1d",
    "EAResNet",
    "EASegNet",
    "EfficientAttention",
    "EfficientAttention1d",
    "ModelSource",
    "build",
    "create_model",
    "fuse",
    "get_entry",
    "list_models",
    "load_model",
    "load_weights",
    "read_state_dict",
    "reference_from_metadata",
    "register_model",
    "sha256_file",
    "weights_sha256",
]
