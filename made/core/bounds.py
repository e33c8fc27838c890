"""A numeric column's bounds (issue 26): the values it can hold and the interval of y, its
standardised value, that its mixture is truncated to (made.core.heads); how inferred bounds are
chosen is made.io.tables.numeric_bounds, and docs/tables.md, "Bounds, precision and the schema"."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from made.core.errors import DataError, ImpossibleValue

if TYPE_CHECKING:
    from made.core.schema import Column


def bounds_text(col: Column) -> str:
    """A column's bounds as messages and tables show them: [lower, upper], -inf/inf where unset."""
    lo = "-inf" if col.lower is None else plain_number(col.lower)
    hi = "inf" if col.upper is None else plain_number(col.upper)
    return f"[{lo}, {hi}]"


def plain_number(x: float) -> str:
    """A number with all its digits and no exponent (1128378, not 1.12838e+06; 0.1, not 0.1000),
    except far from 1, where an exponent reads better (2.59695e-09, not 0.000000002596954705...;
    1e+300, not 301 digits)."""
    x = float(x)
    if x != 0 and (abs(x) < 1e-4 or abs(x) >= 1e16):
        return f"{x:.6g}"
    return str(np.format_float_positional(x, trim="-"))


def value_bounds(col: Column) -> tuple[float, float]:
    """The smallest and largest value a numeric column can hold under its bounds (-inf/inf where
    it has none): at its resolution, the bounds moved inwards to the nearest recordable values
    (a lower bound of 0.05 at 1 decimal is 0.1); a log-transformed column's lower bound is 0
    at least."""
    lo = -math.inf if col.lower is None else col.lower
    hi = math.inf if col.upper is None else col.upper
    if col.transform == "log":
        lo = max(lo, 0.0)
    if col.decimals is not None:
        r = col.resolution
        if math.isfinite(lo):
            lo = round(math.ceil(round(lo / r, 9)) * r, max(col.decimals, 0))
        if math.isfinite(hi):
            hi = round(math.floor(round(hi / r, 9)) * r, max(col.decimals, 0))
    return lo, hi


def bounds_y(col: Column) -> tuple[float, float]:
    """The interval of y (the standardised value) that a bounded column's mixture is truncated
    to: the bounds themselves for a density; for values recorded to `decimals` places, the outer
    edges of the rounding bins of the smallest and largest value (value_bounds +- r/2), so that the
    bins of the values inside the bounds tile it exactly. Under a log transform an edge at or
    below 0 is -inf. (-inf, inf) for an unbounded column."""
    lo, hi = value_bounds(col)
    half = col.resolution / 2
    lo, hi = lo - half, hi + half
    if col.transform == "log":
        lo_t = math.log(lo) if lo > 0 else -math.inf
        hi_t = math.log(hi) if hi > 0 else -math.inf
    else:
        lo_t, hi_t = lo, hi
    return (lo_t - col.loc) / col.scale, (hi_t - col.loc) / col.scale


def check_bounds(col: Column, where: str) -> None:
    """A DataError naming `where` unless the column's bounds are finite, >= 0 under a log
    transform, and hold at least one value at its resolution."""
    for bound in (col.lower, col.upper):
        if bound is not None and not math.isfinite(bound):
            raise DataError(f"{where}: bounds must be finite numbers or null, got {bound}")
    if col.transform == "log" and col.lower is not None and col.lower < 0:
        raise DataError(f"{where}: a log-transformed column holds numbers >= 0; its lower bound is {col.lower:g}")
    lo, hi = value_bounds(col)
    if not lo <= hi:
        raise DataError(f"{where}: its bounds {bounds_text(col)} hold no value at its resolution")


def check_in_bounds(col: Column, number: float, at: str) -> None:
    """A DataError naming the cell (`at`), the value and the bounds unless the value, read at
    the column's precision, lies within them."""
    lo, hi = value_bounds(col)
    held = number if col.decimals is None else round(number, col.decimals)  # the value the model reads
    if not lo <= held <= hi:
        shown = plain_number(number)
        raise ImpossibleValue(
            f"{at}: {shown} is outside this column's bounds {bounds_text(col)}; the model gives no probability there"
        )
