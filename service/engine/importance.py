"""Importance sampling's pool and estimates, written once for every estimator that weights draws:
the bit engine's log p and imputation with missing values (service.engine.imputation), denoising
(service.engine.denoise) and the table engine (its log p and imputation).

Likelihood weighting draws a row's unknown values from the model's own conditionals with the
known ones clamped (or tilted by soft evidence); a draw's weight w is the probability of what was
clamped, so the mean weight estimates p(known values), and the self-normalised weights turn the
draws into the posterior. Draws are stratified over the K masks (s per mask): the mixture's
estimate is the mean over masks of the masks' mean weights.

What is kept of a pool is bounded by the call size, never by draws x D: the log weights (8 bytes a
draw), running sums, and the generator states from which a resampled draw is made again.

Sequential Monte Carlo (service.engine.smc) needs two more things, plain numpy for any engine:
systematic resampling of many sets of particles at once (systematic_resample) and the weights and
log evidence of those sets along a run (ParticleWeights).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from made.core.errors import InvalidInput
from made.core.numerics import effective_sample_size, log_mean_stderr
from service.engine.cancel import checkpoint


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


class RunningMeans:
    """Per group (a row, or a (mask, row) pair), the statistics of the weights w = exp(log w) of
    its draws as they arrive call by call, without keeping them: the count, the running maximum
    log weight `top`, the mean of w / exp(top) and its sum of squared deviations `m2`. Each
    call's part is merged by Chan et al.'s pairwise update, the statistics so far rescaled when
    the maximum grows, so the answer differs from one pass over all the weights only by float
    rounding, whatever the calls."""

    def __init__(self, groups: int) -> None:
        self.count = np.zeros(groups)
        self.top = np.full(groups, -np.inf)
        self.mean = np.zeros(groups)
        self.m2 = np.zeros(groups)

    def add(self, ids: np.ndarray, lens: np.ndarray, logw: np.ndarray) -> None:
        """logw holds runs of lens[i] log weights of group ids[i], one after another (each group
        at most once a call); a NaN log weight (an overflow in a network) counts as weight 0."""
        logw = np.where(np.isnan(logw), -np.inf, logw)
        reps = lens.astype(np.int64)
        starts = np.concatenate(([0], np.cumsum(reps)[:-1]))
        new_top = np.maximum(self.top[ids], np.maximum.reduceat(logw, starts))
        ref = np.where(np.isfinite(new_top), new_top, 0.0)
        w = np.exp(logw - np.repeat(ref, reps))
        part_mean = np.add.reduceat(w, starts) / lens
        w -= np.repeat(part_mean, reps)
        part_m2 = np.add.reduceat(w * w, starts)
        rescale = np.exp(self.top[ids] - ref)  # the statistics so far, relative to the new maximum
        n_a = self.count[ids]
        n_ab = n_a + lens
        delta = part_mean - self.mean[ids] * rescale
        self.mean[ids] = self.mean[ids] * rescale + delta * (lens / n_ab)
        self.m2[ids] = self.m2[ids] * rescale**2 + part_m2 + delta**2 * (n_a * lens / n_ab)
        self.count[ids] = n_ab
        self.top[ids] = new_top

    def add_rows(self, rows: np.ndarray, logw: np.ndarray) -> None:
        """add() for the log weights of draws of `rows` (non-decreasing: each row's draws together)."""
        starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
        lens = np.diff(np.append(starts, len(rows))).astype(np.float64)
        self.add(rows[starts], lens, logw)

    def log_mean(self) -> np.ndarray:
        """log of the mean weight per group; -inf where every weight is 0."""
        with np.errstate(divide="ignore"):
            return np.where(np.isfinite(self.top), self.top + np.log(self.mean), -np.inf)

    def stderr(self) -> np.ndarray:
        """Standard error of log_mean() by the delta method (0 with one draw); NaN where every
        weight is 0."""
        n = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(n > 1, np.maximum(self.m2, 0.0) / np.maximum(n - 1, 1.0), 0.0) / n
        se = log_mean_stderr(np.maximum(self.mean, 1e-300), var)
        return np.where(np.isfinite(self.top), se, np.nan)


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


# A sampler call as likelihood weighting makes it: (row of each draw, mask of each draw,
# uniforms (n, D)) -> (draws (n, D) uint8, log weights (n,)); the row says what is clamped.
DrawFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class WeightedPool:
    """One row's pool of `total` likelihood-weighting draws (draw j under mask j // s), kept
    without the draws: their log weights (8 bytes a draw), their weighted mean, and the state
    of the row's generator before each run of draws that went through the sampler together, so
    that any draws can be made again, bit for bit, by redraw()."""

    row: int
    s: int  # draws per mask
    logw: np.ndarray  # (total,) float64
    mean: np.ndarray  # (D,) float64: sum_j w_j x_j / sum_j w_j (NaN where every weight is 0)
    runs: list[tuple[int, int, Mapping[str, Any]]]  # (first draw, end, bit generator state before it)

    def redraw(self, picks: np.ndarray, dims: int, per_call: int, draw: DrawFn) -> np.ndarray:
        """(len(picks), D) uint8: draws picks[i] of the pool again: each distinct draw's
        uniforms regenerated from its run's saved state (advanced past the draws before it),
        through the sampler per_call draws at a time, the picked draws only."""
        wanted, inverse = np.unique(np.asarray(picks, dtype=np.int64), return_inverse=True)
        out = np.empty((len(wanted), dims), dtype=np.uint8)
        starts = np.array([first for first, _, _ in self.runs])
        run_of = np.searchsorted(starts, wanted, side="right") - 1
        for lo in range(0, len(wanted), per_call):
            checkpoint()
            part = wanted[lo : lo + per_call]
            u = np.empty((len(part), dims))
            bits: Any = None  # the run's bit generator (PCG64 for default_rng), from its state
            gen, pos, at_run = np.random.default_rng(0), 0, -1
            for i, (j, r) in enumerate(zip(part.tolist(), run_of[lo : lo + per_call].tolist(), strict=True)):
                first, end, state = self.runs[r]
                assert first <= j < end
                if r != at_run:
                    bits = getattr(np.random, state["bit_generator"])()
                    bits.state = state
                    gen, pos, at_run = np.random.Generator(bits), first, r
                if j > pos:  # each float64 uniform is one 64-bit step of the bit generator
                    bits.advance((j - pos) * dims)
                u[i] = gen.random(dims)
                pos = j + 1
            out[lo : lo + len(part)] = draw(np.full(len(part), self.row), part // self.s, u)[0]
        return out[inverse.reshape(-1)]


class _Streaming:
    """A row's pool while its draws go through the sampler: the log weights so far and the
    weighted sum of the draws relative to the running maximum log weight (rescaled when it
    grows), so that nothing of size draws x D is kept."""

    def __init__(self, total: int, dims: int) -> None:
        self.logw = np.empty(total)
        self.top = -np.inf
        self.acc = np.zeros(dims)  # sum_j exp(logw_j - top) x_j
        self.wsum = 0.0  # sum_j exp(logw_j - top)
        self.runs: list[tuple[int, int, Mapping[str, Any]]] = []

    def add(self, first: int, logw: np.ndarray, x: np.ndarray) -> None:
        self.logw[first : first + len(logw)] = logw
        top = max(self.top, float(logw.max()))
        if top == -np.inf:  # every weight so far is 0
            return
        rescale = math.exp(self.top - top)  # 0 while self.top is -inf
        w = np.exp(logw - top)
        self.acc *= rescale
        self.acc += w @ x
        self.wsum = self.wsum * rescale + float(w.sum())
        self.top = top


def stream_weighted(
    rows: np.ndarray,
    total: int,
    s: int,
    dims: int,
    per_call: int,
    rngs: dict[int, np.random.Generator],
    draw: DrawFn,
) -> Iterator[WeightedPool]:
    """Likelihood weighting of `total` draws per row (draw j under mask j // s), each row's
    uniforms from rngs[row] in draw order, all rows' draws through `draw` in calls of at most
    per_call draws (split_draws: a row's draws may span calls), with a cancellation checkpoint
    before each call. Yields each row's WeightedPool once its last draw is in: what it keeps
    is O(total) numbers plus O(D), never the draws, so memory is bounded by the call size and
    not by total x D. The generators end where drawing every uniform at once leaves them."""
    pending: dict[int, _Streaming] = {}
    for pieces in split_draws(rows, total, per_call):
        checkpoint()
        noise = []
        for r, first, end in pieces:
            if first == 0:
                pending[r] = _Streaming(total, dims)
            pending[r].runs.append((first, end, rngs[r].bit_generator.state))
            noise.append(rngs[r].random((end - first, dims)))
        u = np.concatenate(noise)
        del noise
        picked = np.concatenate([np.full(end - first, r) for r, first, end in pieces])
        masks = np.concatenate([np.arange(first, end) // s for _, first, end in pieces])
        done, logw = draw(picked, masks, u)
        del u
        at = 0
        for r, first, end in pieces:
            pending[r].add(first, logw[at : at + end - first], done[at : at + end - first])
            at += end - first
            if end == total:
                p = pending.pop(r)
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = p.acc / p.wsum
                yield WeightedPool(r, s, p.logw, mean, p.runs)


# --- sequential Monte Carlo: resampling and the evidence's bookkeeping (service.engine.smc) -----


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
