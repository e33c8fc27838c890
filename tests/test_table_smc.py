"""Sequential Monte Carlo for table rows that no ordering answers exactly
(service/engine/table_smc.py), against enumeration on the tiny 'cats' model (4 categorical
columns, 72 records, K=3), trained in the test session (tests/conftest.py's table_store)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from made.core.errors import InvalidInput
from made.core.masks import exact_orders
from made.store.versions import open_model
from service.client import MadeClient
from service.engine import table_smc
from service.engine.table_engine import TableEngine
from service.engine.table_smc import particles_per_mask, systematic
from service.testing import made_serve, providers_under_test

# rows none of whose masks' orderings would all put the known cells first (checked below)
ROWS = np.array([[np.nan, 1, np.nan, 2], [2, np.nan, 3, np.nan], [np.nan, 0, 1, np.nan]])


@pytest.fixture(scope="module")
def cats(table_store: Path) -> TableEngine:
    return TableEngine(open_model(table_store, "cats"), providers_under_test(), threads=1)


@pytest.fixture(scope="module")
def mixture(cats: TableEngine) -> tuple[np.ndarray, np.ndarray]:
    """Every record of the schema and its log p under the mixture of the masks."""
    records = np.array(list(itertools.product(*[range(len(c.levels)) for c in cats.schema.columns])), float)
    logp = np.stack([cats.column_logliks(records, k).sum(axis=1) for k in range(cats.n_masks)])
    return records, np.logaddexp.reduce(logp, axis=0) - np.log(len(logp))


def _truth(records: np.ndarray, mix: np.ndarray, row: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    match = np.all(np.isnan(row) | (records == row), axis=1)
    log_z = float(np.logaddexp.reduce(mix[match]))
    return log_z, records[match], np.exp(mix[match] - log_z)


def test_the_rows_need_smc(cats: TableEngine) -> None:
    exact = exact_orders(cats.orderings, ~np.isnan(ROWS)).all(axis=0)
    assert not exact.any()


def test_log_evidence_is_unbiased(cats: TableEngine, mixture: tuple[np.ndarray, np.ndarray]) -> None:
    """Z_hat / Z over 400 independent filters (one row repeated: each copy its own stream) has
    mean 1 within 3 standard errors, with few particles so that the estimates vary."""
    records, mix = mixture
    for row in ROWS:
        log_z, _, _ = _truth(records, mix, row)
        est = cats.logprob(np.repeat(row[None, :], 400, axis=0), seed=7, n_importance=64)
        ratio = np.exp(est.logprob - log_z)
        assert ratio.std() > 1e-3, "the estimates should vary with 2 particles a filter"
        se = ratio.std(ddof=1) / np.sqrt(len(ratio))
        assert abs(ratio.mean() - 1.0) < 3 * se, (row, ratio.mean(), se)


def test_standard_errors_cover_the_truth(cats: TableEngine, mixture: tuple[np.ndarray, np.ndarray]) -> None:
    records, mix = mixture
    for row in ROWS:
        log_z, _, _ = _truth(records, mix, row)
        est = cats.logprob(np.repeat(row[None, :], 100, axis=0), seed=3, n_importance=256)
        assert (est.stderr > 0).all() and not est.exact.any()
        assert np.mean(np.abs(est.logprob - log_z) < 3 * est.stderr) > 0.8


def test_posterior_marginals_converge(cats: TableEngine, mixture: tuple[np.ndarray, np.ndarray]) -> None:
    """The imputed distributions approach the enumerated posterior as the particles grow."""
    records, mix = mixture
    errors = {}
    for n_importance in (64, 32000):
        worst = 0.0
        result = cats.impute(ROWS, n_samples=2000, seed=11, n_importance=n_importance)
        for i, row in enumerate(ROWS):
            _, match, post = _truth(records, mix, row)
            assert np.all(result.samples[i][:, ~np.isnan(row)] == row[~np.isnan(row)])
            for c in np.flatnonzero(np.isnan(row)):
                col = cats.schema.columns[c]
                truth = np.array([post[match[:, c] == lv].sum() for lv in range(len(col.levels))])
                got = np.array([result.distributions[i][col.name][lv] for lv in col.levels])
                worst = max(worst, float(np.abs(got - truth).max()))
        errors[n_importance] = worst
        particles = cats.n_masks * particles_per_mask(n_importance)
        assert (result.ess > 1).all() and (result.ess <= particles).all()
    assert errors[32000] < 0.03, errors
    assert errors[32000] < errors[64], errors


def test_answers_do_not_depend_on_the_batch_or_its_chunks(cats: TableEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    exact_row = np.full((1, 4), np.nan)  # every ordering answers it exactly: its path is unchanged
    batch = np.concatenate([ROWS, exact_row])
    together = cats.impute(batch, n_samples=4, seed=5, n_importance=200)
    alone = cats.impute(ROWS[1:2], n_samples=4, seed=5, n_importance=200)
    # row 1 alone is row 0 of its call: its stream differs; the batch's row 1 is the same row at index 1
    again = cats.impute(np.concatenate([ROWS[:1], ROWS[1:2]]), n_samples=4, seed=5, n_importance=200)
    np.testing.assert_array_equal(together.samples[1], again.samples[1])
    assert together.logprob_observed[1] == again.logprob_observed[1]
    assert alone.logprob_observed[0] != together.logprob_observed[1]  # a row's stream is its index's
    monkeypatch.setattr(table_smc, "PARTICLE_ROWS", 1)  # one row a chunk
    chunked = cats.impute(batch, n_samples=4, seed=5, n_importance=200)
    np.testing.assert_array_equal(chunked.samples, together.samples)
    # onnxruntime's float32 sums depend on the batch's size by rounding: log p to 1e-6
    np.testing.assert_allclose(chunked.logprob_observed, together.logprob_observed, rtol=1e-6)
    assert together.exact.tolist() == [False, False, False, True]
    exact_alone = cats.impute(np.concatenate([ROWS[:3], exact_row]), n_samples=4, seed=5, n_importance=200)
    np.testing.assert_array_equal(exact_alone.samples[3], together.samples[3])


def test_many_particles_go_through_together_and_rows_keep_their_answers(
    cats: TableEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_PARTICLES a filter, a mask's groups of filters share the network's calls (as
    `given`'s many particles do); a row's answer still does not depend on its chunk of rows (n_importance
    8192: two groups, the pooled particles below the thinning cap)."""
    groups, p = table_smc.filter_layout(8192)
    assert groups > 1
    batched = cats.impute(ROWS, n_samples=4, seed=5, n_importance=8192)
    monkeypatch.setattr(table_smc, "PARTICLE_ROWS", groups * table_smc.FILTERS * p)  # one row a chunk
    chunked = cats.impute(ROWS, n_samples=4, seed=5, n_importance=8192)
    np.testing.assert_array_equal(chunked.samples, batched.samples)
    np.testing.assert_allclose(chunked.logprob_observed, batched.logprob_observed, rtol=1e-6)
    np.testing.assert_allclose(chunked.ess, batched.ess, rtol=1e-6)


def test_systematic_resampling_keeps_each_particle_about_its_share() -> None:
    rng = np.random.default_rng(0)
    w = rng.random((50, 7))
    w /= w.sum(axis=1, keepdims=True)
    idx = systematic(w, rng.random(50))
    counts = np.stack([np.bincount(i, minlength=7) for i in idx])
    assert (counts >= np.floor(7 * w) - 1e-9).all() and (counts <= np.ceil(7 * w) + 1e-9).all()
    assert (np.diff(idx, axis=1) >= 0).all()


def test_the_client_splits_large_record_batches_itself(table_store: Path) -> None:
    """A real `made serve` that takes at most 4 records a request: the client, asked for 4
    per request (split up front) or 1000 (halved on the server's 422), answers all 11 in order."""
    records = [{"a": "red", "c": "q"}, {"b": "yes", "d": "u"}, {"a": "blue"}] * 3 + [{"a": "green", "b": "no"}, {}]
    env = {"MADE_MAX_ROWS": "4", "MADE_LOG_LEVEL": "WARNING", "MADE_API_KEY": "", "MADE_ADMIN_KEY": ""}
    with made_serve(table_store, env=env) as server:
        with MadeClient(server.url, max_rows=1000, timeout=120) as made:
            lp = made.logprob_records(records, model="cats", seed=3, n_importance=64)
            imp = made.impute_records(records, model="cats", seed=3, n_samples=2, n_importance=64)
        with MadeClient(server.url, max_rows=4, timeout=120) as made:
            again = made.logprob_records(records, model="cats", seed=3, n_importance=64)
            frame = made.impute_records(pd.DataFrame(records), model="cats", seed=3, as_frame=True, n_importance=64)
            refused = made.http.post("/logprob", json={"model": "cats", "records": records[:5]})  # not split
            assert refused.status_code == 422 and "MADE_MAX_ROWS" in refused.text
    assert len(lp.logprob) == len(lp.exact) == len(imp.records) == len(imp.samples) == len(records)
    assert lp.exact == again.exact and lp.exact[-1]
    for a, b, ex, se_a, se_b in zip(lp.logprob, again.logprob, lp.exact, lp.stderr, again.stderr, strict=True):
        assert abs(a - b) < (1e-9 if ex else 5 * ((se_a or 0.0) + (se_b or 0.0)) + 0.05)
    assert [r["a"] for r in imp.records][::3] == ["red", "red", "red", "green"]
    assert [r["b"] for r in imp.records][1:9:3] == ["yes", "yes", "yes"]
    assert list(frame.index) == list(range(len(records))) and list(frame["a"])[:3:2] == ["red", "blue"]


def test_a_row_whose_particles_are_thinned_keeps_its_answer_whatever_its_batch(cats: TableEngine) -> None:
    """Past POOL_CAP pooled particles a row's pool is thinned by its own weights and noise: row 1
    answers the same beside two other rows or beside one (the cap is a row's, not the chunk's)."""
    n_importance = 16 * 2 * table_smc.POOL_CAP  # more than POOL_CAP particles under one mask
    three = cats.impute(ROWS[:3], n_samples=4, seed=5, n_importance=n_importance)
    two = cats.impute(ROWS[:2], n_samples=4, seed=5, n_importance=n_importance)
    np.testing.assert_array_equal(three.samples[1], two.samples[1])
    # to the bit: the network's outputs for a row do not depend on the rows beside it, even where
    # a pass holds one row (TableEngine.params)
    assert three.logprob_observed[1] == two.logprob_observed[1]
    assert three.ess[1] == two.ess[1]


def test_a_rows_estimate_is_the_same_to_the_bit_alone_or_in_a_batch_with_its_own_seed() -> None:
    """row_seeds: each row draws from its own seed as if it came alone (made score's batches of
    rows with unknown cells). On the shipped diamonds (numeric heads, float32 outputs): one call
    for them all gives each row exactly what the row alone gives."""
    engine = TableEngine(open_model(Path(__file__).resolve().parent.parent / "model_store", "diamonds"), threads=1)
    rows = engine.sample(12, seed=4)
    rows[::2, 0] = np.nan  # carat unknown
    rows[1::2, 5] = np.nan  # table unknown
    rows[::3, 2] = np.nan  # and color, every third
    assert not exact_orders(engine.orderings, ~np.isnan(rows)).all(axis=0).any()
    seeds = np.arange(100, 112)
    together = engine.logprob(rows, seed=0, n_importance=160, row_seeds=seeds)
    for i in range(len(rows)):
        alone = engine.logprob(rows[i : i + 1], seed=int(seeds[i]), n_importance=160)
        assert (alone.logprob[0], alone.stderr[0]) == (together.logprob[i], together.stderr[i]), i
    # the request's seed and a row's index no longer matter; another row seed does
    again = engine.logprob(rows[::-1], seed=9, n_importance=160, row_seeds=seeds[::-1])
    np.testing.assert_array_equal(again.logprob[::-1], together.logprob)
    other = engine.logprob(rows, seed=0, n_importance=160, row_seeds=seeds + 1)
    assert not np.any(other.logprob == together.logprob)
    with pytest.raises(InvalidInput, match="row_seeds"):
        engine.logprob(rows, row_seeds=seeds[:3])


def test_the_first_tail_column_is_drawn_from_the_filters_last_pass(
    cats: TableEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row's filter ends with a pass that has seen every cell its first tail column reads: that
    column is drawn from the outputs the filter kept, one pass a completed particle fewer than
    a fresh pass for it, and the answers are the fresh pass's."""
    rows = [0]
    params = cats.params

    def counting(values: np.ndarray, k: int) -> np.ndarray:
        rows[0] += len(values)
        return params(values, k)

    monkeypatch.setattr(cats, "params", counting)
    kept = cats.impute(ROWS, n_samples=300, seed=5, n_importance=200)
    kept_rows, rows[0] = rows[0], 0
    filter_ = table_smc._filter

    def forgetting(*args, **kwargs):  # type: ignore[no-untyped-def]
        z, lw, x, first = filter_(*args, **kwargs)
        first[:] = np.nan  # nothing kept: every tail cell a pass of its own, as before
        return z, lw, x, first

    monkeypatch.setattr(table_smc, "_filter", forgetting)
    fresh = cats.impute(ROWS, n_samples=300, seed=5, n_importance=200)
    np.testing.assert_array_equal(kept.samples, fresh.samples)
    assert kept.distributions == fresh.distributions
    np.testing.assert_array_equal(kept.logprob_observed, fresh.logprob_observed)
    # each of the 3 rows' 300 completions has a tail under some masks: up to one pass each saved
    assert 0 < rows[0] - kept_rows <= 3 * 300
