"""Peak memory of a piece of work: host RSS above where it started, and CUDA memory on GPUs.
Host: the kernel's RSS high-water mark (``VmHWM``), reset first; device: the larger of torch's allocator
peak and ``cudaMemGetInfo`` growth. See docs/benchmarks.md#how-the-bench-measures."""

from __future__ import annotations

import contextlib
import ctypes
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models import load_model
from ..runtime import Runner, load
from ..shapes import ShapeProfile

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def available_bytes() -> int | None:
    """Memory the system can still give (``MemAvailable``), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _trim_heap() -> None:
    """Give freed heap back to the OS first (glibc ``malloc_trim``): otherwise memory a runner freed while
    loading (the parsed model, for one) is reused by the run without raising RSS, and the peak reads low."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measure as is
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class PeakMemory:
    """``with PeakMemory(cuda) as peak: work()`` then ``peak.host_mib`` / ``peak.device_mib`` (None: unknown)."""

    cuda: bool = False
    host_mib: float | None = None
    device_mib: float | None = None

    def __enter__(self) -> PeakMemory:
        _trim_heap()
        try:
            _CLEAR_REFS.write_text("5")
            self._rss = _status_kib("VmRSS")
        except OSError:
            self._rss = None
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._allocated = torch.cuda.memory_allocated()
            free, total = torch.cuda.mem_get_info()
            self._used = total - free
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _status_kib("VmHWM")
        if self._rss is not None and hwm is not None:
            self.host_mib = max(hwm - self._rss, 0) / 1024
        if self.cuda:
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            torch_peak = torch.cuda.max_memory_allocated() - self._allocated
            self.device_mib = max(torch_peak, total - free - self._used, 0) / 2**20


def probe(
    backend: str,
    source: str,
    shape: Sequence[int],
    device: str = "cpu",
    threads: int = 1,
    pretrained: bool = False,
    timeout: float = 300.0,
    profile: ShapeProfile | None = None,
) -> PeakMemory:
    """Peak memory of one inference at ``shape``, measured in a fresh Python process.

    In the benchmark's own process allocators keep what earlier runs freed (ONNX Runtime's arena,
    glibc's heap), so a later peak looks like zero. A fresh process creates the runner, resets the
    high-water mark, runs once and reports the peak above the runner's resting memory.
    ``source``: an ONNX file for ``onnxruntime*``, a zoo model name or ``package.module:factory`` for
    ``torch*`` (the child imports it through this process's ``sys.path``), with ``profile`` for a model
    that has no default one.
    """
    args = json.dumps(
        {
            "backend": backend,
            "source": source,
            "shape": list(shape),
            "device": device,
            "threads": threads,
            "pretrained": pretrained,
            "sys_path": sys.path,
            "profile": None if profile is None else profile.to_dict(),
        }
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "effattn.bench.memory", args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return PeakMemory(device == "cuda")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["killed"])[-1]
        raise MemoryError(tail) if done.returncode in (-9, 137) or "memory" in tail.lower() else RuntimeError(tail)
    result = json.loads(lines[-1])
    return PeakMemory(device == "cuda", result["host_mib"], result["device_mib"])


def _probe_runner(args: dict) -> Runner:
    """The runner a probe measures, made by :func:`effattn.runtime.load` as the bench makes it."""
    if args["backend"].startswith("torch"):
        source = load_model(args["source"], pretrained=args["pretrained"])
        profile = ShapeProfile.from_dict(args["profile"]) if args["profile"] else source.profile
        dtype = torch.float16 if args["backend"] == "torch-fp16" else torch.float32
        return load(source.model, backend="torch", device=args["device"], profile=profile, dtype=dtype)
    return load(args["source"], backend="onnxruntime", device=args["device"], threads=args["threads"])


def _probe_main(args: dict) -> None:
    sys.path[:0] = [p for p in args["sys_path"] if p not in sys.path]  # where the parent found a user model
    torch.set_num_threads(args["threads"])
    runner = _probe_runner(args)
    x = np.random.default_rng(0).standard_normal(tuple(args["shape"]), dtype=np.float32)
    name = next(iter(runner.inputs))
    infer = runner._infer  # the profile check is the bench's business; the probe measures the run alone
    with PeakMemory(args["device"] == "cuda") as peak:
        infer({name: x})
    print(json.dumps({"host_mib": peak.host_mib, "device_mib": peak.device_mib}))


if __name__ == "__main__":
    _probe_main(json.loads(sys.argv[1]))
