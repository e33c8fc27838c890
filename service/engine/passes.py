"""What the engines' estimators need of them: the network passes, not the engine (the bit
engine's for service.engine.missing and service.engine.denoise, the table engine's for
service.engine.table_explain and service.engine.table_impute). Protocols, so that those modules
depend on this contract and the engines on them, never the reverse (no import circle)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from made.core.schema import Schema
from service.engine.sampler import FastSampler, Sampler


class BitPasses(Protocol):
    """One stored bit model's network passes (service.engine.engine.Engine implements it)."""

    dims: int
    n_masks: int
    orderings: np.ndarray  # (K, D): orderings[k] lists the dimensions in mask k's order
    sampler: FastSampler  # the stepping sampler, whose plans the particle filter walks (service.engine.smc)

    def check_x(self, x: np.ndarray, allow_missing: bool, checked: bool = False) -> np.ndarray:
        """x as (N, D) floats of 0, 1 and, where allowed, NaN, or InvalidInput."""
        ...

    def mask_logliks(self, x: np.ndarray, masks: list[int], observed: np.ndarray | None = None) -> np.ndarray:
        """(len(masks), N): log p_k of the observed entries (all entries when observed is None)."""
        ...

    def exact_rows(self, observed: np.ndarray) -> np.ndarray:
        """(N,) bool: rows whose missing dimensions every mask's ordering puts last."""
        ...

    def sampler_for(self, rows: int) -> Sampler:
        """The sampler of a call of `rows` rows; both kinds draw the same samples from the same noise."""
        ...


class TablePasses(Protocol):
    """One stored table model's network passes, for its explanations and imputation
    (service.engine.table_explain, service.engine.table_impute); TableEngine implements it."""

    name: str
    schema: Schema
    dims: int  # columns
    n_masks: int
    orderings: np.ndarray  # (K, C)
    positions: np.ndarray  # (K, C): the position of column c in mask k's ordering

    def check_values(self, values: np.ndarray) -> np.ndarray:
        """values as (N, C) float64 encoded cells, or InvalidInput."""
        ...

    def params(self, values: np.ndarray, mask: int) -> np.ndarray:
        """(N, U_out) float64: every column's parameters under mask k."""
        ...

    def column_params(self, params: np.ndarray, c: int) -> np.ndarray:
        """Column c's slice of params."""
        ...

    def column_logliks(self, values: np.ndarray, mask: int) -> np.ndarray:
        """(N, C) log p_k(x_c | the columns before c), for complete rows."""
        ...

    def logliks(self, values: np.ndarray, params: np.ndarray) -> np.ndarray:
        """(N, C) log p(x_c | what the outputs saw), from one mask's outputs."""
        ...

    def exact_logprob(self, values: np.ndarray, k: int) -> np.ndarray:
        """(N,) sum over known cells of log p_k(x_c | x_<c), the unknown ones read as 0."""
        ...

    def complete(
        self, values: np.ndarray, ks: np.ndarray, u: np.ndarray, probs_of: set[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """Each row's unknown cells drawn in mask ks[i]'s order with noise u; (rows, log weights,
        level probabilities of the columns in probs_of)."""
        ...
