"""No single request can take the server down, table models' side: the table engine's long paths
go through the network in chunks (memory that does not grow with n_importance, the same answer
whatever the chunk size), stop at the next chunk once their request is cancelled, are refused
past MADE_MAX_WORK before anything is built, and a number given far outside the training values
gives records that read back (no "NA" in a column that is never absent)."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_splits
from helpers import cpu_registry

from made.core.bounds import value_bounds
from made.core.errors import InvalidInput
from made.core.schema import ABSENT
from made.store.versions import open_model
from service.core.records import parse_given, parse_records
from service.core.tableplane import TablePlane
from service.engine import ModelRegistry, table_smc
from service.engine import table_engine as te
from service.engine.cancel import Abandoned, CancelToken, running_under
from service.engine.table_engine import TableEngine
from service.settings import Settings
from service.testing import InProcessClient, in_process, providers_under_test

STORE = Path(__file__).resolve().parent.parent / "model_store"


@pytest.fixture(scope="module")
def mixed(table_store: Path) -> TableEngine:
    return TableEngine(open_model(table_store, "mixed"), providers_under_test(), threads=1)


@pytest.fixture(scope="module")
def cats(table_store: Path) -> TableEngine:
    return TableEngine(open_model(table_store, "cats"), providers_under_test(), threads=1)


def _unknowns(engine: TableEngine, records: list[dict[str, Any]]) -> np.ndarray:
    return parse_records(engine.schema, records)


MIXED_ROWS = [{"kind": "x"}, {"size": 2.5, "budget": 2500}]  # the second is weighted under some mask


def _peak(call: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- bounded memory --------------------------------------------------------------------------------


def test_memory_of_logprob_and_impute_does_not_grow_with_n_importance(
    mixed: TableEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the call size, 10x the draws: well under 1.5x the peak (sequential Monte Carlo runs a
    mask's filters MAX_PARTICLES particles at a time, at most PARTICLE_ROWS of them together,
    keeping each filter's estimate and, for impute, a bounded pool of particles to draw from).
    The call size is made small here so that two records reach it."""
    monkeypatch.setattr(table_smc, "PARTICLE_ROWS", 1024)
    values = _unknowns(mixed, MIXED_ROWS)
    assert not mixed.logprob(values, seed=0, n_importance=10).exact.all()
    small = _peak(lambda: mixed.logprob(values, seed=0, n_importance=20000))
    large = _peak(lambda: mixed.logprob(values, seed=0, n_importance=200000))
    assert large < 1.5 * small, (small, large)
    small = _peak(lambda: mixed.impute(values, n_samples=10, seed=0, n_importance=20000))
    large = _peak(lambda: mixed.impute(values, n_samples=10, seed=0, n_importance=200000))
    assert large < 1.5 * small, (small, large)


def test_a_chunk_that_splits_the_draws_gives_the_answer_of_one_big_chunk(
    mixed: TableEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same noise in the same order, whatever the chunks: the same draws and weights (to the
    float32 rounding of the network's outputs, which onnxruntime's batch size can move)."""
    values = _unknowns(mixed, [*MIXED_ROWS, {"kind": "z", "score": 25.0}, {"budget": "NA"}])
    monkeypatch.setattr(te, "CHUNK", 1 << 20)
    one = mixed.logprob(values, seed=3, n_importance=700), mixed.impute(values, n_samples=9, seed=4, n_importance=700)
    sampled = mixed.sample(300, seed=5)
    monkeypatch.setattr(te, "CHUNK", 97)  # splits every row's 1400 draws, and rows across chunks
    two = mixed.logprob(values, seed=3, n_importance=700), mixed.impute(values, n_samples=9, seed=4, n_importance=700)
    np.testing.assert_allclose(two[0].logprob, one[0].logprob, rtol=1e-6)
    np.testing.assert_allclose(two[0].stderr, one[0].stderr, rtol=1e-4, atol=1e-9)
    assert (two[0].exact == one[0].exact).all()
    a, b = one[1], two[1]
    assert np.mean(a.samples == b.samples) > 0.99
    np.testing.assert_allclose(b.logprob_observed, a.logprob_observed, rtol=1e-6)
    np.testing.assert_allclose(b.ess, a.ess, rtol=1e-4)
    for da, db in zip(a.distributions, b.distributions, strict=True):
        assert da.keys() == db.keys()
        for name in da:
            for key, v in da[name].items():
                assert db[name][key] == pytest.approx(v, rel=1e-4, abs=1e-6), (name, key)
    assert np.mean(mixed.sample(300, seed=5) == sampled) > 0.99


# --- cooperative cancellation ----------------------------------------------------------------------


def test_a_cancelled_token_stops_every_long_path_at_its_first_checkpoint(mixed: TableEngine) -> None:
    values = _unknowns(mixed, MIXED_ROWS)
    complete = mixed.sample(3, seed=0)
    token = CancelToken()
    token.cancel("the request timed out")
    calls: list[Callable[[], Any]] = [
        lambda: mixed.logprob(values, seed=0, n_importance=100),
        lambda: mixed.impute(values, n_samples=3, seed=0, n_importance=100),
        lambda: mixed.sample(10, seed=0),
        lambda: mixed.surprisal(complete),
        lambda: mixed.conditionals(complete, 0),
    ]
    with running_under(token):
        for call in calls:
            with pytest.raises(Abandoned, match="timed out"):
                call()
    mixed.logprob(values, seed=0, n_importance=100)  # no token: never abandoned


def test_work_cancelled_midway_stops_at_the_next_chunk(mixed: TableEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token cancelled after the first pass through the network: the call raises Abandoned
    within a chunk's passes instead of running its 400 chunks."""
    values = _unknowns(mixed, MIXED_ROWS)
    monkeypatch.setattr(te, "CHUNK", 100)
    token = CancelToken()
    passes = 0
    params = mixed.params

    def counting(x: np.ndarray, mask: int) -> np.ndarray:
        nonlocal passes
        passes += 1
        token.cancel("client gone")
        return params(x, mask)

    monkeypatch.setattr(mixed, "params", counting)
    for call in (
        lambda: mixed.logprob(values, seed=0, n_importance=10000),
        lambda: mixed.impute(values, n_samples=3, seed=0, n_importance=10000),
    ):
        passes = 0
        token.reason = None
        with running_under(token), pytest.raises(Abandoned):
            call()
        assert 0 < passes <= 2 * (mixed.dims + 1) + mixed.n_masks, passes  # the exact passes and one chunk


# --- the work budget (MADE_MAX_WORK) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(both_store: Path) -> ModelRegistry:
    return cpu_registry(both_store, default_model="mixed")


@pytest.fixture
async def small_budget(both_store: Path, registry: ModelRegistry) -> AsyncIterator[InProcessClient]:
    async with in_process(Settings(store=both_store, default_model="mixed", max_work=500_000), registry) as client:
        yield client


@pytest.mark.anyio
async def test_the_work_budget_refuses_oversized_table_requests_and_admits_normal_ones(
    small_budget: InProcessClient,
) -> None:
    """mixed: 4 columns, 49 outputs, 2 masks. A particle of sequential Monte Carlo (16 draws of
    n_importance) costs 49 units per unknown column it walks (x SMC_UNIT_COST, measured), so
    500,000 admits tens of thousands of draws and refuses 100,000 for twelve records (before any
    is made)."""
    post = small_budget.http.post
    rec = [{"kind": "x"}]
    admitted = [
        ("/logprob", {"model": "mixed", "records": rec, "n_importance": 100}),
        ("/impute", {"model": "mixed", "records": rec * 2, "n_importance": 100}),
        ("/sample", {"model": "mixed", "n": 10}),
        ("/sample", {"model": "mixed", "n": 10, "given": {"kind": "y"}}),
        ("/conditionals", {"model": "mixed", "records": [{"kind": "x", "size": 2.5, "score": 1.5, "budget": "NA"}]}),
        ("/impute", {"model": "tiny", "records": [{"x0": 1}], "n_importance": 100}),
    ]
    for path, body in admitted:
        r = await post(path, json=body)
        assert r.status_code == 200, (path, r.text)
    refused = [
        ("/logprob", {"model": "mixed", "records": rec * 12, "n_importance": 100000}, "n_importance 100000 x 2 masks"),
        ("/impute", {"model": "mixed", "records": rec * 12, "n_importance": 100000}, "n_importance 100000 x 2 masks"),
        ("/sample", {"model": "mixed", "n": 5000}, "n 5000 samples"),
        ("/sample", {"model": "mixed", "n": 8000, "given": {"kind": "y"}}, "x 8000"),
        (
            "/logprob",
            {"model": "mixed", "records": [rec[0] | {"size": 1.0, "score": 1.0, "budget": 9}], "explain": True},
            "explain",
        ),
        ("/impute", {"model": "tiny", "records": [{"x0": 1}], "n_importance": 50000}, "n_importance 50000"),
    ]
    for path, body, what in refused:
        r = await post(path, json=body)
        assert r.status_code == 422, (path, body, r.text)
        detail = r.json()["detail"]
        assert "MADE_MAX_WORK" in detail and what in detail, detail


def test_the_default_budget_admits_default_requests_on_the_shipped_diamonds() -> None:
    """Default sizes on the shipped diamonds model pass Settings().max_work (1,000 records at the
    defaults included); a request of 100000 draws for sixty records with unknown cells does not."""
    engine = cpu_registry(STORE).model("diamonds")  # under the engine contract
    plane = TablePlane(Settings(store=STORE), None, None, lambda: 0)  # type: ignore[arg-type]
    rows = engine.sample(10, seed=0)
    rows[:, ::2] = np.nan
    plane._impute_work(engine, rows, 10, 1000, ())
    plane._impute_work(engine, parse_given(engine.schema, {"carat": 1.0})[None, :], 10, 1000, ())
    many = engine.sample(1000, seed=1)
    many[:, ::2] = np.nan
    plane._impute_work(engine, many, 10, 1000, ())
    with pytest.raises(Exception, match="MADE_MAX_WORK"):
        plane._impute_work(engine, parse_records(engine.schema, [{"price": 500}, {"carat": 1.0}] * 30), 10, 100000, ())


# --- a number given far outside the training values ------------------------------------------------


@pytest.fixture(scope="module")
def power(tmp_path_factory: pytest.TempPathFactory) -> TableEngine:
    """'power': a positive number and its cube (both log-transformed, never absent) and a
    category: given a far x, the model's log y = 3 log x runs past float64."""
    from made.io.tables import load_table_dataset
    from training.export import export_run
    from training.table_model import TableMADEConfig
    from training.train import TrainConfig, Trainer

    base = tmp_path_factory.mktemp("power")
    rng = np.random.default_rng(0)
    x = np.exp(rng.normal(1.0, 0.8, 2000))
    y = x**3 * np.exp(rng.normal(0.0, 0.1, 2000))
    kind = np.where(x > np.e, "big", "small")
    rows = [[f"{a:.3f}", f"{b:.3f}", k] for a, b, k in zip(x, y, kind, strict=True)]
    path = write_splits(base, "power", ["x", "y", "kind"], rows)
    data = load_table_dataset(str(path))
    cfg = TrainConfig(
        dataset=str(path),
        model=TableMADEConfig(columns=data.schema.to_json(), hidden=[16], n_masks=2, direct=True),
        max_epochs=8,
        batch_size=50,
        lr=1e-2,
        patience=8,
    )
    Trainer(cfg, base / "run", data).run(progress=False)
    export_run(base / "run", base / "store", "power")
    return TableEngine(open_model(base / "store", "power"), providers_under_test(), threads=1)


def test_a_far_given_value_on_a_small_table_gives_records_that_read_back(power: TableEngine) -> None:
    """Past its bounds a value is refused, naming them (issue 26); at its largest value the
    records drawn read back, with no "NA" in a column that is never absent."""
    assert [(c.transform, c.nullable) for c in power.schema.columns[:2]] == [("log", False), ("log", False)]
    with pytest.raises(InvalidInput, match=r"given\.x: .* is outside this column's bounds \[0, "):
        parse_given(power.schema, {"x": 1e200})
    far = value_bounds(power.schema.columns[0])[1]
    row = parse_given(power.schema, {"x": far})
    for r in (
        power.impute(row[None, :], n_samples=30, seed=1, n_importance=1000),
        power.impute(parse_records(power.schema, [{"x": far, "kind": "big"}]), n_samples=30, seed=1),
    ):
        _check_valid(power, r.samples[0])
        assert r.distributions[0]["y"]["q95"] is not None


def _check_valid(engine: TableEngine, samples: np.ndarray) -> None:
    for c, col in enumerate(engine.schema.columns):
        if col.kind == "numeric" and not col.nullable:
            assert not (samples[:, c] == ABSENT).any(), f"column {col.name!r} drawn as NA"
    assert not np.isnan(samples).any()
    back = parse_records(engine.schema, engine.schema.decode_rows(samples))  # reads back as records
    engine.logprob(back)


def test_a_far_given_value_gives_records_that_read_back_on_the_shipped_diamonds() -> None:
    engine = cpu_registry(STORE).get("diamonds")
    for name in ("carat", "x"):
        col = engine.schema.columns[engine.schema.index(name)]
        with pytest.raises(InvalidInput, match=f"given.{name}: .* is outside this column's bounds"):
            parse_given(engine.schema, {name: 1e30})
        row = parse_given(engine.schema, {name: value_bounds(col)[1]})
        r = engine.impute(row[None, :], n_samples=20, seed=1, n_importance=1000)
        _check_valid(engine, r.samples[0])


@pytest.mark.anyio
async def test_a_far_given_value_on_a_small_table_gives_valid_records_or_a_422_naming_it(
    both_store: Path, registry: ModelRegistry
) -> None:
    async with in_process(Settings(store=both_store, default_model="mixed"), registry) as made:
        engine = registry.get("mixed")
        for given in ({"size": 1e300}, {"score": 1e30}, {"kind": "z", "score": -1e30}, {"budget": 1e300}):
            for path, body in (
                ("/sample", {"model": "mixed", "n": 30, "seed": 2, "given": given}),
                ("/impute", {"model": "mixed", "records": [given], "n_samples": 30, "seed": 2}),
            ):
                r = await made.http.post(path, json=body)
                if r.status_code == 422:
                    assert any(name in r.json()["detail"] for name in given), r.text
                    continue
                assert r.status_code == 200, r.text
                records = r.json()["records"] if path == "/sample" else r.json()["samples"][0]
                samples = parse_records(engine.schema, records)
                _check_valid(engine, samples)
                back = await made.http.post("/logprob", json={"model": "mixed", "records": records})
                assert back.status_code == 200, back.text
