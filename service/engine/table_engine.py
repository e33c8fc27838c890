"""The engine of a table model: records of named columns in, exact or estimated answers out.
Numpy in, numpy out, onnxruntime underneath; nothing here knows HTTP.

Cells are encoded as made.core.schema describes: (N, C) float64, NaN for an unknown cell. One routine
does all the work (`complete`): it walks each row's mask ordering column by column, draws every
unknown cell from its conditional with pre-drawn noise, and scores every known cell given the
columns before it. Where a mask's ordering puts every known column before every unknown one, the
score is exactly log p_k(x_known) and the draws are exact samples of the unknown cells given the
known ones. Rows that some mask does not answer so go to sequential Monte Carlo
(service.engine.table_smc), which walks each mask's ordering with particles instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from made.core.errors import InvalidInput, ModelStoreError
from made.core.heads import NOISE_PER_COLUMN, column_loglik, level_probs
from made.core.masks import exact_orders
from made.core.numerics import logmeanexp
from made.store.manifest import TABLE_OUTPUT
from made.store.versions import StoredModel
from service.engine.cancel import checkpoint
from service.engine.checks import check_first_row, check_row_seeds, check_seed, row_generator
from service.engine.runtime import make_session, requested_providers, rows_alike
from service.engine.table_draws import draw_cells
from service.engine.table_explain import column_summaries, surprisal
from service.engine.table_impute import TableImpute, impute
from service.engine.table_smc import smc

log = logging.getLogger("made.engine")

# Rows (draws, records) that go through the network together, at most: every long path (log p
# with unknown cells, impute, sample, explain) works in chunks of this many, so its memory does
# not grow with n_importance or the rows, and checks for cancellation (cancel.checkpoint)
# between chunks. A draw's answer does not depend on its chunk.
CHUNK = 2048


@dataclass
class TableLogProb:
    logprob: np.ndarray  # (N,) nats
    exact: np.ndarray  # (N,) bool
    stderr: np.ndarray  # (N,) 0 where exact


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
        """(N, U_out) float64: every column's parameters under mask k (unknown cells read as 0).
        A row's outputs do not depend on the rows beside it, to the bit, a single row's included
        (runtime.rows_alike: the particle filter's first pass holds one row per request row)."""
        feed = {"mask_index": np.array(mask, dtype=np.int64)}
        out = rows_alike(
            lambda x: self.session.run([TABLE_OUTPUT], {"x": x, **feed})[0], self.schema.network_inputs(values)
        )
        return np.asarray(out, dtype=np.float64)

    def column_params(self, params: np.ndarray, c: int) -> np.ndarray:
        return params[:, int(self.schema.out_offsets[c]) : int(self.schema.out_offsets[c + 1])]

    def column_logliks(self, values: np.ndarray, mask: int) -> np.ndarray:
        """(N, C) log p_k(x_c | the columns before c), for complete rows."""
        return self.logliks(values, self.params(values, mask))

    def logliks(self, values: np.ndarray, params: np.ndarray) -> np.ndarray:
        """(N, C) log p(x_c | what the outputs saw) of complete rows, from one mask's outputs."""
        return np.stack(
            [
                column_loglik(col, self.column_params(params, c), values[:, c])
                for c, col in enumerate(self.schema.columns)
            ],
            axis=1,
        )

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
    def complete(
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
                p = self.column_params(self.params(filled[todo], int(k)), c)
                col = self.schema.columns[c]
                filled[todo, c] = draw_cells(col, p, u[todo, c])
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
                    logw[rows[known]] += column_loglik(
                        col, self.column_params(params, c)[known], filled[rows[known], c]
                    )
        return filled, logw, level_p

    # --- log p ----------------------------------------------------------------------------------
    def logprob(
        self,
        values: np.ndarray,
        masks: Literal["all"] | int = "all",
        seed: int | None = None,
        n_importance: int = 1000,
        *,
        row_seeds: np.ndarray | None = None,
        first_row: int = 0,
    ) -> TableLogProb:
        """log p(x_known) per row in nats: the unknown (NaN) cells summed out, exactly where every
        mask in use puts them after the known ones, else by sequential Monte Carlo
        (service.engine.table_smc; n_importance / 16 particles per mask, row i's noise from
        default_rng([seed, first_row + i]), or from a seed of its own, row_seeds[i], as
        checks.row_generator says). A row's answer does not depend on the other rows (params: the
        same float32 sums whatever the batch), so rows [k:] sent with first_row k answer as in
        the request of all the rows."""
        values = self.check_values(values)
        row_seeds = check_row_seeds(row_seeds, len(values))
        first_row = check_first_row(first_row)
        ks = self._masks(masks)
        n = len(values)
        unknown = np.isnan(values)
        exact = exact_orders(self.orderings[ks], ~unknown).all(axis=0) | ~unknown.any(axis=1)
        per_mask = np.stack([self.exact_logprob(values, k) for k in ks])  # (K, N)
        per_mask[np.isnan(per_mask)] = -np.inf  # an overflow in the network: no probability either
        lp = logmeanexp(per_mask, axis=0)
        stderr = np.zeros(n)
        todo = np.flatnonzero(~exact)
        if len(todo):
            # sequential Monte Carlo (service.engine.table_smc), row todo[j] drawing from
            seed = check_seed(seed)
            rngs = [row_generator(seed, i, row_seeds, first_row) for i in todo.tolist()]
            res = smc(self, values[todo], ks, rngs, n_importance, 0)
            lp[todo], stderr[todo] = res.logprob, res.stderr
        return TableLogProb(lp, exact, stderr)

    def exact_logprob(self, values: np.ndarray, k: int) -> np.ndarray:
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
                    total[part][known] += column_loglik(col, self.column_params(params, c)[known], x[known, c])
        return total

    def surprisal(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Per column of complete rows: -log p(x_c | the columns before c) averaged over the masks
        ("in_order"), and -log p(x_c | every other column) under the mixture ("given_others"), in
        the units of the column's own likelihood (service.engine.table_explain.surprisal)."""
        return surprisal(self, values)

    # --- per-column conditionals -----------------------------------------------------------------
    def conditionals(self, values: np.ndarray, mask: int) -> TableConditionals:
        """Each column's distribution under mask k given the columns before it in k's ordering, for
        complete rows: a category's level probabilities; a number's mean, sd and 5/50/95%
        quantiles of its value when present (the quantiles rounded to its `decimals`, as values of
        the column), and its probability of being absent (nullable columns). The level probabilities and the
        probability of absence are exp of the engine's own log-likelihoods; the quantiles are the
        mixture's, by bisection (an atom's value where one falls on its point mass; mean and sd
        count the atoms too); mean and sd are exact for plain columns, by quadrature over each
        logistic component (within its 1e-12 and 1 - 1e-12 quantiles, where the sampler draws)
        for log-transformed ones, null where they overflow a double."""
        values = self.check_values(values)
        k = self._masks(mask)[0]
        if np.isnan(values).any():
            raise InvalidInput("conditionals needs complete records")
        parts = []
        for rows in _chunks(len(values)):
            checkpoint()
            parts.append(column_summaries(self, values[rows], k))
        if len(parts) <= 1:
            columns = parts[0] if parts else column_summaries(self, values, k)
        else:
            columns = [
                {key: np.concatenate([p[c][key] for p in parts]) for key in col} for c, col in enumerate(parts[0])
            ]
        return TableConditionals(k, self.orderings[k].copy(), columns)

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
            out[part] = self.complete(np.full((part.stop - part.start, self.dims), np.nan), ks[part], u)[0]
        return out

    def impute(
        self,
        values: np.ndarray,
        n_samples: int = 10,
        seed: int | None = None,
        n_importance: int = 1000,
        *,
        first_row: int = 0,
    ) -> TableImpute:
        """Completions of each row's unknown cells given its known ones, each unknown column's
        distribution, log p(x_known) and the effective sample size behind them: exact where every
        mask puts the known columns first, else likelihood weighting
        (service.engine.table_impute.impute states the estimates and their seeding)."""
        return impute(
            self,
            values,
            n_samples=n_samples,
            seed=seed,
            n_importance=n_importance,
            chunk_rows=CHUNK,
            first_row=first_row,
        )


def _chunks(total: int) -> Iterator[slice]:
    """slice(0, CHUNK), slice(CHUNK, 2 CHUNK), ... over `total` rows."""
    step = max(1, int(CHUNK))
    for first in range(0, total, step):
        yield slice(first, min(first + step, total))
