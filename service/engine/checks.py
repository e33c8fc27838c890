"""Argument checks shared by the engine's estimators (no HTTP): each raises InvalidInput with one
sentence naming the argument, so that a bad count or seed is a 4xx wherever it arrives."""

from __future__ import annotations

import numpy as np

from made.core.errors import InvalidInput


def check_count(name: str, value: int, minimum: int) -> None:
    """value is an integer (not a bool) of at least minimum."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInput(f"{name} must be an integer of at least {minimum}, got {value!r}")


def check_seed(seed: int | None) -> int:
    """A request's seed (a non-negative integer), or 128 fresh bits of entropy for None: the
    answer is then reproducible from the seed a caller may log."""
    if seed is None:
        entropy = np.random.SeedSequence().entropy
        assert isinstance(entropy, int)
        return entropy
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidInput(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_first_row(first_row: int) -> int:
    """A request's first_row: the index of its first row in a larger call split into requests (a
    non-negative integer)."""
    if isinstance(first_row, bool) or not isinstance(first_row, int | np.integer) or first_row < 0:
        raise InvalidInput(f"first_row must be a non-negative integer, got {first_row!r}", loc=("first_row",))
    return int(first_row)


def row_generator(seed: int, i: int, row_seeds: np.ndarray | None = None, first_row: int = 0) -> np.random.Generator:
    """Row i's random numbers: default_rng([seed, first_row + i]) (a request's seed and the row's
    index in the call it is part of: the requests of a call split at first_row, sent with one
    seed, draw what one request of all its rows would), or, where each row brings a seed of its
    own (row_seeds, one per row: `made score` seeds a row by its values), default_rng([row_seeds[i],
    0]), what the row alone in a request of seed row_seeds[i] gets (first_row unused)."""
    if row_seeds is None:
        return np.random.default_rng([seed, first_row + i])
    return np.random.default_rng([int(row_seeds[i]), 0])


def check_row_seeds(row_seeds: np.ndarray | None, n: int) -> np.ndarray | None:
    """One non-negative integer seed per row of n, or None."""
    if row_seeds is None:
        return None
    seeds = np.asarray(row_seeds)
    if seeds.shape != (n,) or seeds.dtype.kind not in "iu" or (seeds < 0).any():
        raise InvalidInput(f"row_seeds must hold one non-negative integer per row ({n}), got shape {seeds.shape}")
    return seeds
