"""The particle filter of service.engine.smc against enumeration on the tiny models (trained in the
session, D = 8 and 10): its evidence estimate is unbiased for p_k(evidence) (Z, not log Z) with
resampling on, its marginals converge to the exact posterior, its standard error is calibrated,
and the sampler it hooks into draws what it drew before when nothing resamples."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.special import logsumexp
from test_denoise import exact_posterior, flip_loglik, noisy_rows

import service.engine.smc as smc
from service.engine.denoise import flip_evidence
from service.engine.engine import Engine
from service.engine.importance import systematic_resample
from service.engine.missing import clamped_evidence
from service.engine.sampler import walk_plan

Joint = dict[str, tuple[np.ndarray, np.ndarray]]


def exact_mask_evidence(logp: np.ndarray, x_all: np.ndarray, y: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """(K,) log p_k(y) for each mask by enumeration."""
    return logsumexp(logp + flip_loglik(x_all, y, eps)[None, :], axis=1)


# --- the resampling and the bookkeeping ---------------------------------------------------------


def test_systematic_resampling_gives_each_parent_floor_or_ceil_of_its_share() -> None:
    rng = np.random.default_rng(0)
    w = rng.random((50, 7)) ** 3
    w /= w.sum(axis=1, keepdims=True)
    idx = systematic_resample(w, rng.random(50))
    counts = np.stack([np.bincount(row, minlength=7) for row in idx])
    assert (counts >= np.floor(7 * w) - 1e-9).all() and (counts <= np.ceil(7 * w) + 1e-9).all()
    assert (np.diff(idx, axis=1) >= 0).all()
    # unbiased: over many uniforms, each parent's mean count is n w
    u = rng.random(20000)
    many = systematic_resample(np.broadcast_to(w[0], (20000, 7)), u)
    mean = np.stack([np.bincount(row, minlength=7) for row in many]).mean(axis=0)
    np.testing.assert_allclose(mean, 7 * w[0], atol=0.02)


# --- against enumeration ------------------------------------------------------------------------


def run(engine: Engine, y: np.ndarray, eps: float, seed: int, n: int, **kw: Any) -> list[smc.ParticleRow]:
    e = np.full(y.shape, eps)
    l0, l1 = flip_evidence(y, e)
    rows = np.arange(len(y))
    rngs = {int(r): np.random.default_rng([seed, int(r)]) for r in rows}
    return list(smc.particle_filter(engine.sampler, list(range(engine.n_masks)), l0, l1, rows, rngs, n, **kw))


@pytest.mark.parametrize("name", ["tiny", "tiny10"])
def test_the_evidence_estimate_is_unbiased_with_resampling(
    name: str, tiny_engines: dict[str, Engine], tiny_joint: Joint
) -> None:
    """Z_hat / Z over 300 seeds (8 particles a mask, one island, resampling after every second
    step whenever the weights are uneven at all): its mean within 3 standard errors of 1, for
    every mask of two noisy rows, while log Z_hat is biased low (Jensen) as it must be."""
    engine = tiny_engines[name]
    x_all, logp = tiny_joint[name]
    ys = noisy_rows(engine, 2, 0.2, seed=3)
    eps = 0.2
    truth = np.stack([exact_mask_evidence(logp, x_all, y, np.full(engine.dims, eps)) for y in ys])  # (2, K)
    ratios, resampled = [], 0
    for seed in range(300):
        for got in run(engine, ys, eps, seed, 8, islands=1, block=2, threshold=1.0):
            ratios.append(np.exp(got.log_z[:, 0] - truth[got.row]))
            resampled += int(got.resamplings.sum())
    r = np.array(ratios)  # (600, K)
    assert resampled > 600  # resampling did happen, many times
    mean, se = r.mean(axis=0), r.std(axis=0, ddof=1) / np.sqrt(len(r))
    assert (np.abs(mean - 1.0) < 3 * se + 1e-12).all(), (mean, se)
    assert (se < 0.05).all(), se  # and the check has power


@pytest.mark.parametrize("name", ["tiny", "tiny10"])
def test_marginals_converge_to_the_exact_posterior(
    name: str, tiny_engines: dict[str, Engine], tiny_joint: Joint, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tiny_engines[name]
    x_all, logp = tiny_joint[name]
    monkeypatch.setattr(smc, "SMC_BLOCK", 3)  # resampling between steps, as on a large model
    ys = noisy_rows(engine, 3, 0.15, seed=4)
    eps = np.full(ys.shape, 0.15)
    worst, typical = [], []
    for n in (16, 1024):
        r = engine.denoise(ys, 0.15, n_samples=0, seed=5, n_importance=n)
        off = []
        for i, y in enumerate(ys):
            log_y, truth = exact_posterior(x_all, logp, y, eps[i])
            off.append(np.abs(r.marginals[i] - truth))
            if n == 1024:
                assert abs(r.logprob_noisy[i] - log_y) < 4 * r.stderr[i] + 1e-9
        worst.append(float(np.max(off)))
        typical.append(float(np.mean(off)))
    # at 1024 particles a mask the marginals' Monte Carlo error is about 0.015 an entry (their
    # posterior ESS is a few hundred); the worst of 30 entries reaches 0.04 for some seeds
    assert typical[1] < 0.015 and worst[1] < 0.05, (typical, worst)
    assert typical[1] < typical[0] / 2 and worst[1] < worst[0], (typical, worst)


def test_the_standard_error_is_calibrated(tiny_engines: dict[str, Engine], tiny_joint: Joint) -> None:
    """(log p_hat - log p) / stderr over 150 seeds: about as often within 1 and 2 standard errors
    as a normal variable (islands' spread, smc.ISLANDS of them a mask)."""
    engine = tiny_engines["tiny"]
    x_all, logp = tiny_joint["tiny"]
    y = noisy_rows(engine, 1, 0.2, seed=6)
    log_y, _ = exact_posterior(x_all, logp, y[0], np.full(engine.dims, 0.2))
    z = []
    for seed in range(150):
        r = engine.denoise(y, 0.2, n_samples=0, seed=seed, n_importance=16)
        z.append((r.logprob_noisy[0] - log_y) / r.stderr[0])
    within1, within2 = np.mean(np.abs(z) < 1), np.mean(np.abs(z) < 2)
    assert 0.55 < within1 < 0.85, within1
    assert within2 > 0.88, within2


def test_samples_follow_the_posterior(tiny_engines: dict[str, Engine], tiny_joint: Joint) -> None:
    engine = tiny_engines["tiny10"]
    x_all, logp = tiny_joint["tiny10"]
    y = noisy_rows(engine, 1, 0.1, seed=7)
    _, truth = exact_posterior(x_all, logp, y[0], np.full(engine.dims, 0.1))
    r = engine.denoise(y, 0.1, n_samples=4000, seed=8, n_importance=512)
    se = np.sqrt(truth * (1 - truth) / 4000) + np.sqrt(truth * (1 - truth) / r.ess[0])
    assert (np.abs(r.samples[0].mean(axis=0) - truth) < 4 * se + 1e-3).all()


def test_inexact_imputation_and_log_p_match_enumeration_with_resampling(
    tiny_engines: dict[str, Engine], tiny_joint: Joint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/impute and /logprob of rows whose missing values come before observed ones: the
    particle filter with the observed values clamped, resampling every second step, against
    p(x_obs) and p(x_d = 1 | x_obs) summed over every completion."""
    engine = tiny_engines["tiny"]
    x_all, logp = tiny_joint["tiny"]
    monkeypatch.setattr(smc, "IMPUTE_BLOCK", 2)
    rows = (np.random.default_rng(12).random((3, engine.dims)) < 0.5).astype(np.float64)
    rows[0, [0, 3]] = np.nan
    rows[1, ::2] = np.nan
    rows[2, [1, 2, 6]] = np.nan
    n_importance = 1000 * smc.DRAWS_PER_PARTICLE  # 1000 particles a mask
    got = engine.impute(rows, n_samples=0, seed=2, n_importance=n_importance)
    lp = engine.logprob(rows, seed=2, n_importance=n_importance)
    assert not got.exact.any()
    mix = logsumexp(logp, axis=0) - np.log(len(logp))
    for i, row in enumerate(rows):
        seen = ~np.isnan(row)
        fits = (x_all[:, seen] == row[seen]).all(axis=1)
        log_obs = float(logsumexp(mix[fits]))
        truth = np.exp(mix[fits] - log_obs) @ x_all[fits]
        assert abs(got.logprob_observed[i] - log_obs) < 4 * got.stderr[i] + 1e-9
        assert abs(lp.logprob[i] - log_obs) < 4 * lp.stderr[i] + 1e-9
        np.testing.assert_allclose(got.marginals[i], truth, atol=0.03)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_an_island_does_not_resample_once_its_last_draw_is_behind_it(tiny_engines: dict[str, Engine], k: int) -> None:
    """Where every step still to come is clamped, resampling copies particles without any later
    draw to make the copies differ: it adds noise and loses distinct paths. With the missing
    values first in mask k's ordering (the only draws) and the observed ones after them (only
    weights), a filter told to resample after every step whenever the weights are uneven never
    does; with one missing value after the observed ones it does, before that draw."""
    engine = tiny_engines["tiny"]
    order = engine.sampler.group_plan((k,), 1).nets[0].ordering
    values = (np.random.default_rng(k).random(engine.dims) < 0.5).astype(np.float64)
    first = values.copy()
    first[order[:3]] = np.nan
    late = values.copy()
    late[order[[0, engine.dims - 2]]] = np.nan
    counts = {}
    for name, row in (("first", first), ("late", late)):
        l0, l1 = clamped_evidence(row[None, :])
        total = 0
        for seed in range(20):
            rngs = {0: np.random.default_rng([seed, 0])}
            for got in smc.particle_filter(engine.sampler, [k], l0, l1, np.arange(1), rngs, 16, block=1, threshold=1.0):
                total += int(got.resamplings.sum())
        counts[name] = total
    assert counts["first"] == 0, counts
    assert counts["late"] > 20, counts


def test_masks_walking_alone_or_together_resample_at_the_same_times(
    tiny_engines: dict[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mask walks alone in blocks of the resampling period and with the other masks in shorter
    blocks that divide it (smc.GROUP_BLOCK), skipping the boundaries between: which of the two a
    row's islands go through depends on the batch, its answer must not."""
    engine = tiny_engines["tiny"]
    monkeypatch.setattr(smc, "GROUP_BLOCK", 2)
    rows = (np.random.default_rng(5).random((3, engine.dims)) < 0.5).astype(np.float64)
    rows[0, [0, 3, 5]] = np.nan
    rows[1, ::2] = np.nan
    rows[2, [1, 6]] = np.nan
    l0, l1 = clamped_evidence(rows)
    ks = list(range(engine.n_masks))
    answers = []
    for width in (1, 10**6):  # every mask alone; every mask together
        monkeypatch.setattr(smc, "SINGLE_WIDTH", width)
        rngs = {i: np.random.default_rng([7, i]) for i in range(3)}
        answers.append(
            list(smc.particle_filter(engine.sampler, ks, l0, l1, np.arange(3), rngs, 24, 5, block=4, threshold=1.0))
        )
    alone, together = answers
    assert sum(int(a.resamplings.sum()) for a in alone) > 0
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a.resamplings, b.resamplings)
        np.testing.assert_array_equal(a.picks, b.picks)
        np.testing.assert_allclose(a.log_z, b.log_z, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12, atol=1e-12)


# --- the sampler's paths ------------------------------------------------------------------------


def test_a_hook_that_never_resamples_leaves_the_draws_as_they_were(tiny_engines: dict[str, Engine]) -> None:
    """walk_plan with a hook between blocks that permutes nothing draws exactly what the
    sampler draws without one (the path of /sample, /impute's exact rows ...), bit for bit."""
    engine = tiny_engines["tiny"]
    sampler = engine.sampler
    plan = sampler.group_plan(tuple(range(engine.n_masks)), 2)
    u = np.random.default_rng(0).random((4 * 6, engine.dims))
    thr = np.empty((engine.n_masks, engine.dims, 6))
    for g, net in enumerate(plan.nets):
        with np.errstate(divide="ignore"):
            thr[g] = np.log(u[g * 6 : (g + 1) * 6] / (1 - u[g * 6 : (g + 1) * 6]))[:, net.ordering].T
    seen: list[int] = []
    xs, _ = walk_plan(plan, [6] * engine.n_masks, thr, sampler.activation, lambda t1, *a: seen.append(t1))
    assert seen == [2, 4, 6]
    want = sampler.run_masks(np.repeat(np.arange(engine.n_masks), 6), u)[0]
    for g, net in enumerate(plan.nets):
        got = np.empty((6, engine.dims), dtype=np.uint8)
        got[:, net.ordering] = xs[g].T
        np.testing.assert_array_equal(got, want[g * 6 : (g + 1) * 6])


def test_more_particles_make_more_islands_not_larger_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert smc.island_sizes(64) == (4, 16)
    assert smc.island_sizes(2) == (2, 1)
    assert smc.island_sizes(10 * smc.ISLAND_MAX) == (10, smc.ISLAND_MAX)


def test_the_default_budget_admits_a_hundred_digits_and_not_many_more() -> None:
    """MADE_MAX_WORK's default against /denoise of binarized-mnist-sized rows (D = 784, K = 8) at
    the default particles: 100 noisy rows fit (docs/denoise.md times them within the request
    timeout), 150 do not; the same particles cost PARTICLE_COST a value, twice a free draw's."""
    from service.core import budget
    from service.engine.denoise import DEFAULT_PARTICLES
    from service.settings import Settings

    limit = Settings().max_work

    def work(rows: int) -> int:
        return budget.particles(rows, DEFAULT_PARTICLES, 8, 784) + budget.passes(rows, 8, 784)

    assert work(100) <= limit < work(150)
    assert budget.particles(1, 10, 8, 784) == 2 * budget.drawn(80, 784)


# --- the two stages: the pilot's allocation -------------------------------------------------------


def test_allocate_gives_each_mask_a_floor_and_the_rest_by_the_pilots_posterior() -> None:
    counts, m = smc.allocate(np.log([0.7, 0.2, 0.1, 1e-9]), 400, islands=4)
    assert m == 4 and counts.sum() == 400
    np.testing.assert_array_equal(counts, [4 + 269, 4 + 77, 4 + 38, 4])  # 384 by 0.7 : 0.2 : 0.1 : 0
    counts, m = smc.allocate(np.array([0.0, -np.inf]), 3000, islands=4)  # one mask over ISLAND_MAX
    assert counts.sum() == 3000 and m == -(-int(counts.max()) // smc.ISLAND_MAX) and counts.min() == m
    counts, m = smc.allocate(np.array([-np.inf, -np.inf]), 6, islands=4)  # nothing known: evenly
    np.testing.assert_array_equal(counts, [3, 3])
    assert m == 3
    assert smc.pilot_size(48, 8) == 12 and smc.pilot_size(48, 1) == 0 and smc.pilot_size(3, 8) == 0


def mask_posterior_of_a_row(
    engine: Engine, logp: np.ndarray, x_all: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A noisy row whose masks' evidence differ most among a few candidates, and its p(k | y)."""
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for y in noisy_rows(engine, 20, 0.1, seed=seed):
        log_k = exact_mask_evidence(logp, x_all, y, np.full(engine.dims, 0.1))
        post = np.exp(log_k - logsumexp(log_k))
        if best is None or post.max() - post.min() > best[0]:
            best = (float(post.max() - post.min()), y, post)
    assert best is not None
    return best[1], best[2]


@pytest.mark.parametrize("name", ["tiny", "tiny10"])
def test_the_pilot_moves_particles_to_the_masks_with_more_evidence_and_keeps_the_evidence_unbiased(
    name: str, tiny_engines: dict[str, Engine], tiny_joint: Joint
) -> None:
    """A row whose masks' exact evidence differ: over 300 seeds, the second stage gives the mask
    of highest p(k | y) more particles than the lowest, on average close to the allocation that
    the exact p(k | y) would give; and the mixture's estimate of p(y) (Z, not log Z: the second
    stage's islands only) has mean within 3 standard errors of the truth, resampling after every
    second step whenever the weights are uneven at all."""
    engine = tiny_engines[name]
    x_all, logp = tiny_joint[name]
    y, post = mask_posterior_of_a_row(engine, logp, x_all, seed=13)
    log_y = float(logsumexp(exact_mask_evidence(logp, x_all, y, np.full(engine.dims, 0.1))) - np.log(len(logp)))
    n, k = 32, engine.n_masks
    ideal, _ = smc.allocate(np.log(post), k * (n - smc.pilot_size(n, k)))
    counts, ratios, resampled = [], [], 0
    for seed in range(300):
        for got in run(engine, y[None, :], 0.1, seed, n, block=2, threshold=1.0):
            assert got.particles.sum() == k * n and got.log_z.shape == (k, smc.ISLANDS)
            counts.append(got.particles - smc.pilot_size(n, k))
            ratios.append(np.exp(smc.posterior(got).logprob - log_y))
            resampled += int(got.resamplings.sum())
    mean_counts = np.mean(counts, axis=0)
    hi, lo = int(np.argmax(post)), int(np.argmin(post))
    assert mean_counts[hi] > mean_counts[lo] + n / 2, (mean_counts, post)
    assert np.abs(mean_counts - ideal).max() < 0.2 * n * k, (mean_counts, ideal)
    assert resampled > 300
    r = np.array(ratios)
    mean, se = r.mean(), r.std(ddof=1) / np.sqrt(len(r))
    assert abs(mean - 1.0) < 3 * se + 1e-12, (mean, se)
    assert se < 0.05, se
