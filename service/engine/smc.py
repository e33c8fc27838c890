"""Sequential Monte Carlo along each mask's ordering for a model of bits (a particle filter):
/denoise, and /logprob and /impute of rows whose missing values no ordering answers
exactly (service.engine.denoise, service.engine.missing).

The evidence on a row is per entry: l0 = log p(y_d | x_d = 0) and l1 = log p(y_d | x_d = 1)
(a flipped bit's likelihood; an observed entry is (0, -inf) or (-inf, 0), a missing one (0, 0)).
Under mask k the particles walk k's ordering in the stepping sampler (sampler.walk_plan), each
step drawing x_d from the locally optimal proposal q(x_d | x_<d) ∝ p_k(x_d | x_<d) p(y_d | x_d)
(the tilted thresholds of likelihood weighting) with incremental weight its normaliser
sum_x p_k(x_d = x | x_<d) p(y_d | x), read from the step's logit at the end of each block. At
every block boundary (every `block` steps: fixed candidate times) a set of particles (an
island) whose effective sample size has fallen below `threshold` x its size is resampled
systematically, if a draw is still ahead of it (past its row's last missing or soft entry in
the ordering every step is clamped, and copies that no later draw can tell apart only add
noise: with a model's missing half all first, /impute is then likelihood weighting): its
particles' whole state (inputs drawn, hidden units computed) is permuted along the batch axis,
their weights restart at 1 and the island's log evidence gains the log of their mean. The
product of those means and of the final mean weight is an unbiased estimate Z_km of
p_k(evidence); the final weighted particles estimate the posterior p_k(x | y).

Two stages share a row's K x n_particles particles. Most noisy rows fit a few masks far better
than the rest, and the posterior p(k | evidence) ∝ p_k(evidence) gives the others' particles
little weight: spread evenly, most of them are wasted. So:
1. The pilot: PILOT of each mask's particles (IMPUTE_PILOT for /impute and /logprob: pilot_size,
   one island a mask up to ISLAND_MAX)
   run the filter; their particle-weighted mean Z per mask estimates p_k(evidence).
2. The second stage: the other K x (n_particles - pilot) particles go to the masks in
   proportion to the pilot's p(k | evidence)^TEMPER, after a floor of one particle per island
   and mask (allocate), each mask's in M islands whose sizes differ by one at most (M =
   ISLANDS, more where an island would pass ISLAND_MAX).
The evidence p(y) = mean_k p_k(y) is estimated from the second stage's islands only: given the
allocation (which depends on the pilot only) each island's Z_km is unbiased for p_k(y) and the
islands are independent, so their mean over masks and islands is unbiased, and each mask's
sample variance over its islands gives the standard error (importance.pool_estimate; islands of
sizes differing by one are not identically distributed, but the sample variance of independent
unbiased estimates over M is still unbiased for the variance of their mean). Averaging the
pilot's Z into it with weights that depend on the allocation would bias it. The posterior uses
every particle, the pilot's too, since it needs only consistency (posterior()): the masks mixed
by the particle-weighted mean Z of all their islands, each mask's islands by their particles
(not by their particles times their Z, the consistent estimator, which measured worse on
binarized MNIST: its weights collapse onto one island; docs/denoise.md has the figures).
Its `ess` counts all K x n_particles particles spent, the pilot's included. With one mask, or
too few particles for a pilot, there is one stage: n_particles a mask (island_sizes).

Samples: each mask and sample keeps one pick, a particle of one of the mask's islands (pilot's
or second stage's) chosen with probability in proportion to the island's particles, by a race
that does not depend on the order the islands finish in (_race), then drawn by the particles'
weights within the island; posterior_samples then draws each sample's mask by p(k | evidence).
Randomness: a row draws one number from its generator, a key; each of its islands draws its
uniforms (the particles', one per block boundary for the resampling, two per sample for the
picks) from default_rng([key, its number among the row's islands]): a row's answer depends on
its seed, its index and its own values only, whatever the batch and however its islands are
packed into passes (beyond float64 rounding of the network, as the sampler's).
Passes: rows go a chunk at a time (every row's pilot, then every row's second stage); a mask
whose islands in a stage hold at least SINGLE_WIDTH particles walks alone (its own plan: no
padding to the other masks' units), the others together in the masks' group plan, padded to
the widest; at most _SMC_VALUES particle values a pass, a cancellation checkpoint before each.
Memory: a row keeps a summary per island and one pick per mask and sample, never its
particles.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from service.engine.cancel import checkpoint
from service.engine.importance import pool_estimate
from service.engine.sampler import BLOCK, GROUP_BLOCK, FastSampler
from service.engine.smc_pass import Drawn, Unit, run_pass

# Steps between the times a set of particles may resample (resampling needs the end of a block,
# so a mask walking alone steps in blocks of this length, and masks stepping together in blocks
# of GROUP_BLOCK where it divides this, else of this): denoising's, where every step draws and
# weighs ...
SMC_BLOCK = GROUP_BLOCK
# ... and /impute's and /logprob's, whose draws are only the missing values: one mask walks in the
# plain sampler's blocks for one mask (sampler.BLOCK), whose larger block GEMMs cost less per
# particle than blocks of 16.
IMPUTE_BLOCK = BLOCK
# A set resamples when its effective sample size falls below this fraction of its particles.
THRESHOLD = 0.5
# Independent islands per mask whose evidence is reported, for the standard error (each at
# least one particle) ...
ISLANDS = 4
# ... and more where an island would hold more particles than this (islands go through the
# sampler one or more at a time, so a pass never needs a row's every particle).
ISLAND_MAX = 256
# The pilot's share of each mask's particles (rounded down; none with one mask, or where it would
# leave no particle for the second stage): denoising's ...
PILOT = 0.25
# ... and /impute's and /logprob's, whose weights come from the observed values only: half the
# particles in the pilot gave a lower bit error at every budget on binarized MNIST's half-missing
# test images (docs/bit-impute.md) ...
IMPUTE_PILOT = 0.5
# ... and the second stage's particles go to the masks in proportion to the pilot's estimate of
# p(k | evidence) raised to this power (1: in proportion; below 1 hedges against a pilot that
# misjudges), after a floor of one particle per island and mask.
TEMPER = 1.0
# A mask whose particles in a pass number at least this many walks on its own (one mask's plan);
# masks with fewer step together (the masks' group plan, padded to the widest of them): a
# group plan pads every step to the mask with the most units and costs about twice a single
# mask's per particle, but one walk's numpy calls per step rather than one per mask.
SINGLE_WIDTH = 96
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
# Rows go through both stages a chunk at a time, a chunk's particles at most this many passes'
# worth (at least one row): enough that each mask's walks fill their passes, while what a row
# keeps between its stages (a summary per island) stays bounded.
_CHUNK_PASSES = 8


def particles_for(n_importance: int) -> int:
    """Particles per mask for a request's n_importance (draws per mask): one particle stands for
    DRAWS_PER_PARTICLE draws, rounded up, at least one."""
    return max(1, -(-int(n_importance) // DRAWS_PER_PARTICLE))


@dataclass
class ParticleRow:
    """What one row's particles left after the last step, per mask (K masks; M islands a mask
    in the second stage): nothing of size particles x D is kept."""

    row: int
    log_z: np.ndarray  # (K, M) each second-stage island's log evidence estimate, log Z_km (unbiased)
    log_z_all: np.ndarray  # (K,) log of each mask's particle-weighted mean Z over all its islands, pilot's too
    mean: np.ndarray  # (K, D) each mask's posterior mean: its islands' weighted means, by particles
    sum_sq: np.ndarray  # (K,) sum of squares of each mask's particles' weights within it (1 / its ESS)
    picks: np.ndarray  # (K, S, D) uint8: per mask and sample, a particle of the mask (chosen)
    resamplings: np.ndarray  # (K,) how many times each mask's islands resampled, pilot's too
    particles: np.ndarray  # (K,) particles each mask spent, pilot's too


def island_sizes(n_particles: int, islands: int = ISLANDS) -> tuple[int, int]:
    """(islands M, particles per island p) for n_particles per mask: M = `islands` (fewer where
    there are fewer particles, more where an island would pass ISLAND_MAX), p = n_particles // M
    (the islands' sizes: split(n_particles, M))."""
    m = max(1, min(islands, n_particles), -(-n_particles // ISLAND_MAX))
    return m, max(1, n_particles // m)


def split(n: int, m: int) -> list[int]:
    """n particles as m islands whose sizes differ by one at most, the larger first."""
    return [n // m + (i < n % m) for i in range(m)]


def pilot_size(n_particles: int, n_masks: int, share: float | None = None) -> int:
    """The pilot's particles per mask: `share` (None: PILOT) of n_particles, rounded down; 0 (no
    pilot: every mask gets n_particles) with one mask or where nothing would be left."""
    n0 = int(n_particles * (PILOT if share is None else share))
    return n0 if n_masks > 1 and 0 < n0 < n_particles else 0


def allocate(
    log_z: np.ndarray, total: int, islands: int = ISLANDS, temper: float | None = None
) -> tuple[np.ndarray, int]:
    """(particles per mask (K,), islands M a mask) of the second stage, from the pilot's log
    evidence per mask log_z (K,): each mask gets M (one an island), the rest of `total` goes in
    proportion to p(k | evidence)^temper as the pilot estimates it (largest remainders, ties to
    the lower mask); M is `islands` (fewer where total leaves fewer a mask), more where a mask's
    islands would pass ISLAND_MAX; temper None: TEMPER."""
    temper = TEMPER if temper is None else temper
    k = len(log_z)
    top = float(np.max(log_z))
    share = np.exp(temper * (log_z - top)) if np.isfinite(top) else np.ones(k)
    share = share / share.sum()
    m = max(1, min(islands, total // k))
    while True:
        raw = share * (total - k * m)
        counts = np.floor(raw).astype(np.int64)
        left = total - k * m - int(counts.sum())
        if left > 0:
            counts[np.argsort(counts - raw, kind="stable")[:left]] += 1
        counts += m
        need = min(max(m, -(-int(counts.max()) // ISLAND_MAX)), total // k)
        if need <= m:
            return counts, m
        m = need


@dataclass
class _Row:
    """A row between its stages: its key, its islands, their summaries, its picks."""

    key: int
    picks: np.ndarray  # (K, S, D) uint8
    race: np.ndarray  # (K, S): the log key of each pick (the smallest so far wins: _race)
    units: list[Unit] = field(default_factory=list)
    done: dict[int, tuple[float, np.ndarray, float, int]] = field(default_factory=dict)  # number: summary


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
    pilot: int | None = None,
) -> Iterator[ParticleRow]:
    """Run the particle filter of every row in `rows` (indices into l0, l1 (N, D) and keys of
    rngs) under each mask of ks, K x n_particles particles a row in all, and yield each row's
    ParticleRow, rows in order; `block` (None: SMC_BLOCK) is the steps between resampling
    times, `pilot` the pilot's particles per mask (None: pilot_size; 0: none, every mask gets
    n_particles in `islands` islands, island_sizes).

    Rows go a chunk at a time: every row's pilot, then every row's second stage (allocate). A
    row draws one number from its generator, a key (below 2^63); each of its islands draws from
    default_rng([key, its number among the row's islands]) its uniforms (p, D), one per block
    boundary for the resampling, one per sample for its pick and one per sample for its key in
    the race for the sample (_race). Islands go through the sampler _SMC_VALUES particle values
    at a time, a cancellation checkpoint before each pass."""
    dims, k = l0.shape[1], len(ks)
    n0 = pilot_size(n_particles, k) if pilot is None else min(pilot, n_particles - 1)
    run = _Runner(sampler, ks, l0, l1, SMC_BLOCK if block is None else block, threshold, n_samples)
    per_chunk = max(1, _CHUNK_PASSES * _SMC_VALUES // (k * n_particles * dims))
    for start in range(0, len(rows), per_chunk):
        chunk = [int(r) for r in rows[start : start + per_chunk]]
        states: dict[int, _Row] = {}
        for r in chunk:
            rng = rngs[r]
            picks = np.zeros((k, n_samples, dims), dtype=np.uint8)
            state = states[r] = _Row(int(rng.integers(1 << 63)), picks, np.full((k, n_samples), np.inf))
            if n0:
                for g in range(k):
                    for size in split(n0, -(-n0 // ISLAND_MAX)):
                        state.units.append(Unit(r, len(state.units), g, -1, size))
        run.islands(states, [u for r in chunk for u in states[r].units])
        second = []
        for r in chunk:
            state = states[r]
            if n0:
                pilot_z = np.array([_pooled(state, [u for u in state.units if u.mask == g])[0] for g in range(k)])
                counts, m = allocate(pilot_z, k * (n_particles - n0), islands)
            else:
                counts, m = np.full(k, n_particles), island_sizes(n_particles, islands)[0]
            for g in range(k):
                for i, size in enumerate(split(int(counts[g]), m)):
                    unit = Unit(r, len(state.units), g, i, size)
                    state.units.append(unit)
                    second.append(unit)
        run.islands(states, second)
        for r in chunk:
            yield _row_result(r, states.pop(r), k)


def _pooled(state: _Row, units: list[Unit]) -> tuple[float, np.ndarray, float, int, int]:
    """(log of the particle-weighted mean Z, weighted mean (D,), sum of squared weights,
    resamplings, particles) of a mask's islands `units`, in their order."""
    n = sum(u.size for u in units)
    log_z = np.array([state.done[u.number][0] for u in units])
    top = log_z.max()
    z = np.exp(log_z - top) if np.isfinite(top) else np.ones(len(units))
    a = np.array([u.size / n for u in units])
    pooled = top + np.log(a @ z) if np.isfinite(top) else -np.inf
    mean = sum(w * state.done[u.number][1] for w, u in zip(a, units, strict=True))
    sum_sq = float(sum(w * w * state.done[u.number][2] for w, u in zip(a, units, strict=True)))
    return float(pooled), np.asarray(mean), sum_sq, sum(state.done[u.number][3] for u in units), n


def _row_result(r: int, state: _Row, k: int) -> ParticleRow:
    """A row's ParticleRow from its islands' summaries, combined in its islands' order."""
    per_mask = [[u for u in state.units if u.mask == g] for g in range(k)]
    log_z_all, means, sum_sq, resamplings, particles = zip(*(_pooled(state, units) for units in per_mask), strict=True)
    second = [[u for u in units if u.island >= 0] for units in per_mask]
    log_z = np.array([[state.done[u.number][0] for u in units] for units in second])
    return ParticleRow(
        r,
        log_z,
        np.array(log_z_all),
        np.stack(means),
        np.array(sum_sq),
        state.picks,
        np.array(resamplings, dtype=np.int64),
        np.array(particles, dtype=np.int64),
    )


class _Runner:
    """Runs islands through the sampler in passes: a mask with at least SINGLE_WIDTH of the
    islands' particles walks alone, the others together in the masks' group plan."""

    def __init__(
        self,
        sampler: FastSampler,
        ks: list[int],
        l0: np.ndarray,
        l1: np.ndarray,
        block: int,
        threshold: float,
        n_samples: int,
    ) -> None:
        self.sampler, self.ks, self.l0, self.l1 = sampler, ks, l0, l1
        self.block, self.threshold, self.n_samples = block, threshold, n_samples
        self.stages = max(-(-l0.shape[1] // block) - 1, 1)  # boundaries where a set may resample

    def islands(self, states: dict[int, _Row], units: list[Unit]) -> None:
        """Run `units`, each row's summary of each into states[row].done, picks into its picks."""
        dims, k = self.l0.shape[1], len(self.ks)
        cap = max(1, _SMC_VALUES // dims)
        by_mask = [[u for u in units if u.mask == g] for g in range(k)]
        alone = [g for g in range(k) if sum(u.size for u in by_mask[g]) >= SINGLE_WIDTH or k == 1]
        passes: list[tuple[tuple[int, ...], list[list[Unit]]]] = []
        for g in alone:
            passes += [((self.ks[g],), [chunk]) for chunk in _packed(by_mask[g], cap)]
        rest = [g for g in range(k) if g not in alone and by_mask[g]]
        if rest:
            queues = [_packed(by_mask[g], max(1, cap // k)) if g in rest else [] for g in range(k)]
            for i in range(max(len(q) for q in queues)):
                passes.append((tuple(self.ks), [q[i] if i < len(q) else [] for q in queues]))
        for masks, groups in passes:
            checkpoint()
            steps = GROUP_BLOCK if len(masks) > 1 and self.block % GROUP_BLOCK == 0 else self.block
            plan = self.sampler.group_plan(masks, steps)
            drawn = [[self._draw(states[u.row].key, u) for u in group] for group in groups]
            results = run_pass(plan, self.sampler.activation, self.l0, self.l1, drawn, self.threshold, self.block)
            for item, (summary, x, w) in zip([d for group in drawn for d in group], results, strict=True):
                unit = item[0]
                state = states[unit.row]
                state.done[unit.number] = summary
                _race(state, unit, x, w, item[3], item[4])

    def _draw(self, key: int, unit: Unit) -> Drawn:
        """An island's random numbers, from its own generator in this order."""
        rng = np.random.default_rng([key, unit.number])
        noise = rng.random((unit.size, self.l0.shape[1]))
        return unit, noise, rng.random(self.stages), rng.random(self.n_samples), rng.random(self.n_samples)


def _race(state: _Row, unit: Unit, x: np.ndarray, w: np.ndarray, draw: np.ndarray, u: np.ndarray) -> None:
    """The island's bid for each sample of its mask: an exponential key -log(u) / its particles
    (in logs); where it is below the key of the sample's pick so far, the sample takes a
    particle of this island, drawn by their weights (draw). The smallest key of all the mask's
    islands wins, whatever order they come in: each island with probability in proportion to
    its particles, as the posterior weighs it (posterior())."""
    if not len(u):
        return
    with np.errstate(divide="ignore"):
        key = np.log(-np.log(u)) - np.log(unit.size)
    win = key < state.race[unit.mask]
    if win.any():
        cum = np.cumsum(w)
        cum[-1] = 1.0
        state.picks[unit.mask][win] = x[np.minimum(np.searchsorted(cum, draw[win]), len(w) - 1)]
        state.race[unit.mask][win] = key[win]


def _packed(units: list[Unit], cap: int) -> list[list[Unit]]:
    """Units in order, cut into passes of at most `cap` particles (or one unit, where it has more)."""
    out: list[list[Unit]] = []
    width = cap
    for u in units:
        if width + u.size > cap:
            out.append([])
            width = 0
        out[-1].append(u)
        width += u.size
    return out


@dataclass(frozen=True)
class Posterior:
    """What a row's particles estimate under the mixture of their masks."""

    logprob: float  # log p(evidence) = log mean over masks and second-stage islands of Z_km, nats
    stderr: float  # its standard error over those islands (delta method); NaN with one island a mask
    mask_weights: np.ndarray  # (K,) each mask's weight in the posterior, p(k | evidence), summing to 1
    marginals: np.ndarray  # (D,) p(x_d = 1 | evidence)
    ess: float  # 1 / sum of the particles' squared weights: effective particles behind it


def posterior(particles: ParticleRow) -> Posterior:
    """The mixture's posterior from a row's particles. p(evidence) and its standard error come
    from the second stage's islands only (importance.pool_estimate, the islands as each mask's
    draws): their sizes are fixed once the pilot is through, so each island's Z_km is unbiased
    given them and a mask's islands are independent. The posterior uses every particle, the
    pilot's too (it needs only consistency): a particle's weight is p(k | evidence), estimated
    from the particle-weighted mean Z of all mask k's islands (log_z_all) and normalised over
    masks, x its island's share of the mask's particles x its weight within the island. `ess`
    is 1 / the sum of those weights squared: particles effective out of all K x n_particles
    spent, the pilot's included."""
    k, m = particles.log_z.shape
    est = pool_estimate(particles.row, particles.log_z.ravel(), k, m)
    top = particles.log_z_all.max()
    per_mask = np.exp(particles.log_z_all - top)
    per_mask /= per_mask.sum()
    marginals = per_mask @ particles.mean
    ess = 1.0 / float((per_mask * per_mask * particles.sum_sq).sum())
    return Posterior(est.logprob, est.stderr, per_mask, np.clip(marginals, 0.0, 1.0), ess)


def posterior_samples(rng: np.random.Generator, post: Posterior, particles: ParticleRow, n: int) -> np.ndarray:
    """(n, D) uint8 rows drawn from the weighted particles: sample j takes mask k with
    probability p(k | evidence), then its pick under k, a particle of the island that won its
    race (in proportion to the islands' particles, pilot's included), picked by the particles'
    weights within the island; so a particle with probability its posterior weight."""
    k, s, dims = particles.picks.shape
    if n == 0:
        return np.empty((0, dims), dtype=np.uint8)
    which = rng.choice(k, size=n, replace=True, p=post.mask_weights)
    return particles.picks[which, np.arange(n)]
