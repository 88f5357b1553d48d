"""Dynamic batching: requests that arrive close together run as one engine call.

A request waits at most ``max_queue_delay`` for others to join it; requests join a batch only if
every input has the same non-batch shape (different shapes are never mixed: they wait for the next
batch), and the batch never exceeds ``max_batch_size`` items. With ``max_batch_size`` 1 (a model whose
graph has no batch axis: :func:`.repository.batch_dimension`) each request runs alone and gets its
outputs whole, whatever their shapes. The queue is bounded: when it is
full :meth:`DynamicBatcher.submit` raises :class:`QueueFull` at once, so overload is answered with
a 503, not an ever-growing backlog. The engine call runs in a worker thread, outside the event loop
(one thread of the batcher's own per worker, so a batch costs one hop there and one back).

A worker is woken only when it has something to do: an idle worker by the first request that arrives,
a worker gathering a batch only by the request that fills it (or by its delay running out), so
requests that arrive while the engine runs, or that join a batch still short of full, wake nobody.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable

import numpy as np

from ..errors import BackendError
from .stats import ModelStats

log = logging.getLogger(__name__)

class QueueFull(Exception):
    """The batcher's queue is at its limit; the caller should answer 503."""


class _Request:
    """One queued request; compared by identity (requests are removed from the queue by ``is``)."""

    __slots__ = ("feed", "future", "items", "signature", "enqueued")

    def __init__(self, feed: dict[str, np.ndarray], future: asyncio.Future, items: int, signature: tuple) -> None:
        self.feed, self.future, self.items, self.signature = feed, future, items, signature
        self.enqueued = time.monotonic()


def _settle(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _signature(feed: dict[str, np.ndarray]) -> tuple:
    return tuple((name, value.dtype.str, value.shape[1:]) for name, value in feed.items())


class DynamicBatcher:
    """Batch ``infer(feed) -> outputs`` calls; with ``max_batch_size`` > 1 every input and output has the batch
    on axis 0."""

    def __init__(self, infer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], max_batch_size: int = 8,
                 max_queue_delay: float = 0.002, max_queue: int = 64, workers: int = 1,
                 on_batch: Callable[[int], None] | None = None, stats: ModelStats | None = None) -> None:
        if max_batch_size < 1 or max_queue < 1 or workers < 1 or max_queue_delay < 0:
            raise ValueError("max_batch_size, max_queue and workers must be >= 1, max_queue_delay >= 0")
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_queue = max_queue
        self.workers = workers
        self.on_batch = on_batch
        self.stats = stats  # Triton's statistics: queue and compute durations, per batch size
        self._pending: deque[_Request] = deque()
        self._waiters: list[tuple[asyncio.Future, Callable[[], bool]]] = []  # workers asleep, and what wakes each
        self._tasks: list[asyncio.Task] = []
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="effattn-batch")
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        """Finish what is queued, then stop the workers."""
        self._closing = True
        self._wake()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def submit(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Queue one request (already validated) and wait for its own slice of the batch's outputs."""
        if self._closing:
            raise QueueFull("the server is shutting down")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"queue full ({self.max_queue} requests waiting)")
        # batched, every input holds the request's items on axis 0 (the caller checked they agree); else one run
        items = next(iter(feed.values())).shape[0] if self.max_batch_size > 1 else 1
        request = _Request(feed, asyncio.get_running_loop().create_future(), items, _signature(feed))
        self._pending.append(request)
        if self._waiters:
            self._wake()  # an idle worker, or one waiting for its batch to fill
        return await request.future

    def _wake(self) -> None:
        """Wake each sleeping worker whose condition now holds (the rest sleep on)."""
        for entry in list(self._waiters):
            waiter, ready = entry
            if waiter.done():
                continue
            if self._closing or ready():
                waiter.set_result(None)

    async def _sleep(self, ready: Callable[[], bool], timeout: float | None = None) -> None:
        """Return once ``ready()`` holds (checked by :meth:`_wake`), the batcher closes, or ``timeout`` passes."""
        if ready() or self._closing:
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        entry = (waiter, ready)
        self._waiters.append(entry)
        timer = loop.call_later(timeout, _settle, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiters.remove(entry)
            if timer is not None:
                timer.cancel()

    def _take_batch(self) -> list[_Request]:
        """The oldest live request plus every later one of the same signature that still fits."""
        while self._pending and self._pending[0].future.done():  # timed out or cancelled while waiting
            self._pending.popleft()
        if not self._pending:
            return []
        first = self._pending.popleft()
        batch, total = [first], first.items
        for request in list(self._pending):
            if total >= self.max_batch_size:
                break
            if request.future.done():
                self._pending.remove(request)
            elif request.signature == first.signature and total + request.items <= self.max_batch_size:
                self._pending.remove(request)
                batch.append(request)
                total += request.items
        return batch

    async def _gather(self, head: _Request) -> None:
        """Give others ``max_queue_delay`` (from ``head``'s arrival) to join it, but no longer than it takes
        the queue to hold a full batch of ``head``'s shape (as Triton's dynamic batcher: a full batch goes at once)."""
        def full() -> bool:
            items = 0
            for r in self._pending:
                if r.signature == head.signature and not r.future.done():
                    items += r.items
                    if items >= self.max_batch_size:
                        return True
            return False

        delay = head.enqueued + self.max_queue_delay - time.monotonic()
        if delay > 0:
            await self._sleep(full, delay)

    async def _work(self) -> None:
        while True:
            await self._sleep(lambda: bool(self._pending))
            if not self._pending and self._closing:
                return
            head = self._pending[0] if self._pending else None
            if head is not None and self.max_queue_delay > 0 and head.items < self.max_batch_size:
                await self._gather(head)
            batch = self._take_batch()
            if batch:
                try:
                    await self._run(batch)
                except Exception as e:  # a worker never dies: fail this batch and go on
                    log.exception("batch failed")
                    for r in batch:
                        if not r.future.done():
                            r.future.set_exception(e)

    async def _run(self, batch: list[_Request]) -> None:
        started = time.monotonic()
        names = list(batch[0].feed)
        feed = batch[0].feed if len(batch) == 1 else {
            name: np.concatenate([r.feed[name] for r in batch], axis=0) for name in names}
        if self.on_batch:
            self.on_batch(sum(r.items for r in batch))
        stacked = time.monotonic()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self.infer, feed)
        except Exception as e:  # every request of the batch gets the error
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(e)
            return
        inferred = time.monotonic()
        total = sum(r.items for r in batch)
        if len(batch) == 1:  # a request alone gets its outputs as the engine gave them, never cut
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            self._executed(batch, total, started, stacked, inferred)
            return
        lost = [f"{name} {value.shape}" for name, value in outputs.items()
                if np.ndim(value) == 0 or value.shape[0] != total]
        if lost:  # splitting would hand each request someone else's answer: refuse the whole batch
            error = BackendError(f"the model's outputs {', '.join(lost)} do not keep the batch axis (axis 0, {total} "
                               "items), so batched requests cannot be told apart; serve it with --max-batch-size 1")
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(error)
            return
        start = 0
        for r in batch:
            part = {name: value[start:start + r.items] for name, value in outputs.items()}
            start += r.items
            if not r.future.done():
                r.future.set_result(part)
        self._executed(batch, total, started, stacked, inferred)

    def _executed(self, batch: list[_Request], total: int, started: float, stacked: float, inferred: float) -> None:
        if self.stats is not None:
            ns = [int((b - a) * 1e9) for a, b in ((started, stacked), (stacked, inferred), (inferred, time.monotonic()))]
            self.stats.executed(total, [int((started - r.enqueued) * 1e9) for r in batch], ns)
