"""Denoising: the posterior over clean rows x given noisy observations y, numpy in, numpy out.

The noise model flips each bit independently: p(y_d | x_d) = 1 - eps_d where y_d = x_d, eps_d
where not, with eps_d in [0, 1/2] per entry. It is imputation with soft evidence: eps_d = 0 is
an observed entry (clamped), eps_d = 1/2 a missing one (p(y_d | x_d) = 1/2 whatever x_d), and a
null in y is missing too, whatever its eps.

For mask k, particles walk k's ordering drawing each x_d from the tilted Bernoulli
q(x_d | x_<d, y_d) ∝ p_k(x_d | x_<d) p(y_d | x_d), the locally optimal proposal, each weighted
by the normalisers sum_x p_k(x_d = x | x_<d) p(y_d | x), and resampled where their weights grow
uneven: a particle filter (service.engine.smc) whose evidence estimate is unbiased for
p_k(y) = sum_x p_k(x) p(y | x), and whose weighted particles approximate p_k(x | y).

The model is the mixture p = (1/K) sum_k p_k: n_importance particles per mask, p(y) the mean
of the masks' estimates, the posterior the masks' posteriors weighted by their evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from made.core.errors import InvalidInput
from made.core.numerics import logmeanexp
from service.engine.checks import check_count, check_first_row, check_seed, row_generator
from service.engine.passes import BitPasses
from service.engine.smc import particle_filter, posterior, posterior_samples

# Particles per mask and row by default: enough that a hundred binarized-MNIST digits denoise
# within the request timeout with fewer bit errors than 1,000 importance draws a mask gave
# (docs/denoise.md).
DEFAULT_PARTICLES = 48


@dataclass
class DenoiseResult:
    samples: np.ndarray  # (N, S, D) uint8: clean rows resampled from the weighted pool
    marginals: np.ndarray  # (N, D) float64: p(x_d = 1 | y)
    most_likely: np.ndarray  # (N, D) uint8: 1 where marginals > 1/2 (ties keep y's value)
    logprob_noisy: np.ndarray  # (N,) float64: log p(y), nats
    stderr: np.ndarray  # (N,) float64: its standard error over the islands, NaN with one island
    ess: np.ndarray  # (N,) float64: 1 / sum of the squared posterior weights of the particles


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
    n_importance: int = DEFAULT_PARTICLES,
    checked: bool = False,
    *,
    first_row: int = 0,
) -> DenoiseResult:
    """p(x | y) under the mixture for each noisy row y (0/1; NaN: missing) and flip
    probabilities eps (a number, one per row, or one per entry, each in [0, 1/2]).

    Every row runs a particle filter (service.engine.smc) with n_importance particles per mask
    (here a count of particles: the request's DenoiseRequest.particles, which maps a request's
    n_importance, draws-worth, to smc.particles_for(n_importance))
    (in smc.ISLANDS independent islands), all its random numbers from
    numpy.random.default_rng([seed, first_row + i]): a row's answer depends on the seed, its
    index and its own values only (first_row: the index of this request's first row in a call
    split into requests, so that rows [k:] sent with first_row k answer as in the request of all
    the rows). From its particles (smc.posterior): log p(y) = log of the mean over masks
    and islands of their evidence estimates (unbiased for p(y)), with a standard error over
    the islands; the marginals p(x_d = 1 | y) as the particles' weighted mean; `ess`, the
    effective number of particles behind them, 1 / sum of their squared weights; n_samples
    clean rows drawn from the weighted particles (with replacement). `most_likely` is the most
    likely value of each entry on its own (marginal > 1/2; y's value at exactly 1/2), not the
    most likely row.

    A row with eps = 0 everywhere and nothing missing is its own posterior: it is answered
    exactly (log p(y) as /logprob computes it, stderr 0, ess K x n_importance, nominal).

    Rows go through the sampler a bounded number of particle values at a time (smc), with a
    cancellation checkpoint before each pass: memory is bounded by the pass, not by the rows.
    """
    y = engine.check_x(y, allow_missing=True, checked=checked)
    check_count("n_samples", n_samples, 0)
    check_count("n_importance", n_importance, 1)
    eps = check_eps(eps, y.shape)
    seed = check_seed(seed)
    first_row = check_first_row(first_row)
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
    rngs = {int(r): row_generator(seed, int(r), first_row=first_row) for r in rows}
    for particles in particle_filter(engine.sampler, list(range(k)), l0, l1, rows, rngs, s, n_samples):
        r = particles.row
        post = posterior(particles)
        out.logprob_noisy[r], out.stderr[r], out.ess[r] = post.logprob, post.stderr, post.ess
        out.marginals[r] = post.marginals
        out.samples[r] = posterior_samples(rngs[r], post, particles, n_samples)
    exact = (eps == 0) & ~np.isnan(y)  # every particle keeps y there: no rounding of the weighted mean
    out.marginals[exact] = y[exact]
    tie = out.marginals == 0.5
    out.most_likely[:] = np.where(tie, np.nan_to_num(y, nan=0.0), out.marginals > 0.5)
    return out
