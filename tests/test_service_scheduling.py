"""Fair turns between endpoints (service.core.scheduling) and the bounded queue per endpoint: a cheap
request is not served after every expensive request queued before it, and past MADE_MAX_QUEUE an
endpoint answers 503 with Retry-After at once."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import metric

from made.core.errors import MadeError
from service.core.scheduling import LONG_LANE, SECONDS_PER_UNIT, FairScheduler
from service.http.app import create_app
from service.http.errors import Overloaded
from service.settings import Settings
from service.testing import in_process

pytestmark = pytest.mark.anyio


def _job(log: list[str], name: str, seconds: float, lock: threading.Lock) -> str:
    with lock:
        log.append(name)
    time.sleep(seconds)
    return name


async def test_a_cheap_lane_gets_the_next_thread_not_a_place_behind_an_expensive_backlog() -> None:
    scheduler = FairScheduler(slots=1, max_queue=100)
    started: list[str] = []
    lock = threading.Lock()
    slow = [asyncio.create_task(scheduler.run("/impute", _job, started, f"impute{i}", 0.2, lock)) for i in range(8)]
    await asyncio.sleep(0.01)  # impute0 runs, impute1..7 wait for the one thread
    fast = asyncio.create_task(scheduler.run("/logprob", _job, started, "logprob", 0.0, lock))
    assert await fast == "logprob"
    await asyncio.gather(*slow)
    # FIFO would start logprob ninth; fair turns start it as soon as impute0 frees the thread
    assert started.index("logprob") == 1, started


async def test_lanes_with_work_share_the_threads_by_time_used() -> None:
    """Two lanes keep 6 calls each queued on one thread; the lane whose calls take 3x as long
    gets about a third as many turns while both have work."""
    scheduler = FairScheduler(slots=1, max_queue=100)
    started: list[str] = []
    lock = threading.Lock()
    tasks = [
        asyncio.create_task(scheduler.run(lane, _job, started, lane, seconds, lock))
        for lane, seconds in [("slow", 0.06), ("quick", 0.02)]
        for _ in range(6)
    ]
    await asyncio.gather(*tasks)
    first_eight = started[:8]
    assert 1 <= first_eight.count("slow") <= 3, started
    assert sorted(started) == ["quick"] * 6 + ["slow"] * 6


async def test_a_waiting_call_that_is_cancelled_gives_its_turn_away() -> None:
    scheduler = FairScheduler(slots=1, max_queue=100)
    started: list[str] = []
    lock = threading.Lock()
    first = asyncio.create_task(scheduler.run("a", _job, started, "a0", 0.2, lock))
    await asyncio.sleep(0.01)
    doomed = asyncio.create_task(scheduler.run("b", _job, started, "b0", 0.0, lock))
    later = asyncio.create_task(scheduler.run("c", _job, started, "c0", 0.0, lock))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await first == "a0" and await later == "c0"
    assert started == ["a0", "c0"] and scheduler.busy == 0


async def test_past_the_queue_limit_a_lane_is_refused_with_a_retry_after() -> None:
    scheduler = FairScheduler(slots=1, max_queue=2)
    async with scheduler.admit("/impute"), scheduler.admit("/impute"):
        with pytest.raises(Overloaded, match="/impute has 2 requests in progress") as info:
            async with scheduler.admit("/impute"):
                pass
        assert info.value.retry_after >= 1
        async with scheduler.admit("/logprob"):  # other endpoints keep their own places
            pass
    async with scheduler.admit("/impute"):  # places are given back
        pass


async def test_over_http_the_extra_request_gets_503_with_retry_after(tiny_store: Path) -> None:
    cfg = Settings(store=tiny_store, default_model="tiny", max_queue=1, threads=1)
    rows = np.random.default_rng(0).integers(0, 2, (300, 8)).astype(float)
    rows[:, :3] = np.nan  # likelihood weighting: a request that takes a while
    body = {"x": [[None if v != v else int(v) for v in r] for r in rows], "n_importance": 200}
    async with in_process(cfg) as made:
        while (await made.http.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.05)
        answers = await asyncio.gather(*(made.http.post("/impute", json=body) for _ in range(3)))
        statuses = sorted(r.status_code for r in answers)
        assert statuses[0] == 200 and 503 in statuses, statuses
        refused = next(r for r in answers if r.status_code == 503)
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["type"] == "overloaded" and "MADE_MAX_QUEUE" in refused.json()["detail"]
        # another endpoint is not refused for /impute's queue
        r = await made.http.post("/logprob", json={"x": [[0] * 8]})
        assert r.status_code == 200
        metrics = (await made.http.get("/metrics")).text
        refusals = statuses.count(503)
        assert metric(metrics, "made_overloaded_total", endpoint="/impute") == refusals
        assert metric(metrics, "made_endpoint_requests", endpoint="/impute") == 0.0  # every place given back


async def test_overloaded_is_a_made_error() -> None:
    assert issubclass(Overloaded, MadeError)


def _long_calls(started: list[str], lock: threading.Lock) -> tuple[Callable[[str], str], dict[str, int]]:
    """A 0.2 s call logged in `started`, and a count of how many run at once ("most": the peak)."""
    now = {"long": 0, "most": 0}

    def long_call(name: str) -> str:
        with lock:
            now["long"] += 1
            now["most"] = max(now["most"], now["long"])
        try:
            return _job(started, name, 0.2, lock)
        finally:
            with lock:
                now["long"] -= 1

    return long_call, now


async def test_a_lane_of_long_calls_leaves_a_thread_free_for_short_ones() -> None:
    scheduler = FairScheduler(slots=2, max_queue=100)
    started: list[str] = []
    lock = threading.Lock()
    long_call, now = _long_calls(started, lock)

    await scheduler.run("/impute", long_call, "first")  # its mean cost is now above LONG_CALL_S
    backlog = [asyncio.create_task(scheduler.run("/impute", long_call, f"impute{i}")) for i in range(4)]
    await asyncio.sleep(0.01)
    quick = await scheduler.run("/logprob", _job, started, "logprob", 0.0, lock)
    # at once, while impute0 still runs: had it waited for impute0 to end, impute1 would have
    # started then too (its lane holds no thread once impute0 is done)
    assert quick == "logprob" and "impute1" not in started, started
    await asyncio.gather(*backlog)
    assert now["most"] == 1  # never both threads: one stayed free


async def test_two_lanes_of_long_calls_together_leave_a_thread_free_for_short_ones() -> None:
    """/sample and /impute both busy with long calls on 2 threads: /conditionals still gets one
    at once (each long lane capped on its own would hold one thread each, leaving none)."""
    scheduler = FairScheduler(slots=2, max_queue=100)
    started: list[str] = []
    lock = threading.Lock()
    long_call, now = _long_calls(started, lock)

    await scheduler.run("/impute", long_call, "impute-first")  # both lanes' mean costs are now long
    await scheduler.run("/sample", long_call, "sample-first")
    backlog = [
        asyncio.create_task(scheduler.run(lane, long_call, f"{lane}{i}"))
        for i in range(3)
        for lane in ("/impute", "/sample")
    ]
    await asyncio.sleep(0.01)
    quick = await scheduler.run("/conditionals", _job, started, "conditionals", 0.0, lock)
    # at once: the first long call is still running, so no second one has started
    assert quick == "conditionals" and len([n for n in started if n.endswith(("0", "1", "2"))]) == 1, started
    await asyncio.gather(*backlog)
    assert now["most"] == 1  # never two long calls at once: one thread stayed free


async def test_within_one_endpoint_a_short_call_does_not_queue_behind_long_ones() -> None:
    """One endpoint, calls of two sizes (one exact /logprob row beside 300 rows that need the
    particle filter): a call whose work (its units) makes it long takes turns in the endpoint's
    long lane, so a short call to the same endpoint takes the thread the long lanes leave free
    instead of waiting for the long calls before it. In one lane, long0 and long1 took both
    threads and the short call waited for one of them to end."""
    scheduler = FairScheduler(slots=2, max_queue=100)
    started: list[str] = []
    lock = threading.Lock()
    long_call, now = _long_calls(started, lock)
    units = int(1.0 / SECONDS_PER_UNIT)  # a second's work before any call is measured: long
    backlog = [asyncio.create_task(scheduler.run("/logprob", long_call, f"long{i}", units=units)) for i in range(3)]
    await asyncio.sleep(0.01)
    short = await scheduler.run("/logprob", _job, started, "short", 0.0, lock, units=1000)
    assert short == "short" and started[:2] == ["long0", "short"], started
    await asyncio.gather(*backlog)
    assert now["most"] == 1  # the long calls kept a thread free
    assert sorted(scheduler.lanes) == ["/logprob", LONG_LANE.format("/logprob")]
    # the engine's speed is measured: 0.2 s for `units` (about 0.2 s; the calls' overheads add a little)
    assert scheduler.seconds_per_unit == pytest.approx(0.2 / units, rel=0.25)


async def test_a_short_call_slowed_by_others_is_not_taken_for_a_long_one() -> None:
    """A 1,000-unit call that took 0.2 s (calls beside it had the cores) neither changes the
    measured seconds a unit nor makes its endpoint's lane one of long calls: the next short call
    to the endpoint still gets the thread a long call leaves free."""
    scheduler = FairScheduler(slots=2, max_queue=100)
    started: list[str] = []
    lock = threading.Lock()
    await scheduler.run("/logprob", _job, started, "slowed", 0.2, lock, units=1000)
    assert scheduler.seconds_per_unit == SECONDS_PER_UNIT
    assert scheduler.lane_for("/logprob", 1000) == "/logprob"
    long_call, _ = _long_calls(started, lock)
    running = asyncio.create_task(scheduler.run("/logprob", long_call, "long", units=int(1.0 / SECONDS_PER_UNIT)))
    await asyncio.sleep(0.01)
    await scheduler.run("/logprob", _job, started, "short", 0.0, lock, units=1000)
    assert not running.done(), started  # it ran beside the long call, not after it
    await running


async def test_over_http_a_request_goes_to_the_lane_its_work_makes(tiny_store: Path) -> None:
    """The units a request's budget check allowed reach its engine call: 300 rows that need the
    particle filter take turns in /impute's long lane, one exact row in /impute's own."""
    cfg = Settings(store=tiny_store, default_model="tiny", threads=2)
    app = create_app(cfg)
    rows = np.random.default_rng(0).integers(0, 2, (300, 8)).astype(float)
    rows[:, :3] = np.nan
    heavy = {"x": [[None if v != v else int(v) for v in r] for r in rows], "n_importance": 200}
    light = {"x": [[0, 1, 0, 1, 0, 1, 0, 1]]}  # nothing missing: a pass of one row
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://made.test") as http,
        app.router.lifespan_context(app),
    ):
        while (await http.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.05)
        scheduler = app.state.dataplane.scheduler
        assert (await http.post("/impute", json=light)).status_code == 200
        assert sorted(scheduler.lanes) == ["/impute"]
        assert (await http.post("/impute", json=heavy)).status_code == 200
        assert sorted(scheduler.lanes) == ["/impute", LONG_LANE.format("/impute")]
        assert scheduler.lanes[LONG_LANE.format("/impute")].mean_cost > 0  # the heavy call ran there


async def test_a_cancelled_long_call_does_not_teach_the_seconds_a_unit() -> None:
    """A long call cancelled 0.08 s into its 7 s fed its part time with its whole work to the
    measured seconds a unit (91 times too fast): calls seconds long were then sized short."""
    scheduler = FairScheduler(slots=2, max_queue=100)
    units = int(7.0 / SECONDS_PER_UNIT)
    started = threading.Event()

    def slow() -> None:
        started.set()
        time.sleep(0.3)

    task = asyncio.create_task(scheduler.run("/logprob", slow, abandon_on_cancel=True, units=units))
    while not started.is_set():
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.08)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert scheduler.seconds_per_unit == SECONDS_PER_UNIT
    assert scheduler.lane_for("/logprob", units // 7) == LONG_LANE.format("/logprob")  # a second's work: long


async def test_retry_after_counts_an_endpoints_long_calls() -> None:
    """Admission counts requests on the endpoint's lane, whose mean cost held only its short
    calls once long ones took turns in its long lane: a queue of 0.5 s calls said Retry-After 1."""
    scheduler = FairScheduler(slots=1, max_queue=4)
    units = int(1.0 / SECONDS_PER_UNIT)
    await scheduler.run("/impute", time.sleep, 0.5, units=units)  # its long lane's mean: 0.5 s
    async with contextlib.AsyncExitStack() as places:
        for _ in range(4):
            await places.enter_async_context(scheduler.admit("/impute"))
        with pytest.raises(Overloaded) as info:
            async with scheduler.admit("/impute"):
                pass
    assert info.value.retry_after >= 2  # 4 requests x 0.5 s (and a little) on 1 thread; it said 1


async def test_a_png_of_samples_is_not_charged_the_sampling_work() -> None:
    """/sample's budget check sized the sampling, which goes through the batcher; the PNG render
    after it took those units and waited in '/sample (long)' as if it were the sampling."""
    store = Path(__file__).resolve().parent.parent / "model_store"
    app = create_app(Settings(store=store, default_model="binarized-mnist", threads=2))
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://made.test") as http,
        app.router.lifespan_context(app),
    ):
        while (await http.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.05)
        r = await http.post("/sample", json={"n": 100, "seed": 1}, headers={"Accept": "image/png"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert LONG_LANE.format("/sample") not in app.state.dataplane.scheduler.lanes
