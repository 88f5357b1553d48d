"""PyTorch -> ONNX: dynamic batch/height/width, checked, simplified, self-describing, and verified.

The file is written only after it passed ``onnx.checker``, shape inference and a parity run of
ONNX Runtime against eager PyTorch at the profile's min, opt and max shapes; an existing file is
never replaced unless ``force=True``.
"""

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
from ..errors import ExportError, ParityError, first_line
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
    report: object | None = None  # runtime.parity.Report of the validation run
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
                {axis: Dim(f"{p.name}_{axis_name}" if len(profile) > 1 else axis_name, min=p.min[axis], max=p.max[axis])
                 for axis, axis_name in p.dynamic_axes.items()}
                for p in profile.inputs
            )
            program = torch.onnx.export(model, example, dynamo=True, input_names=names, output_names=outputs,
                                        dynamic_shapes=dynamic, opset_version=opset, verbose=False)
            return program.model_proto
        buffer = io.BytesIO()
        first = profile.inputs[0]
        axes = {p.name: dict(p.dynamic_axes) for p in profile.inputs}
        with torch.no_grad():
            results = model(*example)
        results = results if isinstance(results, (tuple, list)) else (results,)
        for out, value in zip(outputs, results):  # batch, and the spatial axes where the rank is kept
            axes[out] = {i: n for i, n in first.dynamic_axes.items() if i == 0 or value.dim() == first.rank}
        torch.onnx.export(model, example, buffer, dynamo=False, input_names=names, output_names=outputs,
                          dynamic_axes=axes, opset_version=min(opset, 17))
        return onnx.load_from_string(buffer.getvalue())


def export_onnx(
    model: nn.Module | ModelSource,
    profile: ShapeProfile | torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
    *,
    exporter: str = "dynamo",
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    validate: bool = True,
    force: bool = False,
    output_names: list[str] | None = None,
    model_args: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``model`` to ``path`` with dynamic axes from ``profile`` and verify it.

    ``profile`` is a :class:`ShapeProfile` or example tensors (then every shape is static).
    ``model`` may be a :class:`ModelSource` (from ``load_model``) so the file records the model name
    and checkpoint hash; ``model_args`` (the factory's keyword arguments) are recorded so the eager
    reference can be rebuilt from the file alone. ``progress`` is called with each step's name as it starts.
    Raises :class:`ExportError` (or :class:`ParityError` if ONNX Runtime disagrees with eager PyTorch).
    """
    path = Path(path)
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if not 9 <= opset <= onnx.defs.onnx_opset_version():  # the dynamo exporter would write 18 and say `opset`
        raise ExportError(f"opset {opset} is outside what this onnx supports (9 to {onnx.defs.onnx_opset_version()})")
    check_writable(path, force)
    source = model if isinstance(model, ModelSource) else ModelSource(model, type(model).__name__, "custom", None)
    module = source.model.eval()
    if isinstance(profile, torch.Tensor):
        profile = (profile,)
    if not isinstance(profile, ShapeProfile):
        profile = ShapeProfile(tuple(
            ShapeProfile.single(tuple(t.shape), name="input" if i == 0 else f"input{i}").inputs[0]
            for i, t in enumerate(profile)))
    outputs = output_names or default_output_names(module, source.task)
    steps: dict[str, float] = {}
    start = time.perf_counter()

    def step(name: str) -> None:
        steps[name] = time.perf_counter()
        if progress:
            progress(name)

    step("export")
    try:
        proto = _trace(module, profile, exporter, opset, outputs)
    except Exception as e:  # exporter failures come in many types; report the first line
        first = first_line(e)
        raise ExportError(f"{exporter} exporter failed on {source.name}: {first}"
                          + (" (try exporter='torchscript')" if exporter == "dynamo" else "")) from e
    step("check")
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"exported graph of {source.name} is not valid ONNX: {first_line(e)}") from e
    if simplify:
        step("simplify")
        proto = _simplify(proto)
    meta = {
        metadata.VERSION: __version__,
        metadata.MODEL: source.name,
        metadata.TASK: source.task,
        metadata.PROFILE: profile.to_json(),
        metadata.EXPORTER: f"{exporter} (torch {torch.__version__}, opset {opset})",
        metadata.PRECISION: "fp32",
    }
    if model_args:
        meta[metadata.MODEL_ARGS] = json.dumps(model_args)
    if source.checkpoint_sha256:
        meta[metadata.CHECKPOINT_SHA256] = source.checkpoint_sha256
    if getattr(module, "residual", False) and len(profile) == 1:
        meta[metadata.RESIDUAL] = metadata.format_residuals({outputs[0]: profile.inputs[0].name})
    metadata.set_metadata(proto, meta)

    with atomic_output(path, force) as tmp:
        onnx.save(proto, tmp)
        report = None
        if validate:
            step("validate")
            report = validate_onnx(module, tmp, profile, output_names=outputs,
                                   residuals=metadata.residuals_of(meta))
            if not report.passed:
                raise ParityError(f"exported {source.name} disagrees with eager PyTorch; the file was not written:\n"
                                  f"{report}")
    marks = list(steps.items()) + [("done", time.perf_counter())]
    durations = {name: marks[i + 1][1] - t for i, (name, t) in enumerate(marks[:-1])}
    result = ExportResult(path, profile, exporter, len(proto.graph.node), time.perf_counter() - start, report,
                          durations)
    log.debug("exported %s to %s (%d nodes, %.1fs)", source.name, path, result.nodes, result.seconds)
    return result


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


def validate_onnx(module: nn.Module, path: Path, profile: ShapeProfile, output_names: list[str],
                  residuals: dict[str, str] | None = None, seed: int | None = None):
    """Parity of ONNX Runtime (CPU) against eager PyTorch on fresh random inputs at min, opt and max."""
    from ..runtime.onnxruntime_runner import OnnxRuntimeRunner
    from ..runtime.parity import compare, profile_inputs
    from ..runtime.torch_runner import TorchRunner

    feeds = profile_inputs(profile, seed)
    with OnnxRuntimeRunner(path, device="cpu") as candidate:
        reference = TorchRunner(module, profile, output_names=output_names)
        return compare(reference, {"onnxruntime-cpu": candidate}, feeds, residuals=residuals)
