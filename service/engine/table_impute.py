"""Imputation of table records (no HTTP): completions of each row's unknown cells given its known
ones, each unknown column's posterior distribution, log p(x_known) and the effective sample size
behind them. A function of a TablePasses (service.engine.table_engine.TableEngine), which walks
the network; rows that no ordering answers exactly go to service.engine.table_smc.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from made.core.errors import InvalidInput
from made.core.heads import NOISE_PER_COLUMN, column_loglik
from made.core.masks import exact_orders
from made.core.numerics import logmeanexp
from made.core.schema import ABSENT
from service.engine.cancel import checkpoint
from service.engine.checks import check_first_row, check_seed, row_generator
from service.engine.passes import TablePasses
from service.engine.table_draws import pick
from service.engine.table_smc import smc

SUMMARY_DRAWS = 200  # draws behind a row's column distributions, at least (more than the samples asked)


class ImpossibleEvidence(InvalidInput):
    """Known cells that have probability 0 under the model, to float64 precision (a number far
    outside the values it was trained on): there is nothing to condition on. `row` is the row's
    index, `columns` the known columns found impossible on their own (maybe none)."""

    def __init__(self, row: int, columns: list[str]):
        self.row, self.columns = row, columns
        super().__init__(f"row {row}: {self.reason()}")

    def reason(self) -> str:
        where = f" (column {', '.join(repr(c) for c in self.columns)})" if self.columns else ""
        return (
            f"the known values have probability zero under the model{where}, to float64 precision, so nothing "
            "can be drawn given them (a number far outside the values the model was trained on can do this)"
        )


@dataclass
class TableImpute:
    samples: np.ndarray  # (N, S, C) completed rows (encoded)
    distributions: list[dict[str, dict[str, Any]]]  # per row: unknown column -> its distribution
    logprob_observed: np.ndarray  # (N,)
    exact: np.ndarray  # (N,)
    ess: np.ndarray  # (N,)
    stderr: np.ndarray  # (N,) of logprob_observed, 0 where exact


def impute(
    engine: TablePasses,
    values: np.ndarray,
    n_samples: int = 10,
    seed: int | None = None,
    n_importance: int = 1000,
    chunk_rows: int = 2048,
    first_row: int = 0,
) -> TableImpute:
    """Completions of each row's unknown cells given its known ones, each unknown column's
    distribution, log p(x_known) and the effective sample size behind them.
    Exact rows (every mask puts the known columns first): SUMMARY_DRAWS (at least n_samples)
    exact draws pooled over the masks, each mask drawn from its posterior p_k(x_known); the
    others: sequential Monte Carlo (service.engine.table_smc) with n_importance / 16 particles
    per mask, its weighted completions the distributions, the samples resampled from them (or,
    n_samples over SUMMARY_DRAWS, as `given` asks, n_samples fresh completions).

    Row i draws from numpy.random.default_rng([seed, first_row + i]), so its answer does not
    depend on the other rows, and rows [k:] sent with first_row k answer as in the request of all
    the rows (first_row: the index of this request's first row in a call split into requests).
    An exact row's draws go through the network chunk_rows at a time (a row's draws split over
    chunks where they are more), and it keeps of each draw only what its answer needs: its
    drawn cells and the level probabilities they were drawn from, never the network's
    outputs."""
    values = engine.check_values(values)
    seed = check_seed(seed)
    first_row = check_first_row(first_row)
    n, k_all = len(values), np.arange(engine.n_masks)
    unknown = np.isnan(values)
    exact = exact_orders(engine.orderings, ~unknown).all(axis=0) | ~unknown.any(axis=1)
    per_mask = np.stack([engine.exact_logprob(values, int(k)) for k in k_all])  # (K, N)
    per_mask[np.isnan(per_mask)] = -np.inf  # an overflow in the network: no probability either
    impossible = exact & np.isneginf(per_mask).all(axis=0)
    if impossible.any():
        raise impossible_evidence(engine, values, int(np.argmax(impossible)))
    out = TableImpute(
        np.empty((n, n_samples, engine.dims)),
        [{} for _ in range(n)],
        logmeanexp(per_mask, axis=0),
        exact,
        np.zeros(n),
        np.zeros(n),
    )
    pools = _pools(values, per_mask, seed, first_row, n_samples, out)
    for chunk in _segments(pools, chunk_rows):
        checkpoint()
        sizes = [stop - start for _, start, stop in chunk]
        rows = np.repeat(np.array([pool.row for pool, _, _ in chunk]), sizes)
        # each row's noise drawn in its own stream's order: the draws do not depend on the chunks
        u = np.concatenate(
            [
                pool.rng.random((size, engine.dims, NOISE_PER_COLUMN))
                for (pool, _, _), size in zip(chunk, sizes, strict=True)
            ]
        )
        ks = np.concatenate([pool.masks(start, stop) for pool, start, stop in chunk])
        cols = {int(c) for pool, _, _ in chunk for c in pool.unknown}
        filled, _, level_p = engine.complete(values[rows], ks, u, cols)
        first = 0
        done = [pool for pool, _, stop in chunk if stop == pool.draws]
        for pool, start, stop in chunk:
            pool.keep(slice(start, stop), slice(first, first + stop - start), filled, level_p)
            first += stop - start
        del filled, level_p, u  # the chunk's arrays go before the rows' summaries are made
        for pool in done:
            _finish(engine, values, pool, n_samples, out)
    _sequential(engine, values, np.flatnonzero(~exact), seed, first_row, n_samples, n_importance, out)
    return out


def _sequential(
    engine: TablePasses,
    values: np.ndarray,
    rows: np.ndarray,
    seed: int,
    first_row: int,
    n_samples: int,
    n_importance: int,
    out: TableImpute,
) -> None:
    """The rows that no ordering answers exactly, by sequential Monte Carlo
    (service.engine.table_smc), row i's noise from default_rng([seed, first_row + i])."""
    if not len(rows):
        return
    rngs = [row_generator(seed, int(i), first_row=first_row) for i in rows.tolist()]
    # up to SUMMARY_DRAWS samples: every particle completed and weighted (its distributions),
    # the samples resampled from them; more (`given`): that many fresh completions
    many = n_samples > SUMMARY_DRAWS
    masks = list(range(engine.n_masks))
    res = smc(engine, values[rows], masks, rngs, n_importance, n_samples if many else None, SUMMARY_DRAWS)
    for j, i in enumerate(rows.tolist()):
        if not np.isfinite(res.logprob[j]):
            raise impossible_evidence(engine, values, i)
        out.logprob_observed[i], out.stderr[i], out.ess[i] = res.logprob[j], res.stderr[j], res.ess[j]
        at = slice(res.starts[j], res.starts[j + 1])
        draws, weights = res.draws[at], res.weights[at]
        out.samples[i] = draws[:n_samples] if many else draws[pick(weights, n_samples, rngs[j])]
        dists = {}
        for c in np.flatnonzero(np.isnan(values[i])).tolist():
            cells, probs = draws[:, c], res.level_p.get(c)
            if probs is not None:  # a particle's cell (drawn before a known one) counts as itself
                probs = probs[at].copy()
                own = np.isnan(probs[:, 0])
                probs[own] = np.eye(probs.shape[1])[cells[own].astype(np.int64)]
            dists[engine.schema.columns[c].name] = _distribution(engine, c, cells, weights, probs)
        out.distributions[i] = dists


def _pools(
    values: np.ndarray, per_mask: np.ndarray, seed: int, first_row: int, n_samples: int, out: TableImpute
) -> list[_Pool]:
    """Each exact row's draws to make, its generator default_rng([seed, first_row + i]) first, its masks
    drawn from its posterior over them (per_mask (K, N): log p_k(x_known)); the other rows are
    _sequential's. A row with nothing unknown is its own answer, filled in here."""
    n_masks = len(per_mask)
    unknown = np.isnan(values)
    pools = []
    for i in range(len(values)):
        rng = row_generator(seed, i, first_row=first_row)
        if not unknown[i].any():  # nothing to draw: the row itself
            out.samples[i] = values[i]
            out.ess[i] = n_samples
            continue
        if out.exact[i]:
            post = np.exp(per_mask[:, i] - np.logaddexp.reduce(per_mask[:, i]))
            ks = rng.choice(n_masks, size=max(n_samples, SUMMARY_DRAWS), p=post / post.sum())
            pools.append(_Pool(i, rng, np.flatnonzero(unknown[i]), len(ks), ks))
    return pools


def _finish(engine: TablePasses, values: np.ndarray, pool: _Pool, n_samples: int, out: TableImpute) -> None:
    """A row's summaries from its draws, once they are all in."""
    i, size, unk_cols = pool.row, pool.draws, pool.unknown.tolist()
    cells, row_p = pool.cells, pool.level_p  # (draws, unknown columns), column -> (draws, levels)
    assert cells is not None
    pool.cells, pool.level_p = None, {}
    weights = np.full(size, 1.0 / size)
    chosen = np.arange(n_samples)
    out.ess[i] = size
    samples = np.repeat(values[i][None, :], n_samples, axis=0)
    samples[:, pool.unknown] = cells[chosen]
    out.samples[i] = samples
    out.distributions[i] = {
        engine.schema.columns[c].name: _distribution(engine, c, cells[:, j], weights, row_p.get(c))
        for j, c in enumerate(unk_cols)
    }


def impossible_evidence(engine: TablePasses, values: np.ndarray, i: int) -> ImpossibleEvidence:
    """Row i's known cells have probability 0 under every mask (to float64 precision): the
    error, naming the known columns whose own term is -inf under mask 0 (unknown cells read
    as 0), where there are such."""
    row = values[i : i + 1]
    params = engine.params(row, 0)
    names = []
    for c, col in enumerate(engine.schema.columns):
        if not np.isnan(row[0, c]):
            with np.errstate(all="ignore"):
                term = column_loglik(col, engine.column_params(params, c), row[:, c])[0]
            if not np.isfinite(term):
                names.append(col.name)
    return ImpossibleEvidence(i, names)


def _distribution(
    engine: TablePasses, c: int, cells: np.ndarray, weights: np.ndarray, level_p: np.ndarray | None
) -> dict[str, Any]:
    """A column's posterior from weighted draws: level probabilities (Rao-Blackwellised from the
    conditionals the draws were made from, where those are exact), or a number's weighted mean,
    sd and 5/50/95% quantiles (and the probability that it is absent)."""
    col = engine.schema.columns[c]
    if col.kind != "numeric":
        if level_p is not None:
            probs = weights @ level_p
        else:
            probs = np.bincount(cells.astype(np.int64), weights=weights, minlength=len(col.levels))
        # sums of float64 weights can round past 1 (a one-level column: 1.0000000000000002)
        return {level: float(p) for level, p in zip(col.levels, np.clip(probs, 0.0, 1.0), strict=True)}
    present = cells != ABSENT
    out: dict[str, Any] = {}
    if col.nullable:
        out["p_absent"] = float(weights[~present].sum())
    w, v = weights[present], cells[present]
    if not len(v) or w.sum() <= 0:
        return {**out, "mean": None, "sd": None, "q05": None, "q50": None, "q95": None}
    w = w / w.sum()
    with np.errstate(over="ignore", invalid="ignore"):  # draws near float64's limit: no finite moments
        mean = float(w @ v)
        sd = float(np.sqrt(max(float(w @ (v - mean) ** 2), 0.0)))
    order = np.argsort(v)
    cdf = np.cumsum(w[order])
    q = {
        f"q{int(p * 100):02d}": col.decode(float(v[order][min(np.searchsorted(cdf, p), len(v) - 1)]))
        for p in (0.05, 0.5, 0.95)
    }
    finite = math.isfinite(mean) and math.isfinite(sd)
    return {**out, "mean": mean if finite else None, "sd": sd if finite else None, **q}


@dataclass
class _Pool:
    """One exact row's draws: its generator (the noise), its unknown columns, how many draws and
    under which masks (`ks`), and what it keeps of each chunk of them (drawn cells, level
    probabilities)."""

    row: int
    rng: np.random.Generator
    unknown: np.ndarray
    draws: int
    ks: np.ndarray
    cells: np.ndarray | None = None  # (draws, unknown columns), from its first chunk on
    level_p: dict[int, np.ndarray] = field(default_factory=dict)  # column -> (draws, levels)

    def keep(self, draws: slice, part: slice, filled: np.ndarray, level_p: dict[int, np.ndarray]) -> None:
        """What the row keeps of its draws `draws`, rows `part` of a chunk's completions: the drawn
        cells and the level probabilities the draws were made from."""
        if self.cells is None:  # the row's first draws: room for what it keeps of them all
            self.cells = np.empty((self.draws, len(self.unknown)))
        self.cells[draws] = filled[part][:, self.unknown]
        for c in self.unknown.tolist():
            if c in level_p:
                if c not in self.level_p:
                    self.level_p[c] = np.empty((self.draws, level_p[c].shape[1]))
                self.level_p[c][draws] = level_p[c][part]

    def masks(self, start: int, stop: int) -> np.ndarray:
        return self.ks[start:stop]


def _segments(pools: list[_Pool], chunk_rows: int) -> Iterator[list[tuple[_Pool, int, int]]]:
    """The rows' draws in row order, chunk_rows at a time: (pool, first draw, end) per row in a chunk."""
    step = max(1, int(chunk_rows))
    chunk: list[tuple[_Pool, int, int]] = []
    room = step
    for pool in pools:
        start = 0
        while start < pool.draws:
            stop = min(pool.draws, start + room)
            chunk.append((pool, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                yield chunk
                chunk, room = [], step
    if chunk:
        yield chunk
