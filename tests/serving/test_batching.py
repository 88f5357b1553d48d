"""DynamicBatcher: stacks same-shape requests, never mixes shapes, splits answers back, refuses when full."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from effattn.serving.batching import DynamicBatcher, QueueFull

from .support import until


def _doubler(calls: list, delay: float = 0.001):
    def infer(feed):
        calls.append({k: v.shape for k, v in feed.items()})
        time.sleep(delay)
        return {"out": feed["x"] * 2, "sum": feed["x"].sum(axis=tuple(range(1, feed["x"].ndim)))}

    return infer


def test_concurrent_requests_are_batched_by_shape_and_answered_individually():
    calls = []

    async def main():
        batcher = DynamicBatcher(_doubler(calls), max_batch_size=8, max_queue_delay=0.02, max_queue=400)
        batcher.start()
        shapes = [(1, 4), (2, 4), (1, 3)]

        async def one(i):
            x = np.full(shapes[i % 3], i, np.float32)
            out = await asyncio.wait_for(batcher.submit({"x": x}), 10)
            assert np.array_equal(out["out"], 2 * x) and np.array_equal(out["sum"], x.sum(axis=1)), i

        await asyncio.gather(*(one(i) for i in range(300)))
        await batcher.stop()

    asyncio.run(main())
    assert sum(c["x"][0] for c in calls) == 100 * (1 + 2 + 1)  # every item ran exactly once
    assert len(calls) < 300 and max(c["x"][0] for c in calls) <= 8
    assert {c["x"][1:] for c in calls} == {(4,), (3,)}  # shapes (.., 4) and (.., 3) never in one call


def test_full_queue_refuses_at_once():
    gate = threading.Event()

    def blocked(feed):
        gate.wait(10)
        return {"out": feed["x"]}

    async def main():
        batcher = DynamicBatcher(blocked, max_batch_size=1, max_queue_delay=0, max_queue=2)
        batcher.start()
        first = asyncio.create_task(batcher.submit({"x": np.zeros((1, 2))}))
        await until(lambda: batcher.running == 1, "the worker holds the first one")
        queued = [asyncio.create_task(batcher.submit({"x": np.zeros((1, 2))})) for _ in range(2)]
        await until(lambda: batcher.depth == 2, "two more wait in the queue")
        with pytest.raises(QueueFull, match="queue full"):
            await batcher.submit({"x": np.zeros((1, 2))})
        gate.set()
        await asyncio.gather(first, *queued)
        await batcher.stop()

    asyncio.run(main())


def test_an_engine_error_fails_its_batch_and_the_worker_goes_on():
    def flaky(feed):
        if (feed["x"] < 0).any():
            raise RuntimeError("engine failed")
        return {"out": feed["x"]}

    async def main():
        batcher = DynamicBatcher(flaky, max_batch_size=1, max_queue_delay=0)
        batcher.start()
        with pytest.raises(RuntimeError, match="engine failed"):
            await batcher.submit({"x": -np.ones((1, 2))})
        assert (await batcher.submit({"x": np.ones((1, 2))}))["out"].sum() == 2
        await batcher.stop()

    asyncio.run(main())


def test_outputs_without_the_batch_axis_are_never_split_into_wrong_answers():
    """A model that reduces over the batch (one output row for N inputs): batched requests would each get a
    slice of a shared answer. The batch is refused as a whole; a request alone is answered."""
    from effattn.errors import BackendError

    def pooled(feed):
        return {"pooled": feed["x"].sum(axis=0, keepdims=True)}

    async def main():
        batcher = DynamicBatcher(pooled, max_batch_size=8, max_queue_delay=1.0)
        batcher.start()
        results = await asyncio.gather(
            *(batcher.submit({"x": np.full((1, 4), i, np.float32)}) for i in range(3)), return_exceptions=True
        )
        alone = DynamicBatcher(pooled, max_batch_size=1, max_queue_delay=0.0)
        alone.start()
        single = await alone.submit({"x": np.ones((1, 4), np.float32)})
        await batcher.stop()
        await alone.stop()
        return results, single

    results, single = asyncio.run(main())
    assert all(isinstance(r, BackendError) and "do not keep the batch axis" in str(r) for r in results), results
    assert np.array_equal(single["pooled"], np.ones((1, 4), np.float32))


def test_a_full_batch_runs_at_once_without_waiting_out_the_queue_delay():
    """As Triton's dynamic batcher: the delay is a limit for gathering a batch, not a wait once it is full.
    With a one-hour delay, a full batch that waited for it would hang here (the 60 s guard fails the test)."""
    calls = []

    async def main():
        batcher = DynamicBatcher(_doubler(calls), max_batch_size=4, max_queue_delay=3600, max_queue=16)
        batcher.start()
        x = np.ones((1, 4), np.float32)
        results = await asyncio.wait_for(asyncio.gather(*[batcher.submit({"x": x * i}) for i in range(4)]), 60)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert calls == [{"x": (4, 4)}] and [float(r["out"][0, 0]) for r in results] == [0, 2, 4, 6]


def test_a_short_batch_goes_when_its_delay_runs_out_and_stop_runs_what_is_queued():
    """A worker gathering a batch is woken by the request that fills it or by its delay's end, nothing
    else: three requests (of four) go as one batch when the delay ends; with a one-hour delay, stop()
    wakes the gathering worker and what is queued still runs (the 60 s guards fail a hang)."""
    calls = []

    async def main():
        batcher = DynamicBatcher(_doubler(calls), max_batch_size=4, max_queue_delay=0.05, max_queue=16)
        batcher.start()
        x = np.ones((1, 4), np.float32)
        short = await asyncio.wait_for(asyncio.gather(*[batcher.submit({"x": x * i}) for i in range(3)]), 60)
        await batcher.stop()
        slow = DynamicBatcher(_doubler(calls), max_batch_size=4, max_queue_delay=3600, max_queue=16)
        slow.start()
        waiting = [asyncio.create_task(slow.submit({"x": x * i})) for i in range(2)]
        await until(
            lambda: slow.depth == 2 and len(slow._waiters) == 1 and not slow._waiters[0][0].done(),
            "the worker is gathering, an hour to go",
        )
        await asyncio.wait_for(slow.stop(), 60)
        return short, await asyncio.gather(*waiting)

    short, stopped = asyncio.run(main())
    assert calls == [{"x": (3, 4)}, {"x": (2, 4)}]
    assert [float(r["out"][0, 0]) for r in short] == [0, 2, 4] and [float(r["out"][0, 0]) for r in stopped] == [0, 2]
