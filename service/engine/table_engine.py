"""The engine of a table model: records of named columns in, exact or estimated answers out.
Numpy in, numpy out, onnxruntime underneath; nothing here knows HTTP.

Cells are encoded as made.core.schema describes: (N, C) float64, NaN for an unknown cell. One routine
does all the work (`_complete`): it walks each row's mask ordering column by column, draws every
unknown cell from its conditional with pre-drawn noise, and scores every known cell given the
columns before it. Where a mask's ordering puts every known column before every unknown one, the
score is exactly log p_k(x_known) and the draws are exact samples of the unknown cells given the
known ones; otherwise it is likelihood weighting (DESIGN-NOTES, "Missing values"), per column.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from made.core.errors import InvalidInput, ModelStoreError
from made.core.heads import NOISE_PER_COLUMN, column_loglik, level_probs, log_sigmoid, mixture, sample_column
from made.core.masks import exact_orders
from made.core.schema import ABSENT, Column, drawn_in_range, input_value, round_to_precision, unstandardise
from made.store.versions import TABLE_OUTPUT, StoredModel
from service.engine.cancel import checkpoint
from service.engine.runtime import make_session, requested_providers

log = logging.getLogger("made.engine")

SUMMARY_DRAWS = 200  # draws behind an exact row's column distributions (more than the samples asked)
# Rows (draws, records) that go through the network together, at most: every long path (log p
# with unknown cells, impute, sample, explain) works in chunks of this many, so its memory does
# not grow with n_importance or the rows, and checks for cancellation (cancel.checkpoint)
# between chunks. A draw's answer does not depend on its chunk.
CHUNK = 2048

# explain's given_others of a numeric column: the integral over its values (see surprisal)
GIVEN_STEP = 0.01  # grid spacing, in the column's standardised units (1% of its training sd), at most...
GIVEN_NODES = 4097  # ...unless the range needs more points than this: then the spacing grows
GIVEN_TAIL = 1e-6  # the grid covers each mask's conditional from this quantile to 1 - it,
GIVEN_REACH = 50.0  # within +-50 standardised units (and the record's own value +-1)
GIVEN_LOCAL = np.linspace(-30.0, 30.0, 61)  # nodes of a component narrower than the step, in its scales
GIVEN_BATCH = 1 << 16  # network rows per pass, at most
QUANTILE_T = np.linspace(-27.631, 27.631, 1106)  # a logistic's standard units over its 1e-12..1-1e-12 range


@dataclass
class TableLogProb:
    logprob: np.ndarray  # (N,) nats
    exact: np.ndarray  # (N,) bool
    stderr: np.ndarray  # (N,) 0 where exact


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


@dataclass
class TableConditionals:
    mask: int
    ordering: np.ndarray  # (C,) the columns in the order mask k generates them
    columns: list[dict[str, np.ndarray]]  # per column (schema order): "probs" (N, L) for a category;
    # "mean", "sd", "q05", "q50", "q95" (N,) and, nullable, "p_absent" (N,) for a number


class TableEngine:
    def __init__(self, model: StoredModel, providers: list[str] | None = None, threads: int | None = None):
        self.model = model
        self.name = model.name
        self.version = model.version
        self.manifest = model.manifest
        self.schema = model.schema
        self.dims = len(self.schema)
        self.n_masks = model.n_masks
        self.orderings = model.orderings
        self.image_shape = None
        if self.orderings.shape != (self.n_masks, self.dims):
            raise ModelStoreError(f"{model.path}: orderings do not match n_masks x columns")
        self.session = make_session(model.onnx_path, providers or requested_providers(), threads)
        self.providers: list[str] = list(self.session.get_providers())
        ins = {i.name: i.shape for i in self.session.get_inputs()}
        outs = {o.name: o.shape for o in self.session.get_outputs()}
        if (
            ins.get("x", [None, None])[1] != self.schema.n_in
            or outs.get(TABLE_OUTPUT, [None, None])[1] != self.schema.n_out
        ):
            raise ModelStoreError(
                f"{model.onnx_path} does not match its manifest's columns "
                f"(graph {ins} -> {outs}, schema {self.schema.n_in} -> {self.schema.n_out})"
            )
        self.positions = np.argsort(self.orderings, axis=1)  # (K, C): position of column c in mask k
        log.info(
            "loaded table model %s version %s (%d columns, K=%d) on %s",
            self.name,
            self.version,
            self.dims,
            self.n_masks,
            self.providers[0],
        )

    # --- one forward pass ---------------------------------------------------------------------
    def params(self, values: np.ndarray, mask: int) -> np.ndarray:
        """(N, U_out) float64: every column's parameters under mask k (unknown cells read as 0)."""
        x = self.schema.network_inputs(values)
        out = self.session.run([TABLE_OUTPUT], {"x": x, "mask_index": np.array(mask, dtype=np.int64)})[0]
        return np.asarray(out, dtype=np.float64)

    def _slice(self, params: np.ndarray, c: int) -> np.ndarray:
        return params[:, int(self.schema.out_offsets[c]) : int(self.schema.out_offsets[c + 1])]

    def column_logliks(self, values: np.ndarray, mask: int) -> np.ndarray:
        """(N, C) log p_k(x_c | the columns before c), for complete rows."""
        return self._logliks(values, self.params(values, mask))

    # --- checks ---------------------------------------------------------------------------------
    def check_values(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.dims:
            raise InvalidInput(f"records must have {self.dims} columns, got shape {values.shape}")
        return values

    def _masks(self, masks: Literal["all"] | int) -> list[int]:
        if masks == "all":
            return list(range(self.n_masks))
        if isinstance(masks, bool) or not isinstance(masks, int) or not 0 <= masks < self.n_masks:
            raise InvalidInput(f"mask {masks!r} is out of range: model {self.name} has {self.n_masks} masks")
        return [int(masks)]

    # --- the walk -------------------------------------------------------------------------------
    def _complete(
        self, values: np.ndarray, ks: np.ndarray, u: np.ndarray, probs_of: set[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """Fill each row's unknown cells in mask ks[i]'s order, drawing with noise u (N, C, 3);
        return (completed rows, log weights = Σ over known cells of log p(x_c | x_<c), and for the
        columns in probs_of the level probabilities each draw was made from)."""
        filled = np.array(values, dtype=np.float64)
        unknown = np.isnan(filled)
        logw = np.zeros(len(filled))
        level_p: dict[int, np.ndarray] = {}
        for k in np.unique(ks):
            rows = np.flatnonzero(ks == k)
            order = self.orderings[k]
            unk = unknown[rows]
            # the last position where a row of this group still has a cell to draw
            last = max((t for t in range(self.dims) if unk[:, order[t]].any()), default=-1)
            for t in range(last + 1):
                c = int(order[t])
                todo = rows[unk[:, c]]
                if not len(todo):
                    continue
                p = self._slice(self.params(filled[todo], int(k)), c)
                col = self.schema.columns[c]
                filled[todo, c] = _draw(col, p, u[todo, c])
                if probs_of is not None and c in probs_of and col.kind != "numeric":
                    with np.errstate(over="ignore"):
                        probs = level_probs(col, p)
                    level_p.setdefault(c, np.full((len(filled), len(col.levels)), np.nan))[todo] = probs
            if unk.all():
                continue  # nothing known to score (a sample)
            # every known cell scored given the completed row: one pass per mask
            params = self.params(filled[rows], int(k))
            for c, col in enumerate(self.schema.columns):
                known = ~unk[:, c]
                if known.any():
                    logw[rows[known]] += column_loglik(col, self._slice(params, c)[known], filled[rows[known], c])
        return filled, logw, level_p

    # --- log p ----------------------------------------------------------------------------------
    def logprob(
        self, values: np.ndarray, masks: Literal["all"] | int = "all", seed: int | None = None, n_importance: int = 1000
    ) -> TableLogProb:
        """log p(x_known) per row in nats: the unknown (NaN) cells summed out, exactly where every
        mask in use puts them after the known ones, else by likelihood weighting."""
        values = self.check_values(values)
        ks = self._masks(masks)
        n = len(values)
        unknown = np.isnan(values)
        exact = exact_orders(self.orderings[ks], ~unknown).all(axis=0) | ~unknown.any(axis=1)
        per_mask = np.stack([self._exact_logprob(values, k) for k in ks])  # (K, N)
        per_mask[np.isnan(per_mask)] = -np.inf  # an overflow in the network: no probability either
        lp = _logmeanexp(per_mask, axis=0)
        stderr = np.zeros(n)
        todo = np.flatnonzero(~exact)
        if len(todo):
            # row todo[j]'s draws are n_importance under each mask in ks, one after another; they
            # go through the network CHUNK at a time, their noise drawn in that order (the
            # stream one call for all of them would draw), their weights summed as they come
            rng = np.random.default_rng(seed)
            per_row, k_arr = n_importance * len(ks), np.asarray(ks, dtype=np.int64)
            acc = _MeanWeights(len(todo))
            for draws in _chunks(len(todo) * per_row):
                checkpoint()
                idx = np.arange(draws.start, draws.stop)
                j = idx // per_row
                u = rng.random((len(idx), self.dims, NOISE_PER_COLUMN))
                _, logw, _ = self._complete(values[todo[j]], k_arr[(idx % per_row) // n_importance], u)
                acc.add(j, logw)
            lp[todo], stderr[todo] = acc.log_mean(), acc.stderr()
        return TableLogProb(lp, exact, stderr)

    def _exact_logprob(self, values: np.ndarray, k: int) -> np.ndarray:
        """Σ over known cells of log p_k(x_c | x_<c), the unknown ones read as 0: exactly
        log p_k(x_known) for rows whose known columns all come first in mask k's ordering."""
        total = np.zeros(len(values))
        for part in _chunks(len(values)):
            checkpoint()
            x = values[part]
            params = self.params(x, k)
            for c, col in enumerate(self.schema.columns):
                known = ~np.isnan(x[:, c])
                if known.any():
                    total[part][known] += column_loglik(col, self._slice(params, c)[known], x[known, c])
        return total

    def surprisal(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Per column of complete rows: -log p(x_c | the columns before c) averaged over the masks
        ("in_order"), and -log p(x_c | every other column) under the mixture ("given_others").

        given_others = -(log p(x) - log Σ_v p(x_c = v, x_-c)), p the mixture of the masks. For a
        category the sum runs over its levels. For a number it is an integral over the column's
        values (_log_numeric_normaliser), and the answer is in the units of the column's own
        likelihood, as in_order is: -log of the probability of the value's rounding bin for a
        number recorded to `decimals` places, -log of a density per unit of the column's values
        for a continuous one, -log P(NA | the others) for a nullable number recorded as NA (its
        absence is a discrete mass beside the density of its values)."""
        values = self.check_values(values)
        if np.isnan(values).any():
            raise InvalidInput("explain needs complete records")
        params = [self.params(values, k) for k in range(self.n_masks)]
        per_mask = np.stack([self._logliks(values, p) for p in params])  # (K, N, C)
        in_order = -per_mask.mean(axis=0)
        given = np.full(values.shape, np.nan)
        base = _logmeanexp(per_mask.sum(axis=2), axis=0)  # (N,) log p(x)
        for c, col in enumerate(self.schema.columns):
            if col.kind == "numeric":
                given[:, c] = -(base - self._log_numeric_normaliser(values, c, params, per_mask))
                continue
            alts = []
            for level in range(len(col.levels)):
                checkpoint()
                x = values.copy()
                x[:, c] = level
                alts.append(
                    _logmeanexp(np.stack([self.column_logliks(x, k).sum(axis=1) for k in range(self.n_masks)]), axis=0)
                )
            given[:, c] = -(base - np.logaddexp.reduce(np.stack(alts), axis=0))
        return {"in_order": in_order, "given_others": given}

    def _logliks(self, values: np.ndarray, params: np.ndarray) -> np.ndarray:
        return np.stack(
            [column_loglik(col, self._slice(params, c), values[:, c]) for c, col in enumerate(self.schema.columns)],
            axis=1,
        )

    def _log_numeric_normaliser(
        self, values: np.ndarray, c: int, params: list[np.ndarray], per_mask: np.ndarray
    ) -> np.ndarray:
        """(N,) log of p(x_-c) with numeric column c summed out, under the mixture of the masks.

        Under mask k, p_k(x_c', x_-c) = p_k(x_<c) p_k(x_c' | x_<c) g_k(x_c'), with g_k the
        likelihood of the columns after c given x_c', so that the integral over x_c' is
        p_k(x_<c) E[g_k(X)] for X drawn from c's own conditional: a discrete mass at NA (nullable
        columns) plus a mixture of logistics over y, the column's standardised value. E is taken
        in y, where the mixture's density is known in closed form:
          - on a uniform grid over the range where any mask's conditional has its mass (its
            GIVEN_TAIL to 1 - GIVEN_TAIL quantiles, widened to the record's own value +-1, within
            +-GIVEN_REACH), with spacing GIVEN_STEP (wider only past GIVEN_NODES points): the
            trapezoidal rule on density x g, which converges geometrically for smooth integrands
            once the spacing is below the width of their peaks;
          - the mass beyond either end of the grid times g at that end;
          - a component narrower than the spacing on its own grid of GIVEN_LOCAL scales.
        g reads x_c' unrounded: for a column recorded to `decimals` places, the sum over rounding
        bins is the integral to O(bin width^2)."""
        col = self.schema.columns[c]
        n = len(values)
        priors = [mixture(col, self._slice(p, c)) for p in params]
        cells = values[:, c]
        present = cells != ABSENT
        y_obs = np.full(n, np.nan)
        y_obs[present] = input_value(col, cells[present])
        lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
        for _, log_w, mu, log_s in priors:
            q = _mixture_quantiles(np.array([GIVEN_TAIL, 1.0 - GIVEN_TAIL]), log_w, mu, log_s)
            lo, hi = np.minimum(lo, q[:, 0]), np.maximum(hi, q[:, 1])
        lo, hi = np.fmin(lo, y_obs - 1.0), np.fmax(hi, y_obs + 1.0)
        lo = np.maximum(lo, np.fmin(-GIVEN_REACH, y_obs - 1.0))
        hi = np.minimum(hi, np.fmax(GIVEN_REACH, y_obs + 1.0))
        nodes = int(np.clip(np.ceil(np.max((hi - lo) / GIVEN_STEP)) + 1, 33, GIVEN_NODES))
        local_w = np.full(len(GIVEN_LOCAL), np.log(GIVEN_LOCAL[1] - GIVEN_LOCAL[0]))
        local_w[[0, -1]] += np.log(0.5)
        local_w += log_sigmoid(GIVEN_LOCAL) + log_sigmoid(-GIVEN_LOCAL)  # the standard logistic's density
        out = np.empty((self.n_masks, n))
        step = max(1, GIVEN_BATCH // (nodes + 1))
        for first in range(0, n, step):
            rows = slice(first, min(first + step, n))
            x, m = values[rows], min(first + step, n) - first
            grid = lo[rows, None] + (hi - lo)[rows, None] * np.linspace(0.0, 1.0, nodes)[None, :]  # (m, G)
            h = (hi[rows] - lo[rows]) / (nodes - 1)
            trap = np.full(nodes, 0.0)
            trap[[0, -1]] = np.log(0.5)
            trap_w = trap[None, :] + np.log(h)[:, None]  # (m, G)
            for k, (absent, log_w_all, mu_all, log_s_all) in enumerate(priors):
                checkpoint()
                before = self.positions[k] < self.positions[k, c]
                if before.sum() == self.dims - 1:  # c comes last: the integral is p_k(x_<c) exactly
                    out[k, rows] = per_mask[k, rows][:, before].sum(axis=1)
                    continue
                log_w, mu, log_s = log_w_all[rows], mu_all[rows], log_s_all[rows]
                narrow = np.exp(log_s) < h[:, None]
                wide_w = np.where(narrow, -np.inf, log_w)
                g = self._log_after(x, np.repeat(np.arange(m), nodes), _cells(col, grid.ravel()), c, k)
                g = g.reshape(m, nodes)
                z = (grid[:, :, None] - mu[:, None, :]) * np.exp(-log_s)[:, None, :]
                log_pdf = np.logaddexp.reduce(
                    wide_w[:, None, :] + log_sigmoid(z) + log_sigmoid(-z) - log_s[:, None, :], axis=2
                )  # (m, G)
                z_lo = (lo[rows, None] - mu) * np.exp(-log_s)
                z_hi = (hi[rows, None] - mu) * np.exp(-log_s)
                terms = [
                    np.logaddexp.reduce(log_pdf + g + trap_w, axis=1),
                    np.logaddexp.reduce(wide_w + log_sigmoid(z_lo), axis=1) + g[:, 0],
                    np.logaddexp.reduce(wide_w + log_sigmoid(-z_hi), axis=1) + g[:, -1],
                ]
                if narrow.any():
                    ri, mi = np.nonzero(narrow)
                    ys = mu[ri, mi][:, None] + np.exp(log_s[ri, mi])[:, None] * GIVEN_LOCAL[None, :]
                    g_n = self._log_after(x, np.repeat(ri, len(GIVEN_LOCAL)), _cells(col, ys.ravel()), c, k)
                    part = log_w[ri, mi] + np.logaddexp.reduce(g_n.reshape(len(ri), -1) + local_w, axis=1)
                    narrow_term = np.full(m, -np.inf)
                    np.logaddexp.at(narrow_term, ri, part)
                    terms.append(narrow_term)
                log_e = np.logaddexp.reduce(np.stack(terms), axis=0)
                if absent is not None:
                    a = absent[rows]
                    g_absent = self._log_after(x, np.arange(m), np.full(m, ABSENT), c, k)
                    log_e = np.logaddexp(log_sigmoid(-a) + log_e, log_sigmoid(a) + g_absent)
                out[k, rows] = per_mask[k, rows][:, before].sum(axis=1) + log_e
        return _logmeanexp(out, axis=0)

    def _log_after(self, values: np.ndarray, rows: np.ndarray, cells: np.ndarray, c: int, k: int) -> np.ndarray:
        """(len(rows),) log p_k(the columns after c | the ones before, x_c = cell) for values[rows]
        with column c set to cells; GIVEN_BATCH rows per pass."""
        after = np.flatnonzero(self.positions[k] > self.positions[k, c])
        out = np.zeros(len(rows))
        if not len(after):
            return out
        for first in range(0, len(rows), GIVEN_BATCH):
            checkpoint()
            part = slice(first, first + GIVEN_BATCH)
            x = values[rows[part]].copy()
            x[:, c] = cells[part]
            params = self.params(x, k)
            for j in after.tolist():
                out[part] += column_loglik(self.schema.columns[j], self._slice(params, j), x[:, j])
        return out

    # --- per-column conditionals -----------------------------------------------------------------
    def conditionals(self, values: np.ndarray, mask: int) -> TableConditionals:
        """Each column's distribution under mask k given the columns before it in k's ordering, for
        complete rows: a category's level probabilities; a number's mean, sd and 5/50/95%
        quantiles of its value when present (the quantiles rounded to its `decimals`, as values of
        the column), and its probability of being absent (nullable columns). The level probabilities and the
        probability of absence are exp of the engine's own log-likelihoods; the quantiles are the
        mixture's, by bisection; mean and sd are exact for plain columns, by quadrature over each
        logistic component (within its 1e-12 and 1 - 1e-12 quantiles, where the sampler draws)
        for log-transformed ones, null where they overflow a double."""
        values = self.check_values(values)
        k = self._masks(mask)[0]
        if np.isnan(values).any():
            raise InvalidInput("conditionals needs complete records")
        parts = []
        for rows in _chunks(len(values)):
            checkpoint()
            parts.append(self._conditionals(values[rows], k))
        if len(parts) <= 1:
            columns = parts[0] if parts else self._conditionals(values, k)
        else:
            columns = [
                {key: np.concatenate([p[c][key] for p in parts]) for key in col} for c, col in enumerate(parts[0])
            ]
        return TableConditionals(k, self.orderings[k].copy(), columns)

    def _conditionals(self, values: np.ndarray, k: int) -> list[dict[str, np.ndarray]]:
        params = self.params(values, k)
        columns: list[dict[str, np.ndarray]] = []
        for c, col in enumerate(self.schema.columns):
            p = self._slice(params, c)
            if col.kind != "numeric":
                columns.append({"probs": level_probs(col, p)})
                continue
            absent, log_w, mu, log_s = mixture(col, p)
            q = _mixture_quantiles(np.array([0.05, 0.5, 0.95]), log_w, mu, log_s)
            with np.errstate(over="ignore"):
                qv = drawn_in_range(col, round_to_precision(col, unstandardise(col, q)))  # inf is ABSENT
            mean, sd = _mixture_moments(col, log_w, mu, log_s)
            out = {"mean": mean, "sd": sd, "q05": qv[:, 0], "q50": qv[:, 1], "q95": qv[:, 2]}
            if absent is not None:
                out["p_absent"] = np.exp(log_sigmoid(absent))
            columns.append(out)
        return columns

    # --- sampling and imputation ----------------------------------------------------------------
    def sample(self, n: int, seed: int, mask: int | None = None) -> np.ndarray:
        """(n, C) exact samples: each draws its mask uniformly (or uses `mask`), then its cells in
        that mask's order from pre-drawn noise; the same seed gives the same records (CHUNK rows
        at a time, their noise drawn in turn from one stream)."""
        if n < 0:
            raise InvalidInput(f"n must be at least 0, got {n}")
        rng = np.random.default_rng(seed)
        ks = np.full(n, self._masks(mask)[0]) if mask is not None else rng.integers(self.n_masks, size=n)
        out = np.empty((n, self.dims))
        for part in _chunks(n):
            checkpoint()
            u = rng.random((part.stop - part.start, self.dims, NOISE_PER_COLUMN))
            out[part] = self._complete(np.full((part.stop - part.start, self.dims), np.nan), ks[part], u)[0]
        return out

    def impute(
        self, values: np.ndarray, n_samples: int = 10, seed: int | None = None, n_importance: int = 1000
    ) -> TableImpute:
        """Completions of each row's unknown cells given its known ones, each unknown column's
        distribution, log p(x_known) and the effective sample size behind them.
        Exact rows (every mask puts the known columns first): SUMMARY_DRAWS (at least n_samples)
        exact draws pooled over the masks, each mask drawn from its posterior p_k(x_known); the
        others: likelihood weighting, n_importance draws per mask, resampled for the completions.

        Row i draws from numpy.random.default_rng([seed, i]), so its answer does not depend on the
        other rows. The draws of all rows go through the network CHUNK at a time (a row's draws
        split over chunks where they are more), and a row keeps of each draw only what its answer
        needs: its drawn cells and weight (and, exact rows, the level probabilities they were
        drawn from), never the network's outputs."""
        values = self.check_values(values)
        seed = seed if seed is not None else int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
        n, k_all = len(values), np.arange(self.n_masks)
        unknown = np.isnan(values)
        exact = exact_orders(self.orderings, ~unknown).all(axis=0) | ~unknown.any(axis=1)
        per_mask = np.stack([self._exact_logprob(values, int(k)) for k in k_all])  # (K, N)
        per_mask[np.isnan(per_mask)] = -np.inf  # an overflow in the network: no probability either
        impossible = exact & np.isneginf(per_mask).all(axis=0)
        if impossible.any():
            raise self._impossible(values, int(np.argmax(impossible)))
        out = TableImpute(
            np.empty((n, n_samples, self.dims)),
            [{} for _ in range(n)],
            _logmeanexp(per_mask, axis=0),
            exact,
            np.zeros(n),
            np.zeros(n),
        )
        pools = []
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            if not unknown[i].any():  # nothing to draw: the row itself
                out.samples[i] = values[i]
                out.ess[i] = n_samples
                continue
            if exact[i]:
                post = np.exp(per_mask[:, i] - np.logaddexp.reduce(per_mask[:, i]))
                ks = rng.choice(self.n_masks, size=max(n_samples, SUMMARY_DRAWS), p=post / post.sum())
                pools.append(_Pool(i, rng, np.flatnonzero(unknown[i]), len(ks), ks))
            else:
                pools.append(_Pool(i, rng, np.flatnonzero(unknown[i]), self.n_masks * n_importance, None, n_importance))
        for chunk in _segments(pools):
            checkpoint()
            sizes = [stop - start for _, start, stop in chunk]
            rows = np.repeat(np.array([pool.row for pool, _, _ in chunk]), sizes)
            # each row's noise drawn in its own stream's order: the draws do not depend on the chunks
            u = np.concatenate(
                [
                    pool.rng.random((size, self.dims, NOISE_PER_COLUMN))
                    for (pool, _, _), size in zip(chunk, sizes, strict=True)
                ]
            )
            ks = np.concatenate([pool.masks(start, stop) for pool, start, stop in chunk])
            cols = {int(c) for pool, _, _ in chunk for c in pool.unknown}
            filled, logw, level_p = self._complete(values[rows], ks, u, cols)
            first = 0
            done = [pool for pool, _, stop in chunk if stop == pool.draws]
            for pool, start, stop in chunk:
                part, draws = slice(first, first + stop - start), slice(start, stop)
                first += stop - start
                if pool.cells is None:  # the row's first draws: room for what it keeps of them all
                    pool.cells = np.empty((pool.draws, len(pool.unknown)))
                    if not out.exact[pool.row]:
                        pool.logw = np.empty(pool.draws)
                pool.cells[draws] = filled[part][:, pool.unknown]
                if pool.logw is not None:
                    pool.logw[draws] = logw[part]
                    continue
                for c in pool.unknown.tolist():  # an exact row: the level probabilities of its draws
                    if c in level_p:
                        if c not in pool.level_p:
                            pool.level_p[c] = np.empty((pool.draws, level_p[c].shape[1]))
                        pool.level_p[c][draws] = level_p[c][part]
            del filled, logw, level_p, u  # the chunk's arrays go before the rows' summaries are made
            for pool in done:
                self._finish(values, pool, n_samples, out)
        return out

    def _finish(self, values: np.ndarray, pool: _Pool, n_samples: int, out: TableImpute) -> None:
        """A row's summaries from its draws, once they are all in."""
        i, size, unk_cols = pool.row, pool.draws, pool.unknown.tolist()
        cells, row_p, row_logw = pool.cells, pool.level_p, pool.logw  # (draws, unknown columns), ...
        assert cells is not None
        pool.cells, pool.level_p, pool.logw = None, {}, None
        if row_logw is None:  # an exact row
            weights = np.full(size, 1.0 / size)
            chosen = np.arange(n_samples)
            out.ess[i] = size
        else:
            row_logw[np.isnan(row_logw)] = -np.inf
            if np.isneginf(row_logw).all():
                raise self._impossible(values, i)
            out.logprob_observed[i] = _logmeanexp(row_logw[None, :], axis=1)[0]
            out.stderr[i] = _delta_stderr(row_logw[None, :])[0]
            weights = np.exp(row_logw - row_logw.max())
            weights /= weights.sum()
            out.ess[i] = 1.0 / np.sum(weights**2)
            chosen = pool.rng.choice(size, size=n_samples, p=weights)
            row_p = {}  # a draw's level probabilities ignore the known cells after it
        samples = np.repeat(values[i][None, :], n_samples, axis=0)
        samples[:, pool.unknown] = cells[chosen]
        out.samples[i] = samples
        out.distributions[i] = {
            self.schema.columns[c].name: self._distribution(c, cells[:, j], weights, row_p.get(c))
            for j, c in enumerate(unk_cols)
        }

    def _impossible(self, values: np.ndarray, i: int) -> ImpossibleEvidence:
        """Row i's known cells have probability 0 under every mask (to float64 precision): the
        error, naming the known columns whose own term is -inf under mask 0 (unknown cells read
        as 0), where there are such."""
        row = values[i : i + 1]
        params = self.params(row, 0)
        names = []
        for c, col in enumerate(self.schema.columns):
            if not np.isnan(row[0, c]):
                with np.errstate(all="ignore"):
                    term = column_loglik(col, self._slice(params, c), row[:, c])[0]
                if not np.isfinite(term):
                    names.append(col.name)
        return ImpossibleEvidence(i, names)

    def _distribution(
        self, c: int, cells: np.ndarray, weights: np.ndarray, level_p: np.ndarray | None
    ) -> dict[str, Any]:
        """A column's posterior from weighted draws: level probabilities (Rao-Blackwellised from the
        conditionals the draws were made from, where those are exact), or a number's weighted mean,
        sd and 5/50/95% quantiles (and the probability that it is absent)."""
        col = self.schema.columns[c]
        if col.kind != "numeric":
            if level_p is not None:
                probs = weights @ level_p
            else:
                probs = np.bincount(cells.astype(np.int64), weights=weights, minlength=len(col.levels))
            return {level: float(p) for level, p in zip(col.levels, probs, strict=True)}
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


def _chunks(total: int) -> Iterator[slice]:
    """slice(0, CHUNK), slice(CHUNK, 2 CHUNK), ... over `total` rows."""
    step = max(1, int(CHUNK))
    for first in range(0, total, step):
        yield slice(first, min(first + step, total))


def _draw(col: Column, p: np.ndarray, u: np.ndarray) -> np.ndarray:
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


@dataclass
class _Pool:
    """One imputed row's draws: its generator (noise, then the resampling), its unknown columns,
    how many draws and under which masks (`ks`, or draw j under mask j // n_importance), and
    what it keeps of each chunk of them (drawn cells, log weights, level probabilities)."""

    row: int
    rng: np.random.Generator
    unknown: np.ndarray
    draws: int
    ks: np.ndarray | None
    n_importance: int = 1
    cells: np.ndarray | None = None  # (draws, unknown columns), from its first chunk on
    logw: np.ndarray | None = None  # (draws,), weighted rows
    level_p: dict[int, np.ndarray] = field(default_factory=dict)  # column -> (draws, levels), exact rows

    def masks(self, start: int, stop: int) -> np.ndarray:
        if self.ks is not None:
            return self.ks[start:stop]
        return np.arange(start, stop, dtype=np.int64) // self.n_importance


def _segments(pools: list[_Pool]) -> Iterator[list[tuple[_Pool, int, int]]]:
    """The rows' draws in row order, CHUNK at a time: (pool, first draw, end) per row in a chunk."""
    step = max(1, int(CHUNK))
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


class _MeanWeights:
    """Per row, log of the mean importance weight and its delta-method standard error (as
    _logmeanexp and _delta_stderr give them from all the log weights at once), accumulated chunk
    by chunk: the count, the running max m of the log weights, and the mean and sum of squared
    deviations of exp(log w - m), rescaled when m grows and merged by Chan et al.'s rule."""

    def __init__(self, rows: int) -> None:
        self.n = np.zeros(rows)
        self.m = np.full(rows, -np.inf)
        self.mean = np.zeros(rows)
        self.m2 = np.zeros(rows)

    def add(self, rows: np.ndarray, logw: np.ndarray) -> None:
        """Log weights of draws of `rows` (non-decreasing: each row's draws together)."""
        a = np.where(np.isnan(logw), -np.inf, logw)  # an overflow in the network: no probability
        starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
        g, counts = rows[starts], np.diff(np.append(starts, len(rows))).astype(np.float64)
        new_m = np.maximum(self.m[g], np.maximum.reduceat(a, starts))
        base = np.where(np.isfinite(new_m), new_m, 0.0)
        w = np.exp(a - np.repeat(base, counts.astype(np.int64)))
        mean_b = np.add.reduceat(w, starts) / counts
        m2_b = np.add.reduceat((w - np.repeat(mean_b, counts.astype(np.int64))) ** 2, starts)
        f = np.exp(self.m[g] - base)
        n_a, mean_a, m2_a = self.n[g], self.mean[g] * f, self.m2[g] * f * f
        n = n_a + counts
        delta = mean_b - mean_a
        self.mean[g] = mean_a + delta * counts / n
        self.m2[g] = m2_a + m2_b + delta**2 * n_a * counts / n
        self.n[g], self.m[g] = n, new_m

    def log_mean(self) -> np.ndarray:
        """log mean w; -inf where every weight is 0."""
        with np.errstate(divide="ignore"):
            return np.where(np.isfinite(self.m), self.m + np.log(self.mean), -np.inf)

    def stderr(self) -> np.ndarray:
        """Standard error of log(mean w) by the delta method; NaN where every weight is 0."""
        with np.errstate(invalid="ignore", divide="ignore"):
            sd = np.where(self.n > 1, np.sqrt(np.maximum(self.m2, 0.0) / np.maximum(self.n - 1, 1.0)), 0.0)
            se = sd / np.sqrt(self.n) / np.maximum(self.mean, 1e-300)
        return np.where(np.isfinite(self.m), se, np.nan)


def _cells(col: Column, y: np.ndarray) -> np.ndarray:
    """Standardised values -> the column's cells (the network reads them back as y)."""
    with np.errstate(over="ignore"):
        return np.minimum(unstandardise(col, y), np.finfo(np.float64).max)


def _mixture_quantiles(probs: np.ndarray, log_w: np.ndarray, mu: np.ndarray, log_s: np.ndarray) -> np.ndarray:
    """(N, Q) quantiles in y of each row's mixture of logistics (weights exp(log_w)), by bisection."""
    s = np.exp(log_s)
    lo = np.repeat(np.min(mu - 40 * s, axis=1)[:, None], len(probs), axis=1)
    hi = np.repeat(np.max(mu + 40 * s, axis=1)[:, None], len(probs), axis=1)
    w = np.exp(log_w)[:, None, :]
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        cdf = np.sum(w * np.exp(log_sigmoid((mid[:, :, None] - mu[:, None, :]) / s[:, None, :])), axis=2)
        below = cdf < probs[None, :]
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _mixture_moments(
    col: Column, log_w: np.ndarray, mu: np.ndarray, log_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) mean and sd of a numeric column's value under its mixture of logistics over y: in
    closed form for a plain column (a logistic's variance is pi^2 s^2 / 3); for a log-transformed
    one by the trapezoidal rule in each component's standard units over QUANTILE_T (its 1e-12 to
    1 - 1e-12 quantiles, as far as the sampler draws); NaN where that overflows."""
    w, s = np.exp(log_w), np.exp(log_s)
    if col.transform != "log":
        mean_y = np.sum(w * mu, axis=1)
        var_y = np.sum(w * ((mu - mean_y[:, None]) ** 2 + (np.pi * s) ** 2 / 3), axis=1)
        return col.loc + col.scale * mean_y, col.scale * np.sqrt(var_y)
    dens = np.exp(log_sigmoid(QUANTILE_T) + log_sigmoid(-QUANTILE_T))
    dens /= dens.sum()  # the uniform spacing cancels
    mean, var = np.empty(len(w)), np.empty(len(w))
    step = max(1, (1 << 20) // (w.shape[1] * len(QUANTILE_T)))
    with np.errstate(over="ignore", invalid="ignore"):
        for first in range(0, len(w), step):
            part = slice(first, first + step)
            v = unstandardise(col, mu[part, :, None] + s[part, :, None] * QUANTILE_T)  # (n, M, T)
            m = np.sum(w[part] * (v @ dens), axis=1)
            mean[part] = m
            var[part] = np.sum(w[part] * (((v - m[:, None, None]) ** 2) @ dens), axis=1)
    bad = ~(np.isfinite(mean) & np.isfinite(var))
    return np.where(bad, np.nan, mean), np.where(bad, np.nan, np.sqrt(np.where(bad, 0.0, var)))


def _logmeanexp(a: np.ndarray, axis: int) -> np.ndarray:
    """log mean exp(a) along axis; -inf where every term is -inf (probability zero)."""
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(m, axis=axis) + np.log(np.mean(np.exp(a - m), axis=axis))


def _delta_stderr(logw: np.ndarray) -> np.ndarray:
    """Standard error of log(mean w) by the delta method, per row of (N, S) log weights."""
    m = logw.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):  # NaN for a row whose weights are all 0: no estimate
        w = np.exp(logw - m)
    mean = w.mean(axis=1)
    sd = w.std(axis=1, ddof=1) if w.shape[1] > 1 else np.zeros(len(w))
    return sd / np.sqrt(w.shape[1]) / np.maximum(mean, 1e-300)
