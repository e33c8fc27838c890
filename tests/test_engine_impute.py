"""Engine.impute against enumeration of p(x_missing | x_observed) on the tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from made.errors import InvalidInput
from service.engine.engine import Engine, ImputeResult

Joint = dict[str, tuple[np.ndarray, np.ndarray]]  # see the tiny_joint fixture


def enumerated_posterior(x_all: np.ndarray, p: np.ndarray,
                         row: np.ndarray) -> tuple[float, np.ndarray]:
    """(log p(x_O), p(x_d = 1 | x_O) for every d) of one row (NaN = missing) under p (2^D,)."""
    obs = ~np.isnan(row)
    match = (x_all[:, obs] == row[obs]).all(axis=1)
    weights = p[match] / p[match].sum()
    return float(logsumexp(np.log(p[match]))), weights @ x_all[match]


def assert_marginals_within_four_standard_errors(result: ImputeResult, rows: np.ndarray,
                                                 x_all: np.ndarray, p: np.ndarray) -> None:
    """Monte Carlo marginals: the binomial standard error sqrt(p (1 - p) / ESS) per entry."""
    for i, row in enumerate(rows):
        _, truth = enumerated_posterior(x_all, p, row)
        se = np.sqrt(truth * (1 - truth) / result.ess[i])
        assert (np.abs(result.marginals[i] - truth) <= 4 * se + 1e-9).all(), (
            f"row {i}: marginals {np.round(result.marginals[i], 3)}, truth {np.round(truth, 3)}"
        )


def likely_rows(engine: Engine, n: int, seed: int) -> np.ndarray:
    return engine.sample(n, seed=seed).astype(np.float64)


def test_trailing_missing_dimensions_of_a_natural_order_model_are_imputed_exactly(
    tiny_engines: dict[str, Engine], tiny_joint: Joint
) -> None:
    engine = tiny_engines["tiny1"]
    x_all, logp = tiny_joint["tiny1"]
    p = np.exp(logp[0])
    rows = likely_rows(engine, 4, seed=1)
    for i, m in enumerate((1, 2, 4, 8)):
        rows[i, 8 - m :] = np.nan
    result = engine.impute(rows, n_samples=5, seed=0, n_importance=1000)
    assert result.exact.all() and np.isnan(result.stderr).all()
    truth = [enumerated_posterior(x_all, p, row)[0] for row in rows]
    np.testing.assert_allclose(result.logprob_observed, truth, rtol=0, atol=1e-5)
    assert_marginals_within_four_standard_errors(result, rows, x_all, p)


@pytest.mark.parametrize("name", ["tiny", "tiny10"])
def test_out_of_order_missing_dimensions_are_estimated_within_four_standard_errors(
    name: str, tiny_engines: dict[str, Engine], tiny_joint: Joint
) -> None:
    engine = tiny_engines[name]
    x_all, logp = tiny_joint[name]
    p = np.exp(logp).mean(axis=0)
    firsts = sorted({int(order[0]) for order in engine.orderings})
    rows = likely_rows(engine, 4, seed=2)
    rows[0, firsts] = np.nan
    rows[1, [*firsts[:1], 4]] = np.nan
    rows[2, 1::2] = np.nan
    rows[3, firsts[-1:]] = np.nan
    result = engine.impute(rows, n_samples=5, seed=1, n_importance=2000)
    assert not result.exact.any()
    assert np.isfinite(result.stderr).all() and (result.stderr > 0).all()
    truth = np.array([enumerated_posterior(x_all, p, row)[0] for row in rows])
    z = (result.logprob_observed - truth) / result.stderr
    assert np.abs(z).max() < 4, f"log p(x_O) errors in standard errors: {np.round(z, 2)}"
    assert_marginals_within_four_standard_errors(result, rows, x_all, p)


def test_completions_are_drawn_from_the_posterior_of_the_missing_values(
    tiny_engines: dict[str, Engine], tiny_joint: Joint
) -> None:
    engine = tiny_engines["tiny"]
    x_all, logp = tiny_joint["tiny"]
    row = likely_rows(engine, 1, seed=3)
    row[0, [0, 2, 5, 7]] = np.nan
    n_samples = 3000
    result = engine.impute(row, n_samples=n_samples, seed=2, n_importance=3000)
    _, truth = enumerated_posterior(x_all, np.exp(logp).mean(axis=0), row[0])
    freq = result.samples[0].mean(axis=0)
    # resampled from a weighted pool: the pool's error and the resampling error add up
    se = np.sqrt(truth * (1 - truth) * (1 / result.ess[0] + 1 / n_samples))
    assert (np.abs(freq - truth) <= 4 * se + 1e-9).all()


def test_completions_keep_every_observed_value(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines["tiny10"]
    rows = likely_rows(engine, 5, seed=4)
    rows[np.random.default_rng(0).random(rows.shape) < 0.4] = np.nan
    result = engine.impute(rows, n_samples=7, seed=3, n_importance=50)
    assert result.samples.shape == (5, 7, 10) and result.samples.dtype == np.uint8
    observed = ~np.isnan(rows)
    for i in range(5):
        np.testing.assert_array_equal(result.samples[i][:, observed[i]],
                                      np.broadcast_to(rows[i, observed[i]], (7, observed[i].sum())))
        np.testing.assert_array_equal(result.marginals[i, observed[i]], rows[i, observed[i]])
    assert set(np.unique(result.samples)) <= {0, 1}


def test_a_fully_observed_row_returns_itself(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines["tiny"]
    rows = likely_rows(engine, 2, seed=5)
    result = engine.impute(rows, n_samples=3, seed=0, n_importance=100)
    np.testing.assert_array_equal(result.samples, np.repeat(rows[:, None, :], 3, axis=1))
    np.testing.assert_array_equal(result.marginals, rows)
    np.testing.assert_allclose(result.logprob_observed, engine.logprob(rows).logprob, atol=1e-9)
    assert result.exact.all()


def test_effective_sample_size_is_positive_and_at_most_k_times_the_draws(
    tiny_engines: dict[str, Engine],
) -> None:
    engine = tiny_engines["tiny"]
    rows = likely_rows(engine, 4, seed=6)
    rows[0, :] = np.nan
    rows[1, [1, 6]] = np.nan
    rows[2, ::3] = np.nan
    result = engine.impute(rows, n_samples=2, seed=0, n_importance=300)
    assert ((result.ess > 0) & (result.ess <= 4 * 300 + 1e-6)).all()
    assert result.ess[0] == pytest.approx(4 * 300)  # nothing observed: all weights equal


def test_imputation_is_reproduced_by_its_seed(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines["tiny"]
    rows = likely_rows(engine, 3, seed=7)
    rows[:, [2, 4]] = np.nan
    a = engine.impute(rows, n_samples=4, seed=11, n_importance=100)
    b = engine.impute(rows, n_samples=4, seed=11, n_importance=100)
    c = engine.impute(rows, n_samples=4, seed=12, n_importance=100)
    for field in ("samples", "marginals", "logprob_observed", "ess"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.marginals, c.marginals)


@pytest.mark.parametrize(("kwargs", "message"), [({"n_importance": 0}, "n_importance"),
                                                 ({"n_samples": -1}, "n_samples")])
def test_impute_refuses_a_count_below_its_minimum(tiny_engines: dict[str, Engine],
                                                  kwargs: dict[str, int], message: str) -> None:
    row = np.array([[np.nan, 1, 0, 1, 0, 1, 0, 1]])
    with pytest.raises(InvalidInput, match=message):
        tiny_engines["tiny"].impute(row, **kwargs)  # type: ignore[arg-type]
