"""The seeds of a call the client splits into batches (service.client.calls.Batches), on the
shipped 'diamonds' table model in a real in-process app: one seed serves every batch (the
caller's, or one the client draws and returns), each batch sent with first_row, the index of its
first record in the call, so a split call answers as one request of all its records with that
seed, whatever max_rows is and after a refused batch is halved."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers import cpu_registry

from service.client import MadeAPIError
from service.engine import ModelRegistry
from service.settings import Settings
from service.testing import InProcessClient, in_process

pytestmark = pytest.mark.anyio

CALLS = ["logprob_records", "impute_records"]
COMPLETE = {"carat": 0.7, "cut": "Ideal", "color": "E", "clarity": "VS2", "depth": 61.5, "table": 56.0}
COMPLETE |= {"price": 2800, "x": 5.7, "y": 5.72, "z": 3.52}


@pytest.fixture(scope="module")
def registry(diamonds_store: Any) -> ModelRegistry:
    return cpu_registry(diamonds_store, "diamonds")


@asynccontextmanager
async def client(registry: ModelRegistry, batch: int, **limits: Any) -> AsyncIterator[InProcessClient]:
    """A client sending at most `batch` records a request, to a fresh app with these settings."""
    settings = Settings(store=registry.store, default_model="diamonds", batch_delay_ms=1, **limits)
    async with in_process(settings, registry) as made:
        made.max_rows = batch
        yield made


def partial(n: int) -> list[dict[str, Any]]:
    """n records with only carat and cut known: their log p and fills are Monte Carlo."""
    return [{"carat": round(0.3 + 0.01 * i, 2), "cut": "Ideal"} for i in range(n)]


def options(name: str) -> dict[str, Any]:
    extra = {"n_samples": 2} if name == "impute_records" else {}
    return {"model": "diamonds", "n_importance": 16, **extra}  # few particles: quick, still seed-dependent


def numbers(answer: Any) -> list[list[Any]]:
    """What an answer of logprob_records or impute_records says of each record."""
    if hasattr(answer, "logprob"):
        return [answer.logprob, answer.stderr, answer.exact]
    return [answer.records, answer.samples, answer.distributions, answer.logprob_observed, answer.stderr]


@pytest.mark.parametrize("name", CALLS)
async def test_a_split_call_without_a_seed_is_repeated_by_the_seed_it_returns(
    registry: ModelRegistry, name: str
) -> None:
    records = partial(20)
    async with client(registry, batch=7) as made:
        ask = getattr(made, name)
        first = await ask(records, **options(name))
        again = await ask(records, seed=first.seed, **options(name))
        fresh = await ask(records, **options(name))
    assert first.seed is not None and not any(first.exact)
    assert numbers(again) == numbers(first) and again.seed == first.seed
    assert fresh.seed != first.seed and numbers(fresh) != numbers(first)  # a fresh seed draws anew


async def test_a_split_call_whose_first_batch_draws_nothing_returns_the_seed_of_the_others(
    registry: ModelRegistry,
) -> None:
    """The first batch's records all complete (nothing drawn: its answer has no seed): the call
    answers with the seed the later batches drew with, and that seed repeats them."""
    records = [COMPLETE] * 7 + partial(9)
    async with client(registry, batch=7) as made:
        first = await made.logprob_records(records, **options("logprob_records"))
        again = await made.logprob_records(records, seed=first.seed, **options("logprob_records"))
        complete = await made.logprob_records([COMPLETE] * 9, model="diamonds")
    assert first.exact == [True] * 7 + [False] * 9 and first.seed is not None
    assert numbers(again) == numbers(first)
    assert complete.seed is None and complete.exact == [True] * 9  # nothing drawn, split or not: no seed


@pytest.mark.parametrize("name", CALLS)
async def test_a_split_call_answers_as_one_request_of_all_the_records(registry: ModelRegistry, name: str) -> None:
    """With the same seed, 20 records in batches of 1, 3, 7 or 19 answer as one request of all
    20 does, every record to the bit: each batch says where its records start (first_row), and
    the server draws row i of a request from default_rng([seed, first_row + i])."""
    records = partial(20)
    async with client(registry, batch=1000) as made:
        whole = await getattr(made, name)(records, seed=5, **options(name))
        for batch in (1, 3, 7, 19):
            made.max_rows = batch
            split = await getattr(made, name)(records, seed=5, **options(name))
            assert split.seed == whole.seed == 5
            assert numbers(split) == numbers(whole), batch
    assert not any(whole.exact)  # every record drew


@pytest.mark.parametrize("seed", [5, None])
async def test_a_batch_halved_after_a_refusal_still_answers_as_one_request(
    registry: ModelRegistry, seed: int | None
) -> None:
    """A server that takes at most 5 records a request: the client's first batch of 7 is
    refused (422, MADE_MAX_ROWS) and halved to 3, and the call still answers as one request of
    all the records with its seed (where the caller gave none, the one the call returns) on a
    server that takes them all."""
    records = partial(20)
    async with client(registry, batch=7, max_rows=5) as made:
        halved = await made.logprob_records(records, seed=seed, **options("logprob_records"))
    async with client(registry, batch=1000) as made:
        whole = await made.logprob_records(records, seed=halved.seed, **options("logprob_records"))
    assert halved.seed is not None and (seed is None or halved.seed == seed)
    assert numbers(halved) == numbers(whole)


async def test_a_split_impute_sent_as_a_data_frame_answers_as_one_request(registry: ModelRegistry) -> None:
    """A DataFrame goes as CSV bodies, first_row in the query string: batches of 6 fill the
    records as one request of all 20 does."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(partial(20))
    async with client(registry, batch=1000) as made:
        whole = await made.impute_records(frame, seed=5, as_frame=True, **options("impute_records"))
        made.max_rows = 6
        split = await made.impute_records(frame, seed=5, as_frame=True, **options("impute_records"))
    pd.testing.assert_frame_equal(split, whole)


async def test_an_error_in_a_later_batch_says_which_records_it_held(registry: ModelRegistry) -> None:
    """The server names a record by its index in its request: records[2] of the third batch of 7
    is the call's record 16, which the error now says, with the batch's span."""
    records = partial(20)
    records[16] = {**records[16], "cut": "Superb"}
    async with client(registry, batch=7) as made:
        with pytest.raises(MadeAPIError) as refused:
            await made.logprob_records(records, **options("logprob_records"))
    detail = refused.value.detail
    assert refused.value.status_code == 422 and detail.startswith("records[2], column 'cut': 'Superb'"), detail
    assert detail.endswith("(in records 14 to 19 of this call: one request, its rows counted from 0)")
    async with client(registry, batch=100) as made:  # one request: its error as the server wrote it
        with pytest.raises(MadeAPIError) as whole:
            await made.logprob_records(records, **options("logprob_records"))
    assert whole.value.detail.startswith("records[16], column 'cut'") and "this call" not in whole.value.detail


async def test_an_explain_call_over_what_a_request_takes_is_split(registry: ModelRegistry) -> None:
    """The explain refusal names MADE_MAX_WORK without the '(' the client looked for, so a call
    over it raised instead of going as smaller batches; it now halves as for any such limit."""
    records = [
        {"carat": 0.3, "cut": "Ideal", "color": "E", "clarity": "SI1", "depth": 61.5, "table": 55.0, "price": 326}
        | {"x": 4.3, "y": 4.35, "z": 2.65},
        {"carat": 0.7, "cut": "Good", "color": "G", "clarity": "VS2", "depth": 62.0, "table": 57.0, "price": 2800}
        | {"x": 5.7, "y": 5.72, "z": 3.54},
    ]
    from service.engine.table_model import TableModel

    engine = TableModel(registry.get("diamonds"))  # type: ignore[arg-type]
    per_record = (engine.explain_passes + 1) * engine.n_masks * engine.width
    async with client(registry, batch=100, max_work=per_record) as made:  # one explained record a request
        split = await made.logprob_records(records, model="diamonds", explain=True)
    async with client(registry, batch=1) as made:
        one_by_one = await made.logprob_records(records, model="diamonds", explain=True)
    assert split.logprob == one_by_one.logprob and split.surprisal == one_by_one.surprisal
