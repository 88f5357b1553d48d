"""Latency measurement shared by ``effattn demo`` and ``effattn bench``: warm up, then time calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per call over ``runs`` timed calls after warm-up."""

    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float

    @classmethod
    def from_samples(cls, seconds: list[float]) -> LatencyStats:
        if not seconds:
            raise ValueError("no timing samples")
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(len(ms), float(p50), float(p90), float(p99), float(ms.mean()), float(ms.min()))

    def to_dict(self) -> dict:
        return asdict(self)


def measure(fn: Callable[[], object], warmup_s: float = 0.2, min_runs: int = 10, max_runs: int = 1000,
            min_seconds: float = 1.0, max_seconds: float = 10.0) -> LatencyStats:
    """Time ``fn`` after ``warmup_s`` of warm-up calls (trtexec's convention: 200 ms) until ``min_runs``
    and ``min_seconds`` are both reached, stopping at ``max_runs`` or ``max_seconds``."""
    start = time.perf_counter()
    fn()
    while time.perf_counter() - start < warmup_s:
        fn()
    samples: list[float] = []
    begin = time.perf_counter()
    while len(samples) < max_runs:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - begin
        if (len(samples) >= min_runs and elapsed >= min_seconds) or elapsed >= max_seconds:
            break
    return LatencyStats.from_samples(samples)
