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
