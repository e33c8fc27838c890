"""Dynamic batching: concurrent requests to one model merged into one engine call.

Like Triton's dynamic batcher: the first request to reach an idle queue waits at most
`delay_s` (max_queue_delay) for others, unless `max_rows` are queued sooner; while an engine
call runs, new requests queue up and go together in the next call. Each batcher has one worker
task and at most one engine call in flight, which runs in a thread (the engine is CPU-bound and
releases the GIL inside onnxruntime and numpy).

The caller supplies `run(items) -> results`, one result per item, so the batcher knows nothing
of models: the data plane concatenates rows (or noise) and splits the output.

With `timeout_s`, an item not answered that long after it was queued fails with `expired()`
(the data plane's 504), whether it still waits or its engine call runs (which then finishes
unobserved). Every item gets the same timeout, so deadlines come in the order items are queued:
one timer, for the oldest item still unanswered, serves them all (a timer per request cost
more than the rest of the batching of a one-row request).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio.to_thread

log = logging.getLogger("made.service.batching")

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    rows: int
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.monotonic)


class Batcher(Generic[T, R]):
    def __init__(
        self,
        run: Callable[[list[T]], list[R]],
        *,
        delay_s: float,
        max_rows: int,
        execute: Callable[[Callable[[list[T]], list[R]], list[T]], Awaitable[list[R]]] | None = None,
        observe: Callable[[int, int, float], None] | None = None,
        timeout_s: float | None = None,
        expired: Callable[[], Exception] = TimeoutError,
    ) -> None:
        self._run = run
        self.delay_s = delay_s
        self.max_rows = max_rows
        # How an engine call runs: in a worker thread by default; the data plane passes its fair
        # scheduler's turn-taking (service.core.scheduling).
        self._execute = execute or _in_thread
        self._observe = observe  # (rows, requests, seconds) of each engine call
        self._queue: deque[_Pending[T, R]] = deque()
        self._queued_rows = 0
        self._full = asyncio.Event()
        # Concurrency seen at the end of the last engine call (its requests + those queued
        # meanwhile), and an event set when the queue is back to that size: clients served by
        # one call come back while the next group waits, and merging them keeps one batch of
        # all clients instead of two alternating half-size ones.
        self._target = 1
        self._regrouped = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.timeout_s = timeout_s
        self._expired = expired
        # Futures not answered yet, with their deadlines, oldest first (dicts keep insertion
        # order); the timer is set for the first of them.
        self._deadlines: dict[asyncio.Future[R], float] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def submit(self, item: T, rows: int) -> R:
        """Queue one request's work; returns its own result once its batch has run."""
        return await self.enqueue(item, rows)

    def enqueue(self, item: T, rows: int) -> asyncio.Future[R]:
        """Queue one request's work; the future gets its result once its batch has run. A
        future done before then (an exception set, cancelled) drops the work if it has not run."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        pending = _Pending(item, rows, future)
        self._queue.append(pending)
        if self.timeout_s is not None:
            self._deadlines[future] = pending.enqueued + self.timeout_s
            if self._timer is None:
                self._timer = loop.call_later(self.timeout_s, self._expire_due)
        self._queued_rows += rows
        if self._queued_rows >= self.max_rows:
            self._full.set()
        if len(self._queue) >= self._target:
            self._regrouped.set()
        if self._worker is None or self._worker.done():
            # A fresh context: the worker serves many requests, it must not log as the first one.
            self._worker = asyncio.create_task(self._work(), context=contextvars.Context())
        return future

    async def aclose(self) -> None:
        """Let queued work finish (graceful shutdown)."""
        if self._worker is not None:
            await asyncio.shield(self._worker)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire_due(self) -> None:
        """Fail the items past their deadline; set the timer for the next one."""
        self._timer = None
        now = time.monotonic()
        deadlines = self._deadlines
        while deadlines:
            future = next(iter(deadlines))
            deadline = deadlines[future]
            if deadline > now:
                self._timer = asyncio.get_running_loop().call_later(deadline - now, self._expire_due)
                return
            del deadlines[future]
            if not future.done():
                future.set_exception(self._expired())

    def _answered(self, future: asyncio.Future[R]) -> None:
        self._deadlines.pop(future, None)

    def _take(self) -> list[_Pending[T, R]]:
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= self.max_rows:
            rows += self._queue[0].rows
            batch.append(self._queue.popleft())
        self._queued_rows -= rows
        if self._queued_rows < self.max_rows:
            self._full.clear()
        return batch

    async def _work(self) -> None:
        last_call = 0.0  # seconds of the previous engine call of this worker; 0: none yet
        while self._queue:
            await self._gather(last_call)
            batch = self._live(self._take())
            seconds = await self._call(batch) if batch else None
            if seconds is not None:
                last_call = seconds

    async def _gather(self, last_call: float) -> None:
        """Wait for the requests that should go with the oldest one into the next call."""
        # Triton's rule: the oldest request waits at most delay_s since it arrived (it may
        # have waited through the previous engine call already).
        wait = self.delay_s - (time.monotonic() - self._queue[0].enqueued)
        if wait > 0 and self._queued_rows < self.max_rows:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), wait)
        elif last_call and len(self._queue) < self._target and self._queued_rows < self.max_rows:
            # Under concurrent load, wait (at most half a call) for the clients that the
            # last call answered, rather than alternate between two half-full batches.
            self._regrouped.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._regrouped.wait(), max(self.delay_s, last_call / 2))

    def _live(self, taken: list[_Pending[T, R]]) -> list[_Pending[T, R]]:
        """The taken requests still waiting for their answer (not timed out, not gone)."""
        batch = []
        for p in taken:
            if p.future.done():
                self._answered(p.future)
            else:
                batch.append(p)
        return batch

    async def _call(self, batch: list[_Pending[T, R]]) -> float | None:
        """One engine call for the batch, each request answered its result (or the call's
        error); the call's seconds, None if it failed."""
        items = [p.item for p in batch]
        start = time.perf_counter()
        try:
            results = await self._execute(self._run, items)
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
        except Exception as exc:  # every request of the batch gets the error
            for p in batch:
                self._answered(p.future)
                if not p.future.done():
                    p.future.set_exception(exc)
            return None
        seconds = time.perf_counter() - start
        self._target = len(batch) + len(self._queue)
        if self._observe is not None:
            self._observe(sum(p.rows for p in batch), len(batch), seconds)
        for p, result in zip(batch, results, strict=True):
            self._answered(p.future)
            if not p.future.done():
                p.future.set_result(result)
        return seconds


async def _in_thread(run: Callable[[list[T]], list[R]], items: list[T]) -> list[R]:
    return await anyio.to_thread.run_sync(run, items)
