"""Dynamic batching: concurrent requests share one engine call, and each still gets exactly
what it would have got alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio
import numpy as np
import pytest
from helpers import metric

from service.core.batching import Batcher
from service.engine import ModelRegistry
from service.settings import Settings
from service.testing import in_process

pytestmark = pytest.mark.anyio


class Recorder:
    """A batch function that doubles its items and records each call's items."""

    def __init__(self, seconds: float = 0.0, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.seconds = seconds
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self.lock:
            self.calls.append(list(items))
        time.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"item {self.fail_on} is bad")
        return [2 * i for i in items]


async def submit_all(batcher: Batcher[int, int], items: list[int], rows: int = 1) -> list[int]:
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        results[i] = await batcher.submit(i, rows)

    async with anyio.create_task_group() as tg:
        for i in items:
            tg.start_soon(one, i)
    return [results[i] for i in items]


async def test_concurrent_submissions_share_one_call_within_the_delay() -> None:
    run = Recorder()
    batcher: Batcher[int, int] = Batcher(run, delay_s=0.05, max_rows=100)
    assert await submit_all(batcher, list(range(20))) == [2 * i for i in range(20)]
    assert run.calls == [list(range(20))]


async def test_a_full_batch_goes_without_waiting_out_the_delay() -> None:
    run = Recorder()
    batcher: Batcher[int, int] = Batcher(run, delay_s=5.0, max_rows=4)
    start = time.monotonic()
    assert await submit_all(batcher, list(range(8))) == [2 * i for i in range(8)]
    assert time.monotonic() - start < 2.0
    assert run.calls == [[0, 1, 2, 3], [4, 5, 6, 7]]


async def test_batches_hold_at_most_max_rows_but_a_large_request_runs_alone() -> None:
    run = Recorder()
    batcher: Batcher[int, int] = Batcher(run, delay_s=0.02, max_rows=6)
    assert await submit_all(batcher, list(range(5)), rows=3) == [0, 2, 4, 6, 8]
    assert [len(c) for c in run.calls] == [2, 2, 1]
    assert await batcher.submit(99, 50) == 198 and run.calls[-1] == [99]


async def test_requests_queued_during_a_call_go_together_in_the_next() -> None:
    run = Recorder(seconds=0.1)
    batcher: Batcher[int, int] = Batcher(run, delay_s=0.0, max_rows=100)
    results: list[int] = []

    async def late(i: int) -> None:
        await anyio.sleep(0.03)  # while the first call runs
        results.append(await batcher.submit(i, 1))

    async with anyio.create_task_group() as tg:
        tg.start_soon(late, 1)
        tg.start_soon(late, 2)
        tg.start_soon(late, 3)
        results.append(await batcher.submit(0, 1))
    assert sorted(results) == [0, 2, 4, 6]
    assert run.calls == [[0], [1, 2, 3]]


async def test_an_error_reaches_every_request_of_its_batch_and_the_batcher_recovers() -> None:
    run = Recorder(fail_on=3)
    batcher: Batcher[int, int] = Batcher(run, delay_s=0.02, max_rows=100)
    outcomes: dict[int, object] = {}

    async def one(i: int) -> None:
        try:
            outcomes[i] = await batcher.submit(i, 1)
        except ValueError as exc:
            outcomes[i] = str(exc)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(one, i)
    assert set(outcomes.values()) == {"item 3 is bad"}
    assert await batcher.submit(4, 1) == 8


async def test_a_cancelled_request_does_not_disturb_the_others() -> None:
    run = Recorder(seconds=0.05)
    batcher: Batcher[int, int] = Batcher(run, delay_s=0.02, max_rows=100)
    with anyio.move_on_after(0.01):
        await batcher.submit(7, 1)  # gives up while queued
    assert await submit_all(batcher, [1, 2]) == [2, 4]
    await batcher.aclose()


# --- through the app: real engine, real onnxruntime --------------------------------------------


def histogram(text: str, name: str, endpoint: str, model: str) -> tuple[float, float]:
    """(count, sum) of a histogram in Prometheus text, for this endpoint and model."""
    count = metric(text, f"{name}_count", endpoint=endpoint, model=model)
    total = metric(text, f"{name}_sum", endpoint=endpoint, model=model)
    assert count is not None and total is not None, f"{name} of {endpoint} {model} not in metrics"
    return count, total


async def test_concurrent_samples_are_merged_and_each_matches_its_seed(
    tiny_store: Path, registry: ModelRegistry
) -> None:
    engine = registry.get("tiny")
    got: dict[int, np.ndarray] = {}
    async with in_process(Settings(store=tiny_store, batch_delay_ms=50), registry) as made:

        async def one(seed: int) -> None:
            got[seed] = (await made.sample(1 + seed % 3, seed=seed)).array()

        async with anyio.create_task_group() as tg:
            for seed in range(32):
                tg.start_soon(one, seed)
        text = await made.metrics()
    for seed in range(32):
        np.testing.assert_array_equal(got[seed], engine.sample(1 + seed % 3, seed))
    calls, requests = histogram(text, "made_batch_requests", "/sample", "tiny")
    assert requests == 32 and calls < 8, (calls, requests)
    rows = histogram(text, "made_batch_rows", "/sample", "tiny")[1]
    assert rows == sum(1 + s % 3 for s in range(32))


async def test_concurrent_logprob_requests_with_the_same_masks_share_a_call(
    tiny_store: Path, registry: ModelRegistry
) -> None:
    engine = registry.get("tiny10")
    rng = np.random.default_rng(0)
    xs = [(rng.random((1 + i % 4, 10)) < 0.5).astype(float) for i in range(16)]
    got: dict[int, list[float]] = {}
    async with in_process(Settings(store=tiny_store, batch_delay_ms=50), registry) as made:

        async def one(i: int) -> None:
            got[i] = (await made.logprob(xs[i], model="tiny10", masks=1)).logprob

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(one, i)
        text = await made.metrics()
    for i, x in enumerate(xs):
        np.testing.assert_allclose(got[i], engine.logprob(x, masks=1).logprob, rtol=1e-5)
    calls, requests = histogram(text, "made_batch_requests", "/logprob", "tiny10")
    assert requests == 16 and calls < 4


async def test_a_large_request_is_split_into_pieces_with_the_same_answer(
    tiny_store: Path, registry: ModelRegistry
) -> None:
    rng = np.random.default_rng(1)
    x = (rng.random((7, 8)) < 0.5).astype(float)
    async with in_process(Settings(store=tiny_store, max_batch=3, batch_delay_ms=0), registry) as made:
        samples = (await made.sample(1000, seed=11, model="tiny", packed=True)).array()
        lp = await made.logprob(x, model="tiny1")
        probs = await made.conditionals(x, model="tiny1")
        text = await made.metrics()
    engine, engine1 = registry.get("tiny"), registry.get("tiny1")
    np.testing.assert_array_equal(samples, engine.sample(1000, 11))
    np.testing.assert_allclose(lp.logprob, engine1.logprob(x).logprob, rtol=1e-5)
    np.testing.assert_allclose(probs.probs, engine1.conditionals(x), rtol=1e-5)
    assert histogram(text, "made_batch_rows", "/sample", "tiny") == (334.0, 1000.0)
    assert histogram(text, "made_batch_rows", "/logprob", "tiny1") == (3.0, 7.0)


async def test_an_item_past_its_timeout_fails_at_its_deadline_whether_waiting_or_running() -> None:
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        time.sleep(0.4 if 1 in items else 0.0)
        return [2 * i for i in items]

    batcher: Batcher[int, int] = Batcher(
        run, delay_s=0.0, max_rows=1, timeout_s=0.1, expired=lambda: TimeoutError("past MADE_REQUEST_TIMEOUT")
    )
    start = time.monotonic()
    running = batcher.enqueue(1, 1)  # its engine call takes 0.4 s
    waiting = batcher.enqueue(2, 1)  # queued behind it (one row a call)
    for future in (running, waiting):
        with pytest.raises(TimeoutError, match="past MADE_REQUEST_TIMEOUT"):
            await future
    assert time.monotonic() - start < 0.3  # at the deadline, not when the running call ends
    await batcher.aclose()  # the running call finishes unobserved
    assert calls == [[1]]  # the item that timed out while waiting was dropped, not run
    # a later item has a deadline of its own and is answered in time
    assert await batcher.submit(3, 1) == 6
    await batcher.aclose()
