"""log p and imputation of bit rows with missing values (NaN), for the bit engine
(service.engine.engine.Engine, through the BitPasses it offers): exact where every mask's
ordering puts the missing dimensions last, else likelihood weighting (service.engine.importance).

Every long path streams its draws through the sampler in calls of at most _IMPUTE_VALUES values
of noise, with a cancellation checkpoint (service.engine.cancel) before each call, so that what a
request holds does not grow with n_importance (docs/engine.md gives the measured peaks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from made.core.masks import exact_orders
from made.core.numerics import log_mean_stderr, logmeanexp
from service.engine.cancel import checkpoint
from service.engine.checks import check_count, check_seed
from service.engine.importance import RunningMeans, pool_estimate, resample, split_draws, stream_weighted
from service.engine.passes import BitPasses

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


def observed_logprob(
    engine: BitPasses, x: np.ndarray, observed: np.ndarray, ks: list[int], seed: int | None, n_importance: int
) -> LogProbResult:
    """log p(x_O) for rows with missing values under the mixture of masks `ks`: one pass per mask
    where its ordering puts the missing dimensions last (exact), else likelihood weighting with
    n_importance draws per (mask, row) from numpy.random.default_rng(seed), streamed through the
    sampler (weighted_means: the draws are not kept). The standard error is the delta method's
    on the mixture mean, NaN where every mask is exact."""
    n, s = len(x), n_importance
    is_exact = exact_orders(engine.orderings[ks], observed)  # (len(ks), n)
    log_means = engine.mask_logliks(x, ks, observed)  # valid where is_exact
    variances = np.zeros((len(ks), n))  # of the mean weight, relative to a per-row scale
    # the (mask, row) pairs to weight, mask after mask, rows in order: the draw order
    todo_i, todo_r = np.nonzero(~is_exact)
    rng = np.random.default_rng(seed)
    acc = weighted_means(engine, np.asarray(ks)[todo_i], todo_r, x, observed, s, rng)
    log_means[todo_i, todo_r] = acc.log_mean()  # every weight 0: log p = -inf
    # mixture mean and delta-method standard error, computed relative to each row's maximum
    scale = log_means.max(axis=0)
    mean_rel = np.exp(log_means - scale).mean(axis=0)
    if s > 1:  # var of w / exp(scale) = exp(2 (top - scale)) var of w / exp(top)
        variances[todo_i, todo_r] = acc.m2 / (s - 1) * np.exp(2.0 * (acc.top - scale[todo_r])) / s
    var_mean = variances.sum(axis=0) / len(ks) ** 2
    exact = is_exact.all(axis=0)
    stderr = np.where(exact, np.nan, log_mean_stderr(mean_rel, var_mean))
    return LogProbResult(scale + np.log(mean_rel), np.asarray(exact, dtype=bool), stderr)


def weighted_means(
    engine: BitPasses,
    masks: np.ndarray,
    rows: np.ndarray,
    x: np.ndarray,
    observed: np.ndarray,
    s: int,
    rng: np.random.Generator,
) -> RunningMeans:
    """For each pair i (mask masks[i], row rows[i]): s completions of the row's missing values
    under the mask, drawn pair after pair from rng, and the running statistics of their weights
    w (the probability of the row's observed values), one group per pair.

    All pairs' draws step through the sampler together (K masks cost about one pass, not K),
    _IMPUTE_VALUES values a call at most (a pair's draws may span calls), with a cancellation
    checkpoint before each call; what is kept is four numbers per pair, whatever s, and rng
    draws the same uniforms in the same order as one call would."""
    pairs, dims = len(rows), engine.dims
    acc = RunningMeans(pairs)
    filled = np.nan_to_num(x, nan=0.0).astype(np.uint8)  # the sampler clamps to these where observed
    for pieces in split_draws(np.arange(pairs), s, max(1, _IMPUTE_VALUES // dims)):
        checkpoint()
        piece = np.array(pieces, dtype=np.int64).reshape(-1, 3)
        pid, lens = piece[:, 0], piece[:, 2] - piece[:, 1]
        of = np.repeat(pid, lens)
        u = rng.random((int(lens.sum()), dims))
        picked = rows[of]
        _, logw, _ = engine.sampler_for(len(u)).run_masks(masks[of], u, observed[picked], filled[picked])
        del u
        acc.add(pid, lens, logw)
    return acc


def impute(
    engine: BitPasses,
    x: np.ndarray,
    n_samples: int = 10,
    seed: int | None = None,
    n_importance: int = 1000,
    *,
    checked: bool = False,
) -> ImputeResult:
    """p(x_missing | x_observed) under the mixture, per row (NaN marks a missing value):
    n_samples completions, marginals p(x_d = 1 | x_obs), log p(x_obs) and an ESS.

    Rows with nothing missing return themselves (marginals: the row; ess: K x n_importance,
    nominal: nothing is estimated).

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

    Other rows (`exact` false): likelihood weighting, n_importance draws per mask, pooled
    as the mixture with weights w / K; log p(x_obs) is the mean weight, with a delta-method
    standard error; the marginals are the weighted mean of the draws; the completions are
    resampled from the weighted pool; `ess` = (sum w)^2 / sum w^2 of the pool. The pool is
    not held: the draws stream through the sampler, each row keeping its log weights (8
    bytes a draw) and weighted sums, and the resampled completions are drawn again from the
    generator's saved states, the same ones bit for bit (see _impute_weighted).

    Row i draws all its random numbers from numpy.random.default_rng([seed, i]) (seed None:
    a fresh one): its answer depends on the seed, its index and its own values, not on the
    other rows, nor on how rows are grouped into sampler calls (all rows' draws go through
    the sampler together, _IMPUTE_VALUES values at a time, with a cancellation checkpoint
    (service.engine.cancel) before each call). default_rng([seed, 0]) is
    default_rng(seed): a single-row request draws what it drew before rows had streams of
    their own.
    """
    x = engine.check_x(x, allow_missing=True, checked=checked)
    check_count("n_samples", n_samples, 0)
    check_count("n_importance", n_importance, 1)
    seed = check_seed(seed)
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
        out.ess[rows] = float(n_importance * engine.n_masks)
    exact_rows = np.flatnonzero(out.exact & ~complete)
    weighted_rows = np.flatnonzero(~out.exact)
    rngs = {int(i): np.random.default_rng([seed, int(i)]) for i in (*exact_rows, *weighted_rows)}
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
    """Rows that are not exact: n_importance likelihood-weighting draws per mask and row,
    drawn mask after mask from the row's generator, then the resampling from them. The
    draws of all rows go through the sampler in calls of at most _IMPUTE_VALUES values (a
    row's draws may span calls; importance.stream_weighted), with a cancellation checkpoint
    before each call, and are not kept: per row, their log weights (8 bytes a draw) and
    their weighted mean (the marginals) are, and the n_samples resampled draws are drawn
    again from the saved generator states (WeightedPool.redraw), bit for bit."""
    engine, x, observed, rngs, out = job.engine, job.x, job.observed, job.rngs, job.out
    dims = engine.dims
    per_call = max(1, _IMPUTE_VALUES // dims)
    filled = np.nan_to_num(x, nan=0.0).astype(np.uint8)  # clamped where observed

    def draw(picked: np.ndarray, masks: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        done, logw, _ = engine.sampler_for(len(u)).run_masks(masks, u, observed[picked], filled[picked])
        return done, logw

    for pool in stream_weighted(rows, engine.n_masks * n_importance, n_importance, dims, per_call, rngs, draw):
        r = pool.row
        est = pool_estimate(r, pool.logw, engine.n_masks, n_importance)
        out.logprob_observed[r], out.stderr[r], out.ess[r] = est.logprob, est.stderr, est.ess
        out.marginals[r] = np.where(observed[r], x[r], pool.mean)
        picks = resample(rngs[r], est.weights, job.n_samples)
        out.samples[r] = pool.redraw(picks, dims, per_call, draw)
