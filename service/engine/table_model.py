"""A model of a table's columns as the engine contract serves it (service.engine.contract.ModelEngine).

Its records go to its table engine as they are. It reads no rows of bits: the endpoints that
read only rows (/denoise, the Open Inference Protocol) and a PNG of its samples are refused
here, with what it answers instead, so that no caller asks which kind of model it holds.
Numpy only; nothing here knows HTTP.
"""

from __future__ import annotations

import math
from typing import Literal, NoReturn

import numpy as np

from made.core.errors import InvalidInput, NotAcceptable
from made.core.schema import Schema
from made.store.versions import StoredModel
from service.engine.table_engine import TableConditionals, TableEngine, TableLogProb
from service.engine.table_explain import GIVEN_LOCAL, GIVEN_NODES
from service.engine.table_impute import SUMMARY_DRAWS, TableImpute
from service.engine.table_smc import particles_per_mask, smc_passes

# explain integrates each numeric column over its values: thousands of network passes per record
EXPLAIN_MAX_RECORDS = 32
# What a unit of the table particle filter's passes costs, in units of MADE_MAX_WORK (a value of a
# bit model's pass): its large batched passes run at 0.2-0.33 of a bit pass's seconds per unit
# (bench/work_costs.py, docs/impute-bench.md), rounded up.
SMC_UNIT_COST = 0.4


class TableModel:
    """A TableEngine under the engine contract."""

    reads_rows = False
    image_shape = None

    def __init__(self, engine: TableEngine) -> None:
        self.engine = engine
        self.name = engine.name
        self.version = engine.version
        self.model: StoredModel = engine.model
        self.schema: Schema = engine.schema
        self.dims = engine.dims
        self.n_masks = engine.n_masks
        self.orderings = engine.orderings
        self.providers = engine.providers
        self.columns: list[str] | None = self.schema.names
        self.width = self.schema.n_out
        self.draw_cost = self.schema.n_out  # a record is drawn column by column, a whole pass each
        # the in-order pass, each level of each category, and each number's integral (at most
        # GIVEN_NODES grid points and GIVEN_LOCAL points per narrow mixture component, one per atom)
        self.explain_passes = 1 + sum(
            len(col.levels)
            if col.kind != "numeric"
            else GIVEN_NODES + col.components * len(GIVEN_LOCAL) + len(col.atoms)
            for col in self.schema.columns
        )

    def explain_limit(self) -> tuple[int, str] | None:
        if any(col.kind == "numeric" for col in self.schema.columns):
            return EXPLAIN_MAX_RECORDS, "a model with numeric columns"
        return None

    def exact_draws(self, n_samples: int) -> int:
        """An exact record's column distributions come from SUMMARY_DRAWS draws at least."""
        return max(n_samples, SUMMARY_DRAWS)

    def weighted_work(self, unknown: np.ndarray, masks: list[int], n_importance: int, n_draws: int) -> tuple[int, int]:
        """Sequential Monte Carlo (service.engine.table_smc): its particles per mask and record,
        and the rows its passes compute times the network's width."""
        per_mask = particles_per_mask(n_importance)
        # impute completes at most 2 SUMMARY_DRAWS particles (n_samples up to SUMMARY_DRAWS), or n_draws
        tails = 0 if not n_draws else n_draws if n_draws > SUMMARY_DRAWS else min(per_mask * len(masks), 2 * n_draws)
        units = smc_passes(self.orderings[masks], unknown, n_importance, tails) * self.width
        return len(unknown) * per_mask, math.ceil(units * SMC_UNIT_COST)

    def logprob(
        self,
        values: np.ndarray,
        masks: Literal["all"] | int = "all",
        seed: int | None = None,
        n_importance: int = 1000,
        *,
        first_row: int = 0,
    ) -> TableLogProb:
        return self.engine.logprob(values, masks=masks, seed=seed, n_importance=n_importance, first_row=first_row)

    def surprisal(self, values: np.ndarray) -> dict[str, np.ndarray]:
        return self.engine.surprisal(values)

    def conditionals(self, values: np.ndarray, mask: int) -> TableConditionals:
        return self.engine.conditionals(values, mask)

    def sample(self, n: int, seed: int, mask: int | None = None) -> np.ndarray:
        return self.engine.sample(n, seed, mask)

    def impute(
        self,
        values: np.ndarray,
        n_samples: int = 10,
        seed: int | None = None,
        n_importance: int = 1000,
        *,
        first_row: int = 0,
    ) -> TableImpute:
        return self.engine.impute(
            values, n_samples=n_samples, seed=seed, n_importance=n_importance, first_row=first_row
        )

    def bits(self, endpoint: str) -> NoReturn:
        raise InvalidInput(
            f"model '{self.name}' models the columns of a table; {endpoint} answers models "
            "of bits (a table model answers /logprob, /sample and /impute with records)"
        )

    def image(self) -> NoReturn:
        raise NotAcceptable(
            f"model '{self.name}' models the columns of a table, not an image; ask for application/json"
        )
