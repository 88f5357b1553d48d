"""Dynamic batching: requests that arrive within a delay and share their non-batch shapes run as one engine
call, in the batcher's own worker threads. The queue is bounded (:class:`QueueFull` -> 503); a stuck engine
call is stopped if the runner can, and :meth:`DynamicBatcher.stop` is bounded.
Rules: docs/serving.md#dynamic-batching-in-detail."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import BackendError
from .stats import ModelStats

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The batcher's queue is at its limit; the caller should answer 503."""


class _Request:
    """One queued request; compared by identity (requests are removed from the queue by ``is``)."""

    __slots__ = ("enqueued", "feed", "future", "items", "signature")

    def __init__(self, feed: dict[str, np.ndarray], future: asyncio.Future, items: int, signature: tuple) -> None:
        self.feed, self.future, self.items, self.signature = feed, future, items, signature
        self.enqueued = time.monotonic()


class _Call:
    """One engine call in progress: its requests, the thread it runs on (to stop it), whether it is stuck."""

    __slots__ = ("batch", "stuck", "thread")

    def __init__(self, batch: list[_Request]) -> None:
        self.batch, self.stuck = batch, False
        self.thread: int | None = None


def _settle(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _signature(feed: dict[str, np.ndarray]) -> tuple:
    return tuple((name, value.dtype.str, value.shape[1:]) for name, value in feed.items())


class DynamicBatcher:
    """Batch ``infer(feed) -> outputs`` calls; with ``max_batch_size`` > 1 every input and output has the batch
    on axis 0."""

    def __init__(
        self,
        infer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        max_batch_size: int = 8,
        max_queue_delay: float = 0.002,
        max_queue: int = 64,
        workers: int = 1,
        on_batch: Callable[[int], None] | None = None,
        stats: ModelStats | None = None,
        stuck_after: float | None = None,
        terminate: Callable[[int], bool] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or workers < 1 or max_queue_delay < 0:
            raise ValueError("max_batch_size, max_queue and workers must be >= 1, max_queue_delay >= 0")
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_queue = max_queue
        self.workers = workers
        self.on_batch = on_batch
        self.stats = stats  # Triton's statistics: queue and compute durations, per batch size
        self.stuck_after = stuck_after  # seconds after which an engine call counts as stuck
        self.terminate = terminate  # asks the run on a thread (threading.get_ident()) to stop; False if it cannot
        self._calls: set[_Call] = set()  # engine calls in progress
        self._pending: deque[_Request] = deque()
        self._waiters: list[tuple[asyncio.Future, Callable[[], bool]]] = []  # workers asleep, and what wakes each
        self._tasks: list[asyncio.Task] = []
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        """Engine calls in progress."""
        return len(self._calls)

    @property
    def stuck(self) -> int:
        """Engine calls in progress for longer than ``stuck_after``."""
        return sum(call.stuck for call in self._calls)

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="effattn-batch")
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self, grace: float | None = None) -> int:
        """Finish what is queued within ``grace`` seconds (None: however long it takes), then stop the workers;
        returns how many engine calls were abandoned (:meth:`_give_up`)."""
        self._closing = True
        self._wake()
        abandoned = 0
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            if late:
                abandoned = await self._give_up(late)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        return abandoned

    async def _give_up(self, workers: set[asyncio.Task]) -> int:
        """Past the grace: refuse every request still waiting (503), ask running calls to stop, give them a
        moment (a terminated run ends at its next node), then leave the workers; returns the calls still running."""
        refusal = QueueFull("the server is shutting down")
        for request in [*self._pending, *(r for call in self._calls for r in call.batch)]:
            if not request.future.done():
                request.future.set_exception(refusal)
        self._pending.clear()
        for call in self._calls:
            if self.terminate is not None and call.thread is not None:
                self.terminate(call.thread)
        await asyncio.wait(workers, timeout=1.0)
        running = len(self._calls)
        for task in workers:
            task.cancel()  # the task only: a thread inside an engine call runs on, abandoned
        return running

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
        feed = (
            batch[0].feed
            if len(batch) == 1
            else {name: np.concatenate([r.feed[name] for r in batch], axis=0) for name in names}
        )
        if self.on_batch:
            self.on_batch(sum(r.items for r in batch))
        stacked = time.monotonic()
        try:
            outputs = await self._call(batch, feed)
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
        lost = [
            f"{name} {value.shape}" for name, value in outputs.items() if np.ndim(value) == 0 or value.shape[0] != total
        ]
        if lost:  # splitting would hand each request someone else's answer: refuse the whole batch
            error = BackendError(
                f"the model's outputs {', '.join(lost)} do not keep the batch axis (axis 0, {total} "
                "items), so batched requests cannot be told apart; serve it with --max-batch-size 1"
            )
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(error)
            return
        start = 0
        for r in batch:
            part = {name: value[start : start + r.items] for name, value in outputs.items()}
            start += r.items
            if not r.future.done():
                r.future.set_result(part)
        self._executed(batch, total, started, stacked, inferred)

    def _executed(self, batch: list[_Request], total: int, started: float, stacked: float, inferred: float) -> None:
        if self.stats is not None:
            ns = [
                int((b - a) * 1e9) for a, b in ((started, stacked), (stacked, inferred), (inferred, time.monotonic()))
            ]
            self.stats.executed(total, [int((started - r.enqueued) * 1e9) for r in batch], ns)

    async def _call(self, batch: list[_Request], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``infer(feed)`` on the batcher's thread, watched: past ``stuck_after`` it is stuck and asked to stop."""
        call = _Call(batch)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.stuck_after, self._overdue, call) if self.stuck_after else None
        self._calls.add(call)
        try:
            return await loop.run_in_executor(self._executor, self._infer_on_thread, call, feed)
        finally:
            self._calls.discard(call)
            if timer is not None:
                timer.cancel()
            if call.stuck:
                log.warning("a stuck engine call ended; the model is ready again")

    def _infer_on_thread(self, call: _Call, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        call.thread = threading.get_ident()
        return self.infer(feed)

    def _overdue(self, call: _Call) -> None:
        call.stuck = True
        stopped = self.terminate is not None and call.thread is not None and self.terminate(call.thread)
        log.warning(
            "an engine call has run for over %g s (%d requests): the model is not ready until it ends; %s",
            self.stuck_after,
            len(call.batch),
            "asked it to stop" if stopped else "its backend cannot stop it",
        )
