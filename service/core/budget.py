"""What a request costs, computed from the request alone before any array is made, and the
check against MADE_MAX_WORK.

The unit is one value the network computes for one row under one mask: a pass over N rows
under K masks of a D-wide network costs N x K x D. A value drawn by the stepping sampler of a
model of bits (sampling, importance draws, imputation, denoising) costs STEP_COST of them
(measured: bench/abuse.py prints the seconds per unit of each path); a table model draws a row
column by column, one whole pass per column. So the budget is about time, whichever endpoint
spends it, and a request over it is refused with a 422 naming the setting instead of running
past its timeout.
"""

from __future__ import annotations

from made.core.errors import InvalidInput

# Seconds per drawn value over seconds per passed value of the stepping sampler, measured on
# binarized-mnist (bench/abuse.py --costs): 2 for /sample, 1.5 to 3.7 for importance draws.
STEP_COST = 3


def passes(rows: int, masks: int, width: int) -> int:
    """One forward pass of `rows` rows under each of `masks` masks of a `width`-wide network."""
    return int(rows) * int(masks) * int(width)


def drawn(draws: int, width: int) -> int:
    """`draws` rows drawn value by value by the stepping sampler of a model of bits."""
    return int(draws) * int(width) * STEP_COST


def table_drawn(draws: int, columns: int, width: int) -> int:
    """`draws` records drawn column by column by a table model: a pass of its `width` outputs
    per column."""
    return int(draws) * int(columns) * int(width)


def check_work(limit: int, units: int, what: str, loc: tuple[str | int, ...] = ()) -> None:
    """Refuse `units` of work past `limit` (Settings.max_work) with a 422 saying what the work was."""
    if units > limit:
        raise InvalidInput(
            f"{what} costs {units:,} units of work (values the network computes); the limit is "
            f"{limit:,} per request (MADE_MAX_WORK): send fewer rows, samples or draws",
            loc=loc,
        )
