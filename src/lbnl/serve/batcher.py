"""Dynamic batching: concurrent requests share one model call without sharing a prompt.

Requests wait in a bounded queue. A gatherer takes the oldest request, waits up to
``batch_wait_s`` after its arrival for more (or until ``max_batch_tokens`` is queued), then hands
the batch to a single worker thread that runs the model (torch releases the GIL, so the event
loop keeps serving). What a batch means for scoring is the runner's business: the rerank runner
calls ``Reranker.rerank_many``, which keeps every request in its own prompts.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("lbnl.serve")


class Overloaded(Exception):
    """The queue is full or the server is stopping: answer 503 with ``Retry-After``."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeout(Exception):
    """A request did not finish within its timeout: answer 504."""


class BatchObserver(Protocol):
    """Hooks for metrics; every call happens on the event loop."""

    def queue_changed(self, depth: int) -> None: ...

    def batch_started(self, requests: int, cost: int) -> None: ...

    def batch_finished(self, requests: int, seconds: float) -> None: ...


@dataclass(eq=False)
class _Job:
    item: Any
    cost: int
    future: asyncio.Future
    enqueued: float


class DynamicBatcher(Generic[T, R]):
    """Queue requests and run them in batches on one worker thread.

    Args:
        runner: called on the worker thread with the items of one batch; returns one result or
            exception per item, in order (an exception fails only its own request).
        max_batch_tokens: stop gathering once the queued cost reaches this; a batch never exceeds
            it unless a single request does.
        batch_wait_s: how long to wait, after the oldest queued request arrived, for companions.
        max_queue: requests allowed to wait; beyond it ``submit`` raises :class:`Overloaded`.
        delay_s: artificial sleep before every batch, for tests and demos of overload (0 in production).
        observer: optional metrics hooks.
    """

    def __init__(
        self,
        runner: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        max_batch_tokens: int,
        batch_wait_s: float,
        max_queue: int,
        delay_s: float = 0.0,
        observer: BatchObserver | None = None,
    ):
        self.runner = runner
        self.max_batch_tokens = max_batch_tokens
        self.batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self.delay_s = delay_s
        self.observer = observer
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_cost = 0
        self._running: list[_Job] = []
        self._closing = False
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._wakeup: asyncio.Event | None = None
        self._avg_batch_s = 0.0

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model (not counting the batch being computed)."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Requests in the batch the worker is computing."""
        return len(self._running)

    async def start(self, warmup: Sequence[T] = ()) -> None:
        """Start the worker thread and the gatherer; run ``warmup`` items once first (results dropped)."""
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lbnl-model")
        self._wakeup = asyncio.Event()
        if warmup:
            await loop.run_in_executor(self._executor, self.runner, list(warmup))
        self._task = asyncio.create_task(self._gather_loop(), name="lbnl-batcher")

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish every queued and running one, then stop the worker.

        After ``timeout`` seconds (if given) whatever is still waiting fails and a batch still
        running is abandoned to its thread, so a stuck model cannot block shutdown forever.
        """
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        finished = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                finished = False
                self._task.cancel()
                log.warning("batcher: requests still unfinished after %g s; abandoning them", timeout)
            finally:
                self._fail_waiting(Overloaded("the server stopped", retry_after=1))
        if self._executor is not None:
            self._executor.shutdown(wait=finished, cancel_futures=True)
        if finished:
            log.info("batcher stopped: queue drained, worker thread finished")

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: about one batch."""
        return max(1, math.ceil(self._avg_batch_s))

    async def submit(self, item: T, cost: int, timeout: float | None) -> R:
        """Queue ``item`` and wait for its result.

        Raises :class:`Overloaded` when the queue is full or the batcher is closing, and
        :class:`RequestTimeout` after ``timeout`` seconds (counted from now, queueing included).
        A request that times out while queued is dropped before it reaches the model; one that
        times out while running finishes and its result is discarded.
        """
        if self._task is None or self._wakeup is None:
            raise RuntimeError("the batcher is not started")
        if self._closing:
            raise Overloaded("the server is shutting down", retry_after=self.retry_after())
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"the server is busy: {self.max_queue} requests are already waiting; retry later",
                             retry_after=self.retry_after())
        loop = asyncio.get_running_loop()
        job = _Job(item, max(1, int(cost)), loop.create_future(), loop.time())
        self._queue.append(job)
        self._queued_cost += job.cost
        self._queue_changed()
        self._wakeup.set()
        try:
            return await asyncio.wait_for(job.future, timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the request did not finish within {timeout:g} s") from None
        finally:
            self._discard(job)

    def _discard(self, job: _Job) -> None:
        try:
            self._queue.remove(job)
        except ValueError:
            return
        self._queued_cost -= job.cost
        self._queue_changed()

    def _queue_changed(self) -> None:
        if self.observer is not None:
            self.observer.queue_changed(len(self._queue))

    async def _gather_loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._queue[0].enqueued + self.batch_wait_s
            while self._queue and not self._closing and self._queued_cost < self.max_batch_tokens:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._execute(batch)

    def _take(self) -> list[_Job]:
        batch: list[_Job] = []
        cost = 0
        while self._queue:
            job = self._queue[0]
            if batch and cost + job.cost > self.max_batch_tokens:
                break
            self._queue.popleft()
            self._queued_cost -= job.cost
            if not job.future.done():
                batch.append(job)
                cost += job.cost
        self._queue_changed()
        if batch and self.observer is not None:
            self.observer.batch_started(len(batch), cost)
        return batch

    async def _execute(self, batch: list[_Job]) -> None:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        self._running = batch
        start = time.perf_counter()
        try:
            items = [j.item for j in batch]
            outcomes: Sequence[Any] = await loop.run_in_executor(self._executor, self._run_batch, items)
        except asyncio.CancelledError:
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(Overloaded("the server stopped", retry_after=1))
            raise
        except Exception as exc:  # noqa: BLE001 - a crashed runner fails its batch, not the server
            log.exception("batch of %d request(s) failed", len(batch))
            outcomes = [exc] * len(batch)
        finally:
            self._running = []
        seconds = time.perf_counter() - start
        self._avg_batch_s = seconds if self._avg_batch_s == 0 else 0.8 * self._avg_batch_s + 0.2 * seconds
        if self.observer is not None:
            self.observer.batch_finished(len(batch), seconds)
        for job, outcome in zip(batch, outcomes):
            if job.future.done():
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def _run_batch(self, items: list[T]) -> Sequence[R | BaseException]:
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        outcomes = self.runner(items)
        if len(outcomes) != len(items):
            raise RuntimeError(f"the runner returned {len(outcomes)} results for {len(items)} requests")
        return outcomes

    def _fail_waiting(self, exc: Exception) -> None:
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(exc)
        self._queued_cost = 0
        self._queue_changed()
