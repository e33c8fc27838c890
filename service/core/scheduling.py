"""Fair shares of the engine threads between endpoints, and a bounded queue per endpoint.

Every engine call (a merged batch of /logprob rows, one /impute request, ...) runs in one of
`slots` worker threads. When more calls wait than there are free threads, the next thread goes
to the lane (endpoint) that has used the least engine time: start-time fair queuing with each
call charged its lane's running mean cost when it starts and corrected by what it really took
when it ends. A lane that was idle re-enters at the current least charge, so it cannot bank
credit. The lanes whose calls are long (LONG_CALL_S on average) hold at most all threads but
one between them, so a short call never waits for long calls to end (the cost: long calls alone
use one thread fewer). With 16 clients on each of /logprob, /conditionals, /sample and /impute, each lane gets
a quarter of the threads' time: a cheap request waits for at most the calls already running,
not behind every expensive request queued before it (what one FIFO of threads did).

Within one endpoint, calls differ by thousands of times (one exact /logprob row against 300 rows
that need the particle filter), so a call whose request's work (its MADE_MAX_WORK units,
service.core.budget) comes to LONG_CALL_S or more at the engine's measured seconds a unit takes
turns in the endpoint's second lane, "<endpoint> (long)": a short call to the same endpoint then
takes the thread that the long lanes leave free instead of queueing behind it (a one-row
/logprob beside 300-row ones: docs/fairness.md, bench/fairness.py).

`admit` bounds what a lane holds (requests waiting or running): past `max_queue` a request is
refused at once with 503 and a Retry-After estimated from the lane's own mean cost, instead of
waiting without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from made.core.errors import Overloaded

T = TypeVar("T")

# Weight of the newest call in a lane's running mean cost.
_EWMA = 0.2
# Lanes whose calls take longer than this on average (seconds) may hold at most all threads but
# one between them: a thread stays free for short calls, which would otherwise wait for a long
# one to end.
LONG_CALL_S = 0.05
# The lane of an endpoint's calls estimated long (see the module's docstring).
LONG_LANE = "{} (long)"
# Engine seconds a unit of work takes until the server has measured its own: 300 diamonds rows
# needing the particle filter, 14.8 million units, took 6.8-7.2 s on 2 shared cores (4.6e-7 s a
# unit); a faster machine measures less after its first long call.
SECONDS_PER_UNIT = 5e-7


def _mean(mean: float, value: float) -> float:
    """A running mean's next value (the first value as it is)."""
    return value if not mean else (1 - _EWMA) * mean + _EWMA * value


@dataclass
class _Lane:
    charged: float = 0.0  # engine seconds used (estimates for calls still running)
    mean_cost: float = 0.0  # running mean seconds of one call; 0: none seen yet
    waiting: deque[asyncio.Future[float]] = field(default_factory=deque)
    running: int = 0
    held: int = 0  # threads granted to the lane (running, or about to)
    admitted: int = 0  # requests holding a place (waiting, batching or running)
    long: bool = False  # an endpoint's long lane (LONG_LANE): its calls are long by their work
    unsized_cost: float = 0.0  # running mean seconds of the calls that came without their work


class FairScheduler:
    def __init__(self, slots: int, max_queue: int) -> None:
        self.slots = slots
        self.max_queue = max_queue
        self.busy = 0
        self.lanes: dict[str, _Lane] = {}
        # Engine seconds a unit of work takes: the running means of the seconds and of the units
        # of the calls that took LONG_CALL_S or more and were estimated at a tenth of it or more
        # (where the work, not a call's fixed cost or the calls running beside it, decides the
        # time), one over the other; SECONDS_PER_UNIT until one is measured.
        self._long_seconds = 0.0
        self._long_units = 0.0
        # Threads for engine calls; the fair order is decided before a call reaches them.
        self._threads = anyio.CapacityLimiter(slots)

    def _lane(self, name: str) -> _Lane:
        lane = self.lanes.get(name)
        if lane is None:
            lane = self.lanes[name] = _Lane(charged=self._floor(), long=name.endswith(LONG_LANE.format("")))
        return lane

    def _is_long(self, lane: _Lane) -> bool:
        """A lane of long calls: an endpoint's long lane, or one whose calls that came without
        their work (merged batches) take LONG_CALL_S or more on average. Calls sized short stay
        short when calls running beside them slow them down."""
        return lane.long or lane.unsized_cost >= LONG_CALL_S

    def _floor(self) -> float:
        """The least charge of the lanes that have work: where an idle lane re-enters."""
        active = [lane.charged for lane in self.lanes.values() if lane.waiting or lane.running]
        return min(active, default=0.0)

    # --- admission ----------------------------------------------------------------------------
    def enter(self, lane_name: str) -> None:
        """Take one of the lane's `max_queue` places for a request, or raise Overloaded."""
        lane = self._lane(lane_name)
        if lane.admitted >= self.max_queue:
            raise Overloaded(
                f"{lane_name} has {lane.admitted} requests in progress, its limit (MADE_MAX_QUEUE); retry later",
                retry_after=self.retry_after(lane_name),
            )
        lane.admitted += 1

    def leave(self, lane_name: str) -> None:
        self.lanes[lane_name].admitted -= 1

    def admitted(self, lane_name: str) -> int:
        """Requests the lane holds (waiting, batching or running)."""
        lane = self.lanes.get(lane_name)
        return lane.admitted if lane is not None else 0

    @contextlib.asynccontextmanager
    async def admit(self, lane_name: str) -> AsyncIterator[None]:
        """A place in the lane for the whole request (enter, then leave)."""
        self.enter(lane_name)
        try:
            yield
        finally:
            self.leave(lane_name)

    def retry_after(self, lane_name: str) -> int:
        """Whole seconds until the lane's queue has likely drained (at least 1): its requests at
        the mean cost of its calls, or of its long lane's where that is higher (a request
        admitted to the endpoint may be one of those)."""
        lane, long = self._lane(lane_name), self.lanes.get(LONG_LANE.format(lane_name))
        cost = max(lane.mean_cost, long.mean_cost if long is not None else 0.0)
        return max(1, math.ceil(lane.admitted * cost / self.slots))

    # --- engine calls -------------------------------------------------------------------------
    async def run(
        self,
        lane_name: str,
        fn: Callable[..., T],
        *args: Any,
        abandon_on_cancel: bool = False,
        units: int | None = None,
    ) -> T:
        """fn(*args) in a worker thread once the lane's turn comes. units: the call's work, if
        known (service.core.budget); a call it makes long takes turns in the lane's long lane."""
        lane = self._lane(self.lane_for(lane_name, units))
        estimate = await self._acquire(lane)
        lane.running += 1
        start = time.perf_counter()
        finished = False
        try:
            result = await anyio.to_thread.run_sync(
                functools.partial(fn, *args), limiter=self._threads, abandon_on_cancel=abandon_on_cancel
            )
            finished = True
            return result
        finally:
            took = time.perf_counter() - start
            lane.running -= 1
            lane.charged += took - estimate
            # only a call that did all its work says how long its units take (a cancelled one's
            # time is a part of it: 0.08 s of a 7 s call made the rate 91 times too fast)
            if finished and units and took >= LONG_CALL_S and units * self.seconds_per_unit >= LONG_CALL_S / 10:
                self._long_seconds = _mean(self._long_seconds, took)
                self._long_units = _mean(self._long_units, units)
            # the lane of the call's measured class: a long call that ran in the endpoint's own
            # lane, before any rate was known, does not make the short calls' lane look long
            costed = lane if units is None else self._lane(self.lane_for(lane_name, units))
            costed.mean_cost = _mean(costed.mean_cost, took)
            if units is None:
                lane.unsized_cost = _mean(lane.unsized_cost, took)
            self._free(lane)

    @property
    def seconds_per_unit(self) -> float:
        return self._long_seconds / self._long_units if self._long_units else SECONDS_PER_UNIT

    def lane_for(self, lane_name: str, units: int | None) -> str:
        """The lane a call of `units` work takes turns in: the endpoint's own, or its long lane
        where the measured seconds a unit make the call LONG_CALL_S or more."""
        if units is None or units * self.seconds_per_unit < LONG_CALL_S:
            return lane_name
        return LONG_LANE.format(lane_name)

    def _may_take(self, lane: _Lane) -> bool:
        """Whether the lane may take one more thread: the lanes of long calls together keep
        one free (each on its own would leave none when two of them are busy)."""
        if self.slots == 1 or not self._is_long(lane):
            return True
        long_held = sum(other.held for other in self.lanes.values() if self._is_long(other))
        return long_held < self.slots - 1

    def _grant(self, lane: _Lane) -> float:
        """Take a thread for the lane, charging it the lane's mean cost (corrected at the end)."""
        self.busy += 1
        lane.held += 1
        lane.charged += lane.mean_cost
        return lane.mean_cost

    def _free(self, lane: _Lane) -> None:
        self.busy -= 1
        lane.held -= 1
        self._dispatch()

    async def _acquire(self, lane: _Lane) -> float:
        waiting = any(other.waiting for other in self.lanes.values())
        if self.busy < self.slots and not waiting and self._may_take(lane):
            return self._grant(lane)
        if not lane.waiting and not lane.running:  # re-entering: no credit from idle time
            lane.charged = max(lane.charged, self._floor())
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        lane.waiting.append(future)
        self._dispatch()  # a thread may be free that a capped lane could not take
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted just as it was cancelled
                lane.charged -= future.result()
                self._free(lane)
            elif future in lane.waiting:  # _dispatch may have dropped it already
                lane.waiting.remove(future)
            raise

    def _dispatch(self) -> None:
        """Give free threads to the waiting lanes with the least charge."""
        while self.busy < self.slots:
            ready = [lane for lane in self.lanes.values() if lane.waiting and self._may_take(lane)]
            if not ready:
                return
            lane = min(ready, key=lambda candidate: candidate.charged)
            future = lane.waiting.popleft()
            if future.done():  # its request was cancelled (timeout, shutdown) and has not run its except yet
                continue
            future.set_result(self._grant(lane))
