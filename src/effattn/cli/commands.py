"""One function per ``effattn`` command: read the parsed arguments, call the pipeline or a stage, print.

Library logic lives below (``effattn.pipeline`` and the stages); what is here is the command line's own:
turning flags into arguments, progress bars and the printed or ``--json`` output.
"""

from __future__ import annotations

import ast
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from tqdm.auto import tqdm

from .. import pipeline, precisions
from ..bench.benchmark import check_plotting, environment, plot, run_bench
from ..bench.catalog import DEFAULT_MODELS
from ..engines import build_engine
from ..engines.onnxruntime_session import default_threads
from ..engines.precision import check_onnx
from ..errors import BackendError, ConfigError, EffattnError, InputError, ModelError, first_line
from ..export import export_onnx, quantize
from ..export.exporter import default_output_names
from ..files import atomic_output, check_writable, require_file, write_arrays
from ..models import create_model, get_entry, list_models, load_model
from ..names import check_model_name, parse_model_spec
from ..runtime import Runner, load, random_inputs
from ..runtime.bisect import bisect
from ..runtime.openvino_runner import OpenVINORunner, summarize_layers
from ..runtime.torch_runner import TorchRunner
from ..serving.deployment import kserve_manifest, run_command, write_deployment
from ..serving.repository import TritonOptions, check_container_path, parse_pbtxt, write_repository
from ..shapes import ShapeProfile, format_shape, parse_shapes

log = logging.getLogger("effattn")


# ------------------------------------------------------------------------------------------ helpers
def _progress_bar(total: int, desc: str, quiet: bool):
    """A bar on stderr; none with --quiet, and none where stderr is no terminal (logs, CI: ``disable=None``)."""
    return tqdm(
        total=total,
        desc=desc,
        disable=True if quiet else None,
        file=sys.stderr,
        leave=False,
        bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}] {postfix}",
    )


def _step_callback(bar) -> Callable[[str], None]:
    """A ``progress`` callback that advances ``bar`` as each named step starts."""
    started: list[str] = []

    def step(name: str) -> None:
        if started:
            bar.update(1)
        started.append(name)
        bar.set_postfix_str(name)

    return step


def model_args(pairs: Sequence[str]) -> dict:
    """``["num_classes=19", "normalization='scaling'"]`` -> kwargs (values as Python literals)."""
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ModelError(f"--arg {pair!r}: write it as name=value, e.g. --arg num_classes=19")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a bare word: a string
    return kwargs


def profile_from_args(args, default: ShapeProfile | None) -> ShapeProfile:
    """--min/--opt/--max (``NxCxHxW`` or ``name:NxCxHxW,...``) over the model's default profile."""
    return ShapeProfile.from_options(args.min, args.opt, args.max, default)


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def mib(value: float) -> int:
    """``--...-mb`` (checked by the parser: positive and finite) as bytes."""
    return int(value * 2**20)


def _instead(ran: Path | None, given: str | Path) -> str:
    """`` on FILE, in GIVEN's place`` when ``load`` ran another file (the IR kept beside an INT8 .onnx), else ""."""
    return f" on {ran}, in {given}'s place" if ran and ran != Path(given) else ""


def _rtx(args) -> bool | None:
    """``rtx=True`` for the TensorRT runners when --rtx was given (None: each plan's sidecar decides)."""
    return True if getattr(args, "rtx", False) else None


# ----------------------------------------------------------------------------------------- commands
def cmd_models(args) -> None:
    rows: list[dict[str, Any]] = []
    for name in list_models(args.pattern):
        entry = get_entry(name)
        params = sum(p.numel() for p in create_model(name).parameters())
        rows.append(
            {
                "name": name,
                "task": entry.task,
                "params": params,
                "pretrained": bool(entry.pretrained),
                "profile": str(entry.profile),
                "description": entry.description,
            }
        )
    if args.json:
        return _print_json(rows)
    if not rows:
        return print(f"no model matches {args.pattern!r}")
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        flag = " [trained weights]" if r["pretrained"] else ""
        print(f"{r['name']:<{width}}  {r['task']:<14} {r['params'] / 1e6:6.2f}M  {r['description']}{flag}")
        print(f"{'':<{width}}  {r['profile']}")


def _check_weights(args, source) -> None:
    """export writes trained weights unless asked for random ones: an untrained file passes every parity check
    (eager and ONNX agree on noise) and answers nothing, so it is never the silent default."""
    if args.random_weights:
        if args.checkpoint is not None or args.pretrained:
            raise ConfigError("--random-weights exports untrained weights: give it without --checkpoint/--pretrained")
        return
    if source.checkpoint is not None:
        return
    zoo = None if ":" in args.model else get_entry(args.model)
    if zoo is None:
        given = " (--pretrained is for zoo models)" if args.pretrained else ""
        fix = f"give its weights with --checkpoint FILE (a state_dict: .safetensors, .pt){given}"
    elif zoo.pretrained:
        fix = "add --pretrained for its shipped trained weights, or give yours with --checkpoint FILE"
    else:
        fix = "it ships no trained weights: give yours with --checkpoint FILE"
    raise ModelError(f"{args.model} has no weights to export: {fix}, or pass --random-weights to export untrained ones")


def cmd_export(args) -> None:
    kwargs = model_args(args.arg)
    source = load_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, **kwargs)
    _check_weights(args, source)
    profile = profile_from_args(args, source.profile)
    options = dict(
        exporter=args.exporter, opset=args.opset, simplify=not args.no_simplify, force=args.force, model_args=kwargs
    )
    with _progress_bar(2 + (not args.no_simplify) + (not args.no_validate), f"export {args.model}", args.quiet) as bar:
        if args.no_validate:
            result, report = export_onnx(source, profile, args.output, progress=_step_callback(bar), **options), None
        else:
            result = pipeline.export_verified(source, args.output, profile, progress=_step_callback(bar), **options)
            report = result.report
        bar.update(bar.total - bar.n)
    if args.json:
        return _print_json(
            {
                "path": str(result.path),
                "nodes": result.nodes,
                "seconds": result.seconds,
                "profile": profile.to_dict(),
                "parity": report.to_dict() if report else None,
            }
        )
    weights = "random weights" if source.checkpoint is None else f"weights {source.checkpoint.name}"
    print(f"wrote {result.path} ({weights}, {result.nodes} nodes, {result.exporter} exporter, {result.seconds:.1f}s)")
    print(f"profile: {profile}")
    if report:
        print(report)


def _feed_for(args, runner: Runner) -> dict:
    if args.input:
        return pipeline.read_inputs(args.input, list(runner.inputs))
    if args.shape:
        return random_inputs(ShapeProfile.fixed(parse_shapes(args.shape, list(runner.inputs))), "opt", args.seed)
    if runner.profile is not None:
        return random_inputs(runner.profile, "opt", args.seed)
    raise InputError("give --input FILE.npy or --shape NxCxHxW (the file has no shape profile)")


def cmd_run(args) -> None:
    if args.output:
        check_writable(args.output, args.force)
    with load(args.onnx, backend=args.backend, device=args.device, rtx=_rtx(args)) as runner:
        feed = _feed_for(args, runner)
        try:
            outputs = runner.infer(feed)
        except EffattnError:
            raise
        except Exception as e:  # the backend's own failure (an allocation of 2^46 floats, ...): say whose and what
            raise BackendError(f"running {args.onnx} on {runner.backend} failed: {first_line(e)}") from None
        backend, ran = runner.backend, _instead(runner.path, args.onnx)
    if args.output:
        write_arrays(args.output, outputs, args.force)
    summary: dict[str, dict[str, Any]] = {
        name: {
            "shape": list(v.shape),
            "dtype": v.dtype.name,
            "mean": float(v.mean()),
            "std": float(v.std()),
            "min": float(v.min()),
            "max": float(v.max()),
        }
        for name, v in outputs.items()
    }
    if args.json:
        return _print_json({"backend": backend, "file": str(runner.path or args.onnx), "outputs": summary})
    print(f"backend: {backend}{ran}")
    for name, s in summary.items():
        print(
            f"{name}: {s['dtype']}[{'x'.join(map(str, s['shape']))}]  mean {s['mean']:.4g}  std {s['std']:.4g}"
            f"  min {s['min']:.4g}  max {s['max']:.4g}"
        )
    if args.output:
        print(f"wrote {args.output}")


def cmd_compare(args) -> None:
    if args.save_inputs:
        check_writable(args.save_inputs, args.force)  # before the run; each numbered file again before writing
    feeds = pipeline.load_inputs(args.load_inputs, args.onnx) if args.load_inputs else None
    if args.bisect:
        if pipeline.is_ir(args.onnx):
            raise InputError(
                f"--bisect compares ONNX graphs tensor by tensor; {args.onnx} is OpenVINO IR: bisect the .onnx it was "
                "made from, or compare the IR as a whole (without --bisect)"
            )
        return _bisect(args, feeds)
    meta = pipeline.file_metadata(args.onnx)
    reference = pipeline.reference_for(
        meta, args.model, args.checkpoint, args.pretrained, model_args(args.arg), trust_metadata=args.trust_metadata
    )
    parity = pipeline.compare_file(
        args.onnx,
        reference,
        backend=args.backend,
        device=args.device,
        seed=args.seed,
        rtx=_rtx(args),
        feeds=feeds,
        tolerance=args.tolerance,
    )
    saved = pipeline.save_inputs(args.save_inputs, parity.feeds, args.force) if args.save_inputs else []
    if args.json:  # which file ran, as 'effattn run --json' says: auto may run the IR kept beside an INT8 .onnx
        _print_json(parity.report.to_dict() | {"backend": parity.backend, "file": str(parity.path or args.onnx)})
    else:
        where = f"from {len(args.load_inputs)} file(s)" if feeds else "at min/opt/max shapes"
        ran = _instead(parity.path, args.onnx)
        print(
            f"{args.onnx} vs eager PyTorch ({reference.name}) on {parity.backend}{ran}, {parity.inputs} inputs {where}"
        )
        print(parity.report)
        if saved:
            print(f"wrote the inputs to {', '.join(map(str, saved))}")
    if not parity.report.passed:
        raise SystemExit(1)


def _bisect(args, feeds: list | None) -> None:
    """compare --bisect: the file against its FP32 export tensor by tensor (effattn.runtime.bisect)."""
    given = [
        flag
        for flag, on in (
            ("MODEL", args.model is not None),
            ("--checkpoint", args.checkpoint is not None),
            ("--pretrained", args.pretrained),
            ("--arg", bool(args.arg)),
            ("--trust-metadata", args.trust_metadata),
            ("--backend", args.backend not in ("auto", "onnxruntime")),
            ("--device", args.device not in (None, "cpu")),
            ("--rtx", args.rtx),
        )
        if on
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)}: --bisect compares two ONNX files on ONNX Runtime's CPU, with no eager model; "
            "drop them (or drop --bisect for parity against eager PyTorch)"
        )
    result = bisect(args.onnx, args.bisect, feeds, tolerance=args.tolerance, seed=args.seed)
    saved = pipeline.save_inputs(args.save_inputs, result.feeds, args.force) if args.save_inputs else []
    if args.json:
        _print_json(result.to_dict())
    else:
        print(result)
        if saved:
            print(f"wrote the inputs to {', '.join(map(str, saved))}")
    if not result.passed:
        raise SystemExit(1)


def cmd_demo(args) -> None:
    with _progress_bar(6, f"demo: export {args.model}", args.quiet) as bar:
        result = pipeline.demo(
            args.model,
            args.out,
            device=args.device,
            seed=args.seed,
            seconds=args.seconds,
            force=args.force,
            progress=_step_callback(bar),
        )
        bar.update(bar.total - bar.n)
    if args.json:
        return _print_json(
            {
                "onnx": [str(p) for p in result.paths.values()],
                "backends": {p: c.backend for p, c in result.backends.items()},
                "parity": [r.to_dict() for r in result.reports],
                "latency": {
                    k: v.to_dict() | {"speedup_vs_eager": result.eager_ms / v.median_ms}
                    for k, v in result.latency.items()
                },
                "warnings": result.warnings,
            }
        )
    _print_demo(result)
    if not result.passed:
        raise SystemExit(1)


def _print_demo(result: pipeline.Demo) -> None:
    paths, source = result.paths, result.source
    print(
        f"exported {source.name} ({'trained weights' if source.checkpoint else 'random weights'}) to "
        f"{paths['fp32']}: {result.export.nodes} nodes, checked, simplified, validated in {result.export.seconds:.1f}s;"
        f" FP16 graph (FP32 I/O) {paths['fp16']}" + (f"; INT8 QDQ graph {paths['int8']}" if "int8" in paths else "")
    )
    for precision, choice in result.backends.items():
        print(f"{precision} backend (auto): {choice.reason}")
    print(
        f"\nparity vs eager PyTorch FP32 over {result.inputs} inputs (random and task images at min/opt/max "
        "shapes; each precision's tolerances from the table in effattn.runtime.parity):"
    )
    print("\n\n".join(str(r) for r in result.reports))
    shape = "x".join(map(str, next(iter(cast(ShapeProfile, source.profile).values())).opt))  # zoo: has one
    print(f"\nlatency at {shape} (ms, after warm-up, same run):")
    print(f"{'backend':<26}{'median':>9}{'p90':>9}{'speedup':>9}")
    for name, t in result.latency.items():
        print(f"{name:<26}{t.median_ms:>9.3f}{t.p90_ms:>9.3f}{result.eager_ms / t.median_ms:>8.2f}x")
    for warning in result.warnings:
        print(f"WARNING: {warning}")


def cmd_quantize(args) -> None:
    ir, weighed = args.output.suffix.lower() == ".xml", args.cpu_ir != "off"
    if ir and weighed:
        raise InputError(
            "--cpu-ir writes NNCF's IR beside a QDQ graph: give -o model.int8.onnx (the IR: model.int8.xml)"
        )
    if not (ir or weighed) and (args.preset or args.keep_float):
        raise InputError(
            "--preset and --keep-float are NNCF's: give an OpenVINO IR output (-o model.xml) or --cpu-ir auto/always"
        )
    options = {
        "calibration": args.calibration,
        "samples": args.samples,
        "precision": args.precision,
        "preset": args.preset or "performance",
        "keep_float": args.keep_float or "attention",
        "force": args.force,
    }
    pick = None
    if ir:
        result = quantize(args.onnx, args.output, **options)
    else:  # the QDQ graph; with --cpu-ir, NNCF's IR weighed against it and kept beside or not
        pick = pipeline.quantize_for_cpu(args.onnx, args.output, args.cpu_ir, **options)
        result = pick.quantized
    if args.json:
        return _print_json(
            {
                "path": str(result.path),
                "precision": result.precision,
                "calibration": result.calibration,
                "samples": result.samples,
                "quantized": result.quantized,
                "seconds": result.seconds,
                "cpu_ir": pick.to_dict() if pick else None,
            }
        )
    ops = ", ".join(f"{n} {op}" for op, n in result.quantized.items())
    kind = "NNCF's INT8 OpenVINO IR" if ir else precisions.get(result.precision).description
    print(f"wrote {result.path} ({kind}; quantized: {ops}; {result.seconds:.1f}s)")
    print(f"calibrated on {result.calibration}")
    if pick is not None:
        _print_cpu_pick(pick)


def _print_cpu_pick(pick: pipeline.CpuPick) -> None:
    if pick.candidates:
        print(f"\n{pick.table()}\n{pick.decision}")
    if pick.kept is not None:
        bin_name = pick.kept.with_suffix(".bin").name
        print(f"wrote {pick.kept} and {bin_name}: load() runs it in {pick.quantized.path}'s place on this CPU")
    if pick.beside:
        print(f"note: {pick.beside}")
    for warning in pick.warnings:
        print(f"WARNING: {warning}")


def cmd_build(args) -> None:
    precision = args.precision
    if args.backend == "onnxruntime":
        _, decision = pipeline.build_onnxruntime(
            args.onnx, args.output, precision, args.device or "cpu", force=args.force
        )
        return print(
            f"wrote {args.output} (ONNX Runtime's optimised {decision.precision} graph; load it with 'effattn run')"
        )
    check_writable(args.output, args.force)  # before a build that can take minutes
    build = build_engine(
        args.onnx,
        precision=precision,
        output=args.output,
        cache_dir=args.cache_dir,
        workspace_gib=args.workspace,
        optimization_level=args.opt_level,
        fp16_flag=args.fp16_flag,
        rtx=args.rtx,
        force=args.force,
        progress=not args.quiet,
    )
    print(
        f"wrote {build.plan} ({build.sidecar.key.get('precision', precision)} engine, "
        f"{'cache hit' if build.cache_hit else 'built'} in {build.seconds:.1f}s; layers: {build.sidecar.layers})"
    )


def cmd_inspect(args) -> None:
    info = pipeline.describe(args.file)
    if args.json:
        return _print_json(info)
    for k, v in info.items():
        print(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")


def cmd_profile(args) -> None:
    if args.output:
        check_writable(args.output, args.force)
    runner = OpenVINORunner(
        require_file(args.onnx),
        args.precision,
        args.threads,
        perf_counters=True,
        resize_as_matmul=False if args.as_is else None,
    )
    with runner:
        feed = _feed_for(args, runner)
        runner.infer(feed)  # the warm-up: first-run allocations are not layer time
        summary = summarize_layers(runner.layer_times(feed, args.iterations), args.iterations, args.top)
        shapes = {name: list(value.shape) for name, value in feed.items()}
        report = {"file": str(args.onnx), "backend": runner.backend, "inputs": shapes, **summary}
    report["environment"] = environment(args.threads or default_threads())
    if args.output:
        with atomic_output(args.output, args.force) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        return _print_json(report)
    print(f"{report['backend']}  {args.onnx}  {shapes}: {summary['layers_ms']:.3f} ms of layers per run")
    for title, key in (("op type", "by_type"), ("kernel", "by_kernel")):
        print(f"\n{title:<36}{'ms/run':>10}{'share':>8}{'layers':>8}")
        for row in summary[key][: args.top]:
            print(f"{row['name'][:35]:<36}{row['ms']:>10.3f}{row['share']:>8.1%}{row['layers']:>8}")
    print(f"\n{'slowest layers':<48}{'type':<16}{'kernel':<28}{'ms/run':>9}{'share':>8}")
    for row in summary["slowest"]:
        print(
            f"{row['name'][:47]:<48}{row['type'][:15]:<16}{row['kernel'][:27]:<28}{row['ms']:>9.3f}{row['share']:>8.1%}"
        )
    if args.output:
        print(f"wrote {args.output}")


def cmd_bench(args) -> None:
    for path in (args.output, args.plot):
        if path:
            check_writable(path, args.force)
    if args.plot:
        check_plotting()  # before the run, not after it
    results = run_bench(
        [*args.files, *(args.models or ([] if args.files else DEFAULT_MODELS))],
        args.sizes,
        batches=args.batch,
        backends=args.backends,
        device=args.device,
        threads=args.threads,
        min_seconds=args.seconds,
        max_seconds=args.max_seconds,
        memory=not args.no_memory,
        startup=not args.no_startup,
        quiet=args.quiet,
        input_shape=args.shapes,
        iterations=args.iterations,
        warmup_s=args.warmup / 1e3,
    )
    if args.output:
        with atomic_output(args.output, args.force) as tmp:
            tmp.write_text(json.dumps(results.to_dict(), indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
    if args.json:
        return _print_json(results.to_dict())
    print(results.table())
    for path in (args.output, args.plot):
        if path:
            print(f"wrote {path}")


def served_models(specs: Sequence[str], args) -> dict[str, Runner]:
    """``[NAME=]FILE`` specs -> runners, names defaulting to the file name before its first dot; every name and
    file is checked before the first model loads. ``--backend torch``: model sources (:func:`torch_models`)."""
    if args.backend == "torch":
        return torch_models(specs, args)
    named = [parse_model_spec(spec) for spec in specs]
    names = [name for name, _ in named]
    for name, path in named:
        if names.count(name) > 1:
            raise InputError(f"two models are named {name!r}; name them: NAME=FILE")
        if require_file(path, "an .onnx or .plan file to serve").suffix.lower() == ".onnx":
            check_onnx(path)  # as load() will, but for every file before the first one loads
    models = {}
    for name, path in named:  # their threads stop spinning when served (Runner.stop_spinning, called by the server)
        models[name] = load(path, backend=args.backend, device=args.device, threads=args.threads)
        log.info("serving %s from %s on %s%s", name, path, models[name].backend, _instead(models[name].path, path))
    return models


def check_torch_flags(args) -> None:
    """ConfigError naming serve's model-source options given without ``--backend torch``."""
    if args.backend == "torch":
        return
    flags = [
        ("--fused", args.fused),
        ("--fp16", args.fp16),
        ("--checkpoint", args.checkpoint is not None),
        ("--pretrained", args.pretrained),
        ("--arg", bool(args.arg)),
        ("--min", bool(args.min)),
        ("--opt", bool(args.opt)),
        ("--max", bool(args.max)),
    ]
    given = [flag for flag, on in flags if on]
    if given:
        raise ConfigError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for serving a model source on eager "
            "PyTorch: add --backend torch (an .onnx or .plan file carries its own weights and shapes)"
        )


def parse_source_spec(spec: str) -> tuple[str, str]:
    """``[NAME=]SOURCE`` -> (name, source): NAME defaults to the zoo name, or the factory's of a module:factory."""
    name, sep, source = spec.partition("=")
    if not sep:
        name, source = spec.rpartition(":")[2], spec
    if Path(source).suffix.lower() in (".onnx", ".plan", ".engine") or Path(source).is_file():
        raise InputError(
            f"{source} is a file: --backend torch serves a model source (a zoo name or package.module:factory, "
            "weights with --checkpoint); serve the file without --backend torch"
        )
    return check_model_name(name), source


def torch_models(specs: Sequence[str], args) -> dict[str, Runner]:
    """``[NAME=]SOURCE`` specs -> torch runners (``--fused``: the fused kernel; ``--fp16``). Every source is loaded
    and its profile decided before the first runner is made; each runner runs once at its smallest shape (which
    also declares its outputs), so a model that cannot run is refused at start, not at its first request."""
    named = [parse_source_spec(spec) for spec in specs]
    names = [name for name, _ in named]
    for name in names:
        if names.count(name) > 1:
            raise InputError(f"two models are named {name!r}; name them: NAME=SOURCE")
    if args.checkpoint is not None and len(named) > 1:
        raise InputError("--checkpoint loads one state_dict: serve one model source with it (a server per model)")
    kwargs = model_args(args.arg)
    sources = {
        name: load_model(source, checkpoint=args.checkpoint, pretrained=args.pretrained, **kwargs)
        for name, source in named
    }
    profiles = {name: profile_from_args(args, source.profile) for name, source in sources.items()}
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models: dict[str, Runner] = {}
    for name, source in sources.items():
        runner = load(
            source.model,
            backend="torch",
            device=device,
            profile=profiles[name],
            output_names=default_output_names(source.model, source.task),  # as `effattn export` names them
            dtype=torch.float16 if args.fp16 else None,
            fused=args.fused or None,
        )
        try:
            cast(TorchRunner, runner).probe("min")
        except EffattnError:
            raise
        except Exception as e:  # the model's own failure: say which model, at which shape
            shape = format_shape(next(iter(profiles[name].values())).min)
            raise ModelError(
                f"{name} ({source.name}) does not run at its smallest shape {shape}: {first_line(e)}"
            ) from None
        models[name] = runner
        log.info("serving %s (%s) on %s, each request alone (no batching)", name, source.name, runner.backend)
    return models


def cmd_serve(args) -> None:
    try:  # the server stack (the serve extra) loads for this command alone
        from ..serving.grpc_server import check_grpc_port, require_grpc
        from ..serving.http_server import ServeOptions, listen, serve
    except ImportError as e:
        raise BackendError(
            f"effattn serve needs {e.name}, which is not installed: pip install 'effattn[serve]'"
        ) from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the server has no authentication; expose it only behind a proxy you trust", args.host)
    options = ServeOptions(
        max_batch_size=args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue=args.max_queue,
        timeout_s=args.timeout,
        instances=args.instances,
        max_request_bytes=mib(args.max_request_mb),
        grpc_port=args.grpc_port,
        host=args.host,
        graceful_seconds=args.graceful_seconds,
        max_inflight_bytes=mib(args.max_inflight_mb),
        max_connections=args.max_connections,
        keep_alive_s=args.keep_alive_s,
    )
    check_torch_flags(args)  # before the ports and the models, as the rest of the command line
    if args.grpc_port == args.port:  # else the second bind fails once every model has loaded
        raise ConfigError(f"--port and --grpc-port are both {args.port}; HTTP and gRPC need a port each")
    if args.grpc_port is not None:
        require_grpc()  # a missing grpc dependency is an error now, not after the models are loaded
        check_grpc_port(args.host, args.grpc_port)
    sock = listen(args.host, args.port, "HTTP port")  # a port in use is refused before the models load
    with sock:
        models = served_models(args.models, args)
        grpc = f" and grpc://{args.host}:{args.grpc_port}" if args.grpc_port is not None else ""
        print(
            f"effattn serve: {', '.join(models)} at http://{args.host}:{args.port}/v2{grpc} (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        serve(models, args.port, options, log_level="warning" if args.quiet else "info", sock=sock)


def cmd_triton(args) -> None:
    openvino = args.backend == "openvino"
    check_container_path(args.trt_cache)  # it reaches the config, the printed docker line and the Dockerfile
    options = TritonOptions(
        max_batch_size=args.max_batch_size if args.max_batch_size is not None else 0 if openvino else 8,
        preferred_batch_sizes=args.preferred_batch_sizes,
        max_queue_delay_us=args.max_queue_delay_us,
        instances=args.instances,
        kind={"cpu": "KIND_CPU", "gpu": "KIND_GPU"}.get(args.kind, "auto"),
        trt_accelerator=args.trt_accelerator,
        fp16=args.fp16,
        trt_cache_path=args.trt_cache,
        threads=args.threads,
        inter_op_threads=args.inter_op_threads,
        streams=args.streams,
        version_policy=args.version_policy,
        warmup=not args.no_warmup,
    )
    for flag, given, needs in (
        ("--storage-uri", args.storage_uri is not None and not args.kserve, "--kserve"),
        ("--fp16", args.fp16 and not args.trt_accelerator, "--trt-accelerator"),
        ("--streams", args.streams is not None and not openvino, "--backend openvino"),
    ):
        if given:
            raise ConfigError(f"{flag} goes with {needs}")
    folder = write_repository(
        args.model_file, args.repository, args.name, options, args.force, args.backend, args.version
    )
    config = (folder / "config.pbtxt").read_text()
    gpu = parse_pbtxt(config)["instance_group"][0]["kind"] == ["KIND_GPU"]
    cache = args.trt_cache if args.trt_accelerator else None  # the root; each model's engines in a folder of it
    print(f"wrote {folder}/config.pbtxt and {folder}/{args.version}/")
    profile = [line.removeprefix("#   ") for line in config.splitlines() if line.startswith("#   ")]
    if profile:
        print(f"profile (not checked by Triton): {'; '.join(profile)}")
    if args.kserve:
        manifest = kserve_manifest(folder.name, gpu, args.storage_uri, max(args.threads, 1) * args.instances, cache)
        written = write_deployment(Path(args.repository), folder.name, manifest, args.trt_cache, args.force)
        print(f"wrote {', '.join(str(p) for p in written)}")
        if args.storage_uri is None:
            print(f"set storageUri in {written[-1]} to where you upload {args.repository} (a placeholder now)")
    print(f"run: {run_command(args.repository, gpu, cache)}")
