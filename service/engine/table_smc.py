"""Sequential Monte Carlo for table rows that no mask's ordering answers exactly (no HTTP).

A row's known cells O and unknown cells M, under mask k with ordering σ_k. Walking σ_k, the
unknown cells that come AFTER the last known one ("the tail") can be drawn exactly once the
rest is settled; the others ("interleaved") sit between known cells. Per (row, mask) FILTERS
independent particle filters of P particles each walk the interleaved unknown columns: one
network pass per interleaved column scores every known cell since the previous stop (the
incremental weight p(x_c | x_<c) of each particle: the pass gives every column whose
predecessors are filled) and gives the conditional the column is then drawn from; before the
draw, a filter whose effective sample size fell below RESAMPLE_ESS x P is resampled
(systematic). One last pass scores the known cells after the last interleaved column.

Estimates. Each filter's product of mean incremental weights Z_kf estimates p_k(x_O) (unbiased
for a fixed resampling schedule; the ESS-triggered schedule used here is consistent, its bias
O(1/P), not measurable in tests/test_table_smc.py); the mixture's p(x_O) is the mean over masks
and filters, its standard error from the spread of the FILTERS replicates of each mask (strata
independent). Each particle's posterior weight is Z_kf / (K F) times its weight within its
filter, pooled over masks: the mixture's posterior, each mask weighted by its own evidence.

Draws. S indices are picked from the pooled weights (systematic, then shuffled), and each
picked particle's tail is drawn exactly from the mask's conditionals, one pass per tail
column; the level probabilities a tail cell was drawn from are kept (Rao-Blackwellised
distributions: exact given the particle, since every known cell comes before it): that part is
service.engine.table_draws.

Row i takes all its noise from the generator passed for it (default_rng([seed, i])), mask after
mask, stop after stop, then the picks and the tail: its answer does not depend on the other rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from made.core.heads import NOISE_PER_COLUMN, column_loglik
from made.core.numerics import log_mean_stderr
from service.engine.cancel import checkpoint
from service.engine.passes import TablePasses
from service.engine.smc import DRAWS_PER_PARTICLE  # n_importance draws per particle
from service.engine.table_draws import draw_cells, draw_tails, first_tail, pick

FILTERS = 4  # independent filters per (row, mask): their spread gives the standard error
RESAMPLE_ESS = 0.5  # a filter resamples where its ESS falls below this fraction of its particles
SPREAD = 4  # completions per unit of ESS where fewer than every particle are completed
PARTICLE_ROWS = 32_768  # (row, mask, particle) rows through the network together, about
# A row's pooled particles at most before they are thinned: one number for every row, whatever
# rows share its chunk, so that a row's answer does not depend on its batch.
POOL_CAP = 4096
MAX_PARTICLES = 64  # particles of one filter at most: past it a mask runs more filters, FILTERS at a time
GIVEN_DRAWS_PER_SAMPLE = 3  # `given`: n_importance per sample (3/16 of a particle a sample, per mask)


def given_importance(n: int) -> int:
    """n_importance of /sample's `given` for n samples (at least 1000): 3/16 of a particle per
    sample per mask (376 a mask at n 2000), so about 1.5 particles a sample over 8 masks. `given`
    resamples where the given cells are scored and draws each sample's remaining cells fresh: the
    samples' fidelity is bounded by the pooled particles' ESS, about 200 at n 2000 on diamonds
    (cut Fair, color J). Over 40 seeds the samples' KS to the data did not move between a pooled
    ESS of 200 and 350; at 130 (2 per sample) it rose and spread half as much again: 3 is the knee
    (docs/impute-bench.md)."""
    return max(int(n), 1000) * GIVEN_DRAWS_PER_SAMPLE


def particles_per_filter(n_importance: int) -> int:
    """Particles of each of a (row, mask)'s FILTERS filters for a request's n_importance (draws per
    mask): one particle stands for DRAWS_PER_PARTICLE draws, at least one."""
    return max(1, -(-int(n_importance) // (FILTERS * DRAWS_PER_PARTICLE)))


def filter_layout(n_importance: int) -> tuple[int, int]:
    """(groups, particles per filter): a mask's particles_per_filter x FILTERS particles go in
    groups of FILTERS filters of at most MAX_PARTICLES each; as many groups as fit in PARTICLE_ROWS
    run together, the rest one batch after another, so that memory is bounded by the call size
    (PARTICLE_ROWS), not by n_importance."""
    p = particles_per_filter(n_importance)
    groups = -(-p // MAX_PARTICLES)
    return groups, -(-p // groups)


def particles_per_mask(n_importance: int) -> int:
    """A (row, mask)'s particles over all its filters."""
    groups, p = filter_layout(n_importance)
    return FILTERS * groups * p


def smc_passes(orderings: np.ndarray, unknown: np.ndarray, n_importance: int, draws: int) -> int:
    """Rows the network computes for SMC of the rows `unknown` (N, C) under every ordering: per
    (row, mask) one pass, then FILTERS x P particles times its interleaved unknown columns, plus
    `draws` tail completions per row, one pass per unknown column at most."""
    per_mask = particles_per_mask(n_importance)
    total = 0
    for order in np.asarray(orderings):
        total += int(per_mask * _interleaved(order, unknown).sum() + len(unknown))  # the first pass: one a row
    return total + int(draws) * int(unknown.sum())


@dataclass
class SmcResult:
    """Per row: log p(x_O) under the mixture of the masks used, its standard error, the ESS of
    the pooled particles, its weighted completions (row i's: draws[starts[i]:starts[i + 1]])
    and, per categorical column, the level probabilities a tail draw was made from (NaN where
    the cell was a particle's)."""

    logprob: np.ndarray  # (R,)
    stderr: np.ndarray  # (R,)
    ess: np.ndarray  # (R,)
    starts: np.ndarray  # (R + 1,)
    draws: np.ndarray  # (T, C)
    weights: np.ndarray  # (T,) each row's normalised weights of its draws
    level_p: dict[int, np.ndarray] = field(default_factory=dict)  # column -> (T, L)


def smc(
    engine: TablePasses,
    values: np.ndarray,
    masks: list[int],
    rngs: list[np.random.Generator],
    n_importance: int,
    n_draws: int | None,
    min_draws: int = 0,
) -> SmcResult:
    """SMC of rows `values` (R, C; NaN unknown) under `masks`, row i's noise from rngs[i]; rows go
    through in chunks of about PARTICLE_ROWS particles a pass (a row's answer does not depend on
    its chunk). n_draws None: SPREAD x ESS (at least min_draws, at most 2 min_draws) particles
    picked by their weights and completed, or every particle, weighted, where they are fewer;
    else n_draws picked and completed."""
    groups, p = filter_layout(n_importance)
    # a row's groups of a mask go through the network together, as many as fit in one call (one
    # row's many particles, as `given` asks: fewer, larger passes); rows are chunked to match.
    # Neither depends on the rows: a row's answer does not depend on its chunk
    together = max(1, min(groups, PARTICLE_ROWS // (FILTERS * p)))
    step = max(1, PARTICLE_ROWS // (together * FILTERS * p))
    parts = [
        _smc_rows(
            engine, values[lo : lo + step], masks, rngs[lo : lo + step], (groups, p, together), n_draws, min_draws
        )
        for lo in range(0, len(values), step)
    ]
    levels = {c for part in parts for c in part.level_p}
    return SmcResult(
        np.concatenate([r.logprob for r in parts]),
        np.concatenate([r.stderr for r in parts]),
        np.concatenate([r.ess for r in parts]),
        np.concatenate([[0]] + [r.starts[1:] + sum(len(q.draws) for q in parts[:j]) for j, r in enumerate(parts)]),
        np.concatenate([r.draws for r in parts]),
        np.concatenate([r.weights for r in parts]),
        {c: np.concatenate([r.level_p[c] for r in parts]) for c in levels},
    )


def _smc_rows(
    engine: TablePasses,
    values: np.ndarray,
    masks: list[int],
    rngs: list[np.random.Generator],
    layout: tuple[int, int, int],
    n_draws: int | None,
    min_draws: int,
) -> SmcResult:
    groups, p, together = layout
    r, c = values.shape
    nf = groups * FILTERS  # filters per mask
    logz = np.empty((r, len(masks), nf))
    # the particles a draw may pick (only where draws are made): every one, until a row holds more
    # than `cap`; then resampled down to `keep` by their weights (a consistent thinning)
    keep = 2 * max(2 * min_draws, n_draws or 0)
    cap = max(2 * keep, POOL_CAP)
    pool = _Pool(r, c, _widest(engine)) if keep else None
    for j, k in enumerate(masks):
        for g in range(0, groups, together):
            z, lw, x, first = _filter(engine, values, int(k), rngs, p, FILTERS * min(together, groups - g), keep > 0)
            logz[:, j, g * FILTERS : g * FILTERS + z.shape[1]] = z
            if pool is not None:
                pool.add(z, lw, x, j, first)
                if pool.size > cap:
                    pool.thin(keep, rngs)
    n_total = len(masks) * nf
    # the mixture's estimate: the mean of the masks' and filters' estimates; its variance the sum
    # over masks (independent strata) of each mask's replicate variance of its mean
    top = logz.max(axis=(1, 2))
    ref = np.where(np.isfinite(top), top, 0.0)
    z = np.exp(logz - ref[:, None, None])
    with np.errstate(divide="ignore"):
        logprob = np.where(np.isfinite(top), ref + np.log(z.mean(axis=(1, 2))), -np.inf)
    var = (z.var(axis=2, ddof=1) / nf).sum(axis=1) / len(masks) ** 2 if nf > 1 else np.zeros(r)
    stderr = np.where(np.isfinite(top), log_mean_stderr(np.maximum(z.mean(axis=(1, 2)), 1e-300), var), np.nan)
    if pool is None:
        return SmcResult(logprob, stderr, np.zeros(r), np.zeros(r + 1, dtype=np.int64), np.empty((0, c)), np.empty(0))
    pooled = (pool.logz - ref[:, None] + pool.logw) - math.log(n_total)
    with np.errstate(invalid="ignore", divide="ignore"):  # a row of probability 0: NaN weights, ESS 0
        weights = np.exp(pooled)
        weights /= weights.sum(axis=1, keepdims=True)
        ess = np.where(np.isfinite(top), 1.0 / np.nansum(weights**2, axis=1), 0.0)
    if pool.thinned:
        ess = np.where(np.isfinite(top), pool.ess(), 0.0)
    total = len(masks) * nf * p
    if n_draws is None:
        spread = np.clip(np.ceil(SPREAD * np.nan_to_num(ess)), min_draws, 2 * min_draws).astype(np.int64)
        sizes = np.where(spread < total, spread, total)
    else:
        sizes = np.full(r, n_draws, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    out = SmcResult(logprob, stderr, ess, starts, np.empty((starts[-1], c)), np.empty(starts[-1]))
    picks = np.empty(starts[-1], dtype=np.int64)
    for i, rng in enumerate(rngs):
        at = slice(starts[i], starts[i + 1])
        if not sizes[i]:
            continue
        if sizes[i] == total:  # every particle, weighted
            picks[at], out.weights[at] = np.arange(total), weights[i]
        else:
            picks[at] = pick(weights[i], int(sizes[i]), rng) if np.isfinite(weights[i]).all() else 0
            out.weights[at] = 1.0 / sizes[i]
    if starts[-1]:
        rows = np.repeat(np.arange(r), sizes)
        picked = (pool.x[rows, picks], pool.mask[rows, picks], pool.first[rows, picks])
        out.draws[:], out.level_p = draw_tails(engine, masks, rngs, sizes, np.isnan(values[rows]), picked)
    return out


class _Pool:
    """Per row, the particles a draw may pick: cells (R, Q, C), their filter's log Z and their
    normalised log weight within it, their mask's position, the network's outputs for their first
    tail column (R, Q, W: float32, as the network gives them; NaN where there is none); and the
    running sums of every particle's weight and squared weight (about a running top), for the ESS
    once thinned."""

    def __init__(self, r: int, c: int, w: int) -> None:
        self.x = np.empty((r, 0, c))
        self.first = np.empty((r, 0, w), dtype=np.float32)
        self.logz = np.empty((r, 0))
        self.logw = np.empty((r, 0))
        self.mask = np.empty((r, 0), dtype=np.int64)
        self.thinned = False
        self.top = np.full(r, -np.inf)
        self.s1 = np.zeros(r)
        self.s2 = np.zeros(r)

    @property
    def size(self) -> int:
        return self.x.shape[1]

    def add(self, z: np.ndarray, lw: np.ndarray, x: np.ndarray, j: int, first: np.ndarray) -> None:
        r, f, p, c = x.shape
        self.x = np.concatenate([self.x, x.reshape(r, f * p, c)], axis=1)
        self.first = np.concatenate([self.first, first], axis=1)
        self.logz = np.concatenate([self.logz, np.repeat(z, p, axis=1)], axis=1)
        self.logw = np.concatenate([self.logw, lw.reshape(r, f * p)], axis=1)
        self.mask = np.concatenate([self.mask, np.full((r, f * p), j, dtype=np.int64)], axis=1)
        full = np.repeat(z, p, axis=1) + lw.reshape(r, f * p)
        top = np.maximum(self.top, full.max(axis=1))
        ref = np.where(np.isfinite(top), top, 0.0)
        with np.errstate(invalid="ignore"):
            shift = np.where(np.isfinite(self.top), np.exp(self.top - ref), 0.0)
        w = np.exp(full - ref[:, None])
        self.s1 = self.s1 * shift + w.sum(axis=1)
        self.s2 = self.s2 * shift**2 + (w**2).sum(axis=1)
        self.top = top

    def thin(self, keep: int, rngs: list[np.random.Generator]) -> None:
        """Each row's particles resampled to `keep` by their weights (its own noise), each then
        carrying an equal share of the row's total weight: sums over them stay consistent."""
        full = self.logz + self.logw
        top = full.max(axis=1)
        ref = np.where(np.isfinite(top), top, 0.0)
        w = np.exp(full - ref[:, None])
        tot = w.sum(axis=1)
        idx = np.stack(
            [pick(w[i] / tot[i], keep, rng) if tot[i] > 0 else np.arange(keep) for i, rng in enumerate(rngs)]
        )
        self.x = np.take_along_axis(self.x, idx[..., None], axis=1)
        self.first = np.take_along_axis(self.first, idx[..., None], axis=1)
        self.mask = np.take_along_axis(self.mask, idx, axis=1)
        with np.errstate(divide="ignore"):
            self.logz = np.repeat((ref + np.log(tot) - math.log(keep))[:, None], keep, axis=1)
        self.logw = np.zeros_like(self.logz)
        self.thinned = True

    def ess(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(self.s1**2 / self.s2)


def _interleaved(order: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """(R, C) bool: unknown cells that mask `order` puts before some known cell of the row."""
    pos = np.argsort(order)
    known_pos = np.where(~unknown, pos[None, :], -1)
    return unknown & (pos[None, :] < known_pos.max(axis=1)[:, None])


def _widest(engine: TablePasses) -> int:
    """The most network outputs a column has."""
    return int(np.diff(engine.schema.out_offsets).max())


def _filter(
    engine: TablePasses,
    values: np.ndarray,
    k: int,
    rngs: list[np.random.Generator],
    p: int,
    f: int = FILTERS,
    tails: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """f filters of p particles per row under mask k: (log Z (R, f), normalised log
    weights (R, f, p), particles (R, f, p, C) with their interleaved cells drawn, and, where
    `tails`, the outputs (R, f p, W) float32 of the row's first tail column (the first unknown one
    past its last known cell; NaN where it has none) from the filter's last pass, which has seen
    every cell that column's conditional reads: table_draws.draw_tails draws it from them, a pass saved)."""
    r, c = values.shape
    fp = f * p
    order = engine.orderings[k]
    pos = np.argsort(order)
    unknown = np.isnan(values)
    inter = _interleaved(order, unknown)
    m = inter.sum(axis=1)
    last_known = np.where(~unknown, pos[None, :], -1).max(axis=1)
    tail_pos = first_tail(pos, unknown)
    first = np.full((r if tails else 0, fp, _widest(engine)), np.nan, dtype=np.float32)
    # stop_pos[i, s]: position of row i's s-th interleaved column; at s = m_i, past its last known
    stop_pos = np.full((r, int(m.max()) + 1), c, dtype=np.int64)
    rows, at = np.nonzero(inter[:, order])
    rank = np.cumsum(inter[:, order], axis=1)[rows, at] - 1
    stop_pos[rows, rank] = at
    stop_pos[np.arange(r), m] = last_known + 1
    x = np.repeat(values[:, None, :], fp, axis=1)  # (R, F p, C)
    logw = np.full((r, f, p), -math.log(p))
    logz = np.zeros((r, f))
    prev = np.full(r, -1)
    for s in range(int(m.max()) + 1):
        checkpoint()
        act = np.flatnonzero(m >= s)
        cur = stop_pos[act, s]
        # before the first draw a row's particles are all the row itself: one pass for them all
        copies = 1 if s == 0 else fp
        xa = x[act, 0] if s == 0 else x[act].reshape(-1, c)
        params = engine.params(xa, k)
        inc = np.zeros(len(act) * copies)
        for col_i, col in enumerate(engine.schema.columns):
            due = ~unknown[act, col_i] & (prev[act] < pos[col_i]) & (pos[col_i] < cur)
            sel = np.repeat(due, copies)
            if sel.any():
                inc[sel] += column_loglik(col, engine.column_params(params, col_i)[sel], xa[sel, col_i])
        if s == 0:
            inc = np.repeat(inc, fp)
        inc[np.isnan(inc)] = -np.inf
        lw = logw[act] + inc.reshape(len(act), f, p)
        top = lw.max(axis=2, keepdims=True)
        ref = np.where(np.isfinite(top), top, 0.0)
        with np.errstate(divide="ignore"):
            lse = ref + np.log(np.exp(lw - ref).sum(axis=2, keepdims=True))
        logz[act] += lse[..., 0]
        dead = ~np.isfinite(lse)  # a filter whose every particle has weight 0: Z is 0, weights even
        logw[act] = np.where(dead, -math.log(p), lw - np.where(dead, 0.0, lse))
        prev[act] = cur
        drawing = np.flatnonzero(m[act] > s)  # indices into act
        if len(drawing):
            _resample_and_draw(engine, x, logw, params.reshape(len(act), copies, -1), act, drawing, cur, k, rngs)
        if tails:  # the rows whose last pass this was: their first tail column's outputs
            last = np.flatnonzero((m[act] == s) & (tail_pos[act] < c))
            _keep_first(engine, first, params.reshape(len(act), copies, -1), act, last, order[tail_pos[act[last]]])
    return logz, logw, x.reshape(r, f, p, c), first


def _keep_first(
    engine: TablePasses, first: np.ndarray, params: np.ndarray, act: np.ndarray, last: np.ndarray, cols: np.ndarray
) -> None:
    """first[act[last]] (their particles, the column's outputs): column cols[j]'s slice of the
    pass's `params` (len(act), F p or 1 where every particle is still the row itself, U_out)."""
    for col_i in np.unique(cols).tolist():
        these = last[cols == col_i]
        out = _column_outputs(engine, params, col_i)[these]
        first[act[these], :, : out.shape[2]] = out


def _column_outputs(engine: TablePasses, params: np.ndarray, col_i: int) -> np.ndarray:
    """Column col_i's slice of a pass's outputs `params` (rows, copies, U_out): (rows, copies,
    the column's outputs), a view."""
    d, copies, width = params.shape
    return engine.column_params(params.reshape(d * copies, width), col_i).reshape(d, copies, -1)


def _resample_and_draw(
    engine: TablePasses,
    x: np.ndarray,
    logw: np.ndarray,
    params: np.ndarray,
    act: np.ndarray,
    drawing: np.ndarray,
    cur: np.ndarray,
    k: int,
    rngs: list[np.random.Generator],
) -> None:
    """Rows act[drawing] resample their filters (logw (R, F, p)) whose ESS fell (systematic, one
    uniform per filter, always drawn) and draw their column at position cur from the pass's
    `params` (len(act), F p or 1 where every particle is still the row itself, U_out): only the
    drawn column's slice of them follows the resampled particles."""
    rows = act[drawing]
    _, f, p = logw.shape
    fp = f * p
    u_res = np.stack([rngs[i].random(f) for i in rows.tolist()])  # (D, F)
    noise = np.stack([rngs[i].random((fp, NOISE_PER_COLUMN)) for i in rows.tolist()])  # (D, F p, 3)
    w = np.exp(logw[rows])  # (D, F, p)
    ess = 1.0 / (w**2).sum(axis=2)
    redo = ess < RESAMPLE_ESS * p
    anc = np.broadcast_to(np.arange(p), w.shape).copy()
    if redo.any():
        anc[redo] = systematic(w[redo], u_res[redo])
        logw[rows[np.nonzero(redo)[0]], np.nonzero(redo)[1]] = -math.log(p)
    flat = (anc + (np.arange(f) * p)[None, :, None]).reshape(len(rows), fp)
    x[rows] = np.take_along_axis(x[rows], flat[..., None], axis=1)
    cols = engine.orderings[k][cur[drawing]]
    for col_i in np.unique(cols).tolist():
        these = np.flatnonzero(cols == col_i)
        col = engine.schema.columns[col_i]
        prm = _column_outputs(engine, params, col_i)[drawing[these]]  # (D', F p or 1, the column's outputs)
        if prm.shape[1] > 1:
            prm = np.take_along_axis(prm, flat[these][..., None], axis=1)
        else:
            prm = np.broadcast_to(prm, (len(these), fp, prm.shape[2]))
        drawn = draw_cells(col, prm.reshape(-1, prm.shape[2]), noise[these].reshape(-1, NOISE_PER_COLUMN))
        sub = x[rows[these]]
        sub[:, :, col_i] = drawn.reshape(len(these), fp)
        x[rows[these]] = sub


def systematic(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(G, P) indices: systematic resampling of each group's normalised weights (G, P) with one
    uniform u (G,) each: index j is taken about P w_j times, never fewer than floor(P w_j)."""
    g, p = weights.shape
    cum = np.cumsum(weights, axis=1)
    cum /= cum[:, -1:]
    points = (u[:, None] + np.arange(p)[None, :]) / p
    offs = np.arange(g)[:, None] * 2.0  # groups apart on one axis: cum in [0, 1]
    idx = np.searchsorted((cum + offs).ravel(), (points + offs).ravel(), side="right")
    return np.minimum(idx.reshape(g, p) - (np.arange(g) * p)[:, None], p - 1)
