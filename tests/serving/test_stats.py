"""ModelStats: Triton's statistics schema, fed by the DynamicBatcher with exact counts."""

from __future__ import annotations

import asyncio

import numpy as np

from effattn.serving.batching import DynamicBatcher
from effattn.serving.stats import ModelStats


def test_the_batcher_reports_every_engine_call_per_batch_size():
    stats = ModelStats()

    async def main():
        batcher = DynamicBatcher(lambda feed: {"y": feed["x"] * 2}, max_batch_size=8, max_queue_delay=0.05, stats=stats)
        batcher.start()
        together = [batcher.submit({"x": np.ones((n, 3), np.float32)}) for n in (1, 2, 3)]  # one batch of 6
        await asyncio.gather(*together)
        await batcher.submit({"x": np.ones((1, 3), np.float32)})  # alone
        await batcher.stop()

    asyncio.run(main())
    s = stats.json("m", "1")
    assert (s["inference_count"], s["execution_count"]) == (7, 2) and s["last_inference"] > 0
    assert {
        p: s["inference_stats"][p]["count"] for p in ("queue", "compute_input", "compute_infer", "compute_output")
    } == dict.fromkeys(
        ("queue", "compute_input", "compute_infer", "compute_output"), 4
    )  # every request is charged its batch
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in s["batch_stats"]] == [(1, 1), (6, 1)]
    assert s["inference_stats"]["success"] == {"count": 0, "ns": 0}  # requests are counted by the front ends


def test_answers_count_successes_and_failures_with_their_durations():
    stats = ModelStats()
    stats.answered(True, 1000)
    stats.answered(True, 500)
    stats.answered(False, 7)
    s = stats.json("m", "1")["inference_stats"]
    assert s["success"] == {"count": 2, "ns": 1500} and s["fail"] == {"count": 1, "ns": 7}
    assert set(s) == {
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "cache_hit",
        "cache_miss",
    }
