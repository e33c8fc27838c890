"""The records codec of the data plane: records in (JSON, or CSV turned into JSON records by the
HTTP layer), the engine contract's records methods run in a worker thread, records and column
distributions out. Every model answers records (service.engine.contract): a table model's are its
rows, a model of bits's are its rows seen as columns x0..x{D-1}. The request was validated by its
schema; the records are parsed once here, against the model's columns, and what the request
costs is the model's own figure (width, draw_cost, explain_passes, exact_draws), checked before
any work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np

from made.core.errors import InvalidInput
from made.core.masks import exact_orders
from made.core.schema import ABSENT, Schema
from service.core import budget, schemas
from service.core.codec import Codec
from service.core.records import decode_records, parse_given, parse_records
from service.engine.contract import ModelEngine
from service.engine.table_engine import TableConditionals
from service.engine.table_impute import ImpossibleEvidence
from service.engine.table_smc import given_importance
from service.settings import Settings

T = TypeVar("T")


class TablePlane(Codec):
    """Records in, records and column distributions out, for one DataPlane (see Codec); a
    request that sent no seed gets one of new_seed."""

    def __init__(
        self,
        settings: Settings,
        in_thread: Callable[..., Awaitable[Any]],
        timed: Callable[[Awaitable[Any]], Awaitable[Any]],
        new_seed: Callable[[], int],
    ) -> None:
        super().__init__(settings, in_thread, timed)
        self._new_seed = new_seed

    def values(
        self, engine: ModelEngine, req: schemas.LogProbRequest | schemas.ImputeRequest | schemas.ConditionalsRequest
    ) -> np.ndarray:
        if req.records is None:
            columns = ", ".join(engine.schema.names)
            raise InvalidInput(
                f"model '{engine.name}' models the columns of a table ({columns}): send "
                '"records", one object per row keyed by column name',
                loc=("x",),
            )
        values = parse_records(engine.schema, req.records)
        if len(values) > self.settings.max_rows:
            raise InvalidInput(
                f"records has {len(values)} rows; the limit is {self.settings.max_rows} per request (MADE_MAX_ROWS)",
                loc=("records",),
            )
        return values

    def _check_draws(self, values: np.ndarray, engine: ModelEngine, n_importance: int, masks: list[int]) -> None:
        weighted = _weighted(values, engine, masks)
        draws, _ = engine.weighted_work(weighted, masks, n_importance, 0)
        if draws > self.settings.max_draws:
            raise InvalidInput(
                f"{len(weighted)} records with unknown cells that no ordering answers exactly at n_importance "
                f"{n_importance} = {draws} draws per mask; the limit is {self.settings.max_draws} per request "
                "(MADE_MAX_DRAWS)",
                loc=("n_importance",),
            )

    def _check_explain(self, engine: ModelEngine, records: int, masks: int) -> None:
        """At most the model's explain limit of records, and at most as many as MADE_MAX_WORK
        pays for (a record's pass under each of the `masks` it is scored with, and
        explain_passes network rows under every mask): the smaller is the one the refusal
        names, so that a client cut down to it is answered."""
        per_record = budget.passes(1, masks, engine.width) + budget.passes(
            engine.explain_passes, engine.n_masks, engine.width
        )
        affordable = max(1, self.settings.max_work // per_record)
        limited = engine.explain_limit()
        if limited is not None and limited[0] <= affordable:
            limit, what = limited
        else:
            limit = affordable
            what = (
                f"this model within MADE_MAX_WORK ({self.settings.max_work:,} units; a record costs "
                f"{per_record:,}: {engine.explain_passes:,} passes x {engine.n_masks} masks x width {engine.width} "
                "and its score)"
            )
        if records > limit:
            raise InvalidInput(
                f"explain is for a few records at a time: at most {limit} per request on {what}, got {records}",
                loc=("explain",),
            )

    # --- the work budget (MADE_MAX_WORK), from the request alone -----------------------------
    def _check_work(self, units: int, what: str, loc: tuple[str | int, ...]) -> None:
        budget.check_work(self.settings.max_work, units, what, loc)

    def _impute_work(
        self, engine: ModelEngine, values: np.ndarray, n_samples: int, n_importance: int, loc: tuple[str | int, ...]
    ) -> None:
        """impute's work: a pass per mask over the rows, the draws of the rows drawn exactly (the
        model's exact_draws each), and the weighted rows' (the model's weighted_work)."""
        masks = list(range(engine.n_masks))
        weighted = _weighted(values, engine, masks)
        exact = int(np.isnan(values).any(axis=1).sum()) - len(weighted)
        per_exact = engine.exact_draws(n_samples)
        _, weighted_units = engine.weighted_work(weighted, masks, n_importance, per_exact)
        units = budget.passes(len(values), len(masks), engine.width) + _drawn(engine, exact * per_exact)
        self._check_work(
            units + weighted_units,
            f"{len(weighted)} records that no ordering answers exactly at n_importance {n_importance} x "
            f"{len(masks)} masks and {exact} drawn exactly x {per_exact}",
            loc,
        )

    # --- /logprob -------------------------------------------------------------------------------
    async def logprob(self, engine: ModelEngine, req: schemas.LogProbRequest) -> schemas.LogProbResponse:
        values = self.values(engine, req)
        masks = req.masks
        if masks != "all" and not 0 <= int(masks) < engine.n_masks:
            raise InvalidInput(
                f"masks {masks} does not exist: model '{engine.name}' has {engine.n_masks} masks", loc=("masks",)
            )
        ks = list(range(engine.n_masks)) if masks == "all" else [int(masks)]
        self._check_draws(values, engine, req.n_importance, ks)
        complete = not np.isnan(values).any()
        seed = None if complete else (req.seed if req.seed is not None else self._new_seed())
        if req.explain and not complete:
            raise InvalidInput("explain needs complete records: every column known", loc=("explain",))
        if req.explain:
            self._check_explain(engine, len(values), len(ks))
        weighted = _weighted(values, engine, ks)
        units = budget.passes(len(values), len(ks), engine.width)
        units += engine.weighted_work(weighted, ks, req.n_importance, 0)[1]
        work = (
            f"{len(weighted)} records that no ordering answers exactly at n_importance {req.n_importance} "
            f"x {len(ks)} masks"
        )
        if req.explain:
            per_record = engine.explain_passes
            units += budget.passes(len(values) * per_record, engine.n_masks, engine.width)
            work = f"explain of {len(values)} records ({per_record:,} passes each) x {engine.n_masks} masks"
        self._check_work(units, work, ("explain",) if req.explain else ("n_importance",))

        def run() -> tuple[Any, Any]:
            result = engine.logprob(
                values, masks=masks, seed=seed, n_importance=req.n_importance, first_row=req.first_row
            )
            return result, engine.surprisal(values) if req.explain else None

        result, surprisal = await self._timed(self._in_thread(run))
        return schemas.LogProbResponse.model_construct(
            model=engine.name,
            version=engine.version,
            logprob=result.logprob.tolist(),
            exact=result.exact.tolist(),
            stderr=[None if e else float(s) for e, s in zip(result.exact, result.stderr, strict=True)],
            seed=seed,
            surprisal=_surprisal(engine.schema, surprisal) if surprisal is not None else None,
        )

    # --- /conditionals --------------------------------------------------------------------------
    async def conditionals(self, engine: ModelEngine, req: schemas.ConditionalsRequest) -> schemas.ConditionalsResponse:
        values = self.values(engine, req)
        mask = int(req.mask)
        if not 0 <= mask < engine.n_masks:
            raise InvalidInput(
                f"mask {mask} does not exist: model '{engine.name}' has {engine.n_masks} masks "
                f"(0..{engine.n_masks - 1})",
                loc=("mask",),
            )
        unknown = np.argwhere(np.isnan(values))
        if len(unknown):
            i, c = (int(v) for v in unknown[0])
            name = engine.schema.columns[c].name
            raise InvalidInput(
                f"records[{i}], column '{name}' is unknown (null or left out), but /conditionals "
                "needs complete records; /impute gives the distribution of unknown cells",
                loc=("records", i, name),
            )
        self._check_work(budget.passes(len(values), 1, engine.width), f"{len(values)} records", ("records",))
        r = await self._timed(self._in_thread(engine.conditionals, values, mask))
        return schemas.ConditionalsResponse.model_construct(
            model=engine.name,
            version=engine.version,
            mask=mask,
            ordering=r.ordering.tolist(),
            column_order=[engine.schema.columns[c].name for c in r.ordering],
            conditionals=_conditionals(engine.schema, r, len(values)),
        )

    # --- /sample --------------------------------------------------------------------------------
    async def sample(self, engine: ModelEngine, req: schemas.SampleRequest) -> schemas.SampleResponse:
        if req.n > self.settings.max_samples:
            raise InvalidInput(
                f"n is {req.n}; the limit is {self.settings.max_samples} samples per request (MADE_MAX_SAMPLES)",
                loc=("n",),
            )
        if req.encoding == "packed":
            raise InvalidInput("records come as JSON only; leave encoding out", loc=("encoding",))
        mask = None if req.mask == "mixture" else int(req.mask)
        if mask is not None and not 0 <= mask < engine.n_masks:
            raise InvalidInput(
                f"mask {mask} does not exist: model '{engine.name}' has {engine.n_masks} masks", loc=("mask",)
            )
        if req.given is None:
            self._check_work(_drawn(engine, req.n), f"n {req.n} samples", ("n",))
        seed = req.seed if req.seed is not None else self._new_seed()
        if req.given is None:
            values = await self._timed(self._in_thread(engine.sample, req.n, seed, mask))
            return schemas.SampleResponse.model_construct(
                model=engine.name,
                version=engine.version,
                seed=seed,
                mask=req.mask,
                records=decode_records(engine.schema, values),
            )
        if mask is not None:
            raise InvalidInput("given samples from the mixture of every mask; leave mask out", loc=("mask",))
        row = parse_given(engine.schema, req.given)
        n_importance = given_importance(req.n)
        self._impute_work(engine, row[None, :], req.n, n_importance, ("n",))
        try:
            result = await self._timed(
                self._in_thread(engine.impute, row[None, :], n_samples=req.n, seed=seed, n_importance=n_importance)
            )
        except ImpossibleEvidence as exc:
            raise InvalidInput(f"given: {exc.reason()}", loc=("given",)) from None
        return schemas.SampleResponse.model_construct(
            model=engine.name,
            version=engine.version,
            seed=seed,
            mask=req.mask,
            records=decode_records(engine.schema, result.samples[0]),
            exact=bool(result.exact[0]),
            ess=float(result.ess[0]),
        )

    # --- /impute --------------------------------------------------------------------------------
    async def impute(self, engine: ModelEngine, req: schemas.ImputeRequest) -> schemas.ImputeResponse:
        values = self.values(engine, req)
        if req.encoding != "json":
            raise InvalidInput("records come as JSON only; leave encoding out", loc=("encoding",))
        total = len(values) * req.n_samples
        if total > self.settings.max_samples:
            raise InvalidInput(
                f"{len(values)} records x n_samples {req.n_samples} = {total} samples; the limit is "
                f"{self.settings.max_samples} per request (MADE_MAX_SAMPLES)",
                loc=("n_samples",),
            )
        self._check_draws(values, engine, req.n_importance, list(range(engine.n_masks)))
        self._impute_work(engine, values, req.n_samples, req.n_importance, ("n_importance",))
        seed = req.seed if req.seed is not None else self._new_seed()
        try:
            r = await self._timed(
                self._in_thread(
                    engine.impute,
                    values,
                    n_samples=req.n_samples,
                    seed=seed,
                    n_importance=req.n_importance,
                    first_row=req.first_row,
                )
            )
        except ImpossibleEvidence as exc:
            raise InvalidInput(f"records[{exc.row}]: {exc.reason()}", loc=("records", exc.row)) from None
        filled = _point_fill(engine.schema, values, r.distributions)
        return schemas.ImputeResponse.model_construct(
            model=engine.name,
            version=engine.version,
            seed=seed,
            samples=[decode_records(engine.schema, s) for s in r.samples],
            records=decode_records(engine.schema, filled),
            distributions=r.distributions,
            logprob_observed=r.logprob_observed.tolist(),
            stderr=[None if e else float(s) for e, s in zip(r.exact, r.stderr, strict=True)],
            exact=r.exact.tolist(),
            ess=r.ess.tolist(),
        )


def _weighted(values: np.ndarray, engine: ModelEngine, masks: list[int]) -> np.ndarray:
    """(M, C) the unknown cells of the records with unknown cells that some ordering in `masks`
    does not put after every known one (estimated, not exact)."""
    unknown = np.isnan(values)
    exact = exact_orders(np.asarray(engine.orderings)[masks], ~unknown).all(axis=0)
    return unknown[unknown.any(axis=1) & ~exact]


def _drawn(engine: ModelEngine, draws: int) -> int:
    """The work of `draws` records drawn, each of its columns at the model's draw_cost."""
    return budget.drawn(draws, engine.dims, engine.draw_cost)


def _point_fill(schema: Schema, values: np.ndarray, dists: list[dict[str, dict[str, Any]]]) -> np.ndarray:
    """Each unknown cell at its most likely level, or the median of a number (NA where absence is
    more likely than not)."""
    filled = values.copy()
    for i, dist in enumerate(dists):
        for name, d in dist.items():
            c = schema.index(name)
            col = schema.columns[c]
            if col.kind != "numeric":
                filled[i, c] = float(col.levels.index(max(d, key=lambda level: float(d[level]))))
            elif d.get("p_absent", 0.0) > 0.5 or d.get("q50") is None:
                filled[i, c] = ABSENT
            else:
                filled[i, c] = float(d["q50"])
    return filled


def _conditionals(schema: Schema, r: TableConditionals, n: int) -> list[dict[str, dict[str, int | float | None]]]:
    """Per record, each column's distribution as JSON: levels' probabilities, or a number's summary
    (its quantiles as values of the column: rounded to its decimals)."""
    out: list[dict[str, dict[str, int | float | None]]] = [{} for _ in range(n)]
    for col, dist in zip(schema.columns, r.columns, strict=True):
        if col.kind != "numeric":
            for row, probs in zip(out, dist["probs"].tolist(), strict=True):
                row[col.name] = dict(zip(col.levels, probs, strict=True))
            continue
        for i, row in enumerate(out):
            d: dict[str, int | float | None] = {}
            if "p_absent" in dist:
                d["p_absent"] = float(dist["p_absent"][i])
            for key in ("mean", "sd"):
                v = float(dist[key][i])
                d[key] = None if v != v else v
            for key in ("q05", "q50", "q95"):
                d[key] = col.decode(float(dist[key][i]))
            row[col.name] = d
    return out


def _surprisal(schema: Schema, s: dict[str, np.ndarray]) -> list[dict[str, dict[str, float | None]]]:
    in_order, given = s["in_order"], s["given_others"]
    return [
        {
            col.name: {
                "in_order": float(in_order[i, c]),
                "given_others": None if np.isnan(given[i, c]) else float(given[i, c]),
            }
            for c, col in enumerate(schema.columns)
        }
        for i in range(len(in_order))
    ]
