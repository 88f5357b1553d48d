"""Latency measurement shared by ``effattn demo`` and ``effattn bench``: warm up, then time calls."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
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
    return measure_interleaved({"fn": fn}, rounds=1, warmup_s=warmup_s, min_runs=min_runs, max_runs=max_runs,
                               min_seconds=min_seconds, max_seconds=max_seconds, catch=False)["fn"]


def measure_interleaved(fns: Mapping[str, Callable[[], object]], rounds: int = 5, warmup_s: float = 0.2,
                        min_runs: int = 10, min_seconds: float = 1.0, max_seconds: float = 10.0,
                        max_runs: int = 100_000, catch: bool = True) -> dict[str, LatencyStats | BaseException]:
    """Time several callables in alternation so that their ratios survive a noisy machine.

    Timed back to back, a baseline and a candidate see different moments of a shared machine (other
    tenants, clock changes), and their ratio swings by tens of percent between runs. Here each of
    ``rounds`` rounds gives every callable ``min_seconds / rounds`` of calls in turn, so slow drifts hit
    all of them alike. Each gets at least ``min_runs`` calls in all; the whole stops at ``max_seconds``
    per callable (or ``max_runs`` calls). A callable that raises is dropped and its exception returned in
    its place (with ``catch=False`` the exception propagates).
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    result: dict[str, LatencyStats | BaseException] = {}
    for name, fn in fns.items():  # warm-up, which also finds the ones that fail
        try:
            start = time.perf_counter()
            fn()
            while time.perf_counter() - start < warmup_s:
                fn()
        except Exception as e:
            if not catch:
                raise
            result[name] = e
    live = [name for name in fns if name not in result]
    per_round = min_seconds / rounds
    spent = dict.fromkeys(live, 0.0)
    for r in range(rounds):
        for name in list(live):
            fn, begin = fns[name], time.perf_counter()
            want_runs = -(-min_runs * (r + 1) // rounds) - len(samples[name])  # spread min_runs over the rounds
            while True:
                t0 = time.perf_counter()
                try:
                    fn()
                except Exception as e:
                    if not catch:
                        raise
                    result[name] = e
                    live.remove(name)
                    break
                samples[name].append(time.perf_counter() - t0)
                elapsed = time.perf_counter() - begin
                want_runs -= 1
                if ((want_runs <= 0 and elapsed >= per_round) or spent[name] + elapsed >= max_seconds
                        or len(samples[name]) >= max_runs):
                    break
            spent[name] += time.perf_counter() - begin
            if name in live and (spent[name] >= max_seconds or len(samples[name]) >= max_runs):
                live.remove(name)
    for name in fns:
        if name not in result:
            result[name] = LatencyStats.from_samples(samples[name])
    return result
