"""The data plane: requests (schemas) in, responses out, engine calls off the event loop.

Endpoints translate HTTP and call this; this checks what needs the model (widths, mask
indices, limits), runs the engine in worker threads, merges concurrent /sample, /logprob and
/conditionals requests into one engine call per model (service.core.batching), and builds the
response. It knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import math
import os
import secrets
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import anyio
import anyio.to_thread
import numpy as np

from made.core.errors import InvalidInput, NotAcceptable, NotReady, Overloaded, RequestTimeout
from service.core import budget
from service.core.batching import Batcher
from service.core.body_bounds import Limits
from service.core.imaging import samples_png
from service.core.log_config import request_context
from service.core.metrics import Metrics
from service.core.scheduling import FairScheduler
from service.core.schemas import (
    ConditionalsRequest,
    ConditionalsResponse,
    DenoiseRequest,
    DenoiseResponse,
    ImputeRequest,
    ImputeResponse,
    LogProbRequest,
    LogProbResponse,
    ModelInfo,
    ModelsResponse,
    SampleRequest,
    SampleResponse,
    pack_rows,
)
from service.core.tableplane import TablePlane
from service.engine import Engine, LogProbResult, ModelRegistry
from service.engine.bit_columns import BitColumns
from service.engine.cancel import Abandoned, CancelToken, running_under
from service.engine.registry import AnyEngine, ReloadReport
from service.engine.table_engine import TableEngine
from service.settings import Settings

T = TypeVar("T")

# The endpoint whose request is running (set by DataPlane.admit): the scheduler's lane.
_lane: contextvars.ContextVar[str] = contextvars.ContextVar("made_lane", default="other")

P = ParamSpec("P")


def admitted(
    endpoint: str,
) -> Callable[[Callable[Concatenate[DataPlane, P], Awaitable[T]]], Callable[Concatenate[DataPlane, P], Awaitable[T]]]:
    """A DataPlane method that serves `endpoint`: it runs admitted (DataPlane.admit)."""

    def wrap(
        method: Callable[Concatenate[DataPlane, P], Awaitable[T]],
    ) -> Callable[Concatenate[DataPlane, P], Awaitable[T]]:
        @functools.wraps(method)
        async def inner(self: DataPlane, *args: P.args, **kwargs: P.kwargs) -> T:
            # self.admit(endpoint) without the context manager's generator: every request runs this
            token = self._enter(endpoint)
            try:
                return await method(self, *args, **kwargs)
            finally:
                self._leave(endpoint, token)

        return inner

    return wrap


def new_seed() -> int:
    """A fresh seed for a request that sent none (returned to the client so it can repeat)."""
    return secrets.randbelow(2**31)


def _floats(a: np.ndarray) -> list[float | None]:
    """NaN -> None (JSON null)."""
    return [None if v != v else v for v in a.tolist()]


class _Noise:
    """One /sample request's noise, from its own seed: drawn in an engine thread by the first of
    the request's pieces to run (Engine.noise), so that merging or splitting requests changes no
    one's samples and the event loop draws nothing."""

    def __init__(self, engine: Engine, n: int, seed: int, mask: int | None) -> None:
        self._args = (engine, n, seed, mask)
        self._lock = threading.Lock()
        self._drawn: tuple[np.ndarray, np.ndarray] | None = None

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        """(uniforms (n, D), mask ids (n,))."""
        with self._lock:
            if self._drawn is None:
                engine, n, seed, mask = self._args
                self._drawn = engine.noise(n, seed, mask)
            return self._drawn


@dataclass(frozen=True)
class _SampleWork:
    noise: _Noise
    rows: slice  # the request's rows this piece samples

    @property
    def n(self) -> int:
        return int(self.rows.stop - self.rows.start)


class DataPlane:
    def __init__(self, registry: ModelRegistry, settings: Settings, metrics: Metrics) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.load_error: str | None = None
        self.scheduler = FairScheduler(settings.threads or os.cpu_count() or 1, settings.max_queue)
        self._tracked: set[str] = set()  # endpoints whose made_endpoint_requests is published
        self._batchers: dict[tuple[Any, ...], Batcher[Any, Any]] = {}
        # Batchers of versions a reload replaced: they finish their queues, then are collected
        # (with the old Engine they hold); shutdown still waits for them.
        self._retired: weakref.WeakSet[Batcher[Any, Any]] = weakref.WeakSet()
        # The tokens of engine calls running or waiting for a thread: cancelled when their
        # request times out, and all of them at shutdown (the engine stops at its next chunk).
        self._tokens: set[CancelToken] = set()
        self.tables = TablePlane(settings, self._in_thread, self._timed, new_seed)
        # What a body may hold (service.core.body_bounds), from the settings once.
        self.limits = Limits(max_rows=settings.max_rows, max_width=settings.max_width)

    # --- plumbing ------------------------------------------------------------------------------
    async def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn in an engine thread, when the current request's endpoint gets its fair turn.
        abandon_on_cancel: a timed-out request answers at once; its thread goes on to the
        engine's next checkpoint, where its cancelled token stops it (made_abandoned_total)."""
        endpoint = _lane.get()
        call = functools.partial(self._abandonable, endpoint, functools.partial(fn, *args, **kwargs))
        return await self.scheduler.run(endpoint, call, abandon_on_cancel=True)

    def _abandonable(self, endpoint: str, call: Callable[[], T]) -> T:
        """call() in its engine thread; counted when it stops at a checkpoint, nobody waiting."""
        try:
            return call()
        except Abandoned:
            self.metrics.child(self.metrics.abandoned, endpoint).inc()
            raise

    @contextlib.asynccontextmanager
    async def admit(self, endpoint: str) -> AsyncIterator[None]:
        """A request to `endpoint` holds one of its MADE_MAX_QUEUE places (or gets 503 at once);
        its engine calls take turns as that endpoint's (service.core.scheduling)."""
        token = self._enter(endpoint)
        try:
            yield
        finally:
            self._leave(endpoint, token)

    def _enter(self, endpoint: str) -> contextvars.Token[str]:
        try:
            self.scheduler.enter(endpoint)
        except Overloaded:
            self.metrics.child(self.metrics.overloaded, endpoint).inc()
            raise
        if endpoint not in self._tracked:  # made_endpoint_requests reads the scheduler's count
            self._tracked.add(endpoint)
            self.metrics.track_endpoint_requests(endpoint, functools.partial(self.scheduler.admitted, endpoint))
        return _lane.set(endpoint)

    def _leave(self, endpoint: str, token: contextvars.Token[str]) -> None:
        _lane.reset(token)
        self.scheduler.leave(endpoint)

    async def _timed(self, work: Awaitable[T]) -> T:
        """work within MADE_REQUEST_TIMEOUT, its engine calls under a token cancelled when the
        request times out or is cancelled (shutdown), so that they stop at their next chunk."""
        token = CancelToken()
        self._tokens.add(token)
        try:
            with running_under(token):
                async with asyncio.timeout(self.settings.request_timeout):  # no task, unlike wait_for
                    return await work
        except TimeoutError:
            token.cancel("timeout")
            raise self._timeout_error() from None
        except BaseException:
            token.cancel("cancelled")
            raise
        finally:
            self._tokens.discard(token)

    def cancel_all(self, reason: str) -> int:
        """Cancel every engine call still running (shutdown): each stops at its next chunk."""
        for token in self._tokens:
            token.cancel(reason)
        return len(self._tokens)

    def _timeout_error(self) -> RequestTimeout:
        limit = self.settings.request_timeout
        return RequestTimeout(
            f"the request took longer than {limit:g} s (MADE_REQUEST_TIMEOUT); send fewer rows or samples"
        )

    def _check_ready(self) -> None:
        if not self.registry.ready:
            raise NotReady(self.load_error or "models are still loading; retry when /readyz is 200")

    def engine(self, name: str | None) -> AnyEngine:
        self._check_ready()
        engine = self.registry.get(name)
        ctx = request_context.get()
        if ctx is not None:
            ctx.model = engine.name
        return engine

    def bits_engine(self, name: str | None, endpoint: str) -> Engine:
        """The engine of a model of bits; a table model is refused with what it answers instead."""
        engine = self.engine(name)
        if isinstance(engine, TableEngine):
            raise InvalidInput(
                f"model '{engine.name}' models the columns of a table; {endpoint} answers models "
                "of bits (a table model answers /logprob, /sample and /impute with records)"
            )
        return engine

    def _batcher(
        self, endpoint: str, engine: Engine, key: object, run: Callable[[list[Any]], list[Any]]
    ) -> Batcher[Any, Any]:
        ident = (endpoint, engine.name, id(engine), key)  # id: a reload may reuse a version
        batcher = self._batchers.get(ident)
        if batcher is None:
            observe = functools.partial(self.metrics.observe_batch, endpoint, engine.name)
            batcher = Batcher(
                run,
                delay_s=self.settings.batch_delay_ms / 1000,
                max_rows=self.settings.max_batch,
                execute=functools.partial(self.scheduler.run, endpoint),
                observe=observe,
                timeout_s=self.settings.request_timeout,
                expired=self._timeout_error,
            )
            if self.registry.is_served(engine):
                self._batchers[ident] = batcher
            else:  # the request took its engine just before a reload replaced it
                self._retired.add(batcher)
        return batcher

    async def aclose(self) -> None:
        batchers = [*self._batchers.values(), *self._retired]
        await asyncio.gather(*(b.aclose() for b in batchers))

    async def reload(self) -> ReloadReport:
        """Load what is new in the store (in a thread) and swap it in; requests in flight keep
        the engines they hold."""
        report = await anyio.to_thread.run_sync(self.registry.reload)
        if report.ready:
            self.load_error = None
        elif report.error:
            self.load_error = report.error
        if report.error:
            self.metrics.reload_failures.inc()
        for r in report.results:
            if r.status in ("loaded", "refused") and not r.cached:
                self.metrics.reloads.labels(r.name, r.status).inc()
        if report.changed:
            served = {id(e) for e in self.registry.engines()}
            for ident in [i for i in self._batchers if i[2] not in served]:
                self._retired.add(self._batchers.pop(ident))
            self.publish_models()
        return report

    def publish_models(self) -> None:
        self.metrics.set_models((e.name, e.version, ",".join(e.providers)) for e in self.registry.engines())

    def _check_rows(self, engine: Engine, x: np.ndarray, endpoint: str) -> None:
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

    def _check_draws(self, x: np.ndarray, n_importance: int, engine: Engine, masks: int, per_exact_row: int = 0) -> int:
        """Rows that need importance sampling x n_importance: a row whose missing values every
        mask's ordering puts after its observed ones is exact (/logprob: one pass per mask;
        /impute: n_samples completions, counted against MADE_MAX_SAMPLES) and does not count.
        Within MADE_MAX_DRAWS, and their work (their draws under each of `masks` masks,
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
        draws = rows * n_importance * masks + exact * per_exact_row
        what = f"{len(x)} rows, {rows} of them with importance sampling x n_importance {n_importance} x {masks} "
        what += f"mask{'s' * (masks != 1)}" + (f" and {exact} drawn exactly x {per_exact_row}" if per_exact_row else "")
        work = budget.passes(len(x), masks, engine.dims) + budget.drawn(draws, engine.dims)
        budget.check_work(self.settings.max_work, work, what, loc=("n_importance",))
        return rows

    def _check_completions(self, rows: int, n_samples: int, loc: tuple[str, ...] = ()) -> None:
        """rows x n_samples completions (/impute, /denoise) within MADE_MAX_SAMPLES."""
        total = rows * n_samples
        if total > self.settings.max_samples:
            raise InvalidInput(
                f"{rows} rows x n_samples {n_samples} = {total} samples; "
                f"the limit is {self.settings.max_samples} per request (MADE_MAX_SAMPLES)",
                loc=loc,
            )

    def _check_mask(self, engine: Engine, mask: int, field: str = "mask") -> int:
        if not 0 <= mask < engine.n_masks:
            raise InvalidInput(
                f"{field} {mask} does not exist: model '{engine.name}' has "
                f"{engine.n_masks} mask{'s' if engine.n_masks > 1 else ''} "
                f"(0..{engine.n_masks - 1})",
                loc=(field,),
            )
        return mask

    # --- models -----------------------------------------------------------------------------------
    def models(self) -> ModelsResponse:
        self._check_ready()
        default = self.registry.default_name
        infos = []
        for e in self.registry.engines():
            spec = e.model.spec  # the typed manifest (made.store.versions.Manifest), checked at load
            infos.append(
                ModelInfo(
                    name=e.name,
                    version=e.version,
                    dims=e.dims,
                    n_masks=e.n_masks,
                    default=e.name == default,
                    image_shape=e.image_shape,
                    dataset=spec.dataset_name,
                    test_nll=spec.test_nll,
                    providers=list(e.providers),
                    columns=e.schema.names if isinstance(e, TableEngine) else None,
                )
            )
        return ModelsResponse(models=infos, default=default)

    def manifest(self, name: str) -> dict[str, Any]:
        return self.engine(name).model.public_manifest()  # training files' paths as names only

    # --- /logprob --------------------------------------------------------------------------------
    @admitted("/logprob")
    async def logprob(self, req: LogProbRequest) -> LogProbResponse:
        engine = self.engine(req.model)
        if isinstance(engine, TableEngine):
            return await self.tables.logprob(engine, req)
        if req.records is not None:
            return await self.tables.logprob(BitColumns(engine), req)
        if req.explain:
            raise InvalidInput("explain is for records; send the rows as records to have it", loc=("explain",))
        return await self._logprob_rows(engine, req.rows, req.masks, req.seed, req.n_importance)

    @admitted("/logprob")
    async def logprob_rows(
        self, model: str | None, x: np.ndarray, masks: Literal["all"] | int, seed: int | None, n_importance: int
    ) -> LogProbResponse:
        """POST /logprob of rows x (float32 0/1/NaN, parsed as the request schema parses them;
        no records, no explain): the same answer as logprob() of that request, without building
        it (the express handler's one-row requests)."""
        engine = self.engine(model)
        if isinstance(engine, TableEngine):
            req = LogProbRequest.model_construct(x=x, model=model, masks=masks, seed=seed, n_importance=n_importance)
            return await self.tables.logprob(engine, req)
        return await self._logprob_rows(engine, x, masks, seed, n_importance)

    async def _logprob_rows(
        self, engine: Engine, x: np.ndarray, masks: Literal["all"] | int, seed: int | None, n_importance: int
    ) -> LogProbResponse:
        self._check_rows(engine, x, "/logprob")
        if masks != "all":
            self._check_mask(engine, int(masks), "masks")
        complete = not np.isnan(x).any()
        seed = None if complete else (seed if seed is not None else new_seed())
        if complete:
            k = engine.n_masks if masks == "all" else 1
            budget.check_work(
                self.settings.max_work, budget.passes(len(x), k, engine.dims), f"{len(x)} rows x {k} masks"
            )
            # Exact, one pass: merge with other requests for the same model and masks.
            run = functools.partial(_logprob_batch, engine, masks)
            result = await self._logprob_pieces(self._batcher("/logprob", engine, masks, run), x)
        else:
            self._check_draws(x, n_importance, engine, engine.n_masks if masks == "all" else 1)
            result = await self._timed(
                self._in_thread(engine.logprob, x, masks=masks, seed=seed, n_importance=n_importance, checked=True)
            )
        return LogProbResponse.model_construct(
            model=engine.name,
            version=engine.version,
            logprob=result.logprob.tolist(),
            exact=result.exact.tolist(),
            stderr=_floats(result.stderr),
            seed=seed,
        )

    async def _logprob_pieces(self, batcher: Batcher[np.ndarray, LogProbResult], x: np.ndarray) -> LogProbResult:
        parts = await self._batched(batcher, self._row_pieces(x))
        if len(parts) == 1:
            return parts[0]
        return LogProbResult(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("logprob", "exact", "stderr")))

    # --- /conditionals ---------------------------------------------------------------------------
    @admitted("/conditionals")
    async def conditionals(self, req: ConditionalsRequest) -> ConditionalsResponse:
        engine = self.engine(req.model)
        if isinstance(engine, TableEngine):
            return await self.tables.conditionals(engine, req)
        if req.records is not None:
            return await self.tables.conditionals(BitColumns(engine), req)
        x = req.rows
        self._check_rows(engine, x, "/conditionals")
        mask = self._check_mask(engine, req.mask)
        budget.check_work(self.settings.max_work, budget.passes(len(x), 1, engine.dims), f"{len(x)} rows")
        run = functools.partial(_conditionals_batch, engine, mask)
        parts = await self._batched(self._batcher("/conditionals", engine, mask, run), self._row_pieces(x))
        probs = np.concatenate(parts)
        return ConditionalsResponse.model_construct(
            model=engine.name,
            version=engine.version,
            mask=mask,
            ordering=engine.orderings[mask].tolist(),
            probs=probs.tolist(),
        )

    # --- /sample ---------------------------------------------------------------------------------
    def _check_sample(self, engine: Engine, req: SampleRequest) -> int | None:
        if req.n > self.settings.max_samples:
            raise InvalidInput(
                f"n is {req.n}; the limit is {self.settings.max_samples} samples per request (MADE_MAX_SAMPLES)"
            )
        budget.check_work(self.settings.max_work, budget.drawn(req.n, engine.dims), f"n {req.n}", loc=("n",))
        self.metrics.observe_rows("/sample", engine.name, req.n)
        return None if req.mask == "mixture" else self._check_mask(engine, int(req.mask))

    async def _samples(self, engine: Engine, n: int, seed: int, mask: int | None) -> np.ndarray:
        noise = _Noise(engine, n, seed, mask)
        run = functools.partial(_sample_batch, engine)
        batcher = self._batcher("/sample", engine, None, run)
        parts = await self._batched(
            batcher, [(_SampleWork(noise, rows), rows.stop - rows.start) for rows in self._pieces(n)]
        )
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _pieces(self, n: int) -> list[slice]:
        """A large request goes in pieces of at most MADE_MAX_BATCH rows: the engine is fastest
        on cache-sized batches, and other requests get their turns in between."""
        step = self.settings.max_batch
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def _row_pieces(self, x: np.ndarray) -> list[tuple[np.ndarray, int]]:
        if len(x) <= self.settings.max_batch:
            return [(x, len(x))]
        return [(x[rows], rows.stop - rows.start) for rows in self._pieces(len(x))]

    async def _batched(self, batcher: Batcher[Any, T], pieces: list[tuple[Any, int]]) -> list[T]:
        """The results of a request's pieces (item, rows) from their batcher. The batcher
        answers a piece RequestTimeout at MADE_REQUEST_TIMEOUT (no cancel scope or task per
        request: at one row per request those were a sixth of the data plane's time); then the
        pieces not run yet are dropped, those running finish unobserved."""
        futures = [batcher.enqueue(item, rows) for item, rows in pieces]
        try:
            return [await future for future in futures]
        finally:
            for future in futures:
                if not future.cancel() and not future.cancelled():
                    future.exception()  # retrieved: a failed piece after the one that raised

    @admitted("/sample")
    async def sample(self, req: SampleRequest) -> SampleResponse:
        engine = self.engine(req.model)
        if isinstance(engine, TableEngine):
            return await self.tables.sample(engine, req)
        if req.given is not None or req.encoding == "records":  # records, as from a table model
            return await self.tables.sample(BitColumns(engine), req)
        mask = self._check_sample(engine, req)
        seed = req.seed if req.seed is not None else new_seed()
        samples = await self._samples(engine, req.n, seed, mask)
        packed = req.encoding == "packed"
        return SampleResponse.model_construct(
            model=engine.name,
            version=engine.version,
            seed=seed,
            mask=req.mask,
            samples=None if packed else samples.tolist(),
            samples_b64=pack_rows(samples) if packed else None,
            shape=list(samples.shape) if packed else None,
        )

    @admitted("/sample")
    async def sample_png(self, req: SampleRequest, scale: int) -> tuple[bytes, int]:
        """A grid of the samples as PNG, and the seed used."""
        engine = self.engine(req.model)
        if isinstance(engine, TableEngine):
            raise NotAcceptable(
                f"model '{engine.name}' models the columns of a table, not an image; ask for application/json"
            )
        if not engine.image_shape or math.prod(engine.image_shape) != engine.dims:
            raise NotAcceptable(
                f"model '{engine.name}' has no image_shape, so its samples cannot "
                "be drawn as an image; ask for application/json"
            )
        mask = self._check_sample(engine, req)
        seed = req.seed if req.seed is not None else new_seed()
        samples = await self._samples(engine, req.n, seed, mask)
        png = await self._in_thread(samples_png, samples, engine.image_shape, scale)
        return png, seed

    # --- /impute ---------------------------------------------------------------------------------
    @admitted("/impute")
    async def impute(self, req: ImputeRequest) -> ImputeResponse:
        engine = self.engine(req.model)
        if isinstance(engine, TableEngine):
            return await self.tables.impute(engine, req)
        if req.records is not None:
            return await self.tables.impute(BitColumns(engine), req)
        x = req.rows
        self._check_rows(engine, x, "/impute")
        self._check_completions(len(x), req.n_samples)
        # an exact row draws max(n_samples, 1) completions
        self._check_draws(x, req.n_importance, engine, engine.n_masks, per_exact_row=max(req.n_samples, 1))
        seed = req.seed if req.seed is not None else new_seed()
        r = await self._timed(
            self._in_thread(
                engine.impute, x, n_samples=req.n_samples, seed=seed, n_importance=req.n_importance, checked=True
            )
        )
        packed = req.encoding == "packed"
        return ImputeResponse.model_construct(
            model=engine.name,
            version=engine.version,
            seed=seed,
            samples=None if packed else r.samples.tolist(),
            samples_b64=pack_rows(r.samples) if packed else None,
            shape=list(r.samples.shape) if packed else None,
            marginals=r.marginals.tolist(),
            logprob_observed=r.logprob_observed.tolist(),
            stderr=_floats(getattr(r, "stderr", np.full(len(x), np.nan))),
            exact=r.exact.tolist(),
            ess=r.ess.tolist(),
        )

    # --- /denoise --------------------------------------------------------------------------------
    @admitted("/denoise")
    async def denoise(self, req: DenoiseRequest) -> DenoiseResponse:
        """Like /impute's likelihood weighting, every row that is not exact (eps 0 everywhere)
        draws n_importance x K tilted samples in a worker thread; no merging with other requests
        (each row's work is already a large batch of draws)."""
        engine = self.bits_engine(req.model, "/denoise")
        x = req.rows
        self._check_rows(engine, x, "/denoise")
        self._check_completions(len(x), req.n_samples, loc=("n_samples",))
        eps = np.broadcast_to(req.eps if req.eps.ndim != 1 else req.eps[:, None], x.shape)
        rows = int((~((eps == 0) & ~np.isnan(x)).all(axis=1)).sum())
        if rows * req.n_importance > self.settings.max_draws:
            raise InvalidInput(
                f"{rows} noisy rows x n_importance {req.n_importance} = "
                f"{rows * req.n_importance} importance draws; the limit is "
                f"{self.settings.max_draws} per request (MADE_MAX_DRAWS): send "
                "fewer rows or a smaller n_importance",
                loc=("n_importance",),
            )
        budget.check_work(
            self.settings.max_work,
            budget.drawn(rows * req.n_importance * engine.n_masks, engine.dims)
            + budget.passes(len(x), engine.n_masks, engine.dims),
            f"{rows} noisy rows x n_importance {req.n_importance} x {engine.n_masks} masks",
            loc=("n_importance",),
        )
        seed = req.seed if req.seed is not None else new_seed()
        r = await self._timed(
            self._in_thread(
                engine.denoise,
                x,
                req.eps,
                n_samples=req.n_samples,
                seed=seed,
                n_importance=req.n_importance,
                checked=True,
            )
        )
        packed = req.encoding == "packed"
        return DenoiseResponse.model_construct(
            model=engine.name,
            version=engine.version,
            seed=seed,
            samples=None if packed else r.samples.tolist(),
            samples_b64=pack_rows(r.samples) if packed else None,
            shape=list(r.samples.shape) if packed else None,
            marginals=r.marginals.tolist(),
            most_likely=r.most_likely.tolist(),
            logprob_noisy=r.logprob_noisy.tolist(),
            stderr=_floats(r.stderr),
            ess=r.ess.tolist(),
        )


# --- batch functions (run in a worker thread) ---------------------------------------------


def _split(total: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """total's rows in consecutive pieces of `sizes` (views, as np.split gives them, at a tenth
    of np.split's cost: 8 us a request on one-row /logprob batches)."""
    return [total[start:end] for start, end in itertools.pairwise([0, *itertools.accumulate(sizes)])]


def _rows(xs: list[np.ndarray]) -> np.ndarray:
    """The merged requests' rows (a lone request's as they are, no copy)."""
    return xs[0] if len(xs) == 1 else np.concatenate(xs)


def _logprob_batch(engine: Engine, masks: Literal["all"] | int, xs: list[np.ndarray]) -> list[LogProbResult]:
    r = engine.logprob(_rows(xs), masks=masks, checked=True)
    sizes = [len(x) for x in xs]
    return [
        LogProbResult(lp, ex, se)
        for lp, ex, se in zip(_split(r.logprob, sizes), _split(r.exact, sizes), _split(r.stderr, sizes), strict=True)
    ]


def _conditionals_batch(engine: Engine, mask: int, xs: list[np.ndarray]) -> list[np.ndarray]:
    return _split(engine.conditionals(_rows(xs), mask=mask, checked=True), [len(x) for x in xs])


def _sample_batch(engine: Engine, works: list[_SampleWork]) -> list[np.ndarray]:
    noise = [w.noise.get() for w in works]
    u = np.concatenate([u[w.rows] for (u, _), w in zip(noise, works, strict=True)])
    masks = np.concatenate([ks[w.rows] for (_, ks), w in zip(noise, works, strict=True)])
    return _split(engine.sample_from_noise(u, masks), [w.n for w in works])
