"""The networks the tests share, one row each (as Polygraphy's ``ONNX_MODELS``): a small network, its profile,
and its exported file, written once per session by the ``onnx_models`` fixture in conftest.py."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effattn.export import export_onnx
from effattn.models import DotProductAttention, EfficientAttention, ModelSource, get_entry, load_model
from effattn.shapes import ShapeProfile


@dataclass(frozen=True)
class FixtureModel:
    """A network the tests share: ``build()`` makes it (in eval mode, under ``torch.manual_seed(seed)``, so two
    builds have the same weights), ``profile`` is the one its file is exported with."""

    build_fn: Callable[[], nn.Module | ModelSource]
    profile: ShapeProfile
    why: str  # which tests need this shape, and why
    seed: int = 0

    def build(self) -> Any:
        """A fresh copy: the nn.Module, or the ModelSource for zoo models (``.model`` is then the module)."""
        torch.manual_seed(self.seed)
        built = self.build_fn()
        (built.model if isinstance(built, ModelSource) else built).eval()
        return built


def _ea(*channels: int) -> Callable[[], nn.Module]:
    return lambda: EfficientAttention(*channels)


def _seg() -> ModelSource:
    return load_model("ea_segnet_tiny", pretrained=True)


#: The table: name -> network and profile. A test that needs another shape adds a row here.
ONNX_MODELS: dict[str, FixtureModel] = {
    "ea8": FixtureModel(
        _ea(8, 4, 2, 8),
        ShapeProfile.single("1x8x4x4", "2x8x16x16", "4x8x32x32"),
        "runner input checks (batch in [1, 4], height in [4, 32]), Triton repositories",
    ),
    "ea8_batch8": FixtureModel(
        _ea(8, 4, 2, 8), ShapeProfile.single("1x8x4x4", "2x8x16x16", "8x8x32x32"), "servers that batch up to 8 requests"
    ),
    "ea8_small": FixtureModel(
        _ea(8, 4, 2, 8),
        ShapeProfile.single("1x8x4x4", "2x8x8x8", "8x8x16x16"),
        "hostile requests against small size limits",
    ),
    "ea16": FixtureModel(
        _ea(16, 8, 2, 16),
        ShapeProfile.single("1x16x4x4", "2x16x16x16", "4x16x32x24"),
        "runners: parity at min/opt/max (a non-square max), threads at several shapes",
    ),
    "ea16_quant": FixtureModel(
        _ea(16, 8, 2, 16),
        ShapeProfile.single("1x16x8x8", "2x16x16x16", "2x16x32x32"),
        "INT8: the sizes its tolerances were measured at (64 positions and up)",
    ),
    "ea16_4heads": FixtureModel(
        _ea(16, 8, 4, 16),
        ShapeProfile.single("1x16x4x4", "2x16x16x16", "4x16x48x48"),
        "export: four heads, matched to eager at many shapes",
    ),
    "ea32": FixtureModel(
        _ea(32, 32, 2, 32),
        ShapeProfile.single("1x32x8x8", "2x32x16x16", "2x32x32x32"),
        "FP8: NVIDIA's FP8 Convs need more than 16 channels, so every Conv is FP8",
    ),
    "dot16_slow": FixtureModel(
        lambda: DotProductAttention(16, 8, 2, 16),
        ShapeProfile.single("1x16x8x8", "1x16x64x64", "1x16x64x64"),
        "a slow model for servers' queues and timeouts (dot-product: ~10-50 ms a call)",
    ),
    "ea64": FixtureModel(
        lambda: load_model("efficient_attention"),
        ShapeProfile.single("1x64x16x16", "2x64x64x64", "2x64x160x160"),
        "FP16: the zoo block up to 25,600 positions",
    ),
    "seg": FixtureModel(
        _seg, get_entry("ea_segnet_tiny").profile, "the trained segmenter at its own profile (task-level agreement)"
    ),
    "seg_small": FixtureModel(
        _seg,
        ShapeProfile.single("1x3x32x32", "1x3x48x48", "2x3x64x64"),
        "the trained segmenter, small: a quick `effattn compare`",
    ),
}


@dataclass
class Exported:
    """One row's file and the network it was exported from (``source``: keep it unchanged; ``fresh()``
    gives a copy to change)."""

    name: str
    source: Any
    profile: ShapeProfile
    path: Path

    def fresh(self) -> Any:
        return copy.deepcopy(self.source)


@dataclass
class OnnxModels:
    """``onnx_models["ea16"]``: the row exported on first use into ``folder``, then the same file for the
    rest of the session. Tests write what they derive (INT8, FP16, edits) in their own folders."""

    folder: Path
    table: dict[str, FixtureModel] = field(default_factory=lambda: ONNX_MODELS)
    _done: dict[str, Exported] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Exported:
        if name not in self._done:
            row = self.table[name]
            source = row.build()
            path = export_onnx(source, row.profile, self.folder / f"{name}.onnx").path
            path.chmod(0o444)  # shared by every test module: none may change it
            self._done[name] = Exported(name, source, row.profile, path)
        return self._done[name]


def two_input_onnx(path: Path) -> Path:
    """A graph of two dynamic inputs and no effattn metadata, as another tool writes it (trtexec-style named
    shapes): ``image`` (N x 3 x H x W) and ``mask`` (N x 4); outputs ``image_out = Relu(image)`` and
    ``mask_out = Relu(mask)``."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["image"], ["image_out"]), helper.make_node("Relu", ["mask"], ["mask_out"])],
        "two_inputs",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("image_out", TensorProto.FLOAT, ["N", 3, "H", "W"]),
            helper.make_tensor_value_info("mask_out", TensorProto.FLOAT, ["N", 4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path
