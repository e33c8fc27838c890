"""log p and imputation of bit rows with missing values (NaN), for the bit engine
(service.engine.engine.Engine, through the BitPasses it offers): exact where every mask's
ordering puts the missing dimensions last, else sequential Monte Carlo along each ordering
(service.engine.smc: a particle filter whose evidence is the observed values, clamped).

Every long path goes through the sampler in calls of bounded size (exact completions:
_IMPUTE_VALUES values of noise; particles: smc._SMC_VALUES), with a cancellation checkpoint
(service.engine.cancel) before each call, so that what a request holds does not grow with
n_importance (docs/engine.md gives the measured peaks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from made.core.masks import exact_orders
from made.core.numerics import log_mean_stderr, logmeanexp
from service.engine import smc
from service.engine.cancel import checkpoint
from service.engine.checks import check_count, check_first_row, check_seed, row_generator
from service.engine.importance import split_draws
from service.engine.passes import BitPasses
from service.engine.smc import particle_filter, particles_for, posterior, posterior_samples

# Values (draws x D) of noise in one sampler call of /impute or of /logprob's importance draws, at
# most: it bounds what a call holds (noise, clamps, completions, the sampler's buffers and, for
# exact rows, the per-step probabilities) whatever n_importance, while rows and masks still step
# through the sampler together.
_IMPUTE_VALUES = 1 << 22


@dataclass
class LogProbResult:
    logprob: np.ndarray  # (N,) float64, nats
    exact: np.ndarray  # (N,) bool
    stderr: np.ndarray  # (N,) float64, NaN where exact


@dataclass
class ImputeResult:
    samples: np.ndarray  # (N, S, D) uint8
    marginals: np.ndarray  # (N, D) float64
    logprob_observed: np.ndarray  # (N,) float64
    exact: np.ndarray  # (N,) bool
    ess: np.ndarray  # (N,) float64
    stderr: np.ndarray  # (N,) float64 of logprob_observed, NaN where exact


def clamped_evidence(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log p(x_d | x'_d = 0), log p(x_d | x'_d = 1)) of observed values as evidence on the
    particles: an observed 1 is (-inf, 0), an observed 0 (0, -inf) (clamped), a missing one
    (0, 0): a particle's weight is then the probability of the observed values."""
    ones, missing = x > 0.5, np.isnan(x)
    l0 = np.where(missing | ~ones, 0.0, -np.inf)
    l1 = np.where(missing | ones, 0.0, -np.inf)
    return l0, l1


def _impute_filter(n_particles: int, n_masks: int) -> dict[str, int]:
    """The particle filter's settings for clamped rows (/logprob, /impute): smc.IMPUTE_BLOCK steps
    between resampling times, smc.IMPUTE_PILOT of each mask's particles in the pilot."""
    return {"block": smc.IMPUTE_BLOCK, "pilot": smc.pilot_size(n_particles, n_masks, smc.IMPUTE_PILOT)}


def observed_logprob(
    engine: BitPasses,
    x: np.ndarray,
    observed: np.ndarray,
    ks: list[int],
    seed: int | None,
    n_importance: int,
    row_ids: np.ndarray | None = None,
) -> LogProbResult:
    """log p(x_O) for rows with missing values under the mixture of masks `ks`: one pass per mask
    where its ordering puts the missing dimensions last (exact), else the particle filter's
    estimate (service.engine.smc, particles_for(n_importance) particles per mask: the work of
    n_importance draws, every mask of ks run for a row that needs one), its randomness from
    numpy.random.default_rng([seed, i]) with i the row's index in the call, row_ids[j] (None:
    its index in x; Engine.logprob adds the request's first_row). The standard error is the
    delta method's on the mixture mean, each inexact mask's variance from the spread of its
    islands; NaN where every mask is exact."""
    n = len(x)
    seed = check_seed(seed)
    ids = np.arange(n) if row_ids is None else np.asarray(row_ids)
    is_exact = exact_orders(engine.orderings[ks], observed)  # (len(ks), n)
    log_means = engine.mask_logliks(x, ks, observed)  # valid where is_exact
    island_z: dict[int, np.ndarray] = {}  # row: (len(ks), M) log evidence of each mask's islands
    todo = np.flatnonzero(~is_exact.all(axis=0))
    if len(todo):
        l0, l1 = clamped_evidence(x)
        rngs = {int(j): np.random.default_rng([seed, int(ids[j])]) for j in todo}
        n_particles = particles_for(n_importance)
        for particles in particle_filter(
            engine.sampler, list(ks), l0, l1, todo, rngs, n_particles, **_impute_filter(n_particles, len(ks))
        ):
            island_z[particles.row] = particles.log_z
            inexact = ~is_exact[:, particles.row]
            log_means[inexact, particles.row] = logmeanexp(particles.log_z[inexact], axis=1)
    # mixture mean and delta-method standard error, computed relative to each row's maximum
    scale = log_means.max(axis=0)
    mean_rel = np.exp(log_means - scale).mean(axis=0)
    variances = np.zeros((len(ks), n))  # of each mask's mean, relative to exp(scale)
    for j, lz in island_z.items():
        m = lz.shape[1]
        if m > 1:
            rel = np.exp(lz - scale[j])
            variances[:, j] = np.where(is_exact[:, j], 0.0, rel.var(axis=1, ddof=1) / m)
    var_mean = variances.sum(axis=0) / len(ks) ** 2
    exact = is_exact.all(axis=0)
    stderr = np.where(exact, np.nan, log_mean_stderr(mean_rel, var_mean))
    return LogProbResult(scale + np.log(mean_rel), np.asarray(exact, dtype=bool), stderr)


def impute(
    engine: BitPasses,
    x: np.ndarray,
    n_samples: int = 10,
    seed: int | None = None,
    n_importance: int = 1000,
    *,
    checked: bool = False,
    first_row: int = 0,
) -> ImputeResult:
    """p(x_missing | x_observed) under the mixture, per row (NaN marks a missing value):
    n_samples completions, marginals p(x_d = 1 | x_obs), log p(x_obs) and an ESS.

    Rows with nothing missing return themselves (marginals: the row; ess: n_samples, the
    completions, each the row itself, as a table model's; nothing is estimated).

    Exact rows (every mask's ordering puts the missing dimensions after all the observed
    ones; `exact` true): log p(x_obs) = log mean_k p_k(x_obs), one pass per mask, no
    standard error. The posterior over masks given x_obs is p_k(x_obs) / sum_j p_j(x_obs),
    so each completion draws its mask k from it, then the missing values by ancestral
    sampling under mask k with the observed entries clamped: n_samples exact, independent
    draws from p(x_missing | x_obs), nothing more (n_importance is not used). The marginals
    of the missing dimensions are not computable exactly in general (a sum over every
    configuration of the missing values before d), so they are estimated from those same
    completions, Rao-Blackwellised: the mean over completions s of p_{k_s}(x_d = 1 | the
    values before d in completion s), an unbiased estimate whose variance is at most that of
    the completions' own frequencies. `ess` is then the number of completions behind it,
    n_samples (at least 1: one completion is drawn even for n_samples = 0, so that the
    marginals are defined).

    Other rows (`exact` false): sequential Monte Carlo (service.engine.smc),
    particles_for(n_importance) particles per mask (one per DRAWS_PER_PARTICLE of the
    n_importance draws' work) walking its ordering with the observed values clamped and resampled
    where their weights grow uneven; log p(x_obs) is the mean over masks and islands of their
    evidence estimates, with a standard error over the islands; the marginals are the
    particles' weighted mean; the completions are drawn from the weighted particles; `ess` is
    the effective number of particles behind them (smc.posterior: at most K x the particles). What a row keeps is a
    summary per island, never its particles, and the particles go through the sampler a
    bounded number at a time.

    Row i draws all its random numbers from numpy.random.default_rng([seed, first_row + i])
    (seed None: a fresh one; first_row: the index of this request's first row in a call split
    into requests, so that rows [k:] sent with first_row k answer as in the request of all the
    rows): its answer depends on the seed, its index and its own values, not on the other
    rows, nor on how rows are grouped into sampler calls (all rows' draws go through the
    sampler together, _IMPUTE_VALUES values at a time, with a cancellation checkpoint
    (service.engine.cancel) before each call). default_rng([seed, 0]) is
    default_rng(seed): a single-row request draws what it drew before rows had streams of
    their own.
    """
    x = engine.check_x(x, allow_missing=True, checked=checked)
    check_count("n_samples", n_samples, 0)
    check_count("n_importance", n_importance, 1)
    seed = check_seed(seed)
    first_row = check_first_row(first_row)
    n, d = x.shape
    observed = ~np.isnan(x)
    out = ImputeResult(
        samples=np.empty((n, n_samples, d), dtype=np.uint8),
        # observed entries give their own value
        marginals=np.where(observed, x, 0.0).astype(np.float64, copy=False),
        logprob_observed=np.empty(n),
        exact=engine.exact_rows(observed),
        ess=np.empty(n),
        stderr=np.full(n, np.nan),
    )
    complete = observed.all(axis=1)
    if complete.any():
        rows = np.flatnonzero(complete)
        out.samples[rows] = x[rows, None, :].astype(np.uint8)
        ks = list(range(engine.n_masks))
        out.logprob_observed[rows] = logmeanexp(engine.mask_logliks(x[rows], ks), axis=0)
        out.ess[rows] = float(n_samples)  # its n_samples completions, each the row itself (as a table's)
    exact_rows = np.flatnonzero(out.exact & ~complete)
    weighted_rows = np.flatnonzero(~out.exact)
    rngs = {int(i): row_generator(seed, int(i), first_row=first_row) for i in (*exact_rows, *weighted_rows)}
    job = _Imputation(engine, x, observed, rngs, n_samples, out)
    if len(exact_rows):
        _impute_exact(job, exact_rows)
    if len(weighted_rows):
        _impute_weighted(job, weighted_rows, n_importance)
    return out


@dataclass
class _Imputation:
    """One impute call: the engine, the rows (NaN: missing) and which entries are observed, each
    row's generator, the completions asked per row, and the result being filled in."""

    engine: BitPasses
    x: np.ndarray
    observed: np.ndarray
    rngs: dict[int, np.random.Generator]
    n_samples: int
    out: ImputeResult


def _impute_exact(job: _Imputation, rows: np.ndarray) -> None:
    """Exact rows: max(n_samples, 1) completions each, their masks from the posterior (all
    drawn first, then the uniforms). The completions of all rows go through the sampler in
    calls of at most _IMPUTE_VALUES values (a row's may span calls), with a cancellation
    checkpoint before each; the marginals are summed call by call."""
    engine, x, observed, rngs, n_samples, out = job.engine, job.x, job.observed, job.rngs, job.n_samples, job.out
    ks = list(range(engine.n_masks))
    draws, dims = max(n_samples, 1), engine.dims
    loglik = engine.mask_logliks(x[rows], ks, observed[rows])  # (K, rows): log p_k(x_obs)
    out.logprob_observed[rows] = logmeanexp(loglik, axis=0)
    posterior = np.exp(loglik - loglik.max(axis=0))
    posterior /= posterior.sum(axis=0)
    out.ess[rows] = float(draws)
    filled = np.nan_to_num(x[rows], nan=0.0).astype(np.uint8)  # clamped where observed
    masks_of: dict[int, np.ndarray] = {}  # j: row rows[j]'s masks, while its draws go through
    sums: dict[int, np.ndarray] = {}  # j: its per-step probabilities summed over draws so far
    for pieces in split_draws(np.arange(len(rows)), draws, max(1, _IMPUTE_VALUES // dims)):
        checkpoint()
        masks, noise = [], []
        for j, first, end in pieces:
            rng = rngs[int(rows[j])]
            if first == 0:
                masks_of[j] = rng.choice(engine.n_masks, size=draws, p=posterior[:, j])
                sums[j] = np.zeros(dims)
            masks.append(masks_of[j][first:end])
            noise.append(rng.random((end - first, dims)))
        u = np.concatenate(noise)
        del noise
        of = np.concatenate([np.full(end - first, j) for j, first, end in pieces])
        done, _, probs = engine.sampler_for(len(u)).run_masks(
            np.concatenate(masks), u, observed[rows[of]], filled[of], return_probs=True
        )
        del u
        assert probs is not None
        at = 0
        for j, first, end in pieces:
            r = int(rows[j])
            if first < n_samples:
                keep = min(end, n_samples) - first
                out.samples[r, first : first + keep] = done[at : at + keep]
            sums[j] += probs[at : at + end - first].sum(axis=0)
            at += end - first
            if end == draws:
                del masks_of[j]
                out.marginals[r] = np.where(observed[r], out.marginals[r], sums.pop(j) / draws)


def _impute_weighted(job: _Imputation, rows: np.ndarray, n_importance: int) -> None:
    """Rows that are not exact: the particle filter of each, particles_for(n_importance) per mask,
    every random number from the row's generator (smc.particle_filter, then the completions'
    islands)."""
    engine, x, observed, rngs, out = job.engine, job.x, job.observed, job.rngs, job.out
    l0, l1 = clamped_evidence(x)
    ks = list(range(engine.n_masks))
    n_particles = particles_for(n_importance)
    for particles in particle_filter(
        engine.sampler, ks, l0, l1, rows, rngs, n_particles, job.n_samples, **_impute_filter(n_particles, len(ks))
    ):
        r = particles.row
        post = posterior(particles)
        out.logprob_observed[r], out.stderr[r], out.ess[r] = post.logprob, post.stderr, post.ess
        out.marginals[r] = np.where(observed[r], x[r], post.marginals)
        out.samples[r] = posterior_samples(rngs[r], post, particles, job.n_samples)
