"""``effattn bench``: every backend against eager PyTorch FP32, measured side by side in one run.

For each model the file is exported once with a profile spanning every size and batch; then at each
(batch, size) eager FP32 (the baseline every row's ratio is taken against) and each backend are
timed *interleaved*, round by round, so a noisy shared machine slows them alike: median/p90/p99
after warm-up, throughput, and peak memory measured afterwards in a fresh process (so the memory
probe never disturbs the timing). Start-up (runner creation + first answer) is
timed cold and with caches warm. Dot-product attention is not run where its n x n maps cannot fit:
the row says so instead of the process dying. The whole run respects ``max_seconds``.

The scaling study reads the rows: growth exponents of time and memory in positions (log-log fit),
and the crossover size from which EfficientAttention beats dot-product attention.
"""

from __future__ import annotations

import copy
import datetime as _dt
import importlib
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BackendError, InputError, first_line
from ..shapes import InputProfile, ShapeProfile
from .memory import PeakMemory, available_bytes, probe
from ..runtime.parity import random_inputs
from .roofline import floor_ms, measure_peaks, model_cost, precision_of_row
from .timing import LatencyStats, clock_for, host_copy_seconds, measure_interleaved, timed_call

SCHEMA = "effattn.bench/2"
EAGER = "torch"
#: name -> (devices it runs on, what it is)
BACKENDS = {
    "torch": (("cpu", "cuda"), "eager PyTorch FP32: the baseline, always measured"),
    "torch-fp16": (("cuda",), "eager PyTorch in FP16"),
    "torch-compile": (("cpu", "cuda"), "torch.compile (inductor), FP32"),
    "onnxruntime": (("cpu", "cuda"), "ONNX Runtime, the FP32 graph"),
    "onnxruntime-fp16": (("cpu", "cuda"), "ONNX Runtime, the FP16 graph (FP32 I/O)"),
    "tensorrt": (("cuda",), "TensorRT engine of the FP32 graph"),
    "tensorrt-fp16": (("cuda",), "TensorRT engine of the FP16 graph (strongly typed)"),
    "tensorrt-int8": (("cuda",), "TensorRT engine of the INT8 QDQ graph of effattn quantize (explicit quantization)"),
    "torch-bf16": (("cpu",), "eager PyTorch in BF16 (weights and activations)"),
    "onnxruntime-int8": (("cpu",), "ONNX Runtime, the INT8 QDQ graph of effattn quantize"),
    "openvino": (("cpu",), "OpenVINO's default on the FP32 graph (BF16 where the CPU has it)"),
    "openvino-fp32": (("cpu",), "OpenVINO on the FP32 graph, FP32 inference precision"),
    "openvino-int8": (("cpu",), "OpenVINO, the INT8 QDQ graph of effattn quantize"),
}
DEFAULT_BACKENDS = {"cpu": ("onnxruntime",),
                    "cuda": ("torch-fp16", "torch-compile", "onnxruntime", "onnxruntime-fp16", "tensorrt-fp16")}


@dataclass
class BenchRow:
    model: str
    backend: str
    device: str
    shape: list[int]
    stats: LatencyStats | None = None
    speedup_vs_eager: float | None = None  # eager FP32 median / this median, same run
    peak_host_mib: float | None = None
    peak_device_mib: float | None = None
    status: str = "ok"  # otherwise why there is no measurement ("out of memory: ...", "skipped: ...")
    floor_ms: float | None = None  # attention blocks: time to move their input and output at measured bandwidth
    host_copy_ms: float | None = None  # CUDA: copying the feed in and the outputs out, not in the timed call
    roofline_ms: float | None = None  # max(bytes moved / bandwidth, FLOPs / matmul peak at the row's precision)

    @property
    def positions(self) -> int:
        return math.prod(self.shape[2:])

    @property
    def throughput(self) -> float | None:
        """Items (images or sequences) per second at the median latency."""
        return self.shape[0] / (self.stats.median_ms / 1e3) if self.stats else None

    def to_dict(self) -> dict:
        def r(x, digits=4):
            return None if x is None else round(x, digits)

        return {"model": self.model, "backend": self.backend, "device": self.device, "shape": self.shape,
                "status": self.status, "speedup_vs_eager": r(self.speedup_vs_eager),
                "throughput_per_s": r(self.throughput, 2), "peak_host_mib": r(self.peak_host_mib, 2),
                "peak_device_mib": r(self.peak_device_mib, 2), "bandwidth_floor_ms": r(self.floor_ms),
                "times_bandwidth_floor": r(self.stats.median_ms / self.floor_ms, 2) if self.stats and self.floor_ms else None,
                "host_copy_ms": r(self.host_copy_ms),
                "roofline_floor_ms": r(self.roofline_ms),
                "times_roofline_floor": r(self.stats.median_ms / self.roofline_ms, 2) if self.stats and self.roofline_ms else None,
                **(self.stats.to_dict() if self.stats else {})}


@dataclass
class StartRow:
    """Runner creation plus the first answer: cold (the first of this file in the process; a TensorRT build)
    and warm (again: files in the page cache, the engine from the engine cache)."""

    model: str
    backend: str
    cold_ms: float
    warm_ms: float | None
    warm_means: str

    def to_dict(self) -> dict:
        return {"model": self.model, "backend": self.backend, "cold_ms": round(self.cold_ms, 2),
                "warm_ms": None if self.warm_ms is None else round(self.warm_ms, 2), "warm_means": self.warm_means}


def growth_exponent(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) on log(x): 1 is linear growth, 2 quadratic."""
    points = [(x, y) for x, y in points if x > 0 and y and y > 0]
    if len(points) < 2:
        return None
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else None


@dataclass
class BenchResults:
    rows: list[BenchRow] = field(default_factory=list)
    startup: list[StartRow] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    fit_from: int = 64  # the scaling fit uses inputs from fit_from x fit_from positions up

    def series(self, model: str, backend: str, what: str = "time", batch: int | None = None) -> list[tuple[int, float]]:
        """(positions, median ms or peak MiB) of the measured rows of one model on one backend."""
        out = []
        for r in self.rows:
            if r.model == model and r.backend == backend and r.stats and (batch is None or r.shape[0] == batch):
                value = r.stats.median_ms if what == "time" else (r.peak_device_mib or r.peak_host_mib)
                out.append((r.positions, value))
        return sorted(out)

    def scaling(self) -> list[dict]:
        """Growth exponents in positions, fitted from ``fit_from``² positions up, per model and backend."""
        out = []
        for model, backend in dict.fromkeys((r.model, r.backend) for r in self.rows):
            start = self.fit_from ** 2
            time_pts = [p for p in self.series(model, backend, "time") if p[0] >= start]
            mem_pts = [p for p in self.series(model, backend, "memory") if p[0] >= start]
            sizes = sorted({math.isqrt(p) for p, _ in time_pts})
            out.append({"model": model, "backend": backend, "fit_sizes": sizes,
                        "time_exponent": _round(growth_exponent(time_pts)),
                        "memory_exponent": _round(growth_exponent(mem_pts))})
        return [s for s in out if s["time_exponent"] is not None]

    def crossover(self, fast: str = "efficient_attention", slow: str = "dot_product_attention") -> list[dict]:
        """Per backend: the smallest size from which ``fast`` is faster than ``slow`` at every measured size,
        and the largest size ``slow`` could run at all."""
        out = []
        for backend in dict.fromkeys(r.backend for r in self.rows):
            a, b = dict(self.series(fast, backend)), dict(self.series(slow, backend))
            common = sorted(set(a) & set(b))
            if not common:
                continue
            wins = [n for n in common if a[n] < b[n]]
            since = next((n for n in common if all(a[m] < b[m] for m in common if m >= n)), None)
            dp_rows = [r for r in self.rows if r.model == slow and r.backend == backend]
            ran = [r.positions for r in dp_rows if r.stats]
            failed = [r for r in dp_rows if not r.stats]
            out.append({"backend": backend, "fast": fast, "slow": slow,
                        "faster_from_size": math.isqrt(since) if since else None,
                        "faster_at_sizes": [math.isqrt(n) for n in wins],
                        "slow_largest_size": math.isqrt(max(ran)) if ran else None,
                        "slow_stopped": failed[0].status if failed else None})
        return out

    @classmethod
    def from_dict(cls, data: dict) -> BenchResults:
        """Results read back from their JSON (to re-plot or re-analyse without re-measuring)."""
        if data.get("schema") != SCHEMA:
            raise InputError(f"not an {SCHEMA} results file (schema {data.get('schema')!r})")
        stat_fields = LatencyStats.__dataclass_fields__
        rows = [BenchRow(r["model"], r["backend"], r["device"], r["shape"],
                         LatencyStats(**{k: r[k] for k in stat_fields}) if r["status"] == "ok" else None,
                         r["speedup_vs_eager"], r["peak_host_mib"], r["peak_device_mib"], r["status"],
                         r["bandwidth_floor_ms"], r.get("host_copy_ms"), r.get("roofline_floor_ms"))
                for r in data["rows"]]
        startup = [StartRow(s["model"], s["backend"], s["cold_ms"], s["warm_ms"], s["warm_means"])
                   for s in data["startup"]]
        return cls(rows, startup, data["environment"], data["scaling"]["fit_from_size"])

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "environment": self.environment, "rows": [r.to_dict() for r in self.rows],
                "startup": [s.to_dict() for s in self.startup],
                "scaling": {"fit_from_size": self.fit_from, "exponents": self.scaling(), "crossover": self.crossover()}}

    def table(self) -> str:
        head = (f"{'model':<22}{'shape':<15}{'backend':<18}{'median ms':>10}{'p90':>9}{'p99':>9}{'items/s':>10}"
                f"{'peak MiB':>10}{'vs eager':>9}{'x floor':>8}{'copy ms':>9}{'x roof':>8}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            shape = "x".join(map(str, r.shape))
            if r.stats is None:
                lines.append(f"{r.model:<22}{shape:<15}{r.backend:<18}  {r.status}")
                continue
            peak = r.peak_device_mib if r.peak_device_mib is not None else r.peak_host_mib
            lines.append(f"{r.model:<22}{shape:<15}{r.backend:<18}{r.stats.median_ms:>10.3f}{r.stats.p90_ms:>9.3f}"
                         f"{r.stats.p99_ms:>9.3f}{r.throughput:>10.1f}{_fmt(peak, '>10.1f')}"
                         f"{_fmt(r.speedup_vs_eager, '>8.2f')}x"
                         f"{_fmt(r.stats.median_ms / r.floor_ms if r.floor_ms else None, '>8.1f')}"
                         f"{_fmt(r.host_copy_ms, '>9.3f')}"
                         f"{_fmt(r.stats.median_ms / r.roofline_ms if r.roofline_ms else None, '>8.1f')}")
        if self.startup:
            lines += ["", f"{'start-up (create + first answer)':<42}{'cold ms':>9}{'warm ms':>11}   warm means"]
            lines += [f"  {s.model:<22}{s.backend:<18}{s.cold_ms:>9.1f}{_fmt(s.warm_ms, '>11.1f')}   {s.warm_means}"
                      for s in self.startup]
        scaling = self.scaling()
        if scaling:
            lines += ["", f"growth in positions (log-log fit from {self.fit_from}x{self.fit_from}): time, memory"]
            lines += [f"  {s['model']:<24}{s['backend']:<18}{_fmt(s['time_exponent'], '>6.2f')}"
                      f"{_fmt(s['memory_exponent'], '>8.2f')}" for s in scaling]
        for c in self.crossover():
            lines.append(f"  crossover on {c['backend']}: {c['fast']} faster from {c['faster_from_size']} px up; "
                         f"{c['slow']} ran up to {c['slow_largest_size']} px"
                         + (f" ({c['slow_stopped']})" if c["slow_stopped"] else ""))
        env = self.environment
        if any(r.host_copy_ms is not None for r in self.rows):
            lines.append("\nGPU rows: tensors already on the device, timed between CUDA events; 'copy ms' is the "
                         "host->device feed and device->host outputs, not in the median")
        lines.append(f"\nx floor: median / (bytes the block must read and write / copy bandwidth "
                     f"{env.get('copy_bandwidth_gb_s')} GB/s measured in this run)")
        if env.get("matmul_peak_gflop_s"):
            lines.append("x roof: median / max(I/O + weight bytes / bandwidth, FLOPs / matmul peak at the row's "
                         f"precision: {env['matmul_peak_gflop_s']} GFLOP/s measured in this run; below 1 = kernels "
                         "faster than torch's matmul)")
        lines.append(f"{env.get('cpu', '?')}, {env.get('threads')} threads; {env.get('gpu') or 'no GPU'}; "
                     f"torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}")
        return "\n".join(lines)


def precision_of(backend: str) -> str:
    """The graph a bench backend runs: ``fp16``/``int8`` files for ``*-fp16``/``*-int8``, else the FP32 one."""
    suffix = backend.rsplit("-", 1)[-1]
    return suffix if suffix in ("fp16", "int8") else "fp32"


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                                       "amx_int8", "amx_bf16")) -> list[str]:
    """The CPU's SIMD flags that decide low-precision speed (from /proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            have = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in wanted if flag in have]


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _fmt(x: float | None, spec: str) -> str:
    return format("-", spec.rsplit(".", 1)[0]) if x is None else format(x, spec)


def environment(threads: int, device: str = "cpu") -> dict:
    import torch

    from .. import __version__

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else None
    from importlib import metadata as dists

    def version(*names: str) -> str | None:
        for name in names:
            try:
                return dists.version(name)
            except dists.PackageNotFoundError:
                pass
        return None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu, "cores": os.cpu_count(), "threads": threads, "device": device, "gpu": gpu,
        "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": _imported_version("onnxruntime") or version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": version("tensorrt", "tensorrt-cu13", "tensorrt-cu12"), "openvino": version("openvino"),
        "effattn": __version__, "cpu_flags": cpu_flags(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32) if gpu else None,
        "command": "effattn " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("effattn") else None,
    }


def _imported_version(module: str) -> str | None:
    """The version of the module Python imports (a machine may hold two distributions of one module, as
    onnxruntime and onnxruntime-gpu do, and only the imported one was measured)."""
    try:
        return str(importlib.import_module(module).__version__)
    except ImportError:
        return None


def measure_bandwidth(device: str = "cpu", mib: int = 256) -> float:
    """Copy bandwidth in GB/s (bytes read + bytes written per second, best of 5 copies of ``mib`` MiB):
    the floor below which no kernel that must read its input and write its output can go. On the
    CPU it is one thread's ``memcpy``-like copy (numpy), on CUDA a device-to-device tensor copy."""
    n = mib * 2**20 // 4
    best = math.inf
    if device == "cuda":
        import torch

        src, dst = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
        for _ in range(6):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            dst.copy_(src)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    else:
        import numpy as np

        src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
        for _ in range(6):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best / 1e9


def bench_profile(base: InputProfile, sizes: Sequence[int], batches: Sequence[int] | int) -> ShapeProfile:
    """A profile over ``sizes`` and ``batches`` (square H = W for images, length = size**2 for sequences)."""
    batches = [batches] if isinstance(batches, int) else sorted(batches)

    def shape(batch: int, size: int) -> tuple[int, ...]:
        spatial = (size, size) if base.rank == 4 else (size * size,)
        return (batch, base.opt[1], *spatial)

    ordered = sorted(sizes)
    return ShapeProfile((InputProfile(base.name, shape(batches[0], ordered[0]),
                                      shape(batches[len(batches) // 2], ordered[len(ordered) // 2]),
                                      shape(batches[-1], ordered[-1])),))


def attention_map_bytes(model, shape: Sequence[int]) -> int:
    """Bytes of the n x n attention maps a dot-product block needs at ``shape`` (0 for other models):
    scores and their softmax, float32, per head, for the whole batch."""
    from ..models.attention import DotProductAttention, DotProductAttention1d

    blocks = [m for m in model.modules() if isinstance(m, (DotProductAttention, DotProductAttention1d))]
    if not blocks or model is not blocks[0]:
        return 0
    n = math.prod(shape[2:])
    return 2 * 4 * shape[0] * blocks[0].head_count * n * n


def _is_oom(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return isinstance(error, MemoryError) or any(w in text for w in ("out of memory", "failed to allocate",
                                                                    "can't allocate", "bad_alloc"))


class _Backends:
    """Makes each bench backend's runner for one model; exported/converted files are made once, lazily."""

    def __init__(self, name: str, source, profile: ShapeProfile, folder: Path, device: str, threads: int,
                 output_names: list[str]) -> None:
        self.name, self.source, self.profile, self.folder = name, source, profile, folder
        self.device, self.threads, self.output_names = device, threads, output_names
        self._files: dict[str, Path] = {}

    def onnx(self, precision: str) -> Path:
        from ..export import export_onnx, quantize, to_fp16

        if "fp32" not in self._files:
            self._files["fp32"] = export_onnx(self.source, self.profile, self.folder / f"{self.name}.onnx",
                                              validate=False, force=True).path
        if precision == "fp16" and "fp16" not in self._files:
            self._files["fp16"] = to_fp16(self._files["fp32"], self.folder / f"{self.name}.fp16.onnx", force=True)
        if precision == "int8" and "int8" not in self._files:
            self._files["int8"] = quantize(self._files["fp32"], self.folder / f"{self.name}.int8.onnx", force=True).path
        return self._files[precision]

    def make(self, backend: str):
        """The runner for ``backend``; TensorRT engines go through an engine cache in the bench folder, so
        a second call loads the plan the first one built."""
        import torch

        from ..runtime.torch_runner import TorchRunner

        if backend.startswith("torch"):
            dtype = {"torch-fp16": torch.float16, "torch-bf16": torch.bfloat16}.get(backend, torch.float32)
            model = self.source.model if dtype == torch.float32 else copy.deepcopy(self.source.model)  # .to() is in place
            return TorchRunner(model, self.profile, self.output_names, device=self.device, dtype=dtype,
                               compile=backend == "torch-compile")
        precision = precision_of(backend)
        path = self.onnx(precision)
        if backend.startswith("openvino"):
            from ..runtime.openvino_runner import OpenVINORunner

            return OpenVINORunner(path, precision="fp32" if backend == "openvino-fp32" else None, threads=self.threads)
        if backend.startswith("onnxruntime"):
            from ..runtime.onnxruntime_runner import OnnxRuntimeRunner

            return OnnxRuntimeRunner(path, device=self.device, threads=self.threads)
        from ..engines.tensorrt_build import build_engine
        from ..runtime.tensorrt_runner import TensorRTRunner

        build = build_engine(path, precision=precision, cache_dir=self.folder / "engines", progress=False)
        return TensorRTRunner(build.plan)

    def peak_memory(self, backend: str, runner, feed: dict) -> PeakMemory:
        """Peak memory of one run: in a fresh process where one can be made cheaply (see
        :func:`.memory.probe`), else (torch.compile, TensorRT) in this one."""
        shape = next(iter(feed.values())).shape
        if backend.startswith("onnxruntime"):
            path = self.onnx(precision_of(backend))
            return probe(backend, str(path), shape, self.device, self.threads)
        if backend in ("torch", "torch-fp16"):
            return probe(backend, self.name, shape, self.device, self.threads, self.source.checkpoint is not None)
        with PeakMemory(cuda=self.device == "cuda") as peak:
            runner.infer(feed)
        return peak

    WARM_MEANS = {"onnxruntime": "second session of the same file (the CPU/CUDA providers have no compile cache)",
                  "tensorrt": "engine from the engine cache (cold: built)", "torch": "n/a",
                  "openvino": "second compile of the same file (no OpenVINO model cache set)"}


def run_bench(models: Sequence[str], sizes: Sequence[int], batches: Sequence[int] = (1,),
              backends: Sequence[str] | None = None, device: str = "cpu", threads: int | None = None,
              min_seconds: float = 1.0, max_seconds: float | None = None, memory: bool = True,
              startup: bool = True, quiet: bool = False) -> BenchResults:
    """Time ``models`` at ``sizes`` x ``batches`` on eager FP32 and each of ``backends`` (default: the
    device's set, see ``DEFAULT_BACKENDS``). Rows that would exceed ``max_seconds`` in total are
    recorded as skipped, not run."""
    import torch
    from tqdm.auto import tqdm

    from ..engines.onnxruntime_session import default_threads
    from ..export.exporter import default_output_names
    from ..models import get_entry, load_model

    if not sizes or min(sizes) <= 0 or not batches or min(batches) <= 0:
        raise InputError(f"sizes {list(sizes)} and batches {list(batches)} must be positive")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("--device cuda asked for, but torch sees no CUDA device")
    backends = [b for b in (DEFAULT_BACKENDS[device] if backends is None else backends) if b != EAGER]
    for b in backends:
        if b not in BACKENDS:
            raise BackendError(f"unknown bench backend {b!r}; choose from {', '.join(BACKENDS)}")
        if device not in BACKENDS[b][0]:
            raise BackendError(f"backend {b!r} runs on {' or '.join(BACKENDS[b][0])}, not {device}")
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    if device == "cuda":
        from ..runtime.torch_runner import pin_fp32

        pin_fp32()
    results = BenchResults(environment=environment(threads, device))
    bandwidth = measure_bandwidth(device)
    results.environment["copy_bandwidth_gb_s"] = round(bandwidth, 1)
    peaks = measure_peaks() if device == "cpu" else {}
    results.environment["matmul_peak_gflop_s"] = peaks
    all_backends = [EAGER, *backends]
    deadline = time.monotonic() + max_seconds if max_seconds is not None else math.inf
    bar = tqdm(total=len(models) * len(sizes) * len(batches) * len(all_backends), desc="bench", disable=quiet,
               file=sys.stderr, leave=False)
    with tempfile.TemporaryDirectory(prefix="effattn-bench-") as tmp, bar:
        for name in models:
            entry = get_entry(name)
            source = load_model(name, pretrained=entry.pretrained is not None)
            profile = bench_profile(entry.profile.inputs[0], sizes, batches)
            made = _Backends(name, source, profile, Path(tmp), device, threads, default_output_names(source.model, entry.task))
            runners: dict[str, object] = {}
            for backend in all_backends:
                if time.monotonic() > deadline:
                    break
                bar.set_postfix_str(f"{name}: start {backend}")
                try:
                    runners[backend] = _start(made, backend, results, startup and backend != EAGER)
                except Exception as e:  # a backend that cannot start is a row, not the end of the run
                    runners[backend] = f"error: {first_line(e)}"
            for batch in batches:
                for size in sizes:
                    shape = bench_profile(profile.inputs[0], [size], batch).inputs[0].opt
                    feed = random_inputs(ShapeProfile((InputProfile(profile.inputs[0].name, shape, shape, shape),)),
                                         "opt", seed=0)
                    need = attention_map_bytes(source.model, shape)
                    flops, out_elements = model_cost(source.model, shape) if peaks else (0.0, 0)
                    params = sum(p.numel() for p in source.model.parameters())
                    rows, timed = {}, {}
                    for backend in all_backends:
                        row = rows[backend] = BenchRow(name, backend, device, list(shape))
                        if entry.task == "block":  # FP32 input read once, FP32 output written once
                            row.floor_ms = 2 * math.prod(shape) * 4 / (bandwidth * 1e9) * 1e3
                        runner = runners.get(backend)
                        if peaks and not isinstance(runner, (str, type(None))):
                            row.roofline_ms = floor_ms(flops, 4 * (math.prod(shape) + out_elements), params,
                                                       precision_of_row(backend, runner), bandwidth, peaks)
                        if time.monotonic() > deadline:
                            row.status = "skipped: --max-seconds reached"
                        elif isinstance(runner, str) or runner is None:
                            row.status = runner or "skipped: --max-seconds reached"
                        elif need and need > 0.5 * (available_bytes() or math.inf):
                            row.status = (f"out of memory (not run): its n x n attention maps need {_size(need)}, "
                                          f"{_size(available_bytes() or 0)} available")
                        else:
                            timed[backend] = runner
                    if timed:
                        bar.set_postfix_str(f"{name} {'x'.join(map(str, shape))}")
                        _measure_rows([rows[b] for b in timed], timed, feed, min_seconds, deadline,
                                      made if memory else None, device)
                    eager = rows[EAGER].stats
                    for row in rows.values():
                        if row.stats and eager:
                            row.speedup_vs_eager = eager.median_ms / row.stats.median_ms
                        results.rows.append(row)
                        bar.update(1)
            for runner in runners.values():
                if not isinstance(runner, str):
                    runner.close()
    results.environment["load_average_end"] = [round(x, 2) for x in os.getloadavg()]  # others sharing the cores
    return results


def _start(made: _Backends, backend: str, results: BenchResults, timed: bool):
    """Create the runner; with ``timed``, record cold and warm start-up (creation + first answer)."""
    if not timed:
        return made.make(backend)
    feed = random_inputs(made.profile, "min", seed=0)
    made.onnx(precision_of(backend))  # export and quantization time are not start-up time
    t0 = time.perf_counter()
    runner = made.make(backend)
    runner.infer(feed)
    cold = time.perf_counter() - t0
    kind = backend.split("-")[0]
    warm = None
    if kind != "torch":
        t0 = time.perf_counter()
        again = made.make(backend)
        again.infer(feed)
        warm = time.perf_counter() - t0
        again.close()
    results.startup.append(StartRow(made.name, backend, cold * 1e3, None if warm is None else warm * 1e3,
                                    _Backends.WARM_MEANS[kind]))
    return runner


def _measure_rows(rows: list[BenchRow], runners: dict, feed: dict, min_seconds: float, deadline: float,
                  made: _Backends | None, device: str = "cpu") -> None:
    """Time the runners interleaved (:func:`.timing.measure_interleaved`; on CUDA device tensors between
    CUDA events, host copies timed apart), then probe each one's peak memory."""
    budget = max(min(10 * min_seconds, (deadline - time.monotonic()) / len(runners)), 0.05)
    calls = {backend: timed_call(runner, feed, device) for backend, runner in runners.items()}
    stats = measure_interleaved(calls, min_seconds=min(min_seconds, budget), max_seconds=budget,
                                clock=clock_for(device))
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


def plot(results: BenchResults, path: str | Path, title: str | None = None) -> Path:
    """Latency (and peak memory, where measured) vs input positions, log-log, one line per backend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendError("plots need matplotlib: pip install 'effattn[bench]'") from None
    models = list(dict.fromkeys(r.model for r in results.rows))
    backends = list(dict.fromkeys(r.backend for r in results.rows))
    panels = [(model, [(backend, model, backend) for backend in backends]) for model in models]
    pair = ("efficient_attention", "dot_product_attention")
    if all(m in models for m in pair):  # the scaling study: both blocks on one axis per metric
        panels.append(("EA vs dot-product", [(f"{'EA' if m == pair[0] else 'DP'} {b}", m, b)
                                             for m in pair for b in backends]))
    has_memory = any(r.peak_host_mib or r.peak_device_mib for r in results.rows)
    rows = 2 if has_memory else 1
    fig, axes = plt.subplots(rows, len(panels), figsize=(4.2 * len(panels), 3.6 * rows), squeeze=False)
    for col, (panel, lines) in enumerate(panels):
        for row, what in enumerate(["time", "memory"][:rows]):
            ax = axes[row][col]
            for label, model, backend in lines:
                pts = results.series(model, backend, what)
                if pts:
                    ax.plot([p for p, _ in pts], [v for _, v in pts], marker="o", ms=3, label=label,
                            linestyle="--" if label.startswith("DP") else "-")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("positions (H x W)")
            ax.set_ylabel("median latency (ms)" if what == "time" else "peak memory (MiB)")
            ax.set_title(panel, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if row == 0 and (col == 0 or panel == "EA vs dot-product"):
                ax.legend(fontsize=7)
    env = results.environment
    fig.suptitle(title or f"effattn bench: {env.get('gpu') or env.get('cpu')}, {env.get('threads')} threads", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
