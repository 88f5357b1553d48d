"""Per-model inference statistics in Triton's schema (``GET /v2/models/NAME/stats``, gRPC ModelStatistics),
fed by the batcher (:meth:`ModelStats.executed`) and the front ends (:meth:`ModelStats.answered`). Everything
runs on the server's event loop, so there is no lock. Counting rules: docs/serving.md#statistics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

PHASES = ("compute_input", "compute_infer", "compute_output")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute: dict[str, Duration] = field(default_factory=lambda: {p: Duration() for p in PHASES})
    batches: dict[int, dict[str, Duration]] = field(default_factory=dict)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0

    def executed(self, items: int, queue_ns: Sequence[int], phase_ns: Sequence[int]) -> None:
        """One engine call of ``items`` items for ``len(queue_ns)`` requests that waited that long;
        ``phase_ns``: stacking the inputs, the engine call, splitting the outputs."""
        self.execution_count += 1
        self.inference_count += items
        self.last_inference_ms = time.time_ns() // 1_000_000
        for ns in queue_ns:
            self.queue.add(ns)
        batch = self.batches.setdefault(items, {p: Duration() for p in PHASES})
        for phase, ns in zip(PHASES, phase_ns):
            self.compute[phase].add(ns * len(queue_ns), len(queue_ns))
            batch[phase].add(ns)

    def answered(self, ok: bool, ns: int) -> None:
        """One request answered, from its arrival: a success or a failure (any error status)."""
        (self.success if ok else self.fail).add(ns)

    def json(self, name: str, version: str) -> dict:
        """Triton's ModelStatistics (HTTP JSON form)."""
        zero = Duration().json()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.json(),
                "fail": self.fail.json(),
                "queue": self.queue.json(),
                **{p: d.json() for p, d in self.compute.items()},
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "response_stats": {},
            "batch_stats": [
                {"batch_size": size, **{p: d.json() for p, d in phases.items()}}
                for size, phases in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
