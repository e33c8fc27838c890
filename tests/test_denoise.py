"""Engine.denoise against enumeration of p(x | y) ∝ p(x) p(y | x) over all 2^D clean rows on the
tiny models (trained in the session, exported to ONNX, run by onnxruntime), and the sampler's
soft evidence against its clamping."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

import service.engine.smc as smc_module
from made.core.errors import InvalidInput
from service.engine.denoise import DenoiseResult
from service.engine.engine import Engine

Joint = dict[str, tuple[np.ndarray, np.ndarray]]  # see the tiny_joint fixture


def flip_loglik(x_all: np.ndarray, y: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """(2^D,) log p(y | x) for every clean x, independent flips with probability eps (D,); a
    missing y_d (NaN) is no evidence."""
    with np.errstate(divide="ignore"):
        keep, flip = np.log1p(-eps), np.log(eps)
    same = x_all == y
    terms = np.where(np.isnan(y), 0.0, np.where(same, keep, flip))
    return terms.sum(axis=1)


def exact_posterior(x_all: np.ndarray, logp: np.ndarray, y: np.ndarray, eps: np.ndarray) -> tuple[float, np.ndarray]:
    """(log p(y), p(x_d = 1 | y) for every d) by enumeration, p the mixture (mean over masks)."""
    log_joint = logsumexp(logp, axis=0) - np.log(len(logp)) + flip_loglik(x_all, y, eps)
    log_y = float(logsumexp(log_joint))
    return log_y, np.clip(np.exp(log_joint - log_y) @ x_all, 0.0, 1.0)


def noisy_rows(engine: Engine, n: int, eps: float, seed: int) -> np.ndarray:
    """n samples of the model with each bit flipped with probability eps."""
    clean = engine.sample(n, seed=seed).astype(np.float64)
    flips = np.random.default_rng(seed + 1000).random(clean.shape) < eps
    return np.where(flips, 1.0 - clean, clean)


def assert_matches_enumeration(
    result: DenoiseResult, ys: np.ndarray, eps: np.ndarray, x_all: np.ndarray, logp: np.ndarray
) -> None:
    for i, y in enumerate(ys):
        log_y, truth = exact_posterior(x_all, logp, y, eps[i])
        se = np.sqrt(truth * (1 - truth) / result.ess[i])
        off = np.abs(result.marginals[i] - truth)
        assert (off <= 4 * se + 1e-9).all(), (
            f"row {i}: marginals {np.round(result.marginals[i], 3)}, truth {np.round(truth, 3)}, "
            f"worst {np.max(off / (se + 1e-12)):.1f} se"
        )
        z = (result.logprob_noisy[i] - log_y) / result.stderr[i]
        assert abs(z) < 4, f"row {i}: log p(y) {result.logprob_noisy[i]:.4f}, truth {log_y:.4f} ({z:.1f} se)"


# --- the enumeration test -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "eps"), [("tiny", 0.1), ("tiny", 0.3), ("tiny10", 0.05), ("tiny10", 0.2), ("tiny1", 0.15)]
)
def test_marginals_and_log_p_noisy_match_enumeration_within_their_standard_errors(
    name: str,
    eps: float,
    tiny_engines: dict[str, Engine],
    tiny_joint: Joint,
) -> None:
    engine = tiny_engines[name]
    x_all, logp = tiny_joint[name]
    ys = noisy_rows(engine, 4, eps, seed=1)
    result = engine.denoise(ys, eps, n_samples=3, seed=0, n_importance=1500)
    eps_full = np.full(ys.shape, eps)
    assert np.isfinite(result.stderr).all() and (result.stderr > 0).all()
    assert ((result.ess > 1) & (result.ess <= engine.n_masks * 1500 + 1e-6)).all()
    assert_matches_enumeration(result, ys, eps_full, x_all, logp)
    # the test has power: the posterior is neither the noisy row nor the prior
    prior = np.exp(logsumexp(logp, axis=0) - np.log(len(logp))) @ x_all
    truths = np.array([exact_posterior(x_all, logp, y, eps_full[i])[1] for i, y in enumerate(ys)])
    assert np.abs(truths - ys).max() > 0.05 and np.abs(truths - prior).max() > 0.05


def test_a_per_entry_flip_probability_map_matches_enumeration(
    tiny_engines: dict[str, Engine], tiny_joint: Joint
) -> None:
    engine = tiny_engines["tiny"]
    x_all, logp = tiny_joint["tiny"]
    ys = noisy_rows(engine, 3, 0.1, seed=2)
    eps = np.random.default_rng(0).choice([0.0, 0.02, 0.1, 0.25, 0.5], size=ys.shape)
    eps[0, :] = [0, 0, 0.5, 0.5, 0, 0.2, 0, 0.5]  # eps 0: observed, 0.5: missing
    result = engine.denoise(ys, eps, n_samples=2, seed=1, n_importance=1500)
    assert_matches_enumeration(result, ys, eps, x_all, logp)
    # where eps is 0 the clean value is the noisy one, in the marginals and in every sample
    certain = eps == 0
    np.testing.assert_array_equal(result.marginals[certain], ys[certain])
    for i in range(len(ys)):
        np.testing.assert_array_equal(
            result.samples[i][:, certain[i]], np.broadcast_to(ys[i, certain[i]], (2, certain[i].sum()))
        )


def test_samples_are_drawn_from_the_posterior(tiny_engines: dict[str, Engine], tiny_joint: Joint) -> None:
    engine = tiny_engines["tiny10"]
    x_all, logp = tiny_joint["tiny10"]
    y = noisy_rows(engine, 1, 0.2, seed=3)
    n_samples = 3000
    result = engine.denoise(y, 0.2, n_samples=n_samples, seed=2, n_importance=2000)
    _, truth = exact_posterior(x_all, logp, y[0], np.full(10, 0.2))
    freq = result.samples[0].mean(axis=0)
    # resampled from a weighted pool: the pool's error and the resampling error add up
    se = np.sqrt(truth * (1 - truth) * (1 / result.ess[0] + 1 / n_samples))
    assert (np.abs(freq - truth) <= 4 * se + 1e-9).all()


# --- the limits: eps = 0 is an observation, eps = 1/2 no evidence ---------------------------------


def test_eps_zero_returns_the_noisy_row_and_its_log_probability(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines["tiny"]
    ys = noisy_rows(engine, 3, 0.0, seed=4)
    result = engine.denoise(ys, 0.0, n_samples=4, seed=0, n_importance=100)
    np.testing.assert_array_equal(result.samples, np.repeat(ys[:, None, :], 4, axis=1))
    np.testing.assert_array_equal(result.marginals, ys)
    np.testing.assert_array_equal(result.most_likely, ys)
    np.testing.assert_allclose(result.logprob_noisy, engine.logprob(ys).logprob, rtol=0, atol=1e-9)
    assert (result.stderr == 0).all()


def test_eps_zero_on_some_entries_and_one_half_on_the_rest_is_imputation(
    tiny_engines: dict[str, Engine],
    tiny_joint: Joint,
) -> None:
    """On a natural-order model, trailing entries at eps = 1/2 (missing) after entries at eps = 0
    (observed): every draw has the same weight, p(x_O) (1/2)^missing, exactly."""
    engine = tiny_engines["tiny1"]
    x_all, logp = tiny_joint["tiny1"]
    ys = noisy_rows(engine, 3, 0.0, seed=5)
    eps = np.zeros(ys.shape)
    eps[:, 5:] = 0.5
    result = engine.denoise(ys, eps, n_samples=2, seed=0, n_importance=500)
    missing = ys.copy()
    missing[:, 5:] = np.nan
    imputed = engine.impute(missing, n_samples=2, seed=0)
    np.testing.assert_allclose(result.logprob_noisy, imputed.logprob_observed + 3 * np.log(0.5), rtol=0, atol=1e-5)
    for i, y in enumerate(ys):
        log_y, truth = exact_posterior(x_all, logp, y, eps[i])
        assert result.logprob_noisy[i] == pytest.approx(log_y, abs=1e-5)
        assert result.stderr[i] < 1e-9 and result.ess[i] == pytest.approx(500, rel=1e-9)
        se = np.sqrt(truth * (1 - truth) / 500)
        assert (np.abs(result.marginals[i] - truth) <= 4 * se + 1e-9).all()


def test_eps_one_half_everywhere_gives_the_prior(tiny_engines: dict[str, Engine], tiny_joint: Joint) -> None:
    engine = tiny_engines["tiny"]
    x_all, logp = tiny_joint["tiny"]
    ys = noisy_rows(engine, 2, 0.3, seed=6)
    s = 2000
    result = engine.denoise(ys, 0.5, n_samples=2, seed=3, n_importance=s)
    np.testing.assert_allclose(result.logprob_noisy, 8 * np.log(0.5), rtol=0, atol=1e-9)
    assert (result.stderr < 1e-12).all()
    np.testing.assert_allclose(result.ess, engine.n_masks * s, rtol=1e-9)
    prior = np.exp(logsumexp(logp, axis=0) - np.log(len(logp))) @ x_all
    se = np.sqrt(prior * (1 - prior) / (engine.n_masks * s))
    assert (np.abs(result.marginals - prior) <= 4 * se).all()


def test_a_missing_noisy_value_is_eps_one_half_there(tiny_engines: dict[str, Engine]) -> None:
    """null (NaN) in y: no evidence, the same draws as eps = 1/2 there; p(y) lacks its factor 1/2."""
    engine = tiny_engines["tiny10"]
    ys = noisy_rows(engine, 2, 0.1, seed=7)
    eps = np.full(ys.shape, 0.1)
    eps[:, [2, 7]] = 0.5
    with_half = engine.denoise(ys, eps, n_samples=3, seed=5, n_importance=200)
    missing = ys.copy()
    missing[:, [2, 7]] = np.nan
    with_null = engine.denoise(missing, 0.1, n_samples=3, seed=5, n_importance=200)
    np.testing.assert_array_equal(with_null.samples, with_half.samples)
    np.testing.assert_allclose(with_null.marginals, with_half.marginals, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(with_null.logprob_noisy, with_half.logprob_noisy - 2 * np.log(0.5), rtol=1e-12)


# --- the sampler: soft evidence generalises clamping ------------------------------------------------


def test_infinite_evidence_is_the_samplers_clamping(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines["tiny"]
    rng = np.random.default_rng(0)
    n, d = 300, engine.dims
    u = rng.random((n, d))
    u[0, :] = 0.0  # u = 0: x = 1 unless clamped to 0
    masks = rng.integers(0, engine.n_masks, n)
    observed = rng.random((n, d)) < 0.5
    values = (rng.random((n, d)) < 0.5).astype(np.float64)
    clamped, logw, _ = engine.sampler.run_masks(masks, u, observed, values)
    l0 = np.where(observed & (values > 0.5), -np.inf, 0.0)
    l1 = np.where(observed & (values < 0.5), -np.inf, 0.0)
    soft, soft_logw, _ = engine.sampler.run_masks(masks, u, evidence=(l0, l1))
    np.testing.assert_array_equal(soft, clamped)
    np.testing.assert_allclose(soft_logw, logw, rtol=1e-12, atol=1e-12)
    # no evidence: the plain sampler's draws, weight 1
    free, free_logw, _ = engine.sampler.run_masks(masks, u, evidence=(np.zeros((n, d)), np.zeros((n, d))))
    np.testing.assert_array_equal(free, engine.sampler.run_masks(masks, u)[0])
    np.testing.assert_allclose(free_logw, 0.0, atol=1e-12)


def test_a_tilted_step_draws_from_the_normalised_product(tiny_engines: dict[str, Engine]) -> None:
    """Mask 0's first position d: x_d = 1 where u_d < p (1 - eps) / (p (1 - eps) + (1 - p) eps)
    for y_d = 1, and the weight of d is that normaliser."""
    engine = tiny_engines["tiny1"]
    d0 = int(engine.orderings[0][0])
    p = float(engine.conditionals(np.zeros((1, engine.dims)))[0, d0])
    eps = 0.2
    q = p * (1 - eps) / (p * (1 - eps) + (1 - p) * eps)
    n = 64
    u = np.full((n, engine.dims), 0.999)  # every other position draws 0
    u[:, d0] = np.linspace(0.005, 0.995, n)
    l0 = np.zeros((n, engine.dims))
    l1 = np.zeros((n, engine.dims))
    l0[:, d0], l1[:, d0] = np.log(eps), np.log(1 - eps)
    x, logw, _ = engine.sampler.run(0, u, evidence=(l0, l1))
    np.testing.assert_array_equal(x[:, d0], u[:, d0] < q)
    np.testing.assert_allclose(logw, np.log(p * (1 - eps) + (1 - p) * eps), rtol=1e-6)


# --- the engine's contract: seeds, rows on their own, the forms of eps, bad input -------------------


def test_denoising_is_reproduced_by_its_seed(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines["tiny"]
    ys = noisy_rows(engine, 3, 0.1, seed=8)
    a = engine.denoise(ys, 0.1, n_samples=4, seed=11, n_importance=100)
    b = engine.denoise(ys, 0.1, n_samples=4, seed=11, n_importance=100)
    c = engine.denoise(ys, 0.1, n_samples=4, seed=12, n_importance=100)
    for field in ("samples", "marginals", "most_likely", "logprob_noisy", "stderr", "ess"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.marginals, c.marginals)


def test_a_row_gets_the_same_answer_whatever_else_is_in_its_request_and_sampler_calls(
    tiny_engines: dict[str, Engine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = tiny_engines["tiny10"]
    ys = noisy_rows(engine, 4, 0.1, seed=9)
    eps = np.array([0.1, 0.0, 0.2, 0.05])  # row 1: eps 0, answered exactly
    a = engine.denoise(ys, eps, n_samples=5, seed=21, n_importance=30)
    other = ys.copy()
    other[0] = 1 - other[0]
    other[2] = 0
    b = engine.denoise(other, eps, n_samples=5, seed=21, n_importance=30)
    monkeypatch.setattr(smc_module, "_SMC_VALUES", 10 * 3 * 17)  # 17 particles a mask and pass: an island a pass
    c = engine.denoise(ys, eps, n_samples=5, seed=21, n_importance=30)
    for got, rows in ((b, (1, 3)), (c, range(4))):
        for i in rows:
            np.testing.assert_array_equal(a.samples[i], got.samples[i])
            for field in ("marginals", "logprob_noisy", "stderr", "ess"):
                np.testing.assert_allclose(getattr(a, field)[i], getattr(got, field)[i], rtol=1e-12, atol=1e-15)


def test_eps_as_a_number_per_row_and_per_entry_agree(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines["tiny"]
    ys = noisy_rows(engine, 2, 0.1, seed=10)
    results = [
        engine.denoise(ys, eps, n_samples=2, seed=0, n_importance=50)
        for eps in (0.1, np.array([0.1, 0.1]), np.full(ys.shape, 0.1), [[0.1] * 8] * 2)
    ]
    for r in results[1:]:
        np.testing.assert_array_equal(r.samples, results[0].samples)
        np.testing.assert_array_equal(r.marginals, results[0].marginals)
        np.testing.assert_array_equal(r.logprob_noisy, results[0].logprob_noisy)


def test_most_likely_is_the_marginal_above_one_half(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines["tiny10"]
    ys = noisy_rows(engine, 5, 0.2, seed=11)
    r = engine.denoise(ys, 0.2, n_samples=0, seed=0, n_importance=200)
    assert r.samples.shape == (5, 0, 10) and r.most_likely.dtype == np.uint8
    np.testing.assert_array_equal(r.most_likely, np.where(r.marginals == 0.5, ys, r.marginals > 0.5))
    assert ((r.marginals >= 0) & (r.marginals <= 1)).all()


@pytest.mark.parametrize(
    ("y", "eps", "message"),
    [
        ([[0, 1, 0, 1, 0, 1, 0, 1]], 0.6, r"eps is 0\.6; a flip probability must be within \[0, 0\.5\]"),
        ([[0, 1, 0, 1, 0, 1, 0, 1]], -0.1, "eps is -0.1"),
        ([[0, 1, 0, 1, 0, 1, 0, 1]], float("nan"), "eps is nan"),
        ([[0, 1, 0, 1, 0, 1, 0, 1]] * 2, [0.1, 0.7], "eps row 1 is 0.7"),
        ([[0, 1, 0, 1, 0, 1, 0, 1]] * 2, [0.1], "eps has 1 values .one per row. but x has 2 rows"),
        ([[0, 1, 0, 1, 0, 1, 0, 1]], [[0.1] * 7], r"eps has shape \[1, 7\] but x has shape \[1, 8\]"),
        ([[0, 1, 0, 1, 0, 1, 0, 1]], [[0.1] * 7 + [0.9]], "eps row 0, column 7 is 0.9"),
        ([[0, 1, 0, 1, 0, 1, 0, 2]], 0.1, "row 0 column 7 holds 2, expected 0 or 1"),
        ([[0, 1, 0, 1, 0, 1, 0]], 0.1, "x has 7 columns"),
    ],
)
def test_denoise_refuses_bad_input_naming_it(
    tiny_engines: dict[str, Engine], y: list, eps: object, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        tiny_engines["tiny"].denoise(np.array(y, dtype=np.float64), eps)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_importance": 0}, "n_importance"), ({"n_samples": -1}, "n_samples"), ({"seed": -1}, "seed")],
)
def test_denoise_refuses_a_count_below_its_minimum(
    tiny_engines: dict[str, Engine], kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        tiny_engines["tiny"].denoise(np.zeros((1, 8)), 0.1, **kwargs)  # type: ignore[arg-type]
