"""PyTorch -> ONNX: dynamic batch/height/width, checked, simplified and self-describing.
Written only after ``onnx.checker``, shape inference and the caller's ``verify`` hook (the pipeline passes a
parity run); never over an existing file without ``force=True``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from .. import __version__, metadata
from ..errors import ExportError, first_line
from ..files import atomic_output, check_writable
from ..models.checkpoint import ModelSource
from ..shapes import ShapeProfile

log = logging.getLogger(__name__)

EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18


@dataclass
class ExportResult:
    path: Path
    profile: ShapeProfile
    exporter: str
    nodes: int
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)  # step name -> seconds


def default_output_names(model: nn.Module, task: str) -> list[str]:
    return ["output"] if getattr(model, "residual", False) or task == "block" else ["logits"]


def _example_inputs(profile: ShapeProfile) -> tuple[torch.Tensor, ...]:
    """Trace at ``opt``, but never with a dynamic axis of size 1: torch.export would specialise it."""
    tensors = []
    for p in profile.inputs:
        shape = [max(o, 2) if i in p.dynamic_axes and p.max[i] >= 2 else o for i, o in enumerate(p.opt)]
        tensors.append(torch.randn(*shape))
    return tuple(tensors)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters print progress and warnings of their own; keep them in the debug log."""
    out = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if out.getvalue().strip():
            log.debug("exporter said:\n%s", out.getvalue())


def _trace(model: nn.Module, profile: ShapeProfile, exporter: str, opset: int, outputs: list[str]) -> onnx.ModelProto:
    example = _example_inputs(profile)
    names = list(profile)
    with _quiet_exporter():
        if exporter == "dynamo":
            from torch.export import Dim

            dynamic = tuple(
                {
                    axis: Dim(
                        f"{p.name}_{axis_name}" if len(profile) > 1 else axis_name, min=p.min[axis], max=p.max[axis]
                    )
                    for axis, axis_name in p.dynamic_axes.items()
                }
                for p in profile.inputs
            )
            program = torch.onnx.export(
                model,
                example,
                dynamo=True,
                input_names=names,
                output_names=outputs,
                dynamic_shapes=dynamic,
                opset_version=opset,
                verbose=False,
            )
            if program is None:  # torch returns one when dynamo=True; the caller adds the TorchScript hint
                raise ExportError("torch.onnx.export(dynamo=True) returned no ONNX program")
            return program.model_proto
        buffer = io.BytesIO()
        first = profile.inputs[0]
        axes = {p.name: dict(p.dynamic_axes) for p in profile.inputs}
        with torch.no_grad():
            results = model(*example)
        results = results if isinstance(results, (tuple, list)) else (results,)
        for out, value in zip(outputs, results):  # batch, and the spatial axes where the rank is kept
            axes[out] = {i: n for i, n in first.dynamic_axes.items() if i == 0 or value.dim() == first.rank}
        torch.onnx.export(
            model,
            example,
            buffer,  # type: ignore[arg-type]  # file-like: torch annotates paths only
            dynamo=False,
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=min(opset, 17),
        )
        return onnx.load_from_string(buffer.getvalue())


def export_onnx(
    model: nn.Module | ModelSource,
    profile: ShapeProfile | torch.Tensor | Sequence[torch.Tensor] | None,
    path: str | Path,
    *,
    exporter: str = "dynamo",
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    verify: Callable[[Path], None] | None = None,
    force: bool = False,
    output_names: list[str] | None = None,
    model_args: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``model`` to ``path`` with dynamic axes from ``profile``.

    ``profile`` is a :class:`ShapeProfile` or example tensors (then every shape is static); ``None`` takes
    the :class:`ModelSource`'s own.
    ``model`` may be a :class:`ModelSource` (from ``load_model``) so the file records the model name
    and checkpoint hash; ``model_args`` (the factory's keyword arguments) are recorded so the eager
    reference can be rebuilt from the file alone. ``progress`` is called with each step's name as it starts.
    ``verify`` is called with the finished file (under a temporary name) before it takes its place; whatever
    it raises leaves nothing behind. Raises :class:`ExportError`.
    """
    path = Path(path)
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if not 9 <= opset <= onnx.defs.onnx_opset_version():  # the dynamo exporter would write 18 and say `opset`
        raise ExportError(f"opset {opset} is outside what this onnx supports (9 to {onnx.defs.onnx_opset_version()})")
    check_writable(path, force)
    source = model if isinstance(model, ModelSource) else ModelSource(model, type(model).__name__, "custom", None)
    module = source.model.eval()
    profile = _as_profile(profile if profile is not None else source.profile, source.name)
    outputs = output_names or default_output_names(module, source.task)
    steps = _Steps(progress)
    steps("export")
    try:
        proto = _trace(module, profile, exporter, opset, outputs)
    except Exception as e:  # exporter failures come in many types; report the first line
        raise ExportError(
            f"{exporter} exporter failed on {source.name}: {first_line(e)}"
            + (" (try exporter='torchscript')" if exporter == "dynamo" else "")
        ) from e
    steps("check")
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"exported graph of {source.name} is not valid ONNX: {first_line(e)}") from e
    if simplify:
        steps("simplify")
        proto = _simplify(proto)
    metadata.set_metadata(
        proto, _metadata(source, profile, outputs, f"{exporter} (torch {torch.__version__}, opset {opset})", model_args)
    )
    with atomic_output(path, force) as tmp:
        onnx.save(proto, tmp)
        if verify is not None:
            steps("validate")
            verify(tmp)
    result = ExportResult(path, profile, exporter, len(proto.graph.node), steps.total(), steps.durations())
    log.debug("exported %s to %s (%d nodes, %.1fs)", source.name, path, result.nodes, result.seconds)
    return result


class _Steps:
    """Start times of named steps, each announced to ``progress`` as it starts."""

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.progress, self.start = progress, time.perf_counter()
        self.starts: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        self.starts[name] = time.perf_counter()
        if self.progress:
            self.progress(name)

    def total(self) -> float:
        return time.perf_counter() - self.start

    def durations(self) -> dict[str, float]:
        marks = [*self.starts.items(), ("done", time.perf_counter())]
        return {name: marks[i + 1][1] - t for i, (name, t) in enumerate(marks[:-1])}


def _as_profile(profile, model_name: str) -> ShapeProfile:
    """A ShapeProfile from a profile or example tensors (static shapes); none at all is refused with an example."""
    if profile is None:
        raise ExportError(
            f"{model_name} has no shape profile: give one, e.g. ShapeProfile.single('1x3x64x64', "
            "'1x3x128x128', '4x3x256x256') (min, opt, max), or example tensors; a model of your own "
            "can also carry it (load_model(..., profile=...) or a default_profile attribute)"
        )
    if isinstance(profile, torch.Tensor):
        profile = (profile,)
    if isinstance(profile, ShapeProfile):
        return profile
    return ShapeProfile(
        tuple(
            ShapeProfile.single(tuple(t.shape), name="input" if i == 0 else f"input{i}").inputs[0]
            for i, t in enumerate(profile)
        )
    )


def _metadata(
    source: ModelSource, profile: ShapeProfile, outputs: list[str], exporter: str, model_args: dict | None
) -> dict[str, str]:
    """The effattn.* keys that make the file self-describing (see effattn.metadata)."""
    meta = {
        metadata.VERSION: __version__,
        metadata.MODEL: source.name,
        metadata.TASK: source.task,
        metadata.PROFILE: profile.to_json(),
        metadata.EXPORTER: exporter,
        metadata.PRECISION: "fp32",
    }
    if model_args:
        meta[metadata.MODEL_ARGS] = json.dumps(model_args)
    if source.checkpoint_sha256:
        meta[metadata.CHECKPOINT_SHA256] = source.checkpoint_sha256
    if getattr(source.model, "residual", False) and len(profile) == 1:
        meta[metadata.RESIDUAL] = metadata.format_residuals({outputs[0]: profile.inputs[0].name})
    return meta


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    with _quiet_exporter():
        try:
            slim = onnxslim.slim(proto)
        except Exception as e:  # a simplifier bug must not lose the export: keep the checked graph
            log.warning("onnxslim failed (%s); keeping the unsimplified graph", first_line(e))
            return proto
    onnx.checker.check_model(slim, full_check=True)
    return slim
