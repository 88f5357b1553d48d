"""The ``effattn.*`` keys written into ONNX ``metadata_props`` and read back by runners and tools.

They make a file self-describing: which model and checkpoint it came from, its shape profile (so a
runner validates inputs without being told), and which output is a residual of which input (so
parity checks can measure the attention branch).
"""

from __future__ import annotations

from collections.abc import Mapping

from .shapes import ShapeProfile

PREFIX = "effattn."
VERSION, MODEL, TASK, PROFILE = "effattn.version", "effattn.model", "effattn.task", "effattn.profile"
CHECKPOINT_SHA256, EXPORTER, RESIDUAL, PRECISION = (
    "effattn.checkpoint_sha256", "effattn.exporter", "effattn.residual", "effattn.precision")
MODEL_ARGS = "effattn.model_args"  # JSON keyword arguments of the factory
FP32_OPS = "effattn.fp32_ops"  # ops the precision stage kept in FP32


def profile_of(meta: Mapping[str, str]) -> ShapeProfile | None:
    text = meta.get(PROFILE)
    return ShapeProfile.from_json(text) if text else None


def residuals_of(meta: Mapping[str, str]) -> dict[str, str]:
    """``"output=input"`` -> ``{"output": "input"}``: output names whose value is input + a branch."""
    pairs = (item.split("=", 1) for item in meta.get(RESIDUAL, "").split(",") if "=" in item)
    return {out: inp for out, inp in pairs}


def format_residuals(residuals: Mapping[str, str]) -> str:
    return ",".join(f"{out}={inp}" for out, inp in residuals.items())
