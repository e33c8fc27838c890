"""Engine.impute against enumeration of p(x_missing | x_observed) on the tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import enumerate_joint, write_random_model
from helpers import TinyModel, likely_rows
from scipy.special import logsumexp
from scipy.stats import t as student_t

import service.engine.missing as missing_module
import service.engine.smc as smc
from made.core.errors import InvalidInput
from made.core.numerics import logmeanexp
from service.engine.engine import Engine
from service.engine.missing import ImputeResult
from service.testing import providers_under_test


def enumerated_posterior(x_all: np.ndarray, p: np.ndarray, row: np.ndarray) -> tuple[float, np.ndarray]:
    """(log p(x_O), p(x_d = 1 | x_O) for every d) of one row (NaN = missing) under p (2^D,)."""
    obs = ~np.isnan(row)
    match = (x_all[:, obs] == row[obs]).all(axis=1)
    weights = p[match] / p[match].sum()
    # clipped: an observed dimension's 1 may come out of the sum as 1 + 2e-16
    return float(logsumexp(np.log(p[match]))), np.clip(weights @ x_all[match], 0.0, 1.0)


def assert_marginals_within_four_standard_errors(
    result: ImputeResult, rows: np.ndarray, x_all: np.ndarray, p: np.ndarray
) -> None:
    """Monte Carlo marginals: the binomial standard error sqrt(p (1 - p) / ESS) per entry."""
    for i, row in enumerate(rows):
        _, truth = enumerated_posterior(x_all, p, row)
        se = np.sqrt(truth * (1 - truth) / result.ess[i])
        assert (np.abs(result.marginals[i] - truth) <= 4 * se + 1e-9).all(), (
            f"row {i}: marginals {np.round(result.marginals[i], 3)}, truth {np.round(truth, 3)}"
        )


@pytest.mark.parametrize("tiny_model", ["tiny1"], indirect=True)
def test_trailing_missing_dimensions_of_a_natural_order_model_are_imputed_exactly(tiny_model: TinyModel) -> None:
    engine, x_all = tiny_model.engine, tiny_model.x_all
    p = np.exp(tiny_model.logp[0])
    rows = likely_rows(engine, 4, seed=1)
    for i, m in enumerate((1, 2, 4, 8)):
        rows[i, 8 - m :] = np.nan
    result = engine.impute(rows, n_samples=5, seed=0, n_importance=1000)
    assert result.exact.all() and np.isnan(result.stderr).all()
    truth = [enumerated_posterior(x_all, p, row)[0] for row in rows]
    np.testing.assert_allclose(result.logprob_observed, truth, rtol=0, atol=1e-5)
    assert_marginals_within_four_standard_errors(result, rows, x_all, p)


@pytest.mark.parametrize("tiny_model", ["tiny", "tiny10"], indirect=True)
def test_out_of_order_missing_dimensions_are_estimated_within_four_standard_errors(tiny_model: TinyModel) -> None:
    engine, x_all = tiny_model.engine, tiny_model.x_all
    p = np.exp(tiny_model.logp).mean(axis=0)
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
    # the standard error comes from a mask's 4 islands (3 degrees of freedom), so z has Student's
    # t tails: the bound is t_3's two-sided 0.1% quantile over the rows, and the error itself small
    z = (result.logprob_observed - truth) / result.stderr
    bound = student_t.ppf(1 - 0.001 / (2 * len(rows)), df=smc.ISLANDS - 1)
    assert np.abs(z).max() < bound, f"log p(x_O) errors in standard errors: {np.round(z, 2)}"
    np.testing.assert_allclose(result.logprob_observed, truth, atol=0.15)
    assert_marginals_within_four_standard_errors(result, rows, x_all, p)


@pytest.mark.parametrize("tiny_model", ["tiny"], indirect=True)
def test_completions_are_drawn_from_the_posterior_of_the_missing_values(tiny_model: TinyModel) -> None:
    engine = tiny_model.engine
    row = likely_rows(engine, 1, seed=3)
    row[0, [0, 2, 5, 7]] = np.nan
    n_samples = 3000
    result = engine.impute(row, n_samples=n_samples, seed=2, n_importance=3000)
    _, truth = enumerated_posterior(tiny_model.x_all, np.exp(tiny_model.logp).mean(axis=0), row[0])
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
        np.testing.assert_array_equal(
            result.samples[i][:, observed[i]], np.broadcast_to(rows[i, observed[i]], (7, observed[i].sum()))
        )
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
    assert (result.ess == 3).all()  # its 3 completions, as a table model's row (not K x the particles)


def test_effective_sample_size_is_positive_and_at_most_k_times_the_draws(
    tiny_engines: dict[str, Engine],
) -> None:
    engine = tiny_engines["tiny"]
    rows = likely_rows(engine, 4, seed=6)
    rows[0, :] = np.nan
    rows[1, [1, 6]] = np.nan
    rows[2, ::3] = np.nan
    result = engine.impute(rows, n_samples=2, seed=0, n_importance=300)
    assert result.exact.tolist() == [True, False, False, True]  # row 3: nothing missing
    assert ((result.ess > 0) & (result.ess <= 4 * 300 + 1e-6)).all()
    # nothing observed: an exact row, whose estimates rest on its n_samples independent draws
    assert result.ess[0] == 2


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


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"n_importance": 0}, "n_importance"), ({"n_samples": -1}, "n_samples")]
)
def test_impute_refuses_a_count_below_its_minimum(
    tiny_engines: dict[str, Engine], kwargs: dict[str, int], message: str
) -> None:
    row = np.array([[np.nan, 1, 0, 1, 0, 1, 0, 1]])
    with pytest.raises(InvalidInput, match=message):
        tiny_engines["tiny"].impute(row, **kwargs)  # type: ignore[arg-type]


# --- exact rows: n_samples exact completions, not n_importance x K weighted draws --------------


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, np.ndarray, np.ndarray]:
    """'mix': D=8, hidden [6, 6], K=4 connectivity-agnostic masks that all keep the natural
    order (as the shipped binarized-mnist model), random weights: a row with its last
    dimensions missing is exact under every mask, while the masks' p_k(x_obs) differ, so the
    posterior over masks matters. With the enumerated joint (2^D, D) and log p_k (K, 2^D)."""
    from made.store.versions import open_model

    store = write_random_model(
        tmp_path_factory.mktemp("mix") / "store", "mix", 8, [6, 6], 4, order_agnostic=False, direct=False, seed=3
    )
    model = open_model(store, "mix")
    x_all, logp = enumerate_joint(model)
    return Engine(model, providers_under_test(), threads=1), x_all, logp


def conditional_cells(x_all: np.ndarray, p: np.ndarray, row: np.ndarray) -> np.ndarray:
    """p(x_missing = cell | x_obs) for every x in x_all (0 where x disagrees with x_obs)."""
    obs = ~np.isnan(row)
    match = (x_all[:, obs] == row[obs]).all(axis=1)
    return np.where(match, p, 0.0) / p[match].sum()


def cell_frequencies(samples: np.ndarray) -> np.ndarray:
    """(2^D,) frequencies of the binary vectors among samples (S, D), row i = i in binary."""
    dims = samples.shape[1]
    index = samples.astype(np.int64) @ (1 << np.arange(dims - 1, -1, -1))
    return np.bincount(index, minlength=2**dims) / len(samples)


def test_exact_rows_completions_follow_the_conditional_of_the_mixture(
    mix: tuple[Engine, np.ndarray, np.ndarray],
) -> None:
    engine, x_all, logp = mix
    p_k = np.exp(logp)
    rows = np.array([[1, 0, 0, 1, 1, 0, np.nan, np.nan], [0, 1, 1, 0, 1] + [np.nan] * 3, [np.nan] * 8])
    n_samples = 20_000
    result = engine.impute(rows, n_samples=n_samples, seed=0)
    assert result.exact.all() and np.isnan(result.stderr).all()
    assert (result.ess == n_samples).all()  # independent exact draws, all of weight 1/S
    truth = [enumerated_posterior(x_all, p_k.mean(axis=0), row) for row in rows]
    np.testing.assert_allclose(result.logprob_observed, [t[0] for t in truth], rtol=0, atol=1e-5)
    assert result.logprob_observed[2] == 0.0  # nothing observed
    for i, row in enumerate(rows):
        want = conditional_cells(x_all, p_k.mean(axis=0), row)
        got = cell_frequencies(result.samples[i])
        se = np.sqrt(want * (1 - want) / n_samples)
        assert (np.abs(got - want) <= 4.5 * se + 1e-12).all(), (
            f"row {i}: worst cell off by {np.max(np.abs(got - want) / (se + 1e-12)):.1f} se"
        )
        # Rao-Blackwellised estimates from the same completions: within the binomial standard
        # error of S draws
        _, marginal = truth[i]
        assert (
            np.abs(result.marginals[i] - marginal) <= 4 * np.sqrt(marginal * (1 - marginal) / n_samples) + 1e-9
        ).all()
    # The test has power: with masks drawn uniformly instead of from the posterior p_k(x_obs),
    # the first row's completions would be far off.
    row = rows[0]
    prior = np.mean([conditional_cells(x_all, p, row) for p in p_k], axis=0)
    want = conditional_cells(x_all, p_k.mean(axis=0), row)
    assert np.max(np.abs(prior - want) / np.sqrt(want * (1 - want) / n_samples + 1e-30)) > 15


def test_exact_rows_draw_n_samples_completions_whatever_n_importance(
    mix: tuple[Engine, np.ndarray, np.ndarray],
) -> None:
    engine = mix[0]
    rows = likely_rows(engine, 3, seed=8)
    rows[:, 5:] = np.nan
    rows[2, :] = np.nan
    one = engine.impute(rows, n_samples=6, seed=4, n_importance=1)
    many = engine.impute(rows, n_samples=6, seed=4, n_importance=5000)
    for field in ("samples", "marginals", "logprob_observed", "ess"):
        np.testing.assert_array_equal(getattr(one, field), getattr(many, field))
    assert (one.ess == 6).all()
    # n_samples = 0: no completions returned, one drawn so that the marginals are defined
    none = engine.impute(rows, n_samples=0, seed=4)
    assert none.samples.shape == (3, 0, 8) and (none.ess == 1).all()
    assert np.isfinite(none.marginals).all() and ((none.marginals >= 0) & (none.marginals <= 1)).all()


def assert_same_answers(a: ImputeResult, i: int, b: ImputeResult, j: int) -> None:
    """Row i of a and row j of b: the same completions; the same floats up to rounding (the
    sampler's float64 sums may differ in the last bits with the batch)."""
    np.testing.assert_array_equal(a.samples[i], b.samples[j])
    np.testing.assert_array_equal(a.exact[i], b.exact[j])
    for field in ("marginals", "logprob_observed", "ess", "stderr"):
        np.testing.assert_allclose(getattr(a, field)[i], getattr(b, field)[j], rtol=1e-12, atol=1e-12, equal_nan=True)


def test_a_row_gets_the_same_answer_whatever_else_is_in_its_request_and_sampler_calls(
    mix: tuple[Engine, np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = mix[0]
    rows = likely_rows(engine, 6, seed=9)
    rows[0, 6:] = np.nan  # exact
    rows[1, [2, 7]] = np.nan  # not exact: 2 comes before the observed 3..6
    rows[3, 4:] = np.nan  # exact
    rows[4, :3] = np.nan  # not exact
    rows[5, 1:] = np.nan  # exact
    # row 2 complete
    a = engine.impute(rows, n_samples=7, seed=21, n_importance=40)
    assert a.exact.tolist() == [True, False, True, True, False, True]
    # other rows around them: rows 1, 3 and 5 keep their answers
    other = rows.copy()
    other[0] = np.nan
    other[2, [1, 4]] = np.nan
    other[4] = likely_rows(engine, 1, seed=10)[0]
    b = engine.impute(other, n_samples=7, seed=21, n_importance=40)
    for i in (1, 3, 5):
        assert_same_answers(a, i, b, i)
    # sampler calls of a few draws each: a row's draws spread over several calls
    monkeypatch.setattr(missing_module, "_IMPUTE_VALUES", 3 * 8 * 7 + 5)
    monkeypatch.setattr(smc, "_SMC_VALUES", 4 * 8 * 10)  # one island of 10 particles a mask, a pass
    c = engine.impute(rows, n_samples=7, seed=21, n_importance=40)
    for i in range(len(rows)):
        assert_same_answers(a, i, c, i)


def test_rows_that_are_not_exact_run_the_particle_filter_from_their_own_stream(
    tiny_engines: dict[str, Engine],
) -> None:
    """Rows whose missing values some ordering puts before an observed one: a particle filter
    (service.engine.smc) per row from default_rng([seed, i]), in two stages. On a model of fewer
    dimensions than a block nothing resamples, so each island is likelihood weighting of its
    particles: its evidence is the mean weight of the sampler's clamped draws from the island's
    uniforms, default_rng([the row's key, the island's number])."""
    engine = tiny_engines["tiny"]
    rows = likely_rows(engine, 3, seed=11)
    rows[0, [1, 6]] = np.nan
    rows[1, ::3] = np.nan
    rows[2, [0, 2, 5, 7]] = np.nan
    s, n_samples, k, d = 50, 4, engine.n_masks, engine.dims
    got = engine.impute(rows, n_samples=n_samples, seed=3, n_importance=s * smc.DRAWS_PER_PARTICLE)
    assert not got.exact.any()
    n0 = smc.pilot_size(s, k, smc.IMPUTE_PILOT)  # the pilot's particles a mask, one island each
    assert n0 > 0

    def island(key: int, number: int, mask: int, size: int, row: np.ndarray) -> float:
        u = np.random.default_rng([key, number]).random((size, d))
        obs = np.broadcast_to(~np.isnan(row), (size, d))
        filled = np.nan_to_num(np.broadcast_to(row, (size, d)))
        _, logw, _ = engine.sampler.run_masks(np.full(size, mask), u, obs, filled)
        return float(logmeanexp(logw, axis=0))

    for i, row in enumerate(rows):
        key = int(np.random.default_rng([3, i]).integers(1 << 63))
        pilot = np.array([island(key, g, g, n0, row) for g in range(k)])
        counts, m = smc.allocate(pilot, k * (s - n0))
        log_z = np.empty((k, m))
        for g in range(k):
            for j, size in enumerate(smc.split(int(counts[g]), m)):
                log_z[g, j] = island(key, k + g * m + j, g, size, row)
        np.testing.assert_allclose(got.logprob_observed[i], logmeanexp(log_z.ravel(), axis=0), rtol=1e-12)
        per_mask = np.exp(log_z - log_z.max())
        stderr = np.sqrt((per_mask.var(axis=1, ddof=1) / m).sum()) / per_mask.mean(axis=1).sum()
        np.testing.assert_allclose(got.stderr[i], stderr, rtol=1e-9)
        assert (got.samples[i][:, ~np.isnan(row)] == row[~np.isnan(row)]).all()


def test_exact_rows_are_those_whose_missing_values_every_ordering_puts_last(
    tiny_engines: dict[str, Engine],
    mix: tuple[Engine, np.ndarray, np.ndarray],
) -> None:
    from made.core.masks import exact_orders

    rng = np.random.default_rng(0)
    for engine in (*tiny_engines.values(), mix[0]):
        d = engine.dims
        observed = rng.random((400, d)) < rng.random((400, 1))  # every density of missing values
        for i, order in enumerate(engine.orderings):  # and rows exact under at least one mask
            m = rng.integers(0, d + 1, size=20)
            observed[20 * i : 20 * i + 20] = np.arange(d)[None, :] < m[:, None]
            observed[20 * i : 20 * i + 20] = observed[20 * i : 20 * i + 20][:, np.argsort(order)]
        want = exact_orders(engine.orderings, observed).all(axis=0)
        np.testing.assert_array_equal(engine.exact_rows(observed), want)
        assert want.any() and not want.all()
