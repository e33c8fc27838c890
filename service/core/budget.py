"""What a request costs, computed from the request alone before any array is made, and the
check against MADE_MAX_WORK.

The unit is one value the network computes for one row under one mask: a pass over N rows
under K masks of a D-wide network costs N x K x D. Drawing a value costs the model's own
draw_cost of them (service.engine.contract.ModelEngine): a model of bits draws with its
stepping sampler (STEP_COST, measured), a table model draws a record column by column, one whole
pass per column. A particle of the particle filter (service.engine.smc: /denoise, and the rows of
/logprob and /impute that no ordering answers exactly) costs PARTICLE_COST a value: a tilted draw,
its weight and its share of the resampling (measured by bench/denoise.py --costs). So the budget
is about time, whichever endpoint spends it, and a request over it is refused with a 422 naming
the setting instead of running past its timeout.
"""

from __future__ import annotations

import contextvars

from made.core.errors import InvalidInput
from service.engine.bit_model import STEP_COST
from service.engine.smc import PARTICLE_COST


def passes(rows: int, masks: int, width: int) -> int:
    """One forward pass of `rows` rows under each of `masks` masks of a `width`-wide network."""
    return int(rows) * int(masks) * int(width)


def drawn(draws: int, columns: int, cost: int = STEP_COST) -> int:
    """`draws` rows of `columns` values drawn at `cost` units a value (by default the stepping
    sampler of a model of bits)."""
    return int(draws) * int(columns) * int(cost)


def particles(rows: int, n_particles: int, masks: int, columns: int) -> int:
    """`rows` rows' particle filters, n_particles particles under each of `masks` masks of
    `columns` values, at PARTICLE_COST units a value."""
    return drawn(int(rows) * int(n_particles) * int(masks), columns, PARTICLE_COST)


# The units the current request's last check allowed, until its engine call takes them
# (take_checked): the scheduler tells a long call from a short one by them.
_checked: contextvars.ContextVar[int | None] = contextvars.ContextVar("made_checked_units", default=None)


def check_work(limit: int, units: int, what: str, loc: tuple[str | int, ...] = ()) -> None:
    """Refuse `units` of work past `limit` (Settings.max_work) with a 422 saying what the work was;
    allowed, they are the request's estimate until its engine call takes them (take_checked)."""
    _checked.set(int(units))
    if units > limit:
        raise InvalidInput(
            f"{what} costs {units:,} units of work (values the network computes); the limit is "
            f"{limit:,} per request (MADE_MAX_WORK): send fewer rows, samples or draws",
            loc=loc,
        )


def take_checked() -> int | None:
    """The units the current request's last check_work allowed (None: none checked since the last
    take), cleared: a request's next engine call (a PNG of its samples) is not charged them again."""
    units = _checked.get()
    if units is not None:
        _checked.set(None)
    return units
