"""Importance sampling's pool and estimates, written once for every estimator that weights draws:
the bit engine's exact imputation (service.engine.missing) and the particle filters of bits
(service.engine.smc) and tables (service.engine.table_smc).

Likelihood weighting draws a row's unknown values from the model's own conditionals with the
known ones clamped (or tilted by soft evidence); a draw's weight w is the probability of what was
clamped, so the mean weight estimates p(known values), and the self-normalised weights turn the
draws into the posterior. Draws are stratified over the K masks (s per mask): the mixture's
estimate is the mean over masks of the masks' mean weights.

Sequential Monte Carlo (service.engine.smc) needs two more things, plain numpy for any engine:
systematic resampling of many sets of particles at once (systematic_resample) and the weights and
log evidence of those sets along a run (ParticleWeights).
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


def systematic_resample(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Systematic resampling of each set of particles: weights (..., n) normalised along the last
    axis, one uniform u (...) per set; returns (..., n) indices of the parents, non-decreasing:
    particle i takes the parent whose cumulative weight first exceeds (i + u) / n. Each parent
    gets floor or ceil of n times its weight children, unbiasedly."""
    n = weights.shape[-1]
    cum = np.cumsum(weights, axis=-1)
    cum[..., -1] = 1.0  # rounding never leaves a point past the last parent
    points = (np.arange(n) + np.asarray(u)[..., None]) / n
    # every set at once: set i's cumulative weights and points shifted into [i, i + 1]
    shift = np.arange(cum.size // n, dtype=np.float64)[:, None]
    flat_cum = (cum.reshape(-1, n) + shift).ravel()
    flat_points = (np.broadcast_to(points, cum.shape).reshape(-1, n) + shift).ravel()
    idx = np.searchsorted(flat_cum, flat_points, side="right").reshape(-1, n) - np.arange(len(shift))[:, None] * n
    return np.minimum(idx, n - 1).reshape(weights.shape)


class ParticleWeights:
    """The weights of sets of n particles (shape (..., n)) along a sequential Monte Carlo run, and
    each set's log evidence so far: the log weights since the set last resampled, and `logz`, the
    sum over its resamplings of the log mean weight then. After the last step the set's
    unbiased estimate of what its weights multiply to (p(evidence) for likelihood weighting with
    the locally optimal proposal) is exp(logz) x mean(w) (log_evidence()): resampling in
    proportion to the weights and restarting them at 1 keeps E[prod of the means] unchanged."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.logw = np.zeros(shape)
        self.logz = np.zeros(shape[:-1])
        self.resamplings = np.zeros(shape[:-1], dtype=np.int64)

    def add(self, log_increment: np.ndarray) -> None:
        """Multiply each particle's weight by exp(log_increment) (..., n); NaN counts as 0."""
        self.logw += np.where(np.isnan(log_increment), -np.inf, log_increment)

    def normalised(self) -> np.ndarray:
        """(..., n) the weights normalised within each set (uniform where every weight is 0)."""
        top = self.logw.max(axis=-1, keepdims=True)
        w = np.exp(self.logw - np.where(np.isfinite(top), top, 0.0))
        total = w.sum(axis=-1, keepdims=True)
        n = self.logw.shape[-1]
        return np.where(total > 0, w / np.where(total > 0, total, 1.0), 1.0 / n)

    def ess(self) -> np.ndarray:
        """(...) each set's effective sample size, (sum w)^2 / sum w^2, between 1 and n."""
        w = self.normalised()
        return 1.0 / (w * w).sum(axis=-1)

    def log_mean(self) -> np.ndarray:
        """(...) log of each set's mean weight since its last resampling (-inf where all are 0)."""
        top = self.logw.max(axis=-1)
        ref = np.where(np.isfinite(top), top, 0.0)
        with np.errstate(divide="ignore"):
            return ref + np.log(np.exp(self.logw - ref[..., None]).mean(axis=-1))

    def resample(self, u: np.ndarray, threshold: float) -> np.ndarray | None:
        """Systematic resampling (one uniform u (...) per set) of the sets whose ESS is below
        threshold x n: returns (..., n) parent indices within each set (the identity elsewhere),
        or None where no set resamples. The resampled sets' log mean weight goes into logz and
        their weights restart at 1. A set whose every weight is 0 is left as it is (its evidence
        is 0 whatever follows)."""
        n = self.logw.shape[-1]
        mean = self.log_mean()
        due = (self.ess() < threshold * n) & np.isfinite(mean)
        if not due.any():
            return None
        idx = np.broadcast_to(np.arange(n), self.logw.shape).copy()
        idx[due] = systematic_resample(self.normalised()[due], np.asarray(u)[due])
        self.logz[due] += mean[due]
        self.logw[due] = 0.0
        self.resamplings[due] += 1
        return idx

    def log_evidence(self) -> np.ndarray:
        """(...) each set's log evidence estimate: logz plus the log mean of the weights now."""
        return self.logz + self.log_mean()
