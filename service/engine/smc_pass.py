"""One pass of the particle filter's islands through the stepping sampler (service.engine.smc
runs them): each group of the plan is a mask, its columns its islands' particles, island after
island; the tilted draws, the incremental weights read from the logits at the end of each
block, systematic resampling of an island whose ESS fell below the threshold while a draw is still
ahead of it (its particles' inputs and hidden units copied with them), and each island's summary
at the end."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from made.core.numerics import log_sigmoid
from service.engine.importance import systematic_resample
from service.engine.sampler import tilt, walk_plan
from service.engine.sampler_plan import GroupPlan


@dataclass
class Unit:
    """An island of a row: its random numbers come from default_rng([its row's key, number]),
    whatever pass it goes through."""

    row: int
    number: int  # among its row's islands: the pilot's (mask after mask), then the second stage's
    mask: int  # index into ks
    island: int  # its column of ParticleRow.log_z; -1: a pilot island
    size: int


# An island with its random numbers: (unit, uniforms (p, D), one per block boundary, one per
# sample for its pick, one per sample for its key) ...
Drawn = tuple[Unit, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
# ... and what its pass leaves: ((log Z, weighted mean, sum of squared weights, resamplings),
# its particles (p, D) uint8, their normalised weights (p,))
Done = tuple[tuple[float, np.ndarray, float, int], np.ndarray, np.ndarray]


def run_pass(
    plan: GroupPlan,
    activation: str,
    l0: np.ndarray,
    l1: np.ndarray,
    groups: list[list[Drawn]],
    threshold: float,
    period: int,
) -> list[Done]:
    """One pass: group g is the plan's mask g, its columns its islands' particles, island after
    island (groups padded to the widest), resampling where due at the ends of the plan's blocks
    that are multiples of `period` steps (the plan's blocks divide it: the times do not depend on
    the plan a row's islands go through). The weights live in (U, P) arrays, island u's particles
    in its first sizes[u] slots (the rest -inf). Returns per island, in the groups' order:
    ((log Z, weighted mean (D,), sum of squared normalised weights, resamplings), picks (S', D)
    of its chosen samples)."""
    dims = l0.shape[1]
    flat = [(g, item) for g, items in enumerate(groups) for item in items]
    n_units = len(flat)
    sizes = np.array([item[0].size for _, item in flat])
    widths = [sum(item[0].size for item in items) for items in groups]
    width, top_size = max(widths), int(sizes.max())
    orderings = [net.ordering for net in plan.nets]
    group_of = np.array([g for g, _ in flat])
    thr, ev0, ev1, slot_of, first = _layout(orderings, l0, l1, groups, width)
    draws_until = _draws_until(ev0, ev1, group_of, slot_of[group_of, first])
    clamped = _clamped(ev0, ev1, slot_of)
    j = np.arange(top_size)
    valid = j[None, :] < sizes[:, None]
    where = group_of[:, None] * width + first[:, None] + np.where(valid, j[None, :], 0)  # (U, P) flat columns
    uniforms = np.stack([item[2] for _, item in flat])  # (U, stages): each island's resampling uniforms
    logw = np.where(valid, 0.0, -np.inf)
    logz = np.zeros(n_units)
    resamplings = np.zeros(n_units, dtype=np.int64)
    state = {"t0": 0}

    def weigh(t0: int, t1: int, xs: np.ndarray, logits: np.ndarray) -> None:
        seen = None if clamped is None else clamped[:, t0:t1, :]
        inc = _increments(xs[:, t0:t1, :], logits[:, t0:t1, :], ev0[:, t0:t1, :], ev1[:, t0:t1, :], slot_of, seen)
        if inc is not None:
            logw[...] += np.where(valid, inc.ravel()[where], 0.0)

    def between(t1: int, xs: np.ndarray, logits: np.ndarray, acts: list[np.ndarray], known: list[int]) -> None:
        if t1 % period or not (draws_until > t1).any():
            return  # not a resampling time, or no island draws again: the weights wait
        weigh(state["t0"], t1, xs, logits)
        state["t0"] = t1
        u = uniforms[:, t1 // period - 1]
        w, total, log_mean = _weights(logw, sizes)
        ess = total**2 / np.cumsum(w * w, axis=1)[:, -1]
        due = np.flatnonzero((ess < threshold * sizes) & np.isfinite(log_mean) & (draws_until > t1))
        if not len(due):
            return
        idx = systematic_resample(w[due] / total[due, None], u[due], sizes[due])
        logz[due] += log_mean[due]
        logw[due] = np.where(valid[due], 0.0, -np.inf)
        resamplings[due] += 1
        moved = valid[due] & (idx != j[None, :])
        _copy_state(
            group_of[due],
            moved,
            first[due, None] + j[None, :],
            first[due, None] + idx,
            [(xs, t1)] + list(zip(acts, known, strict=True)),
        )

    xs, logits = walk_plan(plan, widths, thr, activation, between)
    weigh(state["t0"], dims, xs, logits)
    del thr, logits
    w, total, log_mean = _weights(logw, sizes)
    norm = np.where(total[:, None] > 0, w / np.where(total > 0, total, 1.0)[:, None], valid / sizes[:, None])
    return _summaries(flat, orderings, xs, first, norm, logz + log_mean, resamplings)


def _copy_state(
    group_of: np.ndarray, moved: np.ndarray, cols: np.ndarray, parents: np.ndarray, state: list[tuple[np.ndarray, int]]
) -> None:
    """Resampled islands' particles take their parents' state: per group, the columns `cols`
    (V, P) where `moved` take columns `parents`, in each (G, rows, R) array of `state` up to its
    rows known so far."""
    for g in np.unique(group_of):
        sel = moved & (group_of == g)[:, None]
        if sel.any():
            to, src = cols[sel], parents[sel]
            for array, known in state:
                view = array[g]
                view[:known, to] = view[:known, src]


def _summaries(
    flat: list[tuple[int, Drawn]],
    orderings: list[np.ndarray],
    xs: np.ndarray,
    first: np.ndarray,
    norm: np.ndarray,
    log_z: np.ndarray,
    resamplings: np.ndarray,
) -> list[Done]:
    """Per island of a pass: ((log Z, weighted mean (D,), sum of squared normalised weights,
    resamplings), its particles (p, D) uint8, their normalised weights (p,))."""
    dims = xs.shape[1]
    out: list[Done] = []
    for i, (g, (unit, *_)) in enumerate(flat):
        size = unit.size
        x = np.empty((size, dims), dtype=np.uint8)
        x[:, orderings[g]] = xs[g, :, first[i] : first[i] + size].T
        wi = norm[i, :size]
        out.append(((float(log_z[i]), wi @ x, float(np.cumsum(wi * wi)[-1]), int(resamplings[i])), x, wi))
    return out


def _increments(
    xs: np.ndarray, z: np.ndarray, ev0: np.ndarray, ev1: np.ndarray, slot_of: np.ndarray, clamped: np.ndarray | None
) -> np.ndarray | None:
    """Each column's log weight gained over some steps (G, width), from their draws xs and logits
    z (G, steps, width) and their islands' evidence ev0, ev1 (G, steps, islands): the sum of
    log sum_x p(x_d = x | x_<d) p(y_d | x); where every value is missing or observed (`clamped`
    of those steps, _clamped), log p(x_d = observed | x_<d) where observed (the value drawn) and
    nothing elsewhere; None where those steps observe nothing."""
    if clamped is not None:
        if not clamped.any():
            return None
        drawn = np.where(xs > 0, z, -z)
        return np.where(clamped, log_sigmoid(drawn), 0.0).sum(axis=1)
    one = log_sigmoid(z)  # log p(x_d = 1 | x_<d); log p(x_d = 0 | x_<d) = one - z
    zero = one - z
    island = np.broadcast_to(slot_of[:, None, :], z.shape)  # each column's island, for its evidence
    one += np.take_along_axis(ev1, island, axis=2)
    zero += np.take_along_axis(ev0, island, axis=2)
    inc = np.logaddexp(one, zero).sum(axis=1)
    return np.where(np.isnan(inc), -np.inf, inc)


def _draws_until(ev0: np.ndarray, ev1: np.ndarray, group_of: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """Per island (U,): 1 + the last position of its mask's ordering whose step draws (its row's
    evidence there leaves both values possible: missing, or a soft observation), 0 where none
    does. Past it every step is clamped: the particles' later values are their row's, only their
    weights still change, so resampling there would copy particles that no later draw can tell
    apart (noise added, distinct paths lost) and the island does not (run_pass)."""
    dims = ev0.shape[1]
    draws = np.isfinite(ev0[group_of, :, slot]) & np.isfinite(ev1[group_of, :, slot])  # (U, D)
    return np.where(draws.any(axis=1), dims - np.argmax(draws[:, ::-1], axis=1), 0)


def _clamped(ev0: np.ndarray, ev1: np.ndarray, slot_of: np.ndarray) -> np.ndarray | None:
    """Where every entry of the pass is missing (0, 0) or observed ((-inf, 0): a 1, (0, -inf): a
    0), as /impute and /logprob send them: which columns' values are observed, (G, D, width) in
    positions (each column its island's), so that a step's weight is log p(x_d | x_<d) of the
    value drawn (the observed one) where observed and 1 elsewhere; None where some evidence is
    soft (denoising), whose weights need the general normaliser."""
    free, one, zero = (ev0 == 0) & (ev1 == 0), (ev0 == -np.inf) & (ev1 == 0), (ev0 == 0) & (ev1 == -np.inf)
    if not (free | one | zero).all():
        return None
    seen = ~free  # (G, D, islands)
    return np.take_along_axis(seen, np.broadcast_to(slot_of[:, None, :], (*seen.shape[:2], slot_of.shape[1])), axis=2)


def _layout(
    orderings: list[np.ndarray],
    l0: np.ndarray,
    l1: np.ndarray,
    groups: list[list[Drawn]],
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A pass's thresholds (G, D, width) in positions (padding: +inf, x = 0), its islands'
    evidence in positions (G, D, islands of the group's most), each column's island among its
    group's (G, width) and each island's first column (U,), islands in the groups' order."""
    n_groups, dims, slots = len(groups), l0.shape[1], max(len(items) for items in groups)
    first = np.empty(sum(len(items) for items in groups), dtype=np.int64)
    slot_of = np.zeros((n_groups, width), dtype=np.int64)
    ev0 = np.zeros((n_groups, dims, slots))
    ev1 = np.zeros((n_groups, dims, slots))
    thr = np.full((n_groups, dims, width), np.inf)
    u_index = 0
    for g, items in enumerate(groups):
        col, order = 0, orderings[g]
        for s, (unit, noise, *_) in enumerate(items):
            ev0[g, :, s], ev1[g, :, s] = l0[unit.row, order], l1[unit.row, order]
            um = noise[:, order]
            with np.errstate(divide="ignore"):  # u = 0: -inf, x = 1 as u < p
                t = np.log(um / (1.0 - um))
            thr[g, :, col : col + unit.size] = tilt(t, (ev1[g, :, s] - ev0[g, :, s])[None, :]).T
            slot_of[g, col : col + unit.size] = s
            first[u_index] = col
            col += unit.size
            u_index += 1
    return thr, ev0, ev1, slot_of, first


def _weights(logw: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights relative to each island's largest (U, P), their sum (U,), log of their mean
    (U,), -inf where every weight is 0), sums in order along each island: what an island gets
    does not depend on the others of its pass."""
    top = logw.max(axis=1)
    ref = np.where(np.isfinite(top), top, 0.0)
    w = np.exp(logw - ref[:, None])
    total = np.cumsum(w, axis=1)[:, -1]
    with np.errstate(divide="ignore"):
        return w, total, ref + np.log(total / sizes)
