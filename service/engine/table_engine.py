"""The engine of a table model: records of named columns in, exact or estimated answers out.
Numpy in, numpy out, onnxruntime underneath; nothing here knows HTTP.

Cells are encoded as made.schema describes: (N, C) float64, NaN for an unknown cell. One routine
does all the work (`_complete`): it walks each row's mask ordering column by column, draws every
unknown cell from its conditional with pre-drawn noise, and scores every known cell given the
columns before it. Where a mask's ordering puts every known column before every unknown one, the
score is exactly log p_k(x_known) and the draws are exact samples of the unknown cells given the
known ones; otherwise it is likelihood weighting (DESIGN-NOTES, "Missing values"), per column.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from made.errors import InvalidInput, ModelStoreError
from made.heads import NOISE_PER_COLUMN, column_loglik, level_probs, sample_column
from made.masks import exact_orders
from made.schema import ABSENT, Schema
from made.store import TABLE_OUTPUT, StoredModel
from service.engine.runtime import make_session, requested_providers

log = logging.getLogger("made.engine")

SUMMARY_DRAWS = 200  # draws behind an exact row's column distributions (more than the samples asked)
IMPUTE_DRAWS = 1 << 16  # draws of /impute's rows that go through the network together, at most


@dataclass
class TableLogProb:
    logprob: np.ndarray  # (N,) nats
    exact: np.ndarray  # (N,) bool
    stderr: np.ndarray  # (N,) 0 where exact


@dataclass
class TableImpute:
    samples: np.ndarray  # (N, S, C) completed rows (encoded)
    distributions: list[dict[str, dict[str, Any]]]  # per row: unknown column -> its distribution
    logprob_observed: np.ndarray  # (N,)
    exact: np.ndarray  # (N,)
    ess: np.ndarray  # (N,)
    stderr: np.ndarray  # (N,) of logprob_observed, 0 where exact


class TableEngine:
    def __init__(self, model: StoredModel, providers: list[str] | None = None, threads: int | None = None):
        self.model = model
        self.name = model.name
        self.version = model.version
        self.manifest = model.manifest
        try:
            self.schema = Schema.from_json(model.manifest["columns"], f"{model.path}/manifest.json")
        except Exception as exc:
            raise ModelStoreError(f"{model.path}: the manifest's columns are not a valid schema: {exc}") from None
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
        if ins.get("x", [None, None])[1] != self.schema.n_in or outs.get(TABLE_OUTPUT, [None, None])[1] != \
                self.schema.n_out:
            raise ModelStoreError(f"{model.onnx_path} does not match its manifest's columns "
                                  f"(graph {ins} -> {outs}, schema {self.schema.n_in} -> {self.schema.n_out})")
        self.positions = np.argsort(self.orderings, axis=1)  # (K, C): position of column c in mask k
        log.info("loaded table model %s version %s (%d columns, K=%d) on %s", self.name, self.version,
                 self.dims, self.n_masks, self.providers[0])

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
        params = self.params(values, mask)
        return np.stack([column_loglik(col, self._slice(params, c), values[:, c])
                         for c, col in enumerate(self.schema.columns)], axis=1)

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
    def _complete(self, values: np.ndarray, ks: np.ndarray, u: np.ndarray,
                  probs_of: set[int] | None = None) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
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
                filled[todo, c] = sample_column(col, p, u[todo, c])
                if probs_of is not None and c in probs_of and col.kind != "numeric":
                    level_p.setdefault(c, np.full((len(filled), len(col.levels)), np.nan))[todo] = level_probs(col, p)
            # every known cell scored given the completed row: one pass per mask
            params = self.params(filled[rows], int(k))
            for c, col in enumerate(self.schema.columns):
                known = ~unk[:, c]
                if known.any():
                    logw[rows[known]] += column_loglik(col, self._slice(params, c)[known], filled[rows[known], c])
        return filled, logw, level_p

    # --- log p ----------------------------------------------------------------------------------
    def logprob(self, values: np.ndarray, masks: Literal["all"] | int = "all", seed: int | None = None,
                n_importance: int = 1000) -> TableLogProb:
        """log p(x_known) per row in nats: the unknown (NaN) cells summed out, exactly where every
        mask in use puts them after the known ones, else by likelihood weighting."""
        values = self.check_values(values)
        ks = self._masks(masks)
        n = len(values)
        unknown = np.isnan(values)
        exact = exact_orders(self.orderings[ks], ~unknown).all(axis=0) | ~unknown.any(axis=1)
        per_mask = np.stack([self._exact_logprob(values, k) for k in ks])  # (K, N)
        lp = _logmeanexp(per_mask, axis=0)
        stderr = np.zeros(n)
        todo = np.flatnonzero(~exact)
        if len(todo):
            rng = np.random.default_rng(seed)
            reps = np.repeat(todo, n_importance * len(ks))
            draw_ks = np.tile(np.repeat(ks, n_importance), len(todo))
            _, logw, _ = self._complete(values[reps], draw_ks, rng.random((len(reps), self.dims, NOISE_PER_COLUMN)))
            logw = logw.reshape(len(todo), -1)
            lp[todo] = _logmeanexp(logw, axis=1)
            stderr[todo] = _delta_stderr(logw)
        return TableLogProb(lp, exact, stderr)

    def _exact_logprob(self, values: np.ndarray, k: int) -> np.ndarray:
        """Σ over known cells of log p_k(x_c | x_<c), the unknown ones read as 0: exactly
        log p_k(x_known) for rows whose known columns all come first in mask k's ordering."""
        params = self.params(values, k)
        total = np.zeros(len(values))
        for c, col in enumerate(self.schema.columns):
            known = ~np.isnan(values[:, c])
            if known.any():
                total[known] += column_loglik(col, self._slice(params, c)[known], values[known, c])
        return total

    def surprisal(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Per column of complete rows: -log p(x_c | the columns before c) averaged over the masks
        ("in_order"), and -log p(x_c | every other column) under the mixture for categorical and
        binary columns ("given_others"; NaN for numbers)."""
        values = self.check_values(values)
        if np.isnan(values).any():
            raise InvalidInput("explain needs complete records")
        per_mask = np.stack([self.column_logliks(values, k) for k in range(self.n_masks)])  # (K, N, C)
        in_order = -per_mask.mean(axis=0)
        given = np.full(values.shape, np.nan)
        base = _logmeanexp(per_mask.sum(axis=2), axis=0)  # (N,) log p(x)
        for c, col in enumerate(self.schema.columns):
            if col.kind == "numeric":
                continue
            alts = []
            for level in range(len(col.levels)):
                x = values.copy()
                x[:, c] = level
                alts.append(_logmeanexp(np.stack([self.column_logliks(x, k).sum(axis=1)
                                                  for k in range(self.n_masks)]), axis=0))
            given[:, c] = -(base - np.logaddexp.reduce(np.stack(alts), axis=0))
        return {"in_order": in_order, "given_others": given}

    # --- sampling and imputation ----------------------------------------------------------------
    def sample(self, n: int, seed: int, mask: int | None = None) -> np.ndarray:
        """(n, C) exact samples: each draws its mask uniformly (or uses `mask`), then its cells in
        that mask's order from pre-drawn noise; the same seed gives the same records."""
        if n < 0:
            raise InvalidInput(f"n must be at least 0, got {n}")
        rng = np.random.default_rng(seed)
        ks = np.full(n, self._masks(mask)[0]) if mask is not None else rng.integers(self.n_masks, size=n)
        u = rng.random((n, self.dims, NOISE_PER_COLUMN))
        filled, _, _ = self._complete(np.full((n, self.dims), np.nan), ks, u)
        return filled

    def impute(self, values: np.ndarray, n_samples: int = 10, seed: int | None = None,
               n_importance: int = 1000) -> TableImpute:
        """Completions of each row's unknown cells given its known ones, each unknown column's
        distribution, log p(x_known) and the effective sample size behind them.
        Exact rows (every mask puts the known columns first): SUMMARY_DRAWS (at least n_samples)
        exact draws pooled over the masks, each mask drawn from its posterior p_k(x_known); the
        others: likelihood weighting, n_importance draws per mask, resampled for the completions.

        Row i draws from numpy.random.default_rng([seed, i]), so its answer does not depend on the
        other rows; the draws of all rows go through the network together, IMPUTE_DRAWS at a time
        (a row's draws are never split)."""
        values = self.check_values(values)
        seed = seed if seed is not None else int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
        n, k_all = len(values), np.arange(self.n_masks)
        unknown = np.isnan(values)
        exact = exact_orders(self.orderings, ~unknown).all(axis=0) | ~unknown.any(axis=1)
        per_mask = np.stack([self._exact_logprob(values, int(k)) for k in k_all])  # (K, N)
        out = TableImpute(np.empty((n, n_samples, self.dims)), [{} for _ in range(n)],
                          _logmeanexp(per_mask, axis=0), exact, np.zeros(n), np.zeros(n))
        plans = []  # per row: its generator, masks and noise
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            if exact[i]:
                draws = max(n_samples, SUMMARY_DRAWS) if unknown[i].any() else n_samples
                post = np.exp(per_mask[:, i] - np.logaddexp.reduce(per_mask[:, i]))
                ks = rng.choice(self.n_masks, size=draws, p=post / post.sum())
            else:
                ks = np.repeat(k_all, n_importance)
            plans.append((rng, ks, rng.random((len(ks), self.dims, NOISE_PER_COLUMN))))
        group: list[int] = []
        for i in range(n):
            group.append(i)
            if i == n - 1 or sum(len(plans[j][1]) for j in (*group, i + 1)) > IMPUTE_DRAWS:
                self._impute_group(values, unknown, group, plans, n_samples, out)
                group = []
        return out

    def _impute_group(self, values: np.ndarray, unknown: np.ndarray, rows: list[int],
                      plans: list[tuple[np.random.Generator, np.ndarray, np.ndarray]], n_samples: int,
                      out: TableImpute) -> None:
        """Rows' draws through one _complete call, then each row's summaries from its own draws."""
        sizes = [len(plans[i][1]) for i in rows]
        cols = set(np.flatnonzero(unknown[rows].any(axis=0)).tolist())
        filled, logw, level_p = self._complete(
            np.repeat(values[rows], sizes, axis=0), np.concatenate([plans[i][1] for i in rows]),
            np.concatenate([plans[i][2] for i in rows]), cols)
        start = 0
        for i, size in zip(rows, sizes, strict=True):
            part = slice(start, start + size)
            start += size
            rng, row_filled, unk_cols = plans[i][0], filled[part], np.flatnonzero(unknown[i]).tolist()
            if out.exact[i]:
                weights = np.full(size, 1.0 / size)
                out.samples[i] = row_filled[:n_samples]
                out.ess[i] = size
                row_p = {c: level_p[c][part] for c in unk_cols if c in level_p}
            else:
                row_logw = logw[part]
                out.logprob_observed[i] = _logmeanexp(row_logw[None, :], axis=1)[0]
                out.stderr[i] = _delta_stderr(row_logw[None, :])[0]
                weights = np.exp(row_logw - row_logw.max())
                weights /= weights.sum()
                out.ess[i] = 1.0 / np.sum(weights**2)
                out.samples[i] = row_filled[rng.choice(size, size=n_samples, p=weights)]
                row_p = {}  # a draw's level probabilities ignore the known cells after it
            out.distributions[i] = {self.schema.columns[c].name: self._distribution(c, row_filled[:, c], weights,
                                                                                    row_p.get(c))
                                    for c in unk_cols}

    def _distribution(self, c: int, cells: np.ndarray, weights: np.ndarray,
                      level_p: np.ndarray | None) -> dict[str, Any]:
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
        mean = float(w @ v)
        sd = float(math.sqrt(max(w @ (v - mean) ** 2, 0.0)))
        order = np.argsort(v)
        cdf = np.cumsum(w[order])
        q = {f"q{int(p * 100):02d}": col.decode(float(v[order][min(np.searchsorted(cdf, p), len(v) - 1)]))
             for p in (0.05, 0.5, 0.95)}
        return {**out, "mean": mean, "sd": sd, **q}


def _logmeanexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis=axis) + np.log(np.mean(np.exp(a - m), axis=axis))


def _delta_stderr(logw: np.ndarray) -> np.ndarray:
    """Standard error of log(mean w) by the delta method, per row of (N, S) log weights."""
    m = logw.max(axis=1, keepdims=True)
    w = np.exp(logw - m)
    mean = w.mean(axis=1)
    sd = w.std(axis=1, ddof=1) if w.shape[1] > 1 else np.zeros(len(w))
    return sd / np.sqrt(w.shape[1]) / np.maximum(mean, 1e-300)


def is_table_model(model: StoredModel) -> bool:
    return "columns" in model.manifest
