"""The machine a bench ran on: CPU, GPU, library versions, SIMD flags, load, and its copy bandwidth."""

from __future__ import annotations

import datetime as _dt
import importlib
import math
import os
import platform
import sys
import time
from importlib import metadata as dists

import numpy as np
import torch

from .. import __version__
from ..cpu import cpu_flags, cpu_ghz, cpu_name, cpu_vendor


def environment(threads: int, device: str = "cpu") -> dict:
    """What a results file records about where it was measured."""
    gpu = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "device": device,
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": _imported_version("onnxruntime") or _dist_version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": _dist_version("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
        "openvino": _dist_version("openvino"),
        "effattn": __version__,
        "cpu_flags": cpu_flags(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),  # oneDNN's ISA cap: OpenVINO and torch honour it
        "cpu_vendor": cpu_vendor(),
        "cpu_ghz": cpu_ghz(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32) if gpu else None,
        "command": "effattn " + " ".join(sys.argv[1:])
        if sys.argv and sys.argv[0].replace("\\", "/").endswith(("effattn", "effattn/__main__.py"))
        else None,
    }


def _dist_version(*names: str) -> str | None:
    """The version of the first of ``names`` that is installed as a distribution."""
    for name in names:
        try:
            return dists.version(name)
        except dists.PackageNotFoundError:
            pass
    return None


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
        src, dst = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
        for _ in range(6):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            dst.copy_(src)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    else:
        host_src, host_dst = np.ones(n, np.float32), np.empty(n, np.float32)
        for _ in range(6):
            t0 = time.perf_counter()
            np.copyto(host_dst, host_src)
            best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best / 1e9
