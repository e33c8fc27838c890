"""The draws of table SMC (no HTTP): each row's picked particles, their tails drawn exactly.

service.engine.table_smc's filters leave each row a pool of weighted particles, every known cell
and every interleaved unknown cell filled. `pick` chooses S of them by their weights (systematic,
then shuffled); `draw_tails` then draws each picked particle's tail, the unknown cells its mask's
ordering puts after the row's last known cell, from that mask's conditionals, one pass per tail
column (the first from the outputs its filter's last pass kept), and keeps the level
probabilities of the categorical cells it drew (Rao-Blackwellised: exact given the particle).
`draw_cells` is the one cell-drawing rule of the filters, the tails and the exact sampler.
"""

from __future__ import annotations

import numpy as np

from made.core.heads import NOISE_PER_COLUMN, level_probs, sample_column
from made.core.schema import ABSENT, Column, drawn_in_range
from service.engine.cancel import checkpoint
from service.engine.passes import TablePasses


def first_tail(pos: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """(R,) each row's first tail position under an ordering (pos: each column's position in it):
    the first unknown column past the row's last known one; C where there is none."""
    c = len(pos)
    last_known = np.where(~unknown, pos[None, :], -1).max(axis=1)
    return np.where(unknown & (pos[None, :] > last_known[:, None]), pos[None, :], c).min(axis=1)


def draw_tails(
    engine: TablePasses,
    masks: list[int],
    rngs: list[np.random.Generator],
    sizes: np.ndarray,
    unknown: np.ndarray,
    picked: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The picked particles x (T, C) (row i's sizes[i] of them in turn; `unknown` (T, C) their
    rows' unknown cells), their tails drawn in their mask's order (masks[mask_pos]) with each
    row's noise, the first tail column from the outputs the filter kept for it (`first` (T, W)),
    the others one pass each (x is filled in place and returned); and per categorical column the
    level probabilities its tail draws were made from (NaN where a cell was the particle's)."""
    x, mask_pos, first = picked
    t, c = x.shape
    noise = np.concatenate([rng.random((int(n), c, NOISE_PER_COLUMN)) for rng, n in zip(rngs, sizes, strict=True)])
    columns = engine.schema.columns
    level_p = {ci: np.full((t, len(col.levels)), np.nan) for ci, col in enumerate(columns) if col.kind != "numeric"}
    mask_of = np.asarray(masks)[mask_pos]
    widths = np.diff(engine.schema.out_offsets)
    for k in np.unique(mask_of).tolist():
        idx = np.flatnonzero(mask_of == k)
        order = engine.orderings[k]
        tail_pos = first_tail(np.argsort(order), unknown[idx])
        first_col = np.full(t, -1)  # each particle's first tail column, whose outputs the filter kept
        first_col[idx] = np.where(tail_pos < c, order[np.minimum(tail_pos, c - 1)], -1)
        for col_i in order.tolist():
            todo = idx[np.isnan(x[idx, col_i])]
            if not len(todo):
                continue
            checkpoint()
            col = engine.schema.columns[col_i]
            kept = (first_col[todo] == col_i) & ~np.isnan(first[todo, 0])  # NaN: none kept, a pass for it
            prm = np.empty((len(todo), widths[col_i]))
            prm[kept] = first[todo[kept], : prm.shape[1]]
            if not kept.all():
                prm[~kept] = engine.column_params(engine.params(x[todo[~kept]], k), col_i)
            x[todo, col_i] = draw_cells(col, prm, noise[todo, col_i])
            if col_i in level_p:
                with np.errstate(over="ignore"):
                    level_p[col_i][todo] = level_probs(col, prm)
    return x, level_p


def pick(weights: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """s indices by the normalised weights: systematic (one uniform), then shuffled so that any
    first n of them are a draw of the posterior."""
    cum = np.cumsum(weights)
    cum /= cum[-1]
    points = (rng.random() + np.arange(s)) / s
    return rng.permutation(np.minimum(np.searchsorted(cum, points, side="right"), len(weights) - 1))


def draw_cells(col: Column, p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """sample_column's cells, a drawn number kept within what the column can hold. A number given
    far outside the training values can move another column's conditional past float64 (a
    log-transformed price of exp(1000)): such a draw overflows to inf, which is ABSENT, an "NA"
    of a column that may never be absent. Clipped (made.core.schema.drawn_in_range), it stays a value:
    the record reads back, and the draws that reached it weigh what the model gives them."""
    with np.errstate(over="ignore"):  # a far logit's sigmoid overflows to its limit, 0 or 1: harmless
        cells = sample_column(col, p, u)
    if col.kind != "numeric":
        return cells
    if not col.nullable:
        return drawn_in_range(col, cells)
    with np.errstate(over="ignore"):  # sample_column's own test for absence, on the same noise
        absent = u[:, 0] < 1.0 / (1.0 + np.exp(-np.asarray(p[:, 0], dtype=np.float64)))
    return np.where(absent, ABSENT, drawn_in_range(col, cells))
