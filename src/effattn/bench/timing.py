"""Latency measurement shared by ``effattn demo`` and ``effattn bench``: warm up, then time calls.
CPU: wall clock around ``infer``; CUDA: CUDA events around ``infer_torch`` on device tensors
(:func:`timed_call`, :func:`clock_for`), host copies reported apart (:func:`host_copy_seconds`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per call over ``runs`` timed calls after warm-up."""

    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    p10_ms: float | None = None  # the low end of the spread plots draw (p10-p90); None in results from before it

    @classmethod
    def from_samples(cls, seconds: list[float]) -> LatencyStats:
        if not seconds:
            raise ValueError("no timing samples")
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p10, p50, p90, p99 = np.percentile(ms, [10, 50, 90, 99])
        return cls(len(ms), float(p50), float(p90), float(p99), float(ms.mean()), float(ms.min()), float(p10))

    def to_dict(self) -> dict:
        return asdict(self)


def wall_seconds(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes by the wall clock (CPU backends return only when done)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cuda_event_seconds(fn: Callable[[], object]) -> float:
    """Seconds between CUDA events recorded on the current stream before and after ``fn`` (which may run
    on streams of its own: the runners order theirs after the current stream and finish before returning)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def clock_for(device: str) -> Callable[[Callable[[], object]], float]:
    return cuda_event_seconds if device == "cuda" else wall_seconds


def timed_call(runner, feed: Mapping[str, Any], device: str) -> Callable[[], object]:
    """The call a benchmark times: on CUDA, ``infer_torch`` on device-resident tensors (made once, here)."""
    if device != "cuda":
        return lambda: runner.infer(feed)
    resident = {name: to_device(value, device) for name, value in feed.items()}
    return lambda: runner.infer_torch(resident)


def to_device(value, device: str):
    return torch.as_tensor(value).to(device)


def host_copy_seconds(feed: Mapping[str, Any], outputs: Mapping[str, Any], device: str, repeats: int = 5) -> float:
    """Median seconds to copy ``feed`` to ``device`` and ``outputs`` back to the host: the part of a
    numpy-in/numpy-out call that device timing leaves out."""

    def copies() -> None:
        for value in feed.values():
            torch.as_tensor(value).to(device)
        for value in outputs.values():
            value.cpu()
        torch.cuda.synchronize()

    return float(np.median([wall_seconds(copies) for _ in range(repeats)]))


def measure(
    fn: Callable[[], object],
    warmup_s: float = 0.2,
    min_runs: int = 10,
    max_runs: int = 1000,
    min_seconds: float = 1.0,
    max_seconds: float = 10.0,
) -> LatencyStats:
    """Time ``fn`` after ``warmup_s`` of warm-up calls (trtexec's convention: 200 ms) until ``min_runs``
    and ``min_seconds`` are both reached, stopping at ``max_runs`` or ``max_seconds``."""
    stats = measure_interleaved(
        {"fn": fn},
        rounds=1,
        warmup_s=warmup_s,
        min_runs=min_runs,
        max_runs=max_runs,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        catch=False,
    )["fn"]
    if isinstance(stats, BaseException):  # not reached: with catch=False the failure propagates
        raise stats
    return stats


def measure_interleaved(
    fns: Mapping[str, Callable[[], object]],
    rounds: int = 5,
    warmup_s: float = 0.2,
    min_runs: int = 10,
    min_seconds: float = 1.0,
    max_seconds: float = 10.0,
    max_runs: int = 100_000,
    catch: bool = True,
    clock: Callable[[Callable[[], object]], float] = wall_seconds,
) -> dict[str, LatencyStats | BaseException]:
    """Time several callables in alternation so that their ratios survive a noisy machine.

    Timed back to back, a baseline and a candidate see different moments of a shared machine (other
    tenants, clock changes), and their ratio swings by tens of percent between runs. Here each of
    ``rounds`` rounds gives every callable ``min_seconds / rounds`` of calls in turn, so slow drifts hit
    all of them alike. Each gets at least ``min_runs`` calls in all (trtexec's --iterations: a floor, even
    past ``max_seconds``); past ``max_seconds`` per callable a round gives it only its share of ``min_runs``,
    and it stops at ``max_runs`` calls. A callable that raises is dropped and its exception returned in
    its place (with ``catch=False`` the exception propagates). ``clock`` times one call (see :func:`clock_for`).
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    result: dict[str, LatencyStats | BaseException] = {}
    for name, fn in fns.items():  # warm-up, which also finds the ones that fail
        try:
            start = time.perf_counter()
            clock(fn)  # through the clock: asynchronous (CUDA) work is finished, not queued up
            while time.perf_counter() - start < warmup_s:
                clock(fn)
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
                try:
                    samples[name].append(clock(fn))
                except Exception as e:
                    if not catch:
                        raise
                    result[name] = e
                    live.remove(name)
                    break
                elapsed = time.perf_counter() - begin
                want_runs -= 1
                if (want_runs <= 0 and (elapsed >= per_round or spent[name] + elapsed >= max_seconds)) or len(
                    samples[name]
                ) >= max_runs:
                    break
            spent[name] += time.perf_counter() - begin
            done = len(samples[name]) >= min_runs and spent[name] >= max_seconds
            if name in live and (done or len(samples[name]) >= max_runs):
                live.remove(name)
    for name in fns:
        if name not in result:
            result[name] = LatencyStats.from_samples(samples[name])
    return result
