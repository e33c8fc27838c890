"""A model of bits as the engine contract serves it (service.engine.contract.ModelEngine): its rows
go to its bit engine, and its records are rows seen through its column schema, D binary columns
x0..x{D-1} (made.core.schema's Schema.bits), answered by the same engine's fast paths.

A bit row is already its encoding under that schema (codes 0/1, NaN for an unknown cell), so a
record of a bit model becomes a row of x with no conversion, and the table data plane's records,
`explain`, `given` and per-column distributions work on bit models as on table models: log p with
unknown cells summed out (Engine.logprob), conditionals (Engine.conditionals), exact or weighted
imputation (Engine.impute: its marginals are each unknown column's P(level "1")), samples from the
one-pass sampler. Nothing is loaded twice: the view holds the engine, not a second session.
Numpy only; nothing here knows HTTP.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from made.core.errors import InvalidInput, NotAcceptable
from made.core.numerics import log_sigmoid
from made.core.schema import BIT_LEVELS, Schema
from made.store.versions import StoredModel
from service.engine.engine import Engine
from service.engine.smc import PARTICLE_COST, particles_for
from service.engine.table_engine import TableConditionals, TableLogProb
from service.engine.table_impute import TableImpute

# explain's given_others flips each column of each record: D + 1 network rows per record and mask,
# so a request takes at most this many rows' worth of records
EXPLAIN_ROWS = 1 << 16

# Seconds per value drawn by the stepping sampler over seconds per value a pass computes (the
# budget's unit), measured by bench/work_costs.py (a drawn value over a passed one; docs/operations.md).
STEP_COST = 3


class BitModel:
    """A bit Engine under the engine contract: its records are its rows, and its rows its own."""

    reads_rows = True
    columns = None  # its records' columns are x0..x{D-1}: GET /models lists none

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.name = engine.name
        self.version = engine.version
        self.model: StoredModel = engine.model
        self.schema: Schema = engine.model.schema
        self.dims = engine.dims
        self.n_masks = engine.n_masks
        self.orderings = engine.orderings
        self.providers = engine.providers
        self.image_shape = engine.image_shape
        self.width = self.dims
        self.draw_cost = STEP_COST
        self.explain_passes = self.dims + 2  # the record, its D flips, and the in-order pass

    def explain_limit(self) -> tuple[int, str]:
        return max(1, EXPLAIN_ROWS // (self.dims + 1)), f"a model of {self.dims} bits"

    def exact_draws(self, n_samples: int) -> int:
        return max(n_samples, 1)

    def weighted_work(self, unknown: np.ndarray, masks: list[int], n_importance: int, n_draws: int) -> tuple[int, int]:
        """Sequential Monte Carlo: n_importance draws-worth per record (MADE_MAX_DRAWS), spent on
        particles_for(n_importance) particles per mask and record, each PARTICLE_COST a value."""
        particles = len(unknown) * particles_for(n_importance)
        return len(unknown) * n_importance, particles * len(masks) * self.dims * PARTICLE_COST

    def bits(self, endpoint: str) -> Engine:
        return self.engine

    def image(self) -> list[int]:
        shape = self.image_shape
        if not shape or math.prod(shape) != self.dims:
            raise NotAcceptable(
                f"model '{self.name}' has no image_shape, so its samples cannot "
                "be drawn as an image; ask for application/json"
            )
        return shape

    def check_values(self, values: np.ndarray) -> np.ndarray:
        """Encoded cells (N, D) as the engine's rows (the codes are 0/1 and NaN already), checked
        once here: the engine calls below are told so (checked=True)."""
        return self.engine.check_x(np.asarray(values, dtype=np.float64), allow_missing=True)

    def logprob(
        self,
        values: np.ndarray,
        masks: Literal["all"] | int = "all",
        seed: int | None = None,
        n_importance: int = 1000,
        *,
        first_row: int = 0,
    ) -> TableLogProb:
        x = self.check_values(values)
        r = self.engine.logprob(x, masks=masks, seed=seed, n_importance=n_importance, checked=True, first_row=first_row)
        return TableLogProb(r.logprob, r.exact, np.where(r.exact, 0.0, r.stderr))

    def surprisal(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Per column of complete rows: -log p_k(x_d | the columns before d) averaged over the masks
        ("in_order"), and -log p(x_d | every other column) under the mixture ("given_others"),
        which is -log sigmoid(log p(x) - log p(x with d flipped)) (Engine.flip_logprobs)."""
        x = self.check_values(values)
        if np.isnan(x).any():
            raise InvalidInput("explain needs complete records")
        n, d = x.shape
        ks = list(range(self.n_masks))
        xf = x.astype(np.float32)
        in_order = np.zeros((n, d))
        for k in ks:
            z = self.engine.logits(xf, k).astype(np.float64)
            in_order -= log_sigmoid(np.where(x > 0.5, z, -z))
        in_order /= len(ks)
        lp = self.engine.flip_logprobs(x)
        given = -log_sigmoid(lp[:, :1] - lp[:, 1:])  # -log p(x_d | the rest)
        return {"in_order": in_order, "given_others": given}

    def conditionals(self, values: np.ndarray, mask: int) -> TableConditionals:
        """Each column's P(level) given the columns before it in mask k's ordering."""
        p1 = self.engine.conditionals(np.asarray(values, dtype=np.float64), mask)  # checked there, complete
        k = self.engine.check_mask(mask)
        columns = [{"probs": np.stack([1.0 - p1[:, c], p1[:, c]], axis=1)} for c in range(self.dims)]
        return TableConditionals(k, self.orderings[k].copy(), columns)

    def sample(self, n: int, seed: int, mask: int | None = None) -> np.ndarray:
        return self.engine.sample(n, seed, mask).astype(np.float64)

    def impute(
        self,
        values: np.ndarray,
        n_samples: int = 10,
        seed: int | None = None,
        n_importance: int = 1000,
        *,
        first_row: int = 0,
    ) -> TableImpute:
        """Engine.impute's completions and estimates; each unknown column's distribution is
        {"0": 1 - m, "1": m}, m the engine's marginal P(x_d = 1 | the known cells)."""
        x = self.check_values(values)
        r = self.engine.impute(
            x, n_samples=n_samples, seed=seed, n_importance=n_importance, checked=True, first_row=first_row
        )
        unknown = np.isnan(x)
        names = self.schema.names
        zero, one = BIT_LEVELS
        m = r.marginals
        distributions = [
            {names[c]: {zero: 1.0 - float(m[i, c]), one: float(m[i, c])} for c in np.flatnonzero(row)}
            for i, row in enumerate(unknown)
        ]
        return TableImpute(
            r.samples.astype(np.float64),
            distributions,
            r.logprob_observed,
            r.exact,
            r.ess,
            np.where(r.exact, 0.0, r.stderr),
        )
