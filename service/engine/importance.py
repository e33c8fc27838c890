"""Importance sampling's pool and estimates, written once for every estimator that weights draws:
the bit engine's exact imputation (service.engine.missing) and the particle filters of bits
(service.engine.smc) and tables (service.engine.table_smc).

Likelihood weighting draws a row's unknown values from the model's own conditionals with the
known ones clamped (or tilted by soft evidence); a draw's weight w is the probability of what was
clamped, so the mean weight estimates p(known values), and the self-normalised weights turn the
draws into the posterior. Draws are stratified over the K masks (s per mask): the mixture's
estimate is the mean over masks of the masks' mean weights.

Sequential Monte Carlo (service.engine.smc_pass) needs one more thing, plain numpy for any
engine: systematic resampling of many sets of particles at once (systematic_resample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from made.core.errors import InvalidInput
from made.core.numerics import effective_sample_size, log_mean_stderr


@dataclass(frozen=True)
class PoolEstimate:
    """What a row's pool of k x s weighted draws (draw j under mask j // s) estimates."""

    logprob: float  # log of the mean weight: log p(what was clamped), nats
    stderr: float  # its standard error (delta method, stratified by mask); NaN with one draw a mask
    ess: float  # effective sample size of the pool
    weights: np.ndarray  # (k x s,) the normalised weights, for resampling


def pool_estimate(row: int, logw: np.ndarray, k: int, s: int) -> PoolEstimate:
    """Row `row`'s estimate from the log weights of its pooled draws, mask after mask. The
    variance of the mixture's mean weight is the sum of the masks' variances of their means
    (strata are independent), taken relative to the largest weight; a pool whose every weight
    is 0 has nothing to estimate and is refused."""
    top = logw.max()
    if not np.isfinite(top):  # cannot happen while some draw has a positive probability
        raise InvalidInput(f"row {row}: every importance weight is 0")
    w = np.exp(logw - top)
    weights = w / w.sum()
    stderr = math.nan
    if s > 1:
        per_mask = w.reshape(k, s)
        var = per_mask.var(axis=1, ddof=1) / s
        stderr = float(log_mean_stderr(per_mask.mean(axis=1).sum(), var.sum()))
    return PoolEstimate(float(top + math.log(w.mean())), stderr, effective_sample_size(weights), weights)


def resample(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    """(n,) indices of draws picked with replacement in proportion to their normalised weights
    (sampling-importance-resampling): draws from the posterior as the pool grows."""
    return rng.choice(len(weights), size=n, replace=True, p=weights)


def split_draws(rows: np.ndarray, total: int, per_call: int) -> list[list[tuple[int, int, int]]]:
    """`total` draws for each row, cut into sampler calls of at most `per_call` draws: per call,
    (row, first draw, end) pieces; a row's draws may span calls, in order."""
    calls: list[list[tuple[int, int, int]]] = [[]]
    room = per_call
    for r in rows:
        first = 0
        while first < total:
            if room == 0:
                calls.append([])
                room = per_call
            end = min(total, first + room)
            calls[-1].append((int(r), first, end))
            room -= end - first
            first = end
    return [c for c in calls if c]


def systematic_resample(weights: np.ndarray, u: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
    """Systematic resampling of each set of particles: weights (..., n) normalised along the last
    axis, one uniform u (...) per set; returns (..., n) indices of the parents, non-decreasing:
    particle i takes the parent whose cumulative weight first exceeds (i + u) / n. Each parent
    gets floor or ceil of n times its weight children, unbiasedly. Sets of different sizes
    (the bit filter's islands): weights (V, P) with set v's in its first sizes[v] slots (V,), its
    indices valid in those slots."""
    n = weights.shape[-1]
    cum = np.cumsum(weights, axis=-1).reshape(-1, n)
    m = np.full(len(cum), n) if sizes is None else np.asarray(sizes)
    j = np.arange(n)
    cum[j[None, :] >= m[:, None] - 1] = 1.0  # rounding never leaves a point past the last parent
    uniforms = np.broadcast_to(np.asarray(u, dtype=np.float64), weights.shape[:-1]).reshape(-1, 1)
    points = (j[None, :] + uniforms) / m[:, None]
    # every set at once: set i's cumulative weights and points shifted into [i, i + 1]
    shift = np.arange(len(cum), dtype=np.float64)[:, None]
    idx = np.searchsorted((cum + shift).ravel(), (points + shift).ravel(), side="right").reshape(-1, n)
    return np.minimum(idx - np.arange(len(cum))[:, None] * n, m[:, None] - 1).reshape(weights.shape)
