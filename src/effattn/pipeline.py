"""What chains the stages (models -> export -> engines -> runtime) for the CLI and Python users: verified
export, the eager reference rebuilt from a file (under :mod:`effattn.models.reference`'s trust rule), parity
of a file, ONNX Runtime builds, the demo, reading inputs and describing a file."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from . import metadata, precisions
from .bench.contention import LoadCheck
from .bench.timing import LatencyStats, measure_interleaved
from .cpu import cpu_name
from .engines import available_devices, optimize_model
from .engines.cache import Sidecar, sidecar_path
from .engines.onnxruntime_session import default_threads
from .engines.precision import EnginePrecision, converted_graph, engine_precision
from .errors import BackendError, ExportError, InputError, ModelError, ParityError, first_line
from .export import ExportResult, QuantizeResult, export_onnx, quantize, to_fp16
from .export.quantize import DEFAULT_SAMPLES, zoo_samples
from .export.quantize.nncf_openvino import check_ir_output, copy_ir
from .files import atomic_output, check_writable, read_arrays, sha256_file, write_arrays
from .models import ModelSource, get_entry, load_model, reference_from_metadata
from .runtime import (
    TOLERANCES,
    Choice,
    Report,
    Runner,
    choose_backend,
    compare,
    load,
    profile_inputs,
    random_inputs,
)
from .runtime.onnxruntime_runner import OnnxRuntimeRunner
from .runtime.openvino_runner import (
    OpenVINORunner,
    ir_beside,
    ir_metadata,
    openvino_available,
    openvino_version,
    read_ir,
)
from .runtime.torch_runner import TorchRunner
from .shapes import ShapeProfile, format_shape

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ export
@dataclass
class VerifiedExport(ExportResult):
    """An export and the parity report that let it be written."""

    report: Report | None = None


def validate_export(module, path: str | Path, profile: ShapeProfile | None = None, seed: int | None = None) -> Report:
    """Parity of ONNX Runtime (CPU) against eager PyTorch on fresh random inputs at min, opt and max (of
    ``profile``, by default the file's own)."""
    with OnnxRuntimeRunner(path, device="cpu") as candidate:
        profile = profile or candidate.profile
        if profile is None:
            raise ExportError(f"{path} records no shape range for every input; give a profile to validate it at")
        reference = TorchRunner(module, profile, output_names=list(candidate.outputs))
        residuals = metadata.residuals_of(candidate.metadata, candidate.inputs, candidate.outputs)
        return compare(reference, {"onnxruntime-cpu": candidate}, profile_inputs(profile, seed), residuals=residuals)


def export_verified(
    model, path: str | Path, profile: ShapeProfile | None = None, *, seed: int | None = None, **options
) -> VerifiedExport:
    """Export ``model`` (an ``nn.Module`` or a :class:`ModelSource`) and write the file only if ONNX Runtime
    agrees with eager PyTorch (:class:`ParityError` otherwise, with the report). ``profile`` defaults to the
    source's own; ``options`` go to :func:`effattn.export.export_onnx`."""
    reports: list[Report] = []
    source = model if isinstance(model, ModelSource) else None
    module = source.model if source else model

    def verify(tmp: Path) -> None:
        report = validate_export(module, tmp, seed=seed)
        if not report.passed:
            raise ParityError(
                f"exported {source.name if source else type(module).__name__} disagrees with eager "
                f"PyTorch; the file was not written:\n{report}"
            )
        reports.append(report)

    result = export_onnx(model, profile, path, verify=verify, **options)
    return VerifiedExport(**vars(result), report=reports[0])


# ------------------------------------------------------------------------------------- reference
def reference_for(
    meta: Mapping[str, str],
    model: str | None = None,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    model_args: dict | None = None,
    trust_metadata: bool = False,
) -> ModelSource:
    """The eager model a file was exported from: the one the user names (``model``, with its arguments), or the
    file's own, rebuilt from its metadata - a factory the file names runs only if the user named it too."""
    if model and (model_args or pretrained or model != meta.get(metadata.MODEL)):
        return load_model(model, checkpoint=checkpoint, pretrained=pretrained, **(model_args or {}))
    return reference_from_metadata(meta, checkpoint, allow=[model] if model else [], trust_metadata=trust_metadata)


@dataclass
class Parity:
    """A file's parity run: the report, the reference it was measured against, on which backend, and the feeds."""

    report: Report
    reference: ModelSource
    backend: str
    inputs: int
    feeds: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None  # the file the backend ran (auto on a CPU: maybe the IR kept beside an INT8 .onnx)


def compare_file(
    onnx_path: str | Path,
    reference: ModelSource,
    backend: str = "auto",
    device: str | None = None,
    seed: int | None = None,
    rtx: bool | None = None,
    feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
    tolerance: str | None = None,
) -> Parity:
    """Run ``onnx_path`` on a backend and eager ``reference`` on the same inputs: ``feeds`` (each checked against
    the file's profile before the first run), else fresh ones (random at min/opt/max, plus task images for
    trained weights), against the tolerances of the graph's (or runner's) precision, or of the ``tolerance`` row
    of :mod:`effattn.precisions`."""
    limits = precisions.get(tolerance).tolerance if tolerance is not None else None
    with load(onnx_path, backend=backend, device=device, rtx=rtx) as runner:
        meta = runner.metadata  # the file's, or an OpenVINO IR's (its rt_info)
        profile = runner.profile or reference.profile
        if profile is None:
            raise InputError("neither the file nor the model has a shape profile")
        if feeds is None:
            feeds = profile_inputs(profile, seed) + reference.task_inputs(profile, seed)
        checked = [runner.check_feed(feed) for feed in feeds]  # every feed, before the first run
        eager = TorchRunner(reference.model, profile, output_names=list(runner.outputs))
        precision = getattr(runner, "precision", None) or metadata.precision_of(meta)  # OpenVINO may run in BF16
        report = compare(
            eager,
            runner,
            checked,
            precision=precision,
            residuals=metadata.residuals_of(meta, runner.inputs, runner.outputs),
            tolerance=limits,
        )
        return Parity(report, reference, runner.backend, len(checked), checked, runner.path)


# ------------------------------------------------------------------------------------------ build
def build_onnxruntime(
    onnx_path: str | Path, output: str | Path, precision: str | None = None, device: str = "cpu", force: bool = False
) -> tuple[Path, EnginePrecision]:
    """ONNX Runtime's optimised (fused, constant-folded) graph of a file, in ``precision`` (None: the graph's own;
    decided as for TensorRT by :func:`effattn.engines.precision.engine_precision`). An FP32 file asked for as
    FP16 goes through the FP16 graph stage first, in a temporary folder: nothing is left beside the output."""
    output = Path(output)
    check_writable(output, force)
    decision = engine_precision(onnx_path, precision)
    if decision.precision == "bf16":
        raise ExportError(
            "ONNX Runtime's CPU provider has no BF16 convolution; build BF16 with TensorRT, or run the "
            "FP32 file on OpenVINO, which uses BF16 where the CPU has it"
        )
    with tempfile.TemporaryDirectory(prefix="effattn-build-") as scratch:
        source = converted_graph(decision, onnx_path, Path(scratch) / f"graph.{decision.convert}.onnx")
        with atomic_output(output, force) as tmp:  # ONNX Runtime writes its file in place, piece by piece
            optimize_model(source, tmp, device=device)
    return output, decision


# ----------------------------------------------------------------------------------- the CPU's INT8
CPU_IR_MODES, CPU_IR_MARGIN = precisions.CPU_IR_MODES, precisions.CPU_IR_MARGIN
#: fresh random draws at the profile's opt shape the candidates' accuracy is checked on
CPU_IR_DRAWS = 3
#: seconds of interleaved calls each candidate gets (after 0.2 s of warm-up): a few seconds in all
CPU_IR_SECONDS = 1.0
_QDQ, _IR = "QDQ graph", "NNCF IR"


def keep_cpu_ir(
    mode: str, qdq_ms: float, ir_ms: float, ir_passed: bool, qdq_passed: bool = True, margin: float = CPU_IR_MARGIN
) -> tuple[bool, str]:
    """Whether ``--cpu-ir MODE`` keeps NNCF's IR beside the QDQ graph, and why: only an IR within the INT8 tolerance;
    ``always`` then keeps it, ``auto`` when the QDQ graph is not (the only accurate artifact) or the IR's speed is at
    least ``1 + margin`` times the QDQ graph's (median over median). A function of the measurements alone."""
    speedup = qdq_ms / ir_ms
    if not ir_passed:
        return False, f"not kept: the IR is outside the INT8 tolerance ({speedup:.2f}x the QDQ graph's speed)"
    if mode == "always":
        return True, f"kept (--cpu-ir always): within the INT8 tolerance, {speedup:.2f}x the QDQ graph's speed"
    if not qdq_passed:
        return True, f"kept: the QDQ graph is outside the INT8 tolerance, the IR within it ({speedup:.2f}x its speed)"
    if speedup >= 1 + margin:
        return True, f"kept: {speedup:.2f}x the QDQ graph's speed (auto keeps it from {1 + margin:.2f}x)"
    return False, f"not kept: {speedup:.2f}x the QDQ graph's speed, under the {1 + margin:.2f}x auto asks"


@dataclass
class CpuCandidate:
    """One CPU INT8 artifact as ``--cpu-ir`` weighed it on OpenVINO: median ms, worst output rel L2 and argmax
    agreement against ONNX Runtime FP32 on the FP32 file, whether it is within the INT8 row, and kept."""

    name: str
    path: Path
    median_ms: float
    rel_l2: float
    argmax: float | None
    passed: bool
    kept: bool


@dataclass
class CpuPick:
    """``effattn quantize --cpu-ir``: the QDQ graph written, the candidates measured (none with ``off``), the
    decision, and what sits beside the QDQ graph untouched (an IR from before: said, never deleted)."""

    quantized: QuantizeResult
    mode: str
    candidates: list[CpuCandidate]
    decision: str
    beside: str | None = None
    report: Report | None = None
    inputs: str = ""  # what the accuracy was measured on
    warnings: list[str] = field(default_factory=list)  # why the timings may be unreliable (a busy machine)
    cpu: str = field(default_factory=cpu_name)

    @property
    def kept(self) -> Path | None:
        return next((c.path for c in self.candidates if c.name == _IR and c.kept), None)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "candidates": [
                {k: str(v) if isinstance(v, Path) else v for k, v in vars(c).items()} for c in self.candidates
            ],
            "decision": self.decision,
            "kept": None if self.kept is None else str(self.kept),
            "beside": self.beside,
            "parity": self.report.to_dict() if self.report else None,
            "inputs": self.inputs,
            "warnings": self.warnings,
            "cpu": self.cpu,
        }

    def table(self) -> str:
        """The candidates, under a line that says where and against what they were measured."""
        tol = TOLERANCES["int8"]
        title = (
            f"CPU INT8 on OpenVINO, {self.cpu}: interleaved medians; accuracy against ONNX Runtime FP32 on the FP32 "
            f"file over {self.inputs} (INT8 row: worst rel L2 <= {tol.rel_l2:g}, argmax >= {tol.argmax_agreement:.0%})"
        )
        rows = [("candidate", "file", "median ms", "rel L2", "argmax", "accuracy", "kept")]
        for c in self.candidates:
            agree = "" if c.argmax is None else f"{c.argmax:.2%}"
            ok = "PASS" if c.passed else "FAIL"
            rows.append(
                (c.name, str(c.path), f"{c.median_ms:.3f}", f"{c.rel_l2:.2e}", agree, ok, "yes" if c.kept else "no")
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join([title, *("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)])


def quantize_for_cpu(
    onnx_in: str | Path,
    onnx_out: str | Path,
    cpu_ir: str = "auto",
    *,
    calibration: str | Path | Sequence[Mapping[str, np.ndarray]] | None = None,
    samples: int = DEFAULT_SAMPLES,
    precision: str = precisions.DEFAULT_QUANTIZED,
    preset: str = "performance",
    keep_float: str = "attention",
    seconds: float | None = None,
    margin: float = CPU_IR_MARGIN,
    force: bool = False,
) -> CpuPick:
    """``effattn quantize FP32.onnx -o m.int8.onnx --cpu-ir MODE``: the QDQ graph as :func:`effattn.export.quantize`
    writes it; then (``auto``, ``always``) NNCF's INT8 IR of the same file from the same calibration feeds (the same
    arguments draw them) into a temporary folder, both checked on OpenVINO against ONNX Runtime FP32 on the FP32
    file (fresh inputs at the opt shape, :func:`_fresh_opt_inputs`; the INT8 tolerance row) and timed there
    interleaved (``seconds`` each, by default :data:`CPU_IR_SECONDS`); :func:`keep_cpu_ir` decides whether the IR is
    written beside as ``m.int8.xml`` + ``.bin``, recording the QDQ graph's sha256, both medians, the CPU and
    OpenVINO's version (``load`` runs it in the QDQ graph's place). Each output is checked before any work; an IR
    already beside is replaced only with ``force``, and otherwise left as it is and described (``beside``)."""
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    xml = onnx_out.with_suffix(".xml")
    if cpu_ir not in CPU_IR_MODES:
        raise InputError(f"cpu_ir must be one of {', '.join(CPU_IR_MODES)}; got {cpu_ir!r}")
    if cpu_ir != "off":
        if onnx_out.suffix != ".onnx" or precision != "int8":
            raise InputError(
                f"--cpu-ir weighs NNCF's IR against the INT8 QDQ graph: write an int8 .onnx (not {onnx_out.name}, "
                f"{precision}); the IR goes beside it"
            )
        if onnx_out.exists() and onnx_in.exists() and os.path.samefile(onnx_in, onnx_out):
            raise InputError(
                f"--cpu-ir checks both artifacts against the FP32 file after writing the QDQ graph: write "
                f"{onnx_out.name} to another file than its input"
            )
        check_writable(onnx_out, force)
        check_ir_output(xml, force, preset, keep_float)  # its names, the options, NNCF installed
        if not openvino_available():
            raise BackendError("--cpu-ir times both artifacts on OpenVINO: pip install 'effattn[cpu,nncf]'")
        profile = _recorded_profile(onnx_in)
    written = quantize(onnx_in, onnx_out, calibration=calibration, samples=samples, precision=precision, force=force)
    if cpu_ir == "off":
        return CpuPick(written, cpu_ir, [], "the QDQ graph alone (--cpu-ir off)", _beside(onnx_out))
    with tempfile.TemporaryDirectory(prefix="effattn-cpu-ir-") as scratch:
        ir = quantize(
            onnx_in,
            Path(scratch) / xml.name,
            calibration=calibration,
            samples=samples,
            preset=preset,
            keep_float=keep_float,
        )
        check = LoadCheck(os.cpu_count() or 1, threads=os.cpu_count() or 1).start()
        candidates = {_QDQ: onnx_out, _IR: ir.path}
        report, latency, inputs = _weigh_cpu_int8(onnx_in, profile, candidates, seconds or CPU_IR_SECONDS)
        check.stop()
        trained = metadata.CHECKPOINT_SHA256 in metadata.read_metadata(onnx_in)
        if not trained:
            inputs += "; argmax shown, not required: no trained weights recorded (INT8 noise flips near-tied logits)"
        qdq, nncf = (
            _candidate(name, path, report, latency[name], argmax_counts=trained)
            for name, path in ((_QDQ, onnx_out), (_IR, xml))
        )
        keep, why = keep_cpu_ir(cpu_ir, qdq.median_ms, nncf.median_ms, nncf.passed, qdq.passed, margin)
        qdq.kept, nncf.kept = True, keep
        if keep:
            copy_ir(ir.path, xml, _ir_record(onnx_out, ir.path, qdq.median_ms, nncf.median_ms), force)
    beside = None if keep else _beside(onnx_out)
    return CpuPick(written, cpu_ir, [qdq, nncf], why, beside, report, inputs, check.warnings())


def _recorded_profile(fp32: Path) -> ShapeProfile:
    """The shape profile ``fp32`` records, checked before any work: the accuracy check draws at its opt shape."""
    profile = metadata.profile_of(metadata.read_metadata(fp32))
    if profile is None:
        raise InputError(f"{fp32} records no shape profile: --cpu-ir draws its inputs at the profile's opt shape")
    return profile


def _weigh_cpu_int8(
    fp32: Path, profile: ShapeProfile, candidates: Mapping[str, Path], seconds: float
) -> tuple[Report, dict[str, LatencyStats], str]:
    """Each candidate on OpenVINO (as ``load`` runs it) against ONNX Runtime FP32 on the FP32 file, on fresh inputs at
    the opt shape of its ``profile`` (:func:`_fresh_opt_inputs`), then timed interleaved on the first."""
    with contextlib.ExitStack() as stack:
        reference = stack.enter_context(OnnxRuntimeRunner(fp32, device="cpu"))
        runners = {name: stack.enter_context(OpenVINORunner(path)) for name, path in candidates.items()}
        feeds, inputs = _fresh_opt_inputs(reference.metadata, profile)
        residuals = metadata.residuals_of(reference.metadata, reference.inputs, reference.outputs)
        report = compare(reference, runners, feeds, precision="int8", residuals=residuals)
        latency = _measure({name: functools.partial(r.infer, feeds[0]) for name, r in runners.items()}, seconds)
    return report, latency, inputs


def _fresh_opt_inputs(meta: Mapping[str, str], profile: ShapeProfile) -> tuple[list[dict[str, np.ndarray]], str]:
    """What ``effattn compare`` checks a file on, at the profile's opt shape alone, and what that is:
    :data:`CPU_IR_DRAWS` random draws, plus as many task images for a zoo model with trained weights (where argmax
    agreement means something), from fresh seeds (not the calibration feeds). An IR ``auto`` runs must pass the
    parity check of the file it stands in for, noise included."""
    seeds = [int(s) for s in np.random.default_rng().integers(1, 2**31, CPU_IR_DRAWS + 1)]
    shape = format_shape(next(iter(profile.shapes("opt").values()))) if len(profile) == 1 else "the opt shape"
    feeds = [random_inputs(profile, "opt", seed) for seed in seeds[:-1]]
    task = zoo_samples(meta, ShapeProfile.fixed(profile.shapes("opt")), CPU_IR_DRAWS, seeds[-1]) or []
    images = f" and {len(task)} task images of {meta[metadata.MODEL]}" if task else ""
    return feeds + task, f"{CPU_IR_DRAWS} fresh random draws{images} at {shape}"


def _candidate(name: str, path: Path, report: Report, stats: LatencyStats, argmax_counts: bool) -> CpuCandidate:
    """``argmax_counts``: argmax agreement is a criterion (trained weights). Of a random-weight file's logits the top
    two differ by ~0.7 % (ea_resnet), so INT8 noise flips ~8 % of its argmaxes whatever the artifact."""
    rows = [r for r in report.rows if r.candidate == name]
    rel_l2 = max((r.value for r in rows if r.metric == "output"), default=math.nan)
    argmax = min((r.value for r in rows if r.metric == "argmax"), default=None)
    passed = all(r.passed for r in rows if argmax_counts or r.metric != "argmax")
    return CpuCandidate(name, path, stats.median_ms, rel_l2, argmax, passed, False)


def _ir_record(onnx_out: Path, ir: Path, qdq_ms: float, ir_ms: float) -> dict[str, str]:
    """What the kept IR records (its rt_info): the QDQ graph it stands for, its weights (the .bin of ``ir``, which
    ``copy_ir`` writes again byte for byte) and the measurement it was kept on."""
    return {
        metadata.CPU_IR_ONNX_SHA256: sha256_file(onnx_out),
        metadata.CPU_IR_BIN_SHA256: sha256_file(ir.with_suffix(".bin")),
        metadata.CPU_IR_QDQ_MS: f"{qdq_ms:.4f}",
        metadata.CPU_IR_MS: f"{ir_ms:.4f}",
        metadata.CPU_IR_CPU: cpu_name(),
        metadata.CPU_IR_OPENVINO: openvino_version(),
    }


def _beside(onnx_out: Path) -> str | None:
    """What an IR already beside the QDQ graph means now (it is never deleted): ``load`` skips a stale one, and runs
    one that records this very file (a byte-identical QDQ graph)."""
    ir = ir_beside(onnx_out)
    if ir is None:
        return None
    if ir.problem:
        return f"{ir.path} beside it is left as it was; load() does not run it ({ir.problem})"
    return (
        f"{ir.path} beside it, kept before, records this very file: load() runs it in its place "
        f"({ir.speedup:.2f}x measured then); remove it (and its .bin) to run the QDQ graph"
    )


# ------------------------------------------------------------------------------------------- demo
@dataclass
class Demo:
    """Everything the demo measured: files, the chosen backends, parity per precision, interleaved latency."""

    source: ModelSource
    export: ExportResult
    paths: dict[str, Path]  # precision -> file
    backends: dict[str, Choice]  # precision -> the backend auto chose, and why
    reports: list[Report]
    latency: dict[str, LatencyStats]  # runner name -> stats; "eager PyTorch fp32" is the baseline
    inputs: int
    warnings: list[str]  # why the timings may be unreliable (a busy machine), or a row is missing; empty if neither

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)

    @property
    def eager_ms(self) -> float:
        return self.latency["eager PyTorch fp32"].median_ms


def demo(
    model: str = "ea_segnet_tiny",
    out: str | Path = "effattn-demo",
    device: str | None = None,
    seed: int | None = None,
    seconds: float = 1.0,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Demo:
    """The whole path on one zoo model: export (verified), the FP16 graph and (on the CPU) the INT8 QDQ graph, each
    loaded on the backend ``auto`` picks, checked against eager FP32 and timed beside it in one interleaved run;
    on a GPU also eager FP16 on CUDA and the fused Efficient-Attention kernel in FP16 (:func:`_torch_cuda_rows`)."""
    out = Path(out)
    on_cpu = (device or ("cuda" if "cuda" in available_devices() else "cpu")) == "cpu"
    precisions = ("fp32", "fp16", "int8") if on_cpu else ("fp32", "fp16")  # TensorRT INT8 is not in the demo yet
    paths = {p: out / (f"{model}.onnx" if p == "fp32" else f"{model}.{p}.onnx") for p in precisions}
    for path in paths.values():
        check_writable(path, force)
    source = load_model(model, pretrained=get_entry(model).pretrained is not None)
    profile = get_entry(model).profile  # a zoo model's own (load_model gives it to the source)
    exported = export_verified(source, paths["fp32"], seed=seed, force=force, progress=progress)
    _write_low_precision(paths, force, progress)
    feeds = profile_inputs(profile, seed) + source.task_inputs(profile, seed)
    choices = {p: choose_backend(paths[p], device=device) for p in precisions}  # said once, by the caller
    with contextlib.ExitStack() as stack:
        runners = {
            p: stack.enter_context(load(c.path or paths[p], backend=c.backend, device=c.device))
            for p, c in choices.items()
        }
        reference = TorchRunner(source.model, profile, output_names=list(runners["fp32"].outputs))
        torch_rows, notes = _torch_cuda_rows(source, profile, list(reference.outputs), on_cpu)
        for runner in torch_rows.values():
            stack.enter_context(runner)
        checked = list(runners.items()) + [("fp16", r) for r in torch_rows.values()]
        reports = [
            compare(
                reference,
                r,
                feeds,
                precision=p,  # residuals from the file: not every runner has them
                residuals=metadata.residuals_of(metadata.read_metadata(paths[p]), r.inputs, r.outputs),
            )
            for p, r in checked
        ]
        check = LoadCheck(os.cpu_count() or 1, threads=default_threads()).start()
        latency = _time_beside_eager(reference, runners, random_inputs(profile, "opt", seed), seconds, torch_rows)
        check.stop()
    return Demo(source, exported, paths, choices, reports, latency, len(feeds), notes + check.warnings())


def _torch_cuda_rows(
    source: ModelSource, profile: ShapeProfile, outputs: list[str], on_cpu: bool
) -> tuple[dict[str, Runner], list[str]]:
    """On a GPU (torch sees CUDA and the demo is not on the CPU): eager FP16 on CUDA, what ``model.half()`` gives a
    PyTorch user, and the same with the fused Efficient-Attention kernel, by row name; on the CPU none (a note
    says why a network with nothing to fuse has no fused row)."""
    if on_cpu or not torch.cuda.is_available():
        return {}, []

    def runner(name: str, fused: bool) -> Runner:
        made = TorchRunner(source.model, profile, outputs, device="cuda", dtype=torch.float16, fused=fused)
        made.name = name
        return made

    rows = {"torch-fp16 (eager, cuda)": runner("torch-fp16 (eager, cuda)", False)}
    if importlib.util.find_spec("triton") is None:
        return rows, ["no fused row: the fused kernel needs triton (it ships with CUDA builds of torch)"]
    try:
        rows["torch-fused-fp16 (cuda)"] = runner("torch-fused-fp16 (cuda)", True)
    except ModelError as e:  # fuse(): nothing to fuse in this network
        return rows, [f"no fused row: {e}"]
    return rows, []


def _write_low_precision(paths: Mapping[str, Path], force: bool, progress: Callable[[str], None] | None) -> None:
    for precision, write in (("fp16", to_fp16), ("int8", quantize)):
        if precision in paths:
            if progress:
                progress(precision)
            write(paths["fp32"], paths[precision], force=force)


def _time_beside_eager(
    reference: Runner,
    runners: Mapping[str, Runner],
    feed: dict,
    seconds: float,
    named: Mapping[str, Runner] | None = None,
) -> dict[str, LatencyStats]:
    """Each runner (by backend and precision, and ``named`` by their names) timed interleaved with eager FP32."""
    timed = {"eager PyTorch fp32": reference}
    for precision, runner in runners.items():
        timed[runner.backend if runner.backend.endswith(precision) else f"{runner.backend} {precision}"] = runner
    timed.update(named or {})
    return _measure({name: functools.partial(r.infer, feed) for name, r in timed.items()}, seconds)


def _measure(calls: Mapping[str, Callable[[], object]], seconds: float) -> dict[str, LatencyStats]:
    """Each call timed interleaved (``seconds`` each, at most four times that); a failure names which call."""
    timings = measure_interleaved(calls, min_seconds=seconds, max_seconds=4 * seconds)
    failed = {name: e for name, e in timings.items() if isinstance(e, BaseException)}
    if failed:
        raise BackendError("timing failed: " + "; ".join(f"{name}: {first_line(e)}" for name, e in failed.items()))
    return {name: t for name, t in timings.items() if isinstance(t, LatencyStats)}


# ------------------------------------------------------------------------------------ files in, out
def read_inputs(path: str | Path, input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Inputs from a ``.npy`` (a one-input model) or ``.npz`` (arrays by input name), read bounded and never
    unpickled (:func:`effattn.files.read_arrays`)."""
    arrays = read_arrays(path)
    if isinstance(arrays, np.ndarray):
        if len(input_names) != 1:
            raise InputError(f"{path} holds one array but the model has inputs {list(input_names)}; use an .npz")
        return {input_names[0]: arrays}
    return arrays


def load_inputs(paths: Sequence[str | Path], onnx_path: str | Path) -> list[dict[str, np.ndarray]]:
    """One feed per file, read as ``effattn run --input`` reads it (:func:`read_inputs`), for ``onnx_path``'s
    inputs (an OpenVINO IR's: its model's); the runner checks each against the file's profile."""
    if is_ir(onnx_path):
        names = [port.get_any_name() for port in read_ir(onnx_path).inputs]
    else:
        names = metadata.check_onnx_file(onnx_path).inputs
    return [read_inputs(path, names) for path in paths]


def is_ir(path: str | Path) -> bool:
    """An OpenVINO IR (``effattn quantize -o model.xml``, or kept beside by ``--cpu-ir``) rather than ONNX."""
    return Path(path).suffix.lower() == ".xml"


def file_metadata(path: str | Path) -> dict[str, str]:
    """The ``effattn.*`` metadata of an ONNX file or an OpenVINO IR (its rt_info), each checked as its reader does."""
    return ir_metadata(read_ir(path)) if is_ir(path) else metadata.read_metadata(path)


def input_files(path: str | Path, count: int) -> list[Path]:
    """Where :func:`save_inputs` writes ``count`` feeds: ``path`` itself for one, else ``STEM.0.npz``,
    ``STEM.1.npz``, ... beside it (each a feed that ``--load-inputs`` and ``effattn run --input`` read)."""
    path = Path(path)
    if count == 1:
        return [path]
    stem = path.name[: -len(".npz")] if path.name.endswith(".npz") else path.name
    return [path.with_name(f"{stem}.{i}.npz") for i in range(count)]


def save_inputs(path: str | Path, feeds: Sequence[Mapping[str, np.ndarray]], force: bool = False) -> list[Path]:
    """Write each feed as an ``.npz`` of arrays by input name (:func:`input_files` names them); every file is
    checked before the first is written, and each is written atomically."""
    paths = input_files(path, len(feeds))
    for target in paths:
        check_writable(target, force)
    for target, feed in zip(paths, feeds):
        write_arrays(target, feed, force)
    return paths


def describe(path: str | Path) -> dict:
    """What a file holds: an engine's build record from its sidecar, or an ONNX file's I/O (with dynamic axes),
    opset, op counts, weight dtypes and effattn metadata."""
    path = Path(path)
    if path.suffix in (".plan", ".engine"):
        side = Sidecar.read(sidecar_path(path))
        return {
            "file": str(path),
            "kind": "TensorRT engine",
            "built_with": side.key,
            "io": side.io,
            "layers": side.layers,
            "plan_bytes": side.plan_bytes,
            "created": side.created,
        }
    meta = metadata.read_metadata(path)  # refuses non-ONNX files with a clear message
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf and external-data errors come in many types
        raise ExportError(f"{path} is not a loadable ONNX model: {first_line(e)}") from None
    weights = {i.name for i in model.graph.initializer}

    def io(values) -> list[dict]:
        return [
            {
                "name": v.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
            if v.name not in weights
        ]

    dtypes = Counter(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in model.graph.initializer)
    return {
        "file": str(path),
        "kind": "ONNX model",
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "nodes": len(model.graph.node),
        "ops": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "weights": dict(dtypes),
        "metadata": meta,
    }
