"""``effattn bench``: every backend timed interleaved with eager PyTorch FP32 in one run (median/p90/p99,
throughput, peak memory in a fresh process, start-up cold and warm), plus the scaling study's growth
exponents and crossover. See docs/benchmarks.md#how-the-bench-measures."""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from tqdm.auto import tqdm

from ..cpu import has_amx
from ..engines.onnxruntime_session import default_threads
from ..errors import BackendError, InputError, first_line
from ..export.exporter import default_output_names
from ..models import DotProductAttention, DotProductAttention1d, ModelSource, get_entry, load_model
from ..runtime import Runner
from ..runtime.torch_runner import pin_fp32
from ..shapes import InputProfile, ShapeProfile, format_shape, parse_shape, parse_shapes, random_inputs
from .backends import BACKENDS, DEFAULT_BACKENDS, EAGER, WARM_MEANS, Backends, FileBackends, check_backends, is_file
from .contention import LoadCheck
from .machine import cpu_flags, environment, measure_bandwidth
from .memory import available_bytes
from .plotting import check_plotting, plot
from .results import SCHEMA, BenchResults, BenchRow, StartRow, growth_exponent
from .roofline import arithmetic_of, floor_ms, measure_peaks, model_cost, nominal_peaks, percent_of_peak
from .timing import clock_for, host_copy_seconds, measure_interleaved, timed_call

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKENDS",
    "EAGER",
    "SCHEMA",
    "BenchResults",
    "BenchRow",
    "LoadCheck",
    "StartRow",
    "attention_map_bytes",
    "bench_profile",
    "check_plotting",
    "cpu_flags",
    "environment",
    "growth_exponent",
    "load_source",
    "measure_bandwidth",
    "plot",
    "run_bench",
]


def bench_profile(base: InputProfile, sizes: Sequence[int], batches: Sequence[int] | int) -> ShapeProfile:
    """A profile over ``sizes`` and ``batches`` (square H = W for images, length = size**2 for sequences)."""
    batches = [batches] if isinstance(batches, int) else sorted(batches)

    def shape(batch: int, size: int) -> tuple[int, ...]:
        spatial = (size, size) if base.rank == 4 else (size * size,)
        return (batch, base.opt[1], *spatial)

    ordered = sorted(sizes)
    return ShapeProfile(
        (
            InputProfile(
                base.name,
                shape(batches[0], ordered[0]),
                shape(batches[len(batches) // 2], ordered[len(ordered) // 2]),
                shape(batches[-1], ordered[-1]),
            ),
        )
    )


def attention_map_bytes(model, shape: Sequence[int]) -> int:
    """Bytes of the n x n attention maps a dot-product block needs at ``shape`` (0 for other models):
    scores and their softmax, float32, per head, for the whole batch."""
    blocks = [m for m in model.modules() if isinstance(m, (DotProductAttention, DotProductAttention1d))]
    if not blocks or model is not blocks[0]:
        return 0
    n = math.prod(shape[2:])
    return 2 * 4 * shape[0] * blocks[0].head_count * n * n


def load_source(name: str, input_shape: str | Sequence[int] | None = None) -> tuple[ModelSource, InputProfile]:
    """A zoo model (with its trained weights where it has some) or a user's ``package.module:factory``, and
    the input its bench profile grows from: the model's default profile, else ``input_shape`` (NxCxHxW or
    NxCxL; only its rank and channels count, the bench's sizes and batches replace the rest)."""
    source = load_model(name, pretrained=":" not in name and get_entry(name).pretrained is not None)
    if source.profile is not None:
        if len(source.profile) != 1:
            raise InputError(f"model {name!r} has {len(source.profile)} inputs; the bench times one-input models")
        base = source.profile.inputs[0]
    elif input_shape is not None:
        shape = parse_shape(input_shape)
        base = InputProfile("input", shape, shape, shape)
    else:
        raise InputError(
            f"model {name!r} has no default shape profile: give the model it returns a "
            "default_profile (an effattn.shapes.ShapeProfile) or give an input shape "
            "(run_bench(input_shape=...), effattn bench --shape NxCxHxW)"
        )
    if base.rank not in (3, 4):
        raise InputError(f"model {name!r}: the bench grows NxCxHxW or NxCxL inputs, not {format_shape(base.opt)}")
    return source, base


@dataclass
class _Run:
    """What every row of one bench run shares."""

    results: BenchResults
    device: str
    threads: int
    min_seconds: float
    deadline: float  # time.monotonic() past which rows are skipped
    memory: bool
    startup: bool
    bandwidth: float  # GB/s
    peaks: dict[str, float]  # matmul GFLOP/s per precision (CPU only)
    folder: Path
    bar: Any
    iterations: int = 10  # timed calls per row at least (trtexec's --iterations)
    warmup_s: float = 0.2  # warm-up per row before timing (trtexec's --warmUp)

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline


def run_bench(
    models: Sequence[str],
    sizes: Sequence[int],
    batches: Sequence[int] = (1,),
    backends: Sequence[str] | None = None,
    device: str = "cpu",
    threads: int | None = None,
    min_seconds: float = 1.0,
    max_seconds: float | None = None,
    memory: bool = True,
    startup: bool = True,
    quiet: bool = False,
    input_shape: str | Sequence[int] | None = None,
    load_check: LoadCheck | None = None,
    iterations: int = 10,
    warmup_s: float = 0.2,
) -> BenchResults:
    """Time ``models`` (zoo names or ``package.module:factory``, see :func:`load_source` for
    ``input_shape``) at ``sizes`` x ``batches`` on eager FP32 and each of ``backends`` (default: the
    device's set, see ``DEFAULT_BACKENDS``). ``.onnx``/``.plan``/``.engine`` files among ``models`` are timed
    as they are (:func:`_bench_file`; ``input_shape``: their shapes as :func:`effattn.shapes.parse_shapes`
    reads them). Each row gets ``warmup_s`` of warm-up, then at least ``iterations`` calls and ``min_seconds``.
    Rows that would exceed ``max_seconds`` in total are recorded as skipped, not run. ``load_check``
    (default: the machine's load and a calibration loop) decides the results' ``warnings``: other work on
    the machine makes timings unreliable."""
    requested = backends
    backends = _check_request(sizes, batches, backends, device)
    threads = threads or default_threads()
    sources = [  # a bad name, file or profile fails before timing
        FileBackends(name, device, threads) if is_file(name) else load_source(name, input_shape) for name in models
    ]
    file_backends = {
        id(s): [EAGER, *(s.defaults() if requested is None else backends)]
        for s in sources
        if isinstance(s, FileBackends)
    }
    torch.set_num_threads(threads)
    if device == "cuda":
        pin_fp32()
    check = (load_check or LoadCheck(os.cpu_count() or 1, threads)).start()
    results = BenchResults(environment=environment(threads, device))
    bandwidth, peaks = _measure_machine(results.environment, device, threads)
    results.environment.update(warmup_ms=round(warmup_s * 1e3, 3), min_iterations=iterations, min_seconds=min_seconds)
    all_backends = [EAGER, *backends]
    deadline = time.monotonic() + max_seconds if max_seconds is not None else math.inf
    bar = tqdm(
        total=sum(
            len(file_backends[id(s)]) if isinstance(s, FileBackends) else len(sizes) * len(batches) * len(all_backends)
            for s in sources
        ),
        desc="bench",
        disable=True if quiet else None,
        file=sys.stderr,
        leave=False,
    )  # None: no bar off a terminal
    with tempfile.TemporaryDirectory(prefix="effattn-bench-") as tmp, bar:
        run = _Run(results, device, threads, min_seconds, deadline, memory, startup, bandwidth, peaks, Path(tmp), bar)
        run.iterations, run.warmup_s = iterations, warmup_s
        for source in sources:
            if isinstance(source, FileBackends):
                _bench_file(run, source, file_backends[id(source)], input_shape)
            else:
                _bench_model(run, *source, all_backends, sizes, batches)
    check.stop()
    results.environment.update(check.to_dict())  # load_average_end: others sharing the cores
    results.warnings = check.warnings()
    return results


def _measure_machine(env: dict, device: str, threads: int) -> tuple[float, dict]:
    """Copy bandwidth, timed matmul peaks and the CPU's nominal peaks, recorded in ``env`` (the roofline's inputs)."""
    bandwidth = measure_bandwidth(device)
    peaks = measure_peaks(threads=threads) if device == "cpu" else {}
    flags = env["cpu_flags"] if has_amx() else [f for f in env["cpu_flags"] if not f.startswith("amx")]  # a cap
    nominal = (
        nominal_peaks(flags, env["cpu_vendor"], env["cpu_ghz"], min(threads, os.cpu_count() or 1))
        if device == "cpu"
        else {}
    )
    env.update(copy_bandwidth_gb_s=round(bandwidth, 1), matmul_peak_gflop_s=peaks, nominal_peak_gop_s=nominal)
    return bandwidth, peaks


def _check_request(
    sizes: Sequence[int], batches: Sequence[int], backends: Sequence[str] | None, device: str
) -> list[str]:
    """The backends to time besides eager; refuses sizes, batches, backends or a device that cannot run."""
    if not sizes or min(sizes) <= 0 or not batches or min(batches) <= 0:
        raise InputError(f"sizes {list(sizes)} and batches {list(batches)} must be positive")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("--device cuda asked for, but torch sees no CUDA device")
    return check_backends(backends, device)


def _bench_model(
    run: _Run,
    source: ModelSource,
    base: InputProfile,
    backends: list[str],
    sizes: Sequence[int],
    batches: Sequence[int],
) -> None:
    """Export once over every size and batch, start each backend's runner, then time every shape."""
    profile = bench_profile(base, sizes, batches)
    made = Backends(
        source, profile, run.folder, run.device, run.threads, default_output_names(source.model, source.task)
    )
    runners = _start_runners(run, made, backends)
    try:
        for batch in batches:
            for size in sizes:
                shape = bench_profile(base, [size], batch).inputs[0].opt
                feed = random_inputs(ShapeProfile.fixed({base.name: shape}), "opt", seed=0)
                _bench_shape(run, made, runners, backends, feed, source.model)
    finally:
        _close(runners)


def _bench_file(run: _Run, made: FileBackends, backends: list[str], shapes: str | Sequence[int] | None) -> None:
    """Time one file, trtexec-style, on each backend that loads it, at ``shapes`` (``name:NxCxHxW,...``), else its
    profile's opt shapes (effattn metadata), else the graph's static dims."""
    runners = _start_runners(run, made, backends)
    try:
        started = [r for b, r in runners.items() if isinstance(r, Runner) and b != EAGER]  # the file's own inputs
        feed = random_inputs(ShapeProfile.fixed(_file_shapes(made, started[0], shapes)), seed=0) if started else {}
        _bench_shape(run, made, runners, backends, feed)
    finally:
        _close(runners)


def _file_shapes(made: FileBackends, runner: Runner, shapes: str | Sequence[int] | None) -> dict[str, tuple[int, ...]]:
    names = list(runner.inputs)
    if shapes is not None:
        return parse_shapes(shapes if isinstance(shapes, str) else format_shape(shapes), names, "--shapes")
    profile = made.profile or runner.profile
    if profile is not None:
        return profile.shapes("opt")
    dims = {n: spec.shape for n, spec in runner.inputs.items()}
    dynamic = [n for n, shape in dims.items() if shape is None or not all(isinstance(d, int) for d in shape)]
    if dynamic:
        raise InputError(
            f"{made.name}: input {', '.join(dynamic)} has dynamic axes and the file records no shape profile: "
            f"give --shapes, e.g. {','.join(f'{n}:1x3x64x64' for n in names)}"
        )
    return {n: tuple(cast(tuple[int, ...], shape)) for n, shape in dims.items()}


def _close(runners: dict[str, Runner | str]) -> None:
    for runner in runners.values():
        if not isinstance(runner, str):
            runner.close()


def _start_runners(run: _Run, made: Backends | FileBackends, backends: list[str]) -> dict[str, Runner | str]:
    """Each backend's runner, or why it could not start (a row, not the end of the run); none past the deadline."""
    runners: dict[str, Runner | str] = {}
    for backend in backends:
        if run.out_of_time():
            break
        run.bar.set_postfix_str(f"{made.name}: start {backend}")
        why = made.fits(backend) if isinstance(made, FileBackends) else None
        if why is None and (missing := Backends.missing(backend)):
            why = f"skipped: {missing}"
        if why is not None:
            runners[backend] = why
            continue
        try:
            runners[backend] = _start(made, backend, run.results, run.startup and backend != EAGER)
        except Exception as e:  # a backend that cannot start is a row, not the end of the run
            runners[backend] = f"error: {first_line(e)}"
    return runners


def _bench_shape(
    run: _Run,
    made: Backends | FileBackends,
    runners: dict[str, Runner | str],
    backends: list[str],
    feed: dict[str, Any],
    model: torch.nn.Module | None = None,
) -> None:
    """One row per backend on ``feed``: timed together, or the reason it was not run; ratios to eager.
    ``model`` (a model source's): its attention maps' memory and its roofline floor."""
    shape = list(next(iter(feed.values())).shape) if feed else []
    need = attention_map_bytes(model, shape) if model is not None else 0
    cost = _cost(model, shape) if run.peaks and model is not None else None
    rows, timed = {}, {}
    for backend in backends:
        row = rows[backend] = BenchRow(made.name, backend, run.device, shape)
        row.inputs = {name: list(value.shape) for name, value in feed.items()}
        runner = runners.get(backend)
        _set_floors(run, made, row, runner, cost)
        why_not = _why_not_run(run, runner, need)
        if why_not:
            row.status = why_not
        else:
            timed[backend] = runner
    if timed:
        run.bar.set_postfix_str(f"{made.name} {'x'.join(map(str, shape))}")
        _measure_rows(
            [rows[b] for b in timed],
            timed,
            feed,
            run,
            made if run.memory else None,
        )
    eager = rows[EAGER].stats
    nominal = run.results.environment.get("nominal_peak_gop_s") or {}
    for backend, row in rows.items():
        if row.stats and eager:
            row.speedup_vs_eager = eager.median_ms / row.stats.median_ms
        if row.stats and cost is not None and isinstance(runners.get(backend), Runner):
            precision = arithmetic_of(BACKENDS[backend], runners[backend])
            row.percent_of_peak = percent_of_peak(cost[0], row.stats.median_ms, precision, nominal)
        run.results.rows.append(row)
        run.bar.update(1)


def _cost(model, shape: Sequence[int]) -> tuple[float, int, int] | None:
    """FLOPs, output elements and parameters of one forward pass, or None where the model cannot be traced on
    the meta device (a user model may not): its rows then have no roofline floor."""
    try:
        flops, out_elements = model_cost(model, shape)
    except Exception:
        return None
    return flops, out_elements, sum(p.numel() for p in model.parameters())


def _set_floors(
    run: _Run,
    made: Backends | FileBackends,
    row: BenchRow,
    runner: Runner | str | None,
    cost: tuple[float, int, int] | None,
) -> None:
    """The row's bandwidth floor (attention blocks) and roofline floor (where the model's cost is known)."""
    elements = math.prod(row.shape)
    if isinstance(made, Backends) and made.source.task == "block":  # FP32 input read once, FP32 output written once
        row.floor_ms = 2 * elements * 4 / (run.bandwidth * 1e9) * 1e3
    if cost is not None and isinstance(runner, Runner):
        flops, out_elements, params = cost
        row.roofline_ms = floor_ms(
            flops,
            4 * (elements + out_elements),
            params,
            arithmetic_of(BACKENDS[row.backend], runner),
            run.bandwidth,
            run.peaks,
        )


def _why_not_run(run: _Run, runner: Runner | str | None, need: int) -> str | None:
    """Why a row is not timed (out of time, its runner did not start, its attention maps cannot fit), or None."""
    if run.out_of_time():
        return "skipped: --max-seconds reached"
    if isinstance(runner, str) or runner is None:
        return runner or "skipped: --max-seconds reached"
    if need and need > 0.5 * (available_bytes() or math.inf):
        return (
            f"out of memory (not run): its n x n attention maps need {_size(need)}, "
            f"{_size(available_bytes() or 0)} available"
        )
    return None


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _is_oom(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return isinstance(error, MemoryError) or any(
        w in text for w in ("out of memory", "failed to allocate", "can't allocate", "bad_alloc")
    )


def _start(made: Backends | FileBackends, backend: str, results: BenchResults, timed: bool) -> Runner:
    """Create the runner; with ``timed`` (and a profile to feed), record cold and warm start-up (creation +
    first answer)."""
    if not timed or made.profile is None:
        return made.make(backend)
    feed = random_inputs(made.profile, "min", seed=0)
    if isinstance(made, Backends):
        made.file(backend)  # export and quantization time are not start-up time
    t0 = time.perf_counter()
    runner = made.make(backend)
    runner.infer(feed)
    cold = time.perf_counter() - t0
    kind = BACKENDS[backend].runtime
    warm = None
    if kind != "torch":
        t0 = time.perf_counter()
        again = made.make(backend)
        again.infer(feed)
        warm = time.perf_counter() - t0
        again.close()
    results.startup.append(
        StartRow(made.name, backend, cold * 1e3, None if warm is None else warm * 1e3, WARM_MEANS[kind])
    )
    return runner


def _measure_rows(
    rows: list[BenchRow], runners: dict, feed: dict, run: _Run, made: Backends | FileBackends | None
) -> None:
    """Time the runners interleaved (:func:`.timing.measure_interleaved`; on CUDA device tensors between
    CUDA events, host copies timed apart), then probe each one's peak memory."""
    device, min_seconds = run.device, run.min_seconds
    budget = max(min(10 * min_seconds, (run.deadline - time.monotonic()) / len(runners)), 0.05)
    calls: dict[str, Callable[[], Any]] = {
        backend: timed_call(runner, feed, device) for backend, runner in runners.items()
    }
    stats = measure_interleaved(
        calls,
        warmup_s=run.warmup_s,
        min_runs=run.iterations,
        min_seconds=min(min_seconds, budget),
        max_seconds=budget,
        clock=clock_for(device),
    )
    for row in rows:
        outcome = stats[row.backend]
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            row.stats = outcome
            if device == "cuda":
                row.host_copy_ms = 1e3 * host_copy_seconds(feed, calls[row.backend](), device)
            if made is not None:
                peak = made.peak_memory(row.backend, runners[row.backend], feed)
                row.peak_host_mib, row.peak_device_mib = peak.host_mib, peak.device_mib
        except Exception as e:
            first = first_line(e)
            row.status = f"out of memory: {first[:160]}" if _is_oom(e) else f"error: {first}"
            row.stats = None
