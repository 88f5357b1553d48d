"""The ``effattn`` command line: a thin layer over the Python API, one subcommand per job."""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import BackendError, ConfigError, EffattnError, InputError, ModelError, first_line
from .files import atomic_output
from .files import check_writable as _check_writable

log = logging.getLogger("effattn")

EPILOG = """\
typical session:
  effattn demo                                   # the whole path on the trained tiny segmenter
  effattn models                                 # what the zoo holds, with default shapes
  effattn export ea_segnet_tiny --pretrained -o seg.onnx --min 1x3x32x32 --opt 1x3x128x128 --max 4x3x512x512
  effattn run seg.onnx --shape 1x3x256x256       # run it (random input) on the best backend here
  effattn compare seg.onnx                       # parity against eager PyTorch, rebuilt from the file's metadata
  effattn quantize seg.onnx -o seg.int8.onnx     # INT8 QDQ graph (TensorRT/ONNX Runtime/OpenVINO), calibrated
  effattn bench --models efficient_attention ea_segnet_tiny --sizes 64 128 256
  effattn serve seg.onnx                         # KServe v2 HTTP server on 127.0.0.1:8000 (tritonclient works)
  effattn triton seg.onnx --repository models    # a Triton model repository for the same file

Shapes are written NxCxHxW (NxCxL for sequences). Run 'effattn COMMAND --help' for each command.
"""


# ----------------------------------------------------------------------------------------- helpers
def _progress_bar(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=quiet, file=sys.stderr, leave=False,
                bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}] {postfix}")


def _step_callback(bar) -> Callable[[str], None]:
    started = []

    def step(name: str) -> None:
        if started:
            bar.update(1)
        started.append(name)
        bar.set_postfix_str(name)

    return step


def _model_args(pairs: Sequence[str]) -> dict:
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


def _profile_from_args(args, default):
    """--min/--opt/--max over the model's default profile; without one, opt defaults to min and max to opt."""
    from .shapes import ShapeProfile

    if not (args.min or args.opt or args.max):
        if default is None:
            raise InputError("this model has no default shape profile: give --min, --opt and --max (e.g. 1x3x224x224)")
        return default
    base = default.inputs[0] if default is not None else None
    lo = args.min or (base.min if base else None)
    if lo is None:
        raise InputError("this model has no default shape profile: give --min (and --opt/--max for dynamic axes)")
    mid = args.opt or (base.opt if base else lo)
    hi = args.max or (base.max if base else mid)
    return ShapeProfile.single(lo, mid, hi, name=base.name if base else "input")


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def _load_feed(path: Path, runner) -> dict:
    import zipfile

    import numpy as np

    if not path.is_file():
        raise InputError(f"input file {path} does not exist")
    try:  # an .npz reads its arrays lazily: read them all here, where a truncated or lying file is caught
        data = np.load(path, allow_pickle=False)
        arrays = data if isinstance(data, np.ndarray) else dict(data.items())
    except (ValueError, OSError, EOFError, MemoryError, zipfile.BadZipFile) as e:
        raise InputError(f"cannot read {path} as .npy/.npz: {first_line(e)}") from None
    if isinstance(arrays, np.ndarray):
        if len(runner.inputs) != 1:
            raise InputError(f"{path} holds one array but the model has inputs {list(runner.inputs)}; use an .npz")
        return {next(iter(runner.inputs)): arrays}
    return arrays


# ---------------------------------------------------------------------------------------- commands
def cmd_models(args) -> None:
    from .models import create_model, get_entry, list_models

    rows = []
    for name in list_models(args.pattern):
        entry = get_entry(name)
        params = sum(p.numel() for p in create_model(name).parameters())
        rows.append({"name": name, "task": entry.task, "params": params, "pretrained": bool(entry.pretrained),
                     "profile": str(entry.profile), "description": entry.description})
    if args.json:
        _print_json(rows)
        return
    if not rows:
        print(f"no model matches {args.pattern!r}")
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        flag = " [trained weights]" if r["pretrained"] else ""
        print(f"{r['name']:<{width}}  {r['task']:<14} {r['params'] / 1e6:6.2f}M  {r['description']}{flag}")
        print(f"{'':<{width}}  {r['profile']}")


def cmd_export(args) -> None:
    from .export import export_onnx
    from .models import load_model

    _check_writable(args.output, args.force)
    source = load_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, **_model_args(args.arg))
    profile = _profile_from_args(args, source.profile)
    steps = 2 + (not args.no_simplify) + (not args.no_validate)
    with _progress_bar(steps, f"export {args.model}", args.quiet) as bar:
        result = export_onnx(source, profile, args.output, exporter=args.exporter, opset=args.opset,
                             simplify=not args.no_simplify, validate=not args.no_validate, force=args.force,
                             model_args=_model_args(args.arg), progress=_step_callback(bar))
        bar.update(bar.total - bar.n)
    if args.json:
        _print_json({"path": str(result.path), "nodes": result.nodes, "seconds": result.seconds,
                     "profile": profile.to_dict(), "parity": result.report.to_dict() if result.report else None})
        return
    print(f"wrote {result.path} ({result.nodes} nodes, {result.exporter} exporter, {result.seconds:.1f}s)")
    print(f"profile: {profile}")
    if result.report:
        print(result.report)


def cmd_run(args) -> None:
    import numpy as np

    from .runtime import load, random_inputs
    from .shapes import ShapeProfile

    if args.output:
        _check_writable(args.output, args.force)
    with load(args.onnx, backend=args.backend, device=args.device, **_rtx(args)) as runner:
        if args.input:
            feed = _load_feed(args.input, runner)
        elif args.shape:
            name = next(iter(runner.inputs))
            feed = random_inputs(ShapeProfile.single(args.shape, name=name), "opt", args.seed)
        elif runner.profile is not None:
            feed = random_inputs(runner.profile, "opt", args.seed)
        else:
            raise InputError("give --input FILE.npy or --shape NxCxHxW (the file has no shape profile)")
        outputs = runner.infer(feed)
        if args.output:  # through a file object: np.savez would add ".npz" to a name without it
            with atomic_output(args.output, args.force) as tmp, open(tmp, "wb") as f:
                np.savez(f, **outputs)
        summary = {name: {"shape": list(v.shape), "dtype": v.dtype.name, "mean": float(v.mean()),
                          "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
                   for name, v in outputs.items()}
        if args.json:
            _print_json({"backend": runner.backend, "outputs": summary})
            return
        print(f"backend: {runner.backend}")
        for name, s in summary.items():
            print(f"{name}: {s['dtype']}[{'x'.join(map(str, s['shape']))}]  mean {s['mean']:.4g}  std {s['std']:.4g}"
                  f"  min {s['min']:.4g}  max {s['max']:.4g}")
        if args.output:
            print(f"wrote {args.output}")


def cmd_compare(args) -> None:
    from . import metadata
    from .export import read_metadata
    from .models import load_model, reference_from_metadata
    from .runtime import compare, load, profile_inputs
    from .runtime.torch_runner import TorchRunner

    meta = read_metadata(args.onnx)
    precision = metadata.precision_of(meta)
    if args.model and (args.arg or args.pretrained or args.model != meta.get(metadata.MODEL)):
        source = load_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained,
                            **_model_args(args.arg))
    else:  # the file's own model: a factory it names runs only if the user named it too (or trusts the file)
        source = reference_from_metadata(meta, args.checkpoint, allow=[args.model] if args.model else [],
                                         trust_metadata=args.trust_metadata)
    with load(args.onnx, backend=args.backend, device=args.device, **_rtx(args)) as runner:
        profile = runner.profile or source.profile
        if profile is None:
            raise InputError("neither the file nor the model has a shape profile")
        feeds = profile_inputs(profile, args.seed)
        feeds += source.task_inputs(profile, args.seed)
        reference = TorchRunner(source.model, profile, output_names=list(runner.outputs))
        precision = getattr(runner, "precision", None) or precision  # OpenVINO may run an FP32 file in BF16
        report = compare(reference, runner, feeds, precision=precision,
                         residuals=metadata.residuals_of(meta, runner.inputs, runner.outputs))
    if args.json:
        _print_json(report.to_dict())
    else:
        print(f"{args.onnx} vs eager PyTorch ({source.name}), {len(feeds)} inputs at min/opt/max shapes")
        print(report)
    if not report.passed:
        raise SystemExit(1)


def cmd_demo(args) -> None:
    """export -> FP16 graph (and, on the CPU, INT8 QDQ graph) -> best backend here, each checked against eager
    FP32 and timed beside it."""
    from . import metadata
    from .engines import available_devices
    from .export import export_onnx, quantize, read_metadata, to_fp16
    from .models import get_entry, load_model
    from .runtime import compare, load, profile_inputs, random_inputs
    from .bench.timing import measure_interleaved
    from .runtime.torch_runner import TorchRunner

    out = args.out
    fp32_path, fp16_path = out / f"{args.model}.onnx", out / f"{args.model}.fp16.onnx"
    int8_path = out / f"{args.model}.int8.onnx"
    # INT8 on the CPU (OpenVINO's INT8 kernels); TensorRT INT8 engines are not wired into the demo yet
    on_cpu = (args.device or ("cuda" if "cuda" in available_devices() else "cpu")) == "cpu"
    for path in (fp32_path, fp16_path, int8_path) if on_cpu else (fp32_path, fp16_path):
        _check_writable(path, args.force)
    source = load_model(args.model, pretrained=get_entry(args.model).pretrained is not None)
    profile = source.profile
    with _progress_bar(5, f"demo: export {args.model}", args.quiet) as bar:
        result = export_onnx(source, profile, fp32_path, force=args.force, progress=_step_callback(bar))
        bar.set_postfix_str("fp16")
        to_fp16(fp32_path, fp16_path, force=args.force)
        if on_cpu:
            bar.set_postfix_str("int8")
            quantize(fp32_path, int8_path, force=args.force)
        bar.update(bar.total - bar.n)
    feeds = profile_inputs(profile, args.seed)
    feeds += source.task_inputs(profile, args.seed)
    feed = random_inputs(profile, "opt", args.seed)
    precisions = ("fp32", "fp16", "int8") if on_cpu else ("fp32", "fp16")
    paths = {"fp32": fp32_path, "fp16": fp16_path, "int8": int8_path}
    runners = [load(paths[p], backend="auto", device=args.device) for p in precisions]
    reference = TorchRunner(source.model, profile, output_names=list(runners[0].outputs))
    reports, timed = [], {"eager PyTorch fp32": reference}
    for precision, runner in zip(precisions, runners):
        runner.name = runner.backend if runner.backend.endswith(precision) else f"{runner.backend} {precision}"
        reports.append(compare(reference, runner, feeds, precision=precision,
                               residuals=metadata.residuals_of(read_metadata(paths[precision]))))
        timed[runner.name] = runner
    timings = measure_interleaved({name: (lambda r=r: r.infer(feed)) for name, r in timed.items()},
                                  min_seconds=args.seconds, max_seconds=4 * args.seconds)
    for runner in runners:
        runner.close()
    failed = {name: e for name, e in timings.items() if isinstance(e, BaseException)}
    if failed:
        raise BackendError("timing failed: " + "; ".join(f"{name}: {e}" for name, e in failed.items()))
    eager = timings["eager PyTorch fp32"].median_ms
    passed = all(r.passed for r in reports)
    if args.json:
        _print_json({"onnx": [str(paths[p]) for p in precisions], "parity": [r.to_dict() for r in reports],
                     "latency": {k: v.to_dict() | {"speedup_vs_eager": eager / v.median_ms}
                                 for k, v in timings.items()}})
    else:
        print(f"exported {source.name} ({'trained weights' if source.checkpoint else 'random weights'}) "
              f"to {fp32_path}: {result.nodes} nodes, checked, simplified, validated in {result.seconds:.1f}s; "
              f"FP16 graph (FP32 I/O) {fp16_path}" + (f"; INT8 QDQ graph {int8_path}" if on_cpu else ""))
        print(f"backend: {runners[0].backend} (auto)" + (f"; INT8 graph: {runners[2].backend} (auto: the fastest "
              "INT8 path installed here)" if on_cpu else ""))
        print(f"\nparity vs eager PyTorch FP32 over {len(feeds)} inputs (random and task images at min/opt/max "
              "shapes; each precision's tolerances from the table in effattn.runtime.parity):")
        print("\n\n".join(str(r) for r in reports))
        shape = "x".join(map(str, next(iter(profile.values())).opt))
        print(f"\nlatency at {shape} (ms, after warm-up, same run):")
        print(f"{'backend':<26}{'median':>9}{'p90':>9}{'speedup':>9}")
        for name, t in timings.items():
            print(f"{name:<26}{t.median_ms:>9.3f}{t.p90_ms:>9.3f}{eager / t.median_ms:>8.2f}x")
    if not passed:
        raise SystemExit(1)


def cmd_quantize(args) -> None:
    from .export import quantize

    _check_writable(args.output, args.force)
    result = quantize(args.onnx, args.output, calibration=args.calibration, samples=args.samples, force=args.force)
    if args.json:
        _print_json({"path": str(result.path), "calibration": result.calibration, "samples": result.samples,
                     "quantized": result.quantized, "seconds": result.seconds})
        return
    ops = ", ".join(f"{n} {op}" for op, n in result.quantized.items())
    print(f"wrote {result.path} (INT8 QDQ, signed symmetric; quantized: {ops}; calibration: {result.calibration}, "
          f"{result.samples} samples; {result.seconds:.1f}s)")


def cmd_build(args) -> None:
    from . import metadata
    from .export import read_metadata, to_fp16

    _check_writable(args.output, args.force)
    if args.backend == "tensorrt":
        from .engines import build_engine

        build = build_engine(args.onnx, precision=args.precision, output=args.output, cache_dir=args.cache_dir,
                             workspace_gib=args.workspace, optimization_level=args.opt_level,
                             fp16_flag=args.fp16_flag, rtx=args.rtx, force=args.force, progress=not args.quiet)
        layers = build.sidecar.layers
        print(f"wrote {build.plan} ({'cache hit' if build.cache_hit else 'built'} in {build.seconds:.1f}s; "
              f"layers: {layers})")
        return
    from .engines import optimize_model

    source = args.onnx
    if args.precision == "fp16" and metadata.precision_of(read_metadata(source)) == "fp32":
        source = to_fp16(args.onnx, args.output.with_name(args.output.stem + ".fp16-source.onnx"), force=args.force)
    with atomic_output(args.output, args.force) as tmp:  # ONNX Runtime writes its file in place, piece by piece
        optimize_model(source, tmp, device=args.device or "cpu")
    print(f"wrote {args.output} (ONNX Runtime's optimised {args.precision} graph; load it with 'effattn run')")


def cmd_inspect(args) -> None:
    from .engines.cache import Sidecar, sidecar_path

    path = args.file
    if path.suffix in (".plan", ".engine"):
        side = Sidecar.read(sidecar_path(path))
        info = {"file": str(path), "kind": "TensorRT engine", "built_with": side.key, "io": side.io,
                "layers": side.layers, "plan_bytes": side.plan_bytes, "created": side.created}
    else:
        info = _inspect_onnx(path)
    if args.json:
        _print_json(info)
        return
    for k, v in info.items():
        print(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")


def _inspect_onnx(path: Path) -> dict:
    from collections import Counter

    import onnx

    from .errors import ExportError
    from .export import read_metadata

    meta = read_metadata(path)  # refuses non-ONNX files with a clear message
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise ExportError(f"{path} is not a loadable ONNX model: {e}") from None

    def io(values):
        names = {i.name for i in model.graph.initializer}
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]}
                for v in values if v.name not in names]

    weights = Counter(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in model.graph.initializer)
    return {"file": str(path), "kind": "ONNX model", "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "inputs": io(model.graph.input), "outputs": io(model.graph.output), "nodes": len(model.graph.node),
            "ops": dict(Counter(n.op_type for n in model.graph.node).most_common()), "weights": dict(weights),
            "metadata": meta}


def cmd_bench(args) -> None:
    from .bench.benchmark import plot, run_bench

    for path in (args.output, args.plot):
        if path:
            _check_writable(path, args.force)
    results = run_bench(args.models, args.sizes, batches=args.batch, backends=args.backends, device=args.device,
                        threads=args.threads, min_seconds=args.seconds, max_seconds=args.max_seconds,
                        memory=not args.no_memory, startup=not args.no_startup, quiet=args.quiet)
    if args.output:
        with atomic_output(args.output, args.force) as tmp:
            tmp.write_text(json.dumps(results.to_dict(), indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
    if args.json:
        _print_json(results.to_dict())
    else:
        print(results.table())
        for path in (args.output, args.plot):
            if path:
                print(f"wrote {path}")


def _model_spec(spec: str) -> tuple[str, Path]:
    """``[NAME=]FILE`` -> (name, path). An existing file is a FILE even if its name holds ``=``; a NAME never does."""
    from .names import check_model_name, name_from_file

    path = Path(spec)
    if path.is_file() or "=" not in spec:
        return name_from_file(path), path
    name, _, file = spec.partition("=")
    return check_model_name(name), Path(file)


def _served_models(specs: Sequence[str], args) -> dict:
    """``[NAME=]FILE`` specs -> runners, names defaulting to the file name before its first dot."""
    from .runtime import load

    named = [_model_spec(spec) for spec in specs]
    models = {}
    for name, path in named:
        if name in models:
            raise InputError(f"two models are named {name!r}; name them: NAME=FILE")
        if not path.is_file():
            raise InputError(f"{path} does not exist")
        models[name] = None
    for name, path in named:
        models[name] = load(path, backend=args.backend, device=args.device, threads=args.threads)
        log.info("serving %s from %s on %s", name, path, models[name].backend)
    return models


def cmd_serve(args) -> None:
    from .serving.http_server import ServeOptions, listen, serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the server has no authentication; expose it only behind a proxy you trust", args.host)
    options = ServeOptions(max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
                           max_queue=args.max_queue, timeout_s=args.timeout, instances=args.instances,
                           max_request_bytes=_mib(args.max_request_mb, "--max-request-mb"), grpc_port=args.grpc_port,
                           host=args.host, graceful_seconds=args.graceful_seconds,
                           max_inflight_bytes=_mib(args.max_inflight_mb, "--max-inflight-mb"), max_connections=args.max_connections,
                           keep_alive_s=args.keep_alive_s)
    if args.grpc_port is not None:
        from .serving.grpc_server import check_grpc_port, require_grpc

        require_grpc()  # a missing grpc dependency is an error now, not after the models are loaded
        check_grpc_port(args.host, args.grpc_port)
    sock = listen(args.host, args.port, "HTTP port")  # a port in use is refused before the models load
    with sock:
        models = _served_models(args.models, args)
        grpc = f" and grpc://{args.host}:{args.grpc_port}" if args.grpc_port is not None else ""
        print(f"effattn serve: {', '.join(models)} at http://{args.host}:{args.port}/v2{grpc} (Ctrl-C to stop)",
              file=sys.stderr, flush=True)
        serve(models, args.port, options, log_level="warning" if args.quiet else "info", sock=sock)


def cmd_triton(args) -> None:
    from .serving.repository import TritonOptions, write_repository

    options = TritonOptions(max_batch_size=args.max_batch_size, preferred_batch_sizes=args.preferred_batch_sizes,
                            max_queue_delay_us=args.max_queue_delay_us, instances=args.instances, kind=args.kind,
                            trt_accelerator=args.trt_accelerator, fp16=args.fp16, warmup=not args.no_warmup)
    folder = write_repository(args.model_file, args.repository, args.name, options, force=args.force)
    print(f"wrote {folder}/config.pbtxt and {folder}/1/")
    print(f"run: docker run --gpus all --rm -p 8000:8000 -v {Path(args.repository).resolve()}:/models "
          "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")


# ------------------------------------------------------------------------------------------ parser
def _seed(text: str) -> int:
    seed = int(text)
    if seed < 0:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, got {seed}")
    return seed


def _mib(value: float, option: str) -> int:
    """``--...-mb`` as bytes; NaN, infinities and non-positive sizes are refused."""
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{option} must be a positive number of MiB, got {value}")
    return int(value * 2**20)


def _add_shape_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("shape profile (defaults: the model's own)")
    g.add_argument("--min", metavar="SHAPE", help="smallest input, e.g. 1x3x32x32")
    g.add_argument("--opt", metavar="SHAPE", help="the shape engines tune for, e.g. 1x3x128x128")
    g.add_argument("--max", metavar="SHAPE", help="largest input, e.g. 8x3x512x512")


def _rtx(args) -> dict:
    """``rtx=True`` for the TensorRT runners when --rtx was given (otherwise each plan's sidecar decides)."""
    return {"rtx": True} if getattr(args, "rtx", False) else {}


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("model", nargs=None if required else "?",
                   help="a zoo name (see 'effattn models') or your own package.module:factory")
    p.add_argument("--checkpoint", type=Path, help="state_dict to load (.safetensors, .pt, .pth)")
    p.add_argument("--pretrained", action="store_true", help="load the zoo's shipped trained weights")
    p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                   help="keyword argument for the model factory, e.g. --arg num_classes=19 (repeatable)")


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("auto", "onnxruntime", "openvino", "tensorrt"), default="auto",
                   help="auto (default): TensorRT if installed with a GPU, else ONNX Runtime on CUDA if present, "
                        "else on the CPU OpenVINO for INT8 files and ONNX Runtime for the rest; a .plan always "
                        "runs on TensorRT")
    p.add_argument("--device", choices=("cpu", "cuda"), help="force the device")
    p.add_argument("--rtx", action="store_true",
                   help="TensorRT for RTX (tensorrt_rtx) when building from ONNX; a .plan's sidecar says which it is")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="effattn", description="Export, verify and run networks with Efficient Attention "
        "(PyTorch -> ONNX -> ONNX Runtime / TensorRT), every step checked against eager PyTorch.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"effattn {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=fn)
        return p

    p = add("models", cmd_models, "list the model zoo",
            "List registered models with their task, size, default shape profile and whether trained weights ship.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'ea_*'")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("export", cmd_export, "PyTorch -> checked, simplified, validated ONNX",
            "Export a model to ONNX with dynamic batch/height/width, run onnx.checker and shape inference, "
            "simplify with onnxslim, record metadata (model, profile, checkpoint sha256), then verify ONNX "
            "Runtime against eager PyTorch at the min, opt and max shapes. The file is written only if it "
            "passes.\n\nexample:\n  effattn export ea_segnet_tiny --pretrained -o seg.onnx --max 8x3x512x512")
    _add_model_args(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    _add_shape_args(p)
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                   help="torch.export-based (default) or the legacy TorchScript exporter as a fallback")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--no-validate", action="store_true", help="skip the parity check (not recommended)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("run", cmd_run, "run an ONNX file on a backend",
            "Run an exported model once and summarise its outputs. Inputs come from a .npy/.npz file or are "
            "random at --shape (default: the profile's opt shape); inputs are checked against the profile "
            "first.\n\nexample:\n  effattn run seg.onnx --shape 2x3x128x96 --output out.npz")
    p.add_argument("onnx", type=Path, help="an .onnx file")
    p.add_argument("--input", type=Path, help=".npy (one input) or .npz (by input name)")
    p.add_argument("--shape", help="random input of this shape, e.g. 1x3x256x256")
    p.add_argument("--seed", type=_seed, default=0, help="seed for random inputs")
    p.add_argument("--output", type=Path, help="save outputs to this .npz")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    _add_backend_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("compare", cmd_compare, "parity of an ONNX file against eager PyTorch",
            "Compare a backend's outputs with eager PyTorch FP32 on fresh random inputs at the profile's "
            "min/opt/max shapes (and task images for the trained model): max abs error, relative L2, cosine, "
            "argmax agreement for logits, and the attention branch of residual blocks. The reference model "
            "is rebuilt from the file's metadata unless --model is given: a zoo model, or a package.module:factory "
            "only if you name the same factory (or pass --trust-metadata), since a file never chooses code to run. "
            "Exit code 1 if any check fails.")
    p.add_argument("onnx", type=Path, help="an .onnx file written by 'effattn export'")
    _add_model_args(p, required=False)
    p.set_defaults(model=None)
    p.add_argument("--trust-metadata", action="store_true", help="import and call a package.module:factory that "
                   "the file's metadata names (by default only zoo models, or the factory you name yourself)")
    p.add_argument("--seed", type=_seed, default=None, help="seed for inputs (default: fresh each run)")
    _add_backend_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("demo", cmd_demo, "the whole path on one model, with parity and latency tables",
            "Take a zoo model (the trained tiny segmenter by default), export it, run it on the best backend "
            "available, and print a parity table against eager PyTorch and a latency table (eager vs the "
            "backend, measured in the same run).")
    p.add_argument("--model", default="ea_segnet_tiny", help="zoo model (default: ea_segnet_tiny, trained)")
    p.add_argument("--out", type=Path, default=Path("effattn-demo"), help="folder for the files (default ./effattn-demo)")
    p.add_argument("--force", action="store_true", help="overwrite files from an earlier demo")
    p.add_argument("--device", choices=("cpu", "cuda"), help="force the device")
    p.add_argument("--seed", type=_seed, default=None, help="seed for inputs (default: fresh each run)")
    p.add_argument("--seconds", type=float, default=1.0, help="timing per backend (default 1 s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("quantize", cmd_quantize, "FP32 ONNX -> INT8 QDQ ONNX (TensorRT, ONNX Runtime, OpenVINO)",
            "Write an explicitly quantized copy of an FP32 export: signed symmetric INT8 (zero point 0) activations "
            "and per-channel weights on Conv/Gemm inputs, float biases, the attention softmaxes and context "
            "products kept in float - the form TensorRT's explicit quantization builds, and that ONNX Runtime "
            "and OpenVINO run. Calibration inputs: --calibration (a folder of .npy/.npz files or one .npz, batch "
            "axis first), else the zoo model's own sample images, else random inputs (with a warning).\n\n"
            "examples:\n  effattn quantize seg.onnx -o seg.int8.onnx\n"
            "  effattn quantize resnet.onnx -o resnet.int8.onnx --calibration images.npz")
    p.add_argument("onnx", type=Path, help="an FP32 .onnx file written by 'effattn export'")
    p.add_argument("-o", "--output", type=Path, required=True, help="the INT8 .onnx file to write")
    p.add_argument("--calibration", type=Path, help="folder of .npy/.npz files or one .npz (keys: input names)")
    p.add_argument("--samples", type=int, default=32, help="calibration images without --calibration (32)")
    p.add_argument("--force", action="store_true", help="overwrite the output")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("build", cmd_build, "ONNX -> TensorRT engine (or ONNX Runtime's optimised graph)",
            "Build an engine from an exported ONNX file. TensorRT: FP16 graphs are built strongly typed (the "
            "only way on TensorRT 11, which has no FP16 builder flag); an FP32 file is converted to FP16 first. "
            "Engines go through the engine cache (keyed by the ONNX bytes, precision, profiles, builder options, "
            "TensorRT version and GPU), with a shared timing cache beside it. ONNX Runtime: save the optimised "
            "graph (fused, constant-folded) to inspect or ship. On the zoo models it did not shorten session "
            "start-up (measured: 40 ms either way for ea_resnet, where weight pre-packing dominates).\n\nexamples:\n  effattn build seg.onnx -o seg.plan\n"
            "  effattn build seg.onnx -o seg.ort.onnx --backend onnxruntime --precision fp32")
    p.add_argument("onnx", type=Path, help="an .onnx file written by 'effattn export'")
    p.add_argument("-o", "--output", type=Path, required=True, help="the engine (.plan) or optimised .onnx to write")
    p.add_argument("--backend", choices=("tensorrt", "onnxruntime"), default="tensorrt")
    p.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    p.add_argument("--fp16-flag", action="store_true", help="TensorRT 10 only: weakly typed build with the FP16 flag")
    p.add_argument("--workspace", type=float, metavar="GIB", help="TensorRT workspace limit in GiB")
    p.add_argument("--opt-level", type=int, default=3, choices=range(6), help="builder optimisation level 0-5 (3)")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "effattn" / "engines")
    p.add_argument("--rtx", action="store_true", help="use TensorRT for RTX (tensorrt_rtx)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="ONNX Runtime: device the graph is optimised for")
    p.add_argument("--force", action="store_true", help="overwrite the output")

    p = add("inspect", cmd_inspect, "what an ONNX file or engine holds",
            "Show inputs/outputs (with dynamic axes), opset, node and op counts, weight dtypes and effattn "
            "metadata of an ONNX file; or the build record (TensorRT version, GPU, profiles, I/O, layer "
            "precisions) of an engine.")
    p.add_argument("file", type=Path, help=".onnx, .plan or .engine")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("bench", cmd_bench, "latency, throughput and memory of every backend vs eager PyTorch",
            "Export each model once with a profile spanning the sizes and batches, then time eager PyTorch FP32 "
            "(the baseline, always) and each backend at every batch and size: median/p90/p99 after warm-up, "
            "throughput, peak memory (host RSS; device memory on GPU), the ratio to eager measured in the same "
            "run, and start-up time cold and with caches warm. With the EA block and the dot-product block in "
            "one run it also fits growth exponents (time and memory vs positions) and finds the crossover; "
            "dot-product sizes that cannot fit in memory are reported, not run.\n\n"
            "backends: torch-fp16 and tensorrt[-fp16] (cuda), torch-compile, onnxruntime[-fp16]\n\nexamples:\n"
            "  effattn bench --models efficient_attention ea_segnet_tiny --sizes 64 128 256 -o cpu.json --plot cpu.png\n"
            "  effattn bench --models efficient_attention dot_product_attention --sizes 32 64 128 256 512 --max-seconds 600\n"
            "  effattn bench --device cuda --batch 8 --sizes 128 --backends torch-fp16 tensorrt-fp16")
    p.add_argument("--models", nargs="+", default=["efficient_attention", "ea_resnet_tiny", "ea_segnet_tiny"])
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 256], help="square input sizes (H = W)")
    p.add_argument("--batch", nargs="+", type=int, default=[1], help="batch sizes (default 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--backends", nargs="+", default=None, metavar="BACKEND",
                   help="besides eager torch (default: onnxruntime on cpu; on cuda torch-fp16, torch-compile, "
                   "onnxruntime, onnxruntime-fp16, tensorrt-fp16)")
    p.add_argument("--threads", type=int, default=None, help="threads for torch and ONNX Runtime (default: all cores)")
    p.add_argument("--seconds", type=float, default=1.0, help="minimum timing per row (default 1)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop measuring after this long; the rest are "
                   "reported as skipped")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--no-startup", action="store_true", help="skip cold/warm start-up timing")
    p.add_argument("-o", "--output", type=Path, help="write results as JSON here")
    p.add_argument("--plot", type=Path, help="write a PNG: latency and memory vs positions, log-log")
    p.add_argument("--force", action="store_true", help="overwrite --output/--plot if they exist")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = add("serve", cmd_serve, "KServe v2 HTTP server with dynamic batching (tritonclient works)",
            "Serve one or more models over the KServe v2 / Open Inference Protocol (the one Triton speaks, "
            "binary tensor data extension included), so tritonclient.http code runs unchanged here and on "
            "Triton; --grpc-port adds the gRPC flavour for tritonclient.grpc. Requests arriving within --max-queue-delay-ms are stacked into one engine call when their "
            "shapes allow (never mixing shapes); a full queue answers 503 at once. Bad requests get 400/404/413/"
            "504 with a message and the server keeps serving. Prometheus metrics at /metrics. Ctrl-C or SIGTERM "
            "finishes in-flight requests, then stops.\n\nexamples:\n  effattn serve seg.onnx\n"
            "  effattn serve seg=seg.onnx block=block.onnx --port 8001 --max-batch-size 16\n\n"
            "client:\n  import numpy as np, tritonclient.http as http\n"
            "  c = http.InferenceServerClient('127.0.0.1:8000')\n"
            "  x = http.InferInput('input', [1, 3, 64, 64], 'FP32'); x.set_data_from_numpy(image)\n"
            "  logits = c.infer('seg', [x]).as_numpy('logits')")
    p.add_argument("models", nargs="+", metavar="[NAME=]FILE", help=".onnx or .plan files; NAME defaults to the file name")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, help="also serve KServe v2 gRPC here (Triton uses 8001; needs "
                   "tritonclient[grpc])")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto")
    p.add_argument("--device", choices=("cpu", "cuda"), help="force the ONNX Runtime device")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads per model")
    p.add_argument("--max-batch-size", type=int, default=8, help="items per engine call (capped by the profile)")
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0, help="how long a request waits for others (2)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting per model before 503 (64)")
    p.add_argument("--instances", type=int, default=1, help="engine calls in flight per model (1)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait before 504 (30)")
    p.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body before 413 (64)")
    p.add_argument("--max-inflight-mb", type=float, default=256.0,
                   help="request bytes held at once, HTTP and gRPC together, before 503 (256)")
    p.add_argument("--max-connections", type=int, default=512,
                   help="concurrent HTTP connections and gRPC calls before 503 (512)")
    p.add_argument("--keep-alive-s", type=float, default=5.0,
                   help="idle connections, and request heads not complete, are closed after this long (5)")
    p.add_argument("--graceful-seconds", type=float, default=30.0, help="shutdown waits this long for in-flight requests")

    p = add("triton", cmd_triton, "write a Triton Inference Server model repository",
            "Write REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx (onnxruntime_onnx) or model.plan "
            "(tensorrt_plan). Dims come from the file's shape profile (-1 for dynamic axes; the batch axis "
            "becomes max_batch_size), with dynamic batching, instance groups and a warm-up at the opt shape. "
            "A plan runs only on the GPU model and TensorRT version that built it: build plans where Triton "
            "runs, or ship the ONNX file with --trt-accelerator so Triton builds the engine itself.\n\n"
            "examples:\n  effattn triton seg.onnx --repository models\n"
            "  effattn triton seg.fp16.onnx --repository models --name seg --trt-accelerator --fp16\n"
            "  effattn triton seg.plan --repository models --preferred-batch-sizes 4 8")
    p.add_argument("model_file", type=Path, help=".onnx file from 'effattn export' or .plan from 'effattn build'")
    p.add_argument("--repository", type=Path, required=True, help="the model repository folder")
    p.add_argument("--name", help="model name in the repository (default: the file name)")
    p.add_argument("--max-batch-size", type=int, default=8, help="0 turns batching off (default 8, capped by the profile)")
    p.add_argument("--preferred-batch-sizes", type=int, nargs="*", default=[])
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    p.add_argument("--instances", type=int, default=1, help="instance_group count")
    p.add_argument("--kind", choices=("KIND_GPU", "KIND_CPU"), default="KIND_GPU")
    p.add_argument("--trt-accelerator", action="store_true", help="ONNX: run through Triton's TensorRT accelerator")
    p.add_argument("--fp16", action="store_true", help="with --trt-accelerator: precision_mode FP16")
    p.add_argument("--no-warmup", action="store_true", help="no model_warmup section")
    p.add_argument("--force", action="store_true", help="replace REPO/NAME if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="effattn: %(message)s", stream=sys.stderr)
    logging.getLogger("effattn").setLevel(level)
    try:
        args.func(args)
    except (EffattnError, OSError) as e:  # OSError: a path that cannot be made or written (a file in the way, ...)
        if args.debug:
            raise
        message = e if isinstance(e, EffattnError) else f"{e.strerror or first_line(e)}: {e.filename or ''}"
        print(f"effattn {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("effattn: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
