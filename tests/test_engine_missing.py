"""log p(x_observed) with missing values (NaN) summed out, checked against enumeration: exact
where every scored mask's ordering puts the missing dimensions last, otherwise a likelihood-
weighting estimate whose error must sit within 4 of its own standard errors."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TinyModel, likely_rows
from scipy.special import logsumexp

from made.core.errors import InvalidInput
from service.engine.engine import Engine


def enumerated_logp_observed(x_all: np.ndarray, logp: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """log Σ over the completions of each row (NaN = missing) of p(x); logp is (2^D,)."""
    out = np.empty(len(rows))
    for i, row in enumerate(rows):
        obs = ~np.isnan(row)
        match = (x_all[:, obs] == row[obs]).all(axis=1)
        out[i] = logsumexp(logp[match])
    return out


def mixture(logp: np.ndarray) -> np.ndarray:
    return logsumexp(logp, axis=0) - np.log(len(logp))


@pytest.mark.parametrize("tiny_model", ["tiny1"], indirect=True)
def test_trailing_missing_dimensions_are_exact_under_a_natural_order_model(tiny_model: TinyModel) -> None:
    engine = tiny_model.engine
    assert engine.orderings.tolist() == [list(range(8))]
    rows = np.concatenate([likely_rows(engine, 3, seed=m) for m in range(1, 6)])
    for i, m in enumerate(np.repeat(np.arange(1, 6), 3)):
        rows[i, 8 - m :] = np.nan  # the last m dimensions missing
    result = engine.logprob(rows, seed=0)
    assert result.exact.all() and np.isnan(result.stderr).all()
    truth = enumerated_logp_observed(tiny_model.x_all, tiny_model.logp[0], rows)
    np.testing.assert_allclose(result.logprob, truth, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tiny_model", ["tiny", "tiny10"], indirect=True)
def test_dimensions_last_in_mask_ks_ordering_are_exact_under_mask_k(tiny_model: TinyModel) -> None:
    engine = tiny_model.engine
    for k in range(engine.n_masks):
        rows = likely_rows(engine, 4, seed=k)
        for i, m in enumerate((1, 2, 3, engine.dims - 1)):
            rows[i, engine.orderings[k][-m:]] = np.nan
        result = engine.logprob(rows, masks=k, seed=0)
        assert result.exact.all(), f"mask {k}"
        truth = enumerated_logp_observed(tiny_model.x_all, tiny_model.logp[k], rows)
        np.testing.assert_allclose(result.logprob, truth, rtol=0, atol=1e-5)


def test_a_row_with_every_value_missing_has_log_probability_zero(
    tiny_engines: dict[str, Engine],
) -> None:
    result = tiny_engines["tiny"].logprob(np.full((2, 8), np.nan))
    np.testing.assert_allclose(result.logprob, 0.0, atol=1e-12)
    assert result.exact.all()


def _not_last_everywhere(engine: Engine, ks: list[int]) -> list[int]:
    """Dimensions that come first in some scored mask's ordering: missing, they force an
    estimate (unless every dimension is missing)."""
    return sorted({int(engine.orderings[k][0]) for k in ks})


@pytest.mark.parametrize(
    ("tiny_model", "masks"), [("tiny", "all"), ("tiny10", "all"), ("tiny", 2), ("tiny10", 1)], indirect=["tiny_model"]
)
def test_out_of_order_missing_dimensions_are_estimated_within_four_standard_errors(
    tiny_model: TinyModel, masks: str | int
) -> None:
    engine = tiny_model.engine
    ks = list(range(engine.n_masks)) if masks == "all" else [int(masks)]
    rows = likely_rows(engine, 6, seed=11)
    firsts = _not_last_everywhere(engine, ks)
    rows[0, firsts] = np.nan
    rows[1, firsts[:1]] = np.nan
    rows[2, [*firsts[:1], 5]] = np.nan
    rows[3, ::2] = np.nan
    rows[4, firsts[-1:]] = np.nan
    rows[5, [*firsts, 4, 6]] = np.nan
    result = engine.logprob(rows, masks=masks, seed=3, n_importance=16 * 2000)  # type: ignore[arg-type]
    truth = enumerated_logp_observed(tiny_model.x_all, mixture(tiny_model.logp[ks]), rows)
    assert not result.exact.any()
    assert np.isfinite(result.stderr).all() and (result.stderr > 0).all()
    assert (result.stderr < 0.05).all(), "2000 particles per mask (16 draws each) should pin log p(x_O) down"
    z = (result.logprob - truth) / result.stderr
    assert np.abs(z).max() < 4, f"errors in standard errors: {np.round(z, 2)}"


def test_the_reported_standard_error_matches_the_spread_over_seeds(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines["tiny"]
    row = likely_rows(engine, 1, seed=5)
    row[0, _not_last_everywhere(engine, [0, 1, 2, 3])] = np.nan
    runs = [engine.logprob(row, seed=s, n_importance=100) for s in range(40)]
    estimates = np.array([r.logprob[0] for r in runs])
    reported = np.mean([r.stderr[0] for r in runs])
    assert 0.6 < estimates.std(ddof=1) / reported < 1.6


def test_an_estimate_is_reproduced_by_its_seed_and_changes_with_another(
    tiny_engines: dict[str, Engine],
) -> None:
    engine = tiny_engines["tiny"]
    rows = likely_rows(engine, 3, seed=2)
    rows[:, [0, 3]] = np.nan
    a = engine.logprob(rows, seed=7, n_importance=50)
    b = engine.logprob(rows, seed=7, n_importance=50)
    c = engine.logprob(rows, seed=8, n_importance=50)
    np.testing.assert_array_equal(a.logprob, b.logprob)
    np.testing.assert_array_equal(a.stderr, b.stderr)
    assert not np.array_equal(a.logprob, c.logprob)


@pytest.mark.parametrize("tiny_model", ["tiny10"], indirect=True)
def test_complete_exact_and_estimated_rows_in_one_batch_each_get_their_own_answer(tiny_model: TinyModel) -> None:
    engine = tiny_model.engine
    rows = likely_rows(engine, 6, seed=4)
    rows[1, :] = np.nan  # exact: nothing observed
    rows[3, [int(engine.orderings[0][0]), int(engine.orderings[1][0])]] = np.nan  # estimated
    rows[4, [2, 7]] = np.nan
    result = engine.logprob(rows, seed=1, n_importance=2000)
    truth = enumerated_logp_observed(tiny_model.x_all, mixture(tiny_model.logp), rows)
    np.testing.assert_array_equal(result.exact, [True, True, True, False, False, True])
    exact = result.exact
    np.testing.assert_allclose(result.logprob[exact], truth[exact], rtol=0, atol=1e-5)
    assert (np.abs(result.logprob[~exact] - truth[~exact]) < 4 * result.stderr[~exact]).all()
    alone = engine.logprob(rows[[0, 2, 5]])
    np.testing.assert_allclose(result.logprob[[0, 2, 5]], alone.logprob, rtol=0, atol=1e-9)


def test_fewer_than_one_importance_draw_is_refused(tiny_engines: dict[str, Engine]) -> None:
    row = np.array([[np.nan, 1, 0, 1, 0, 1, 0, 1]])
    with pytest.raises(InvalidInput, match="n_importance must be an integer of at least 1"):
        tiny_engines["tiny"].logprob(row, n_importance=0)
