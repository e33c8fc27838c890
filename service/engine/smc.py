"""Sequential Monte Carlo along each mask's ordering for a model of bits (a particle filter):
/denoise, and /logprob and /impute of rows whose missing values no ordering answers
exactly (service.engine.denoise, service.engine.missing).

The evidence on a row is per entry: l0 = log p(y_d | x_d = 0) and l1 = log p(y_d | x_d = 1)
(a flipped bit's likelihood; an observed entry is (0, -inf) or (-inf, 0), a missing one (0, 0)).
Under mask k the particles walk k's ordering in the stepping sampler (sampler.walk_plan), each
step drawing x_d from the locally optimal proposal q(x_d | x_<d) ∝ p_k(x_d | x_<d) p(y_d | x_d)
(the tilted thresholds of likelihood weighting) with incremental weight its normaliser
sum_x p_k(x_d = x | x_<d) p(y_d | x), read from the step's logit at the end of each block. At
every block boundary (every `block` steps: fixed candidate times) a set of particles whose
effective sample size has fallen below `threshold` x its size is resampled systematically: its
particles' whole state (inputs drawn, hidden units computed) is permuted along the batch axis,
their weights restart at 1 and the set's log evidence gains the log of their mean
(importance.ParticleWeights). The product of those means and of the final mean weight is an
unbiased estimate of p_k(evidence); the final weighted particles estimate the posterior p_k(x | y).

Standard errors come from independent islands: each mask's particles are cut into `islands`
sets that never exchange particles, so each island's estimate Z_km is independent and unbiased,
the mask's estimate is their mean and its variance their sample variance over the islands
(importance.pool_estimate, with the islands as the draws of the mask's stratum). The mixture's
p(y) = mean_k p_k(y) is estimated by the mean over masks and islands of Z_km; its posterior
mixes the masks' posteriors by their estimated evidence (posterior()).

Randomness: a row first draws, for each mask and sample, the island the sample would take under
that mask (uniformly); then each island draws, in island order, the uniforms of its particles,
one per mask and block boundary for the systematic resampling and one per mask and sample for
the picks; all from the row's generator, whatever the batch: a row's answer depends on its seed, its
index and its own values only (beyond float64 rounding of the network, as the sampler's).
Memory: islands (of at most ISLAND_MAX particles a mask) go through the sampler in passes of at
most _SMC_VALUES particle values, and a row keeps a summary per island and one pick per mask and
sample, never its particles.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from made.core.numerics import log_sigmoid
from service.engine.cancel import checkpoint
from service.engine.importance import ParticleWeights, pool_estimate
from service.engine.sampler import GROUP_BLOCK, FastSampler, tilt, walk_plan
from service.engine.sampler_plan import GroupPlan

# Steps between the times a set of particles may resample: the group plan's block (resampling
# needs the end of a block; shorter blocks cost more numpy calls per step).
SMC_BLOCK = GROUP_BLOCK
# A set resamples when its effective sample size falls below this fraction of its particles.
THRESHOLD = 0.5
# Independent islands per mask, for the standard error (each at least one particle) ...
ISLANDS = 4
# ... and more where an island would hold more particles than this (islands go through the
# sampler one or more at a time, so a pass never needs a row's every particle).
ISLAND_MAX = 256
# What a particle's value costs in the budget's units (service.core.budget: a value a network
# pass computes), a tilted draw, its weight and its share of resampling: measured on
# binarized-mnist by bench/denoise.py --costs (docs/denoise.md), rounded up, about twice a free
# draw's STEP_COST.
PARTICLE_COST = 6
# What one particle stands for: a request's n_importance is the work of n_importance draws of
# likelihood weighting per mask, which a particle filter spends on n_importance / this many
# particles per mask (particles_for; the table models' filters too, service.engine.table_smc).
DRAWS_PER_PARTICLE = 16
# Particle values (particles x D) in one pass through the sampler, at most (or one island's,
# where that is more): bounds what a call holds (noise, thresholds, inputs, logits, and the
# hidden units: about (3 + H / D) x 8 bytes a value), whatever the rows and particles.
_SMC_VALUES = 1 << 21


def particles_for(n_importance: int) -> int:
    """Particles per mask for a request's n_importance (draws per mask): one particle stands for
    DRAWS_PER_PARTICLE draws, rounded up, at least one."""
    return max(1, -(-int(n_importance) // DRAWS_PER_PARTICLE))


@dataclass
class ParticleRow:
    """What one row's particles left after the last step, per mask and island (K masks, M
    islands of p particles each): nothing of size particles x D is kept."""

    row: int
    log_z: np.ndarray  # (K, M) each island's log evidence estimate, log Z_km
    mean: np.ndarray  # (K, M, D) each island's weighted mean of its particles
    sum_sq: np.ndarray  # (K, M) each island's sum of squared normalised weights (1 / its ESS)
    picks: np.ndarray  # (K, S, D) uint8: per mask and sample, a particle of its island (chosen)
    resamplings: np.ndarray  # (K, M) how many times each island resampled


def island_sizes(n_particles: int, islands: int = ISLANDS) -> tuple[int, int]:
    """(islands M, particles per island p) for n_particles per mask: M = `islands` (fewer where
    there are fewer particles, more where an island would pass ISLAND_MAX), p = n_particles // M."""
    m = max(1, min(islands, n_particles), -(-n_particles // ISLAND_MAX))
    return m, max(1, n_particles // m)


@dataclass
class _Island:
    """An island of a row waiting for its pass: its noise and uniforms, drawn in island order."""

    row: int
    index: int  # among its row's islands
    noise: np.ndarray  # (K x p, D): the particles' uniforms, mask after mask
    pick: np.ndarray  # (K, stages): one uniform per mask and block boundary, for resampling
    draw: np.ndarray  # (K, S): one per mask and sample, for the picks
    chosen: np.ndarray  # (K, S) bool: the samples that take this island under each mask


def particle_filter(
    sampler: FastSampler,
    ks: list[int],
    l0: np.ndarray,
    l1: np.ndarray,
    rows: np.ndarray,
    rngs: dict[int, np.random.Generator],
    n_particles: int,
    n_samples: int = 0,
    *,
    islands: int = ISLANDS,
    block: int | None = None,
    threshold: float = THRESHOLD,
) -> Iterator[ParticleRow]:
    """Run the particle filter of every row in `rows` (indices into l0, l1 (N, D) and keys of
    rngs) under each mask of ks, n_particles per mask (island_sizes), and yield each row's
    ParticleRow once its last island is through, rows in order; `block` (None: SMC_BLOCK) is the
    steps between resampling times. Each row draws from its generator the island of each mask
    and sample (K, n_samples), then each island, in island order: its uniforms (K x p, D), one
    per mask and boundary for the resampling, and one per mask and sample for its picks.
    Islands go through the sampler _SMC_VALUES particle values at a time, a cancellation
    checkpoint before each pass."""
    dims = l0.shape[1]
    m, p = island_sizes(n_particles, islands)
    plan = sampler.group_plan(tuple(ks), SMC_BLOCK if block is None else block)
    stages = max(len(plan.blocks) - 1, 1)  # boundaries where a set may resample
    units = [(int(r), i) for r in rows for i in range(m)]  # each row's islands, in order
    per_pass = max(1, _SMC_VALUES // (len(ks) * p * dims))
    done: dict[int, list[tuple[np.ndarray, ...]]] = {}
    picks: dict[int, np.ndarray] = {}  # row: (K, S, D), filled island by island
    islands_of: dict[int, np.ndarray] = {}  # row: (K, S) the island of each mask and sample
    for start in range(0, len(units), per_pass):
        checkpoint()
        batch = []
        for r, i in units[start : start + per_pass]:
            if i == 0:
                islands_of[r] = rngs[r].integers(0, m, size=(len(ks), n_samples))
                picks[r] = np.zeros((len(ks), n_samples, dims), dtype=np.uint8)
            batch.append(_island(rngs[r], r, i, islands_of[r], p, dims, stages))
        for unit, (island, picked) in zip(
            batch, _pass(plan, sampler.activation, l0, l1, batch, p, threshold), strict=True
        ):
            done.setdefault(unit.row, []).append(island)
            picks[unit.row][unit.chosen] = picked
            if len(done[unit.row]) == m:
                log_z, mean, sum_sq, resamplings = (np.stack(a, axis=1) for a in zip(*done.pop(unit.row), strict=True))
                del islands_of[unit.row]
                yield ParticleRow(unit.row, log_z, mean, sum_sq, picks.pop(unit.row), resamplings)


def _island(
    rng: np.random.Generator, row: int, index: int, islands_of: np.ndarray, p: int, dims: int, stages: int
) -> _Island:
    """An island's random numbers, from its row's generator in this order."""
    k, n_samples = islands_of.shape
    noise, pick, draw = rng.random((k * p, dims)), rng.random((k, stages)), rng.random((k, n_samples))
    return _Island(row, index, noise, pick, draw, islands_of == index)


def _pass(
    plan: GroupPlan,
    activation: str,
    l0: np.ndarray,
    l1: np.ndarray,
    batch: list[_Island],
    p: int,
    threshold: float,
) -> list[tuple[tuple[np.ndarray, ...], np.ndarray]]:
    """One pass of the islands of `batch`: group g is the plan's mask g, its slots island after
    island, particle after particle. Returns per island (log_z (K,), mean (K, D), sum_sq (K,),
    picks (K, S, D), resamplings (K,))."""
    n_groups, sets, dims = len(plan.nets), len(batch), l0.shape[1]
    width = sets * p
    orderings = [net.ordering for net in plan.nets]
    of = np.array([u.row for u in batch], dtype=np.int64)
    # thresholds (G, D, R) in positions: the tilted draw x = 1 where z > logit(u) - (l1 - l0)
    thr = np.empty((n_groups, dims, width))
    l0_pos = np.empty((n_groups, dims, sets))
    l1_pos = np.empty((n_groups, dims, sets))
    for g, order in enumerate(orderings):
        l0_pos[g] = l0[np.ix_(of, order)].T
        l1_pos[g] = l1[np.ix_(of, order)].T
        for j, unit in enumerate(batch):
            um = unit.noise[g * p : (g + 1) * p][:, order]
            with np.errstate(divide="ignore"):  # u = 0: -inf, x = 1 as u < p
                t = np.log(um / (1.0 - um))
            thr[g, :, j * p : (j + 1) * p] = tilt(t, (l1_pos[g, :, j] - l0_pos[g, :, j])[None, :]).T
    picks = np.stack([unit.pick for unit in batch], axis=1)  # (G, sets, stages)
    weights = ParticleWeights((n_groups, sets, p))
    state = {"t0": 0, "stage": 0}

    def weigh(t0: int, t1: int, logits: np.ndarray) -> None:
        z = logits[:, t0:t1, :].reshape(n_groups, t1 - t0, sets, p)
        one = log_sigmoid(z)  # log p(x_d = 1 | x_<d); log p(x_d = 0 | x_<d) = one - z
        zero = one - z
        one += l1_pos[:, t0:t1, :, None]
        zero += l0_pos[:, t0:t1, :, None]
        weights.add(np.logaddexp(one, zero).sum(axis=1))

    def between(t1: int, xs: np.ndarray, logits: np.ndarray, acts: list[np.ndarray], known: list[int]) -> None:
        weigh(state["t0"], t1, logits)
        state["t0"] = t1
        idx = weights.resample(picks[:, :, state["stage"]], threshold)
        state["stage"] += 1
        if idx is None:
            return
        # only the sets that resampled copy their particles' state, each within its own columns
        for g, j in zip(*np.nonzero((idx != np.arange(p)).any(axis=2)), strict=True):
            cols, parents = slice(j * p, (j + 1) * p), idx[g, j] + j * p
            xs[g, :t1, cols] = np.take(xs[g, :t1], parents, axis=1)
            for act, k in zip(acts, known, strict=True):
                act[g, :k, cols] = np.take(act[g, :k], parents, axis=1)

    xs, logits = walk_plan(plan, [width] * n_groups, thr, activation, between)
    weigh(state["t0"], dims, logits)
    del thr, logits
    log_z = weights.log_evidence()  # (G, sets)
    norm = weights.normalised()  # (G, sets, p)
    out: list[tuple[tuple[np.ndarray, ...], np.ndarray]] = []
    for j, unit in enumerate(batch):
        x = np.empty((n_groups, p, dims), dtype=np.uint8)
        for g, order in enumerate(orderings):
            x[g][:, order] = xs[g, :, j * p : (j + 1) * p].T
        w = norm[:, j]
        mean = np.einsum("gp,gpd->gd", w, x)
        cum = np.cumsum(w, axis=1)
        cum[:, -1] = 1.0
        mask_of, sample = np.nonzero(unit.chosen)  # the samples that take this island, mask after mask
        shifted = (cum + np.arange(n_groups)[:, None]).ravel()  # mask g's cumulative weights in [g, g + 1]
        particle = np.minimum(np.searchsorted(shifted, unit.draw[mask_of, sample] + mask_of), mask_of * p + p - 1)
        picked = x.reshape(n_groups * p, dims)[particle]
        out.append(((log_z[:, j], mean, (w * w).sum(axis=1), weights.resamplings[:, j]), picked))
    return out


@dataclass(frozen=True)
class Posterior:
    """What a row's particles estimate under the mixture of their masks."""

    logprob: float  # log p(evidence) = log mean over masks and islands of Z_km, nats
    stderr: float  # its standard error over the islands (delta method); NaN with one island
    island_weights: np.ndarray  # (K, M) each island's weight in the posterior, summing to 1
    marginals: np.ndarray  # (D,) p(x_d = 1 | evidence)
    ess: float  # 1 / sum of the particles' squared weights: effective particles behind it


def posterior(particles: ParticleRow) -> Posterior:
    """The mixture's posterior from a row's particles. p(evidence) and its standard error come
    from the islands' evidence (importance.pool_estimate, the islands as each mask's draws). A
    particle's weight is p(k | evidence) (mask k's evidence, mean_m Z_km, normalised over masks)
    x 1/M x its weight within its island: each island's weighted particles estimate the mask's
    posterior on their own (consistent as the island grows), and averaging the islands with
    equal weights rather than in proportion to their noisy Z_km keeps more of them in the
    answer."""
    k, m = particles.log_z.shape
    est = pool_estimate(particles.row, particles.log_z.ravel(), k, m)
    per_mask = est.weights.reshape(k, m).sum(axis=1)  # p(k | evidence), estimated
    island = np.repeat(per_mask[:, None] / m, m, axis=1)
    marginals = np.einsum("km,kmd->d", island, particles.mean)
    ess = 1.0 / float((island * island * particles.sum_sq).sum())
    return Posterior(est.logprob, est.stderr, island, np.clip(marginals, 0.0, 1.0), ess)


def posterior_samples(rng: np.random.Generator, post: Posterior, particles: ParticleRow, n: int) -> np.ndarray:
    """(n, D) uint8 rows drawn from the weighted particles: sample j takes mask k with
    probability p(k | evidence), then its pick under k, a particle of the island it drew
    uniformly beforehand, picked by the particles' weights within the island; so island (k, m)
    with probability p(k | evidence) / M, as the posterior weighs it."""
    k, s, dims = particles.picks.shape
    if n == 0:
        return np.empty((0, dims), dtype=np.uint8)
    which = rng.choice(k, size=n, replace=True, p=post.island_weights.sum(axis=1))
    return particles.picks[which, np.arange(n)]
