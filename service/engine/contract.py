"""The engine contract: what every endpoint asks of a served model, whatever its kind.

An endpoint decodes its request (rows of bits, records, CSV, Open Inference Protocol tensors),
calls one ModelEngine, and encodes the answer; it never asks which class of engine it holds.
The registry builds each version it loads into a ModelEngine (registry.build_engine, the one
place a stored model's kind picks its engine).

Every model answers *records* of its schema's columns through the same methods: log p with
unknown cells summed out, each column's surprisal (explain), each column's conditional
distribution, samples, imputations. A model of a table's columns is its table engine
(service.engine.table_model); a model of bits is seen as D binary columns x0..x{D-1}
(service.engine.bit_model), answered by the bit engine's own fast paths.

A model of bits also reads *rows* (`reads_rows`): its request rows go straight to its bit
engine (`bits`), which merges concurrent requests, reads bit-packed rows, denoises and serves
the tensors of the Open Inference Protocol. A model that reads no rows refuses them itself,
naming what it answers instead, and so does its `image` for a PNG of its samples: callers hold
one contract and no type checks.

What a request costs is the model's own figure as well (width, draw_cost, explain_passes,
exact_draws, explain_limit): the budget (service.core.budget) is checked from the request alone,
before any work, in the units it defines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from made.core.schema import Schema
    from made.store.versions import StoredModel
    from service.engine.engine import Engine
    from service.engine.table_engine import TableConditionals, TableEngine, TableLogProb
    from service.engine.table_impute import TableImpute


class ModelEngine(Protocol):
    """One served version of one model: identity, records in and out, and its rows where it has them."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def model(self) -> StoredModel:
        """The stored version: its manifest (GET /models/{name}, /models)."""
        ...

    @property
    def schema(self) -> Schema:
        """The columns its records have (a model of bits: x0..x{D-1})."""
        ...

    @property
    def dims(self) -> int: ...
    @property
    def n_masks(self) -> int: ...
    @property
    def orderings(self) -> np.ndarray: ...
    @property
    def providers(self) -> list[str]: ...
    @property
    def image_shape(self) -> list[int] | None:
        """The manifest's image shape, as GET /models lists it."""
        ...

    @property
    def columns(self) -> list[str] | None:
        """The column names GET /models lists: a table model's; None for a model of bits, whose
        records are its rows."""
        ...

    @property
    def reads_rows(self) -> bool:
        """Whether its requests may send rows of bits and its answers hold rows; a model that
        does not answers in records."""
        ...

    @property
    def engine(self) -> Engine | TableEngine:
        """The loaded engine: the identity a reload swaps (requests hold the one they took)."""
        ...

    # --- what its work costs, in the budget's units (values the network computes) ---------------
    @property
    def width(self) -> int:
        """Values one network pass computes per row and mask."""
        ...

    @property
    def draw_cost(self) -> int:
        """Units of work to draw one value of one row (one column of a record)."""
        ...

    @property
    def explain_passes(self) -> int:
        """Network rows per record and mask that explain (surprisal) runs."""
        ...

    def explain_limit(self) -> tuple[int, str] | None:
        """At most how many records one explain request takes, and what sets that limit
        (completing "on ..."); None where any number will do."""
        ...

    def exact_draws(self, n_samples: int) -> int:
        """Rows impute draws for a record whose unknown cells every mask puts last."""
        ...

    def weighted_work(self, unknown: np.ndarray, masks: list[int], n_importance: int, n_draws: int) -> tuple[int, int]:
        """For the records whose unknown cells (unknown: (N, C) bool) no ordering in `masks`
        answers exactly: (draws per mask, counted against MADE_MAX_DRAWS; their work in the
        budget's unit, with n_draws completions of each record)."""
        ...

    # --- records: (N, C) encoded cells, NaN where unknown ----------------------------------------
    # first_row (logprob, impute): the index of the request's first row in a larger call split
    # into requests; row i draws from default_rng([seed, first_row + i]), so the requests of a
    # split call, sent with one seed, answer as one request of all its rows would
    def logprob(
        self,
        values: np.ndarray,
        masks: Literal["all"] | int = "all",
        seed: int | None = None,
        n_importance: int = 1000,
        *,
        first_row: int = 0,
    ) -> TableLogProb: ...

    def surprisal(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """explain: per complete record and column, "in_order" and "given_others" (nats)."""
        ...

    def conditionals(self, values: np.ndarray, mask: int) -> TableConditionals: ...

    def sample(self, n: int, seed: int, mask: int | None = None) -> np.ndarray:
        """(n, C) encoded records; the same seed gives the same records."""
        ...

    def impute(
        self,
        values: np.ndarray,
        n_samples: int = 10,
        seed: int | None = None,
        n_importance: int = 1000,
        *,
        first_row: int = 0,
    ) -> TableImpute: ...

    # --- rows of bits, where the model reads them ----------------------------------------------------
    def bits(self, endpoint: str) -> Engine:
        """The bit engine that answers `endpoint`'s rows (logprob, conditionals, samples, impute,
        denoise); a model without one raises InvalidInput naming what it answers instead."""
        ...

    def image(self) -> list[int]:
        """The shape its samples are drawn in as an image; NotAcceptable where they cannot be."""
        ...
