"""Roofline floors: max(bytes / copy bandwidth, FLOPs / matmul peak at the row's precision), both measured
in the same run (a large copy, the faster of a torch and an OpenVINO matmul), so a runtime with better kernels can
come in below its floor (ratio < 1); and each row's share of the CPU's nominal peak (read off its flags and clock).
See docs/benchmarks.md#how-the-bench-measures."""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .. import precisions
from .catalog import BenchBackend

#: bytes per weight at each precision (FP16 and BF16 store 2, INT8 and FP8 1): the precisions table's
WEIGHT_BYTES = {p.name: p.weight_bytes for p in precisions.TABLE}


def model_cost(model: nn.Module, shape: Sequence[int]) -> tuple[float, int]:
    """FLOPs (2 per multiply-add) of one forward pass at ``shape`` and the output's element count, found on
    the meta device (nothing is computed or allocated, so a dot-product block too large to run still counts)."""
    meta = copy.deepcopy(model).to("meta")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        out = meta(torch.empty(*shape, device="meta"))
    outputs = out if isinstance(out, (tuple, list)) else (out,)
    return float(counter.get_total_flops()), sum(o.numel() for o in outputs)


def _matmul(precision: str, n: int):
    if precision == "int8":
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        return lambda: torch._int_mm(a, a)
    a = torch.randn(n, n, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    return lambda: a @ a


def _openvino_matmul(precision: str, n: int, threads: int | None):
    """An n x n product on OpenVINO's CPU plugin, the runtime of the CPU's INT8 rows: FP32 (FP32 hint), BF16 (BF16
    hint: AMX or AVX512-BF16 kernels) or INT8 (a FakeQuantize'd input times INT8 weights: its AMX/VNNI INT8 kernels,
    which torch's CPU ``_int_mm`` does not reach). None without OpenVINO."""
    try:
        import openvino as ov
        from openvino import opset13 as ops
    except ImportError:
        return None
    a = ops.parameter([n, n], np.float32, name="a")
    weights = np.random.default_rng(0).integers(-127, 128, (n, n)).astype(np.int8)
    w = ops.multiply(ops.convert(ops.constant(weights), "f32"), ops.constant(np.float32(1 / 64)))
    if precision == "int8":
        lo, hi = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
        y = ops.matmul(ops.fake_quantize(a, lo, hi, lo, hi, 256), w, False, True)
    else:
        y = ops.matmul(a, ops.constant(weights.astype(np.float32) / 64), False, True)
    config: dict[str, str | int] = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(ov.Model([y], [a]), "CPU", config).create_infer_request()
    x = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    run = functools.partial(request.infer, {0: x}, share_inputs=True, share_outputs=True)
    return run


def measure_peaks(
    precisions: Sequence[str] = ("fp32", "bf16", "int8"), n: int = 1024, repeats: int = 5, threads: int | None = None
) -> dict[str, float]:
    """GFLOP/s (GOP/s for INT8) of an n x n matmul per precision, best of ``repeats`` after one warm-up: the faster
    of torch's and OpenVINO's (:func:`_openvino_matmul`; measured on a 2-core AMX Xeon: INT8 2.5 TOP/s against
    torch's 0.09)."""
    peaks: dict[str, float] = {}
    for precision in precisions:
        for make, args in ((_matmul, (precision, n)), (_openvino_matmul, (precision, n, threads))):
            try:
                run = make(*args)
                if run is None:
                    continue
                run()
            except (RuntimeError, NotImplementedError):  # e.g. no INT8 matmul in this torch build or CPU
                continue
            best = min(_timed(run) for _ in range(repeats))
            peaks[precision] = max(peaks.get(precision, 0.0), round(2 * n**3 / best / 1e9, 1))
    return peaks


def nominal_peaks(flags: Sequence[str], vendor: str | None, ghz: float | None, cores: int) -> dict[str, float]:
    """GFLOP/s (GOP/s for INT8) the CPU's widest units give at ``ghz`` on ``cores`` cores, read off its flags, not
    measured: FP32 2 FMA ports x 16 lanes x 2 (AVX-512 on Intel; AMD's Zen 4 runs it on two 256-bit ports: half;
    AVX2 2 x 8 x 2), BF16 twice FP32 with AVX512-BF16 (VDPBF16PS), INT8 four times with VNNI (VPDPBUSD); AMX tiles
    1024 BF16 FLOP and 2048 INT8 ops per cycle per core. An upper bound: clocks under load and memory run lower."""
    if not ghz or cores <= 0:
        return {}
    if "avx512f" in flags:
        fp32 = 32 if (vendor or "").startswith("AuthenticAMD") else 64
    elif "avx2" in flags:
        fp32 = 32
    else:
        return {}
    per_cycle = {
        "fp32": fp32,
        "bf16": 1024 if "amx_bf16" in flags else 2 * fp32 if "avx512_bf16" in flags else fp32,
        "int8": 2048 if "amx_int8" in flags else 4 * fp32 if "avx512_vnni" in flags else 2 * fp32,
    }
    return {p: round(n * ghz * cores, 1) for p, n in per_cycle.items()}


def percent_of_peak(flops: float, median_ms: float, precision: str, peaks: dict[str, float]) -> float | None:
    """The share of ``peaks[precision]`` (FP32's for FP16, which CPUs compute in FP32) one run of ``flops`` used."""
    peak = peaks.get(precision) or peaks.get("fp32")
    if not peak or median_ms <= 0:
        return None
    return 100 * flops / (median_ms * 1e-3) / (peak * 1e9)


def _timed(run) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def arithmetic_of(backend: BenchBackend, runner) -> str:
    """The arithmetic a bench row runs: the runner's own report (OpenVINO), else the backend's precision."""
    reported = getattr(runner, "precision", None)
    return reported if reported in WEIGHT_BYTES else backend.precision


def floor_ms(
    flops: float, io_bytes: float, params: int, precision: str, bandwidth_gb_s: float, peaks: dict[str, float]
) -> float | None:
    """max(time to move I/O and weights, time to compute at the peak of ``precision``); FP16 on a CPU
    computes at the FP32 peak (no native FP16 arithmetic assumed)."""
    peak = peaks.get(precision) or peaks.get("fp32")
    if not peak or not bandwidth_gb_s:
        return None
    moved = io_bytes + params * WEIGHT_BYTES.get(precision, 4)
    return max(moved / (bandwidth_gb_s * 1e9), flops / (peak * 1e9)) * 1e3
