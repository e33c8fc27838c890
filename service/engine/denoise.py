"""Denoising: the posterior over clean rows x given noisy observations y, numpy in, numpy out.

The noise model flips each bit independently: p(y_d | x_d) = 1 - eps_d where y_d = x_d, eps_d
where not, with eps_d in [0, 1/2] per entry. It is imputation with soft evidence: eps_d = 0 is
an observed entry (clamped), eps_d = 1/2 a missing one (p(y_d | x_d) = 1/2 whatever x_d), and a
null in y is missing too, whatever its eps.

For mask k, the sampler draws x along k's ordering from the tilted Bernoulli
q(x_d | x_<d, y_d) ∝ p_k(x_d | x_<d) p(y_d | x_d) (the clamping of /impute's likelihood weighting,
generalised: see service.engine.sampler) and multiplies the weight by its normaliser
sum_x p_k(x_d = x | x_<d) p(y_d | x). The product over d is the ratio p_k(x) p(y | x) / q(x), so
E_q[w] = sum_x p_k(x) p(y | x) = p_k(y): an unbiased estimate of the mask's probability of the
noisy row, and the self-normalised weights turn the draws into the posterior p_k(x | y).

The model is the mixture p = (1/K) sum_k p_k: n_importance draws per mask (stratified over the K
masks, as /impute's weighted rows), pooled with weights w / K, so p(y) is the pool's mean
weight and the posterior marginals are the weighted frequencies of the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from made.core.errors import InvalidInput
from made.core.numerics import logmeanexp
from service.engine.checks import check_count, check_seed
from service.engine.importance import pool_estimate, resample, stream_weighted
from service.engine.passes import BitPasses

# Values (draws x D) of noise in one sampler call, at most: it bounds what a call holds (noise,
# evidence, samples and the sampler's float64 buffers; docs/engine.md), whatever n_importance:
# the draws are not kept (importance.stream_weighted).
_DENOISE_VALUES = 1 << 21


@dataclass
class DenoiseResult:
    samples: np.ndarray  # (N, S, D) uint8: clean rows resampled from the weighted pool
    marginals: np.ndarray  # (N, D) float64: p(x_d = 1 | y)
    most_likely: np.ndarray  # (N, D) uint8: 1 where marginals > 1/2 (ties keep y's value)
    logprob_noisy: np.ndarray  # (N,) float64: log p(y), nats
    stderr: np.ndarray  # (N,) float64: its standard error (delta method), NaN with one draw
    ess: np.ndarray  # (N,) float64: (sum w)^2 / sum w^2 of the pool


def check_eps(eps: float | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """eps as a scalar, one per row (N,) or one per entry (N, D) -> (N, D) float64 in [0, 1/2]."""
    a = np.asarray(eps, dtype=np.float64)
    n, d = shape
    ndim = a.ndim
    if a.ndim == 0:
        a = a.reshape(1, 1)
    elif a.ndim == 1:
        if len(a) != n:
            raise InvalidInput(f"eps has {len(a)} values (one per row) but x has {n} rows", loc=("eps",))
        a = a[:, None]
    elif a.ndim == 2:
        if a.shape != (n, d):
            raise InvalidInput(
                f"eps has shape {list(a.shape)} but x has shape [{n}, {d}]: a "
                "per-entry eps needs one value per value of x",
                loc=("eps",),
            )
    else:
        raise InvalidInput(f"eps must be a number, one per row or one per entry, got {a.ndim} dimensions", loc=("eps",))
    bad = ~((a >= 0) & (a <= 0.5))  # NaN included
    if bad.any():
        i, j = (int(t) for t in np.argwhere(bad)[0])
        at = ("", f" row {i}", f" row {i}, column {j}")[ndim]
        raise InvalidInput(f"eps{at} is {float(a[i, j])!r}; a flip probability must be within [0, 0.5]", loc=("eps",))
    return np.broadcast_to(a, shape).astype(np.float64)


def flip_evidence(y: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log p(y | x = 0), log p(y | x = 1)) per entry for independent flips with probability
    eps; a missing y (NaN) is no evidence, (0, 0)."""
    with np.errstate(divide="ignore"):  # eps = 0: log 0 = -inf, the clamped side
        keep, flip = np.log1p(-eps), np.log(eps)
    ones = y > 0.5
    missing = np.isnan(y)
    l0 = np.where(missing, 0.0, np.where(ones, flip, keep))
    l1 = np.where(missing, 0.0, np.where(ones, keep, flip))
    return l0, l1


def denoise(
    engine: BitPasses,
    y: np.ndarray,
    eps: float | np.ndarray,
    n_samples: int = 10,
    seed: int | None = None,
    n_importance: int = 1000,
    checked: bool = False,
) -> DenoiseResult:
    """p(x | y) under the mixture for each noisy row y (0/1; NaN: missing) and flip
    probabilities eps (a number, one per row, or one per entry, each in [0, 1/2]).

    Every row draws n_importance clean rows per mask from the tilted sampler with weights
    w = p_k(x) p(y | x) / q(x), from numpy.random.default_rng([seed, i]) (as /impute: a row's
    answer depends on the seed, its index and its own values only). From the pool of K x
    n_importance weighted draws: log p(y) = log mean(w) with a delta-method standard error, the
    marginals p(x_d = 1 | y) as the weighted mean of the draws, `ess` = (sum w)^2 / sum w^2, and
    n_samples clean rows resampled with probabilities w / sum w (sampling-importance-resampling:
    draws from the posterior as n_importance grows; exact for any n_importance where every
    weight is equal, e.g. eps = 1/2 everywhere). `most_likely` is the most likely value of each
    entry on its own (marginal > 1/2; y's value at exactly 1/2), not the most likely row.

    A row with eps = 0 everywhere and nothing missing is its own posterior: it is answered
    exactly (log p(y) as /logprob computes it, stderr 0, ess K x n_importance, nominal).

    The pool is never held: all rows' draws go through the sampler _DENOISE_VALUES values a
    call (a cancellation checkpoint before each), each row keeping only its log weights (8
    bytes a draw) and the weighted sum of its draws; the n_samples resampled rows are drawn
    again from the generator states saved before each call (importance.WeightedPool.redraw), the
    same rows bit for bit. Memory is bounded by the call size, not by n_importance x D.
    """
    y = engine.check_x(y, allow_missing=True, checked=checked)
    check_count("n_samples", n_samples, 0)
    check_count("n_importance", n_importance, 1)
    eps = check_eps(eps, y.shape)
    seed = check_seed(seed)
    n, d = y.shape
    k, s = engine.n_masks, n_importance
    out = DenoiseResult(
        samples=np.empty((n, n_samples, d), dtype=np.uint8),
        marginals=np.empty((n, d)),
        most_likely=np.empty((n, d), dtype=np.uint8),
        logprob_noisy=np.empty(n),
        stderr=np.empty(n),
        ess=np.empty(n),
    )
    l0, l1 = flip_evidence(y, eps)
    certain = ((eps == 0) & ~np.isnan(y)).all(axis=1)
    if certain.any():
        rows = np.flatnonzero(certain)
        out.samples[rows] = y[rows, None, :].astype(np.uint8)
        out.marginals[rows] = y[rows]
        out.logprob_noisy[rows] = logmeanexp(engine.mask_logliks(y[rows], list(range(k))), axis=0)
        out.stderr[rows] = 0.0
        out.ess[rows] = float(k * s)
    rows = np.flatnonzero(~certain)
    rngs = {int(r): np.random.default_rng([seed, int(r)]) for r in rows}
    per_call = max(1, _DENOISE_VALUES // d)

    def draw(picked: np.ndarray, masks: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        done, logw, _ = engine.sampler_for(len(u)).run_masks(masks, u, evidence=(l0[picked], l1[picked]))
        return done, logw

    for pool in stream_weighted(rows, k * s, s, d, per_call, rngs, draw):  # draw j is under mask j // s
        r = pool.row
        est = pool_estimate(r, pool.logw, k, s)
        out.logprob_noisy[r], out.stderr[r], out.ess[r] = est.logprob, est.stderr, est.ess
        out.marginals[r] = np.clip(pool.mean, 0.0, 1.0)
        picks = resample(rngs[r], est.weights, n_samples)
        out.samples[r] = pool.redraw(picks, d, per_call, draw)
    exact = (eps == 0) & ~np.isnan(y)  # every draw keeps y there: no rounding of the weighted mean
    out.marginals[exact] = y[exact]
    tie = out.marginals == 0.5
    out.most_likely[:] = np.where(tie, np.nan_to_num(y, nan=0.0), out.marginals > 0.5)
    return out
