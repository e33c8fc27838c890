"""What the bit rows codec checks of a request before any engine work: the checks its schema
could not make because they need the model (the rows' width, mask indices) and the per-request
limits (MADE_MAX_ROWS, MADE_MAX_SAMPLES, MADE_MAX_DRAWS, MADE_MAX_WORK), each refused with a 422
naming the setting. The engine then takes the rows as checked (checked=True).

A request that sent no seed gets a fresh one here (new_seed), which its answer carries back so
that the client can repeat it.
"""

from __future__ import annotations

import secrets

import numpy as np

from made.core.errors import InvalidInput
from service.core import budget
from service.core.metrics import Metrics
from service.core.schemas import SampleRequest
from service.engine.engine import Engine
from service.engine.smc import particles_for
from service.settings import Settings


def new_seed() -> int:
    """A fresh seed for a request that sent none (returned to the client so it can repeat)."""
    return secrets.randbelow(2**31)


class RowChecks:
    """The checks of rows of bits against a bit engine and the settings' limits."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics

    def rows(self, engine: Engine, x: np.ndarray, endpoint: str) -> None:
        """The width and row count of rows the request schema parsed: what their validation
        lacks (it needs the model). The engine then takes them as checked."""
        n, d = x.shape
        if d != engine.dims:
            raise InvalidInput(
                f"x: rows have {d} value{'s' * (d != 1)} but model "
                f"'{engine.name}' has {engine.dims} dimensions (one value per "
                "dimension)",
                loc=("x",),
            )
        if n > self.settings.max_rows:
            raise InvalidInput(f"x has {n} rows; the limit is {self.settings.max_rows} per request (MADE_MAX_ROWS)")
        self.metrics.observe_rows(endpoint, engine.name, n)

    def draws(self, x: np.ndarray, n_importance: int, engine: Engine, masks: int, per_exact_row: int = 0) -> int:
        """Rows that need importance sampling x n_importance: a row whose missing values every
        mask's ordering puts after its observed ones is exact (/logprob: one pass per mask;
        /impute: n_samples completions, counted against MADE_MAX_SAMPLES) and does not count.
        Within MADE_MAX_DRAWS (n_importance draws-worth a row), and their work (their particles,
        smc.particles_for(n_importance), under each of `masks` masks,
        `per_exact_row` draws of each other row, and a pass of every row under each mask) within
        MADE_MAX_WORK; returns the number of such rows."""
        rows = int((~engine.exact_rows(~np.isnan(x))).sum())
        what = "rows that need importance sampling (a missing value before an observed one in some mask's ordering)"
        if rows * n_importance > self.settings.max_draws:
            raise InvalidInput(
                f"{rows} {what} x n_importance {n_importance} = "
                f"{rows * n_importance} importance draws; the limit is "
                f"{self.settings.max_draws} per request (MADE_MAX_DRAWS): send "
                "fewer rows or a smaller n_importance"
            )
        exact = len(x) - rows
        what = f"{len(x)} rows, {rows} of them with importance sampling x n_importance {n_importance} x {masks} "
        what += f"mask{'s' * (masks != 1)}" + (f" and {exact} drawn exactly x {per_exact_row}" if per_exact_row else "")
        work = (
            budget.passes(len(x), masks, engine.dims)
            + budget.particles(rows, particles_for(n_importance), masks, engine.dims)  # service.engine.smc
            + budget.drawn(exact * per_exact_row, engine.dims)
        )
        budget.check_work(self.settings.max_work, work, what, loc=("n_importance",))
        return rows

    def completions(self, rows: int, n_samples: int, loc: tuple[str, ...] = ()) -> None:
        """rows x n_samples completions (/impute, /denoise) within MADE_MAX_SAMPLES."""
        total = rows * n_samples
        if total > self.settings.max_samples:
            raise InvalidInput(
                f"{rows} rows x n_samples {n_samples} = {total} samples; "
                f"the limit is {self.settings.max_samples} per request (MADE_MAX_SAMPLES)",
                loc=loc,
            )

    def mask(self, engine: Engine, mask: int, field: str = "mask") -> int:
        if not 0 <= mask < engine.n_masks:
            raise InvalidInput(
                f"{field} {mask} does not exist: model '{engine.name}' has "
                f"{engine.n_masks} mask{'s' if engine.n_masks > 1 else ''} "
                f"(0..{engine.n_masks - 1})",
                loc=(field,),
            )
        return mask

    def sample(self, engine: Engine, req: SampleRequest) -> int | None:
        """n within MADE_MAX_SAMPLES and its draws within MADE_MAX_WORK; the mask (None: the mixture)."""
        if req.n > self.settings.max_samples:
            raise InvalidInput(
                f"n is {req.n}; the limit is {self.settings.max_samples} samples per request (MADE_MAX_SAMPLES)"
            )
        budget.check_work(self.settings.max_work, budget.drawn(req.n, engine.dims), f"n {req.n}", loc=("n",))
        self.metrics.observe_rows("/sample", engine.name, req.n)
        return None if req.mask == "mixture" else self.mask(engine, int(req.mask))

    def denoise(self, engine: Engine, x: np.ndarray, eps: np.ndarray, n_samples: int, n_importance: int) -> None:
        """Every row that is not exact (eps 0 everywhere, nothing missing) runs n_importance
        particles under each of K masks (the request's n_particles): within MADE_MAX_DRAWS and
        MADE_MAX_WORK, the completions within MADE_MAX_SAMPLES."""
        self.rows(engine, x, "/denoise")
        self.completions(len(x), n_samples, loc=("n_samples",))
        eps = np.broadcast_to(eps if eps.ndim != 1 else eps[:, None], x.shape)
        rows = int((~((eps == 0) & ~np.isnan(x)).all(axis=1)).sum())
        if rows * n_importance > self.settings.max_draws:
            raise InvalidInput(
                f"{rows} noisy rows x {n_importance} particles = {rows * n_importance} particles a mask; "
                f"the limit is {self.settings.max_draws} per request (MADE_MAX_DRAWS): send fewer rows "
                "or fewer particles (n_particles)",
                loc=("n_particles",),
            )
        budget.check_work(
            self.settings.max_work,
            budget.particles(rows, n_importance, engine.n_masks, engine.dims)
            + budget.passes(len(x), engine.n_masks, engine.dims),
            f"{rows} noisy rows x {n_importance} particles x {engine.n_masks} masks",
            loc=("n_particles",),
        )
