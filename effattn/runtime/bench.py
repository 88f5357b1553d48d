"""``effattn bench``: latency of each backend against eager PyTorch FP32, measured in the same run.

Each model is exported once with a profile spanning every size, then each (size, backend) pair is
timed with :func:`effattn.runtime.timing.measure`. Results name the machine, the versions and the
command, so a committed file says where its numbers came from.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BackendError, InputError
from ..shapes import InputProfile, ShapeProfile
from .parity import random_inputs
from .timing import LatencyStats, measure

EAGER = "torch-cpu"


@dataclass
class BenchRow:
    model: str
    backend: str
    shape: list[int]
    stats: LatencyStats
    speedup_vs_eager: float  # eager median / this median, same run

    def to_dict(self) -> dict:
        return {"model": self.model, "backend": self.backend, "shape": self.shape,
                "speedup_vs_eager": round(self.speedup_vs_eager, 4)} | self.stats.to_dict()


@dataclass
class BenchResults:
    rows: list[BenchRow] = field(default_factory=list)
    environment: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema": "effattn.bench/1", "environment": self.environment, "rows": [r.to_dict() for r in self.rows]}

    def table(self) -> str:
        head = f"{'model':<24}{'shape':<16}{'backend':<18}{'median ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'vs eager':>10}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            shape = "x".join(map(str, r.shape))
            lines.append(f"{r.model:<24}{shape:<16}{r.backend:<18}{r.stats.median_ms:>10.3f}{r.stats.p90_ms:>10.3f}"
                         f"{r.stats.p99_ms:>10.3f}{r.speedup_vs_eager:>9.2f}x")
        env = self.environment
        lines.append(f"\n{env.get('cpu', '?')}, {env.get('threads')} threads; torch {env.get('torch')}, "
                     f"onnxruntime {env.get('onnxruntime')}")
        return "\n".join(lines)


def environment(threads: int) -> dict:
    import onnxruntime
    import torch

    from .. import __version__

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "effattn": __version__,
        "command": "effattn " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("effattn") else None,
    }


def bench_profile(base: InputProfile, sizes: Sequence[int], batch: int) -> ShapeProfile:
    """A profile over ``sizes`` (square H = W for images, length = size**2 for sequences: same positions)."""
    def shape(size: int) -> tuple[int, ...]:
        spatial = (size, size) if base.rank == 4 else (size * size,)
        return (batch, base.opt[1], *spatial)

    ordered = sorted(sizes)
    return ShapeProfile((InputProfile(base.name, shape(ordered[0]), shape(ordered[len(ordered) // 2]),
                                      shape(ordered[-1])),))


def run_bench(models: Sequence[str], sizes: Sequence[int], batch: int = 1,
              backends: Sequence[str] = ("onnxruntime-cpu",), threads: int | None = None,
              min_seconds: float = 1.0, quiet: bool = False) -> BenchResults:
    import torch
    from tqdm.auto import tqdm

    from ..engines.onnxruntime import default_threads
    from ..export import export_onnx
    from ..models import get_entry, load_model
    from .onnxruntime import OnnxRuntimeRunner
    from .torch import TorchRunner

    if not sizes or min(sizes) <= 0 or batch <= 0:
        raise InputError(f"sizes {list(sizes)} and batch {batch} must be positive")
    unknown = [b for b in backends if b not in ("onnxruntime-cpu", "onnxruntime-cuda")]
    if unknown:
        raise BackendError(f"unknown bench backends {unknown}; available: onnxruntime-cpu, onnxruntime-cuda")
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    results = BenchResults(environment=environment(threads))
    bar = tqdm(total=len(models) * len(sizes) * (1 + len(backends)), desc="bench", disable=quiet,
               file=sys.stderr, leave=False)
    with tempfile.TemporaryDirectory(prefix="effattn-bench-") as tmp, bar:
        for name in models:
            entry = get_entry(name)
            source = load_model(name, pretrained=entry.pretrained is not None)
            profile = bench_profile(entry.profile.inputs[0], sizes, batch)
            bar.set_postfix_str(f"export {name}")
            onnx_path = Path(tmp) / f"{name}.onnx"
            export_onnx(source, profile, onnx_path, validate=False)
            runners = [TorchRunner(source.model, profile)] + [
                OnnxRuntimeRunner(onnx_path, device=b.split("-", 1)[1], threads=threads) for b in backends]
            for size in sizes:
                feed = random_inputs(bench_profile(profile.inputs[0], [size], batch), "opt", seed=0)
                eager_ms = None
                for runner in runners:
                    bar.set_postfix_str(f"{name} {size} {runner.backend}")
                    stats = measure(lambda r=runner: r.infer(feed), min_seconds=min_seconds,
                                    max_seconds=max(10 * min_seconds, 2.0))
                    eager_ms = eager_ms or stats.median_ms
                    results.rows.append(BenchRow(name, runner.backend, list(next(iter(feed.values())).shape), stats,
                                                 eager_ms / stats.median_ms))
                    bar.update(1)
            for runner in runners:
                runner.close()
    return results
