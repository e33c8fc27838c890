"""The data plane: every endpoint's request in, its response out, engine calls off the event loop.

Each endpoint is decode -> engine -> encode. Endpoints translate HTTP into a request (schemas)
and call this; this finds the model (service.engine.contract.ModelEngine, whatever its kind),
and hands the request to the codec it was sent in: rows of bits to the bit rows codec
(service.core.bitplane: batching, bit-packed rows, denoising), records to the records codec
(service.core.tableplane), which answers for every model. A model that reads no rows answers in
records, and refuses what only rows can ask (/denoise, a PNG) itself. Around them: admission
(MADE_MAX_QUEUE), fair turns per endpoint in the worker threads, the request timeout with
cancellation of its engine calls, and reloads. It knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import anyio
import anyio.to_thread
import numpy as np

from made.core.errors import InvalidInput, ModelNotFound, NotReady, Overloaded, RequestTimeout
from made.store.reference import missing_reference
from service.core import budget
from service.core.bitplane import BitPlane
from service.core.body_bounds import Limits
from service.core.log_config import request_context
from service.core.metrics import Metrics
from service.core.request_checks import new_seed
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
)
from service.core.tableplane import TablePlane
from service.engine import ModelRegistry
from service.engine.cancel import Abandoned, CancelToken, running_under
from service.engine.contract import ModelEngine
from service.engine.registry import ReloadReport
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


class DataPlane:
    def __init__(self, registry: ModelRegistry, settings: Settings, metrics: Metrics) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.load_error: str | None = None
        self.scheduler = FairScheduler(settings.threads or os.cpu_count() or 1, settings.max_queue)
        self._tracked: set[str] = set()  # endpoints whose made_endpoint_requests is published
        # The tokens of engine calls running or waiting for a thread: cancelled when their
        # request times out, and all of them at shutdown (the engine stops at its next chunk).
        self._tokens: set[CancelToken] = set()
        # the two codecs: records (every model), rows of bits (models that read them)
        self.tables = TablePlane(settings, self._in_thread, self._timed, new_seed)
        self.bits = BitPlane(
            settings, self._in_thread, self._timed, metrics, self.scheduler, registry.is_served, self._timeout_error
        )
        # What a body may hold (service.core.body_bounds), from the settings once.
        self.limits = Limits(max_rows=settings.max_rows, max_width=settings.max_width)

    # --- plumbing ------------------------------------------------------------------------------
    async def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn in an engine thread, when the current request's endpoint gets its fair turn.
        abandon_on_cancel: a timed-out request (or one whose client disconnected) answers at
        once; its thread goes on to the engine's next checkpoint, where its cancelled token
        stops it (made_abandoned_total). Cancelled while waiting for its turn, it never runs."""
        endpoint = _lane.get()
        call = functools.partial(self._abandonable, endpoint, functools.partial(fn, *args, **kwargs))
        return await self.scheduler.run(endpoint, call, abandon_on_cancel=True, units=budget.take_checked())

    def _abandonable(self, endpoint: str, call: Callable[[], T]) -> T:
        """call() in its engine thread; counted when it stops at a checkpoint, nobody waiting."""
        ctx = request_context.get()  # the request's own call (a merged call's worker has none)
        if ctx is not None:
            ctx.engine_started = True
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
        budget.take_checked()  # nothing left over from an earlier request in this context
        return _lane.set(endpoint)

    def _leave(self, endpoint: str, token: contextvars.Token[str]) -> None:
        _lane.reset(token)
        self.scheduler.leave(endpoint)

    async def _timed(self, work: Awaitable[T]) -> T:
        """work within MADE_REQUEST_TIMEOUT, its engine calls under a token cancelled when the
        request times out or is cancelled (its client disconnected, shutdown), so that they stop
        at their next chunk."""
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

    def engine(self, name: str | None) -> ModelEngine:
        """The served model `name` (the default when None), whatever its kind."""
        self._check_ready()
        engine = self.registry.model(name)
        ctx = request_context.get()
        if ctx is not None:
            ctx.model = engine.name
        return engine

    async def aclose(self) -> None:
        await self.bits.aclose()

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
            self.bits.retire({id(e) for e in self.registry.engines()})
            self.publish_models()
        return report

    def publish_models(self) -> None:
        self.metrics.set_models((e.name, e.version, ",".join(e.providers)) for e in self.registry.models())

    # --- models -----------------------------------------------------------------------------------
    def models(self) -> ModelsResponse:
        self._check_ready()
        default = self.registry.default_name
        infos = []
        for e in self.registry.models():
            manifest = e.model.manifest  # typed and checked at load (made.store.manifest.Manifest)
            infos.append(
                ModelInfo(
                    name=e.name,
                    version=e.version,
                    dims=e.dims,
                    n_masks=e.n_masks,
                    default=e.name == default,
                    image_shape=e.image_shape,
                    dataset=manifest.dataset_name,
                    test_nll=manifest.test_nll,
                    providers=list(e.providers),
                    columns=e.columns,
                )
            )
        return ModelsResponse(models=infos, default=default)

    def manifest(self, name: str) -> dict[str, Any]:
        return self.engine(name).model.public_manifest()  # training files' paths as names only

    def reference(self, name: str) -> bytes:
        """The served version's reference.json (made.store.reference) as JSON bytes, read and
        checked at load and serialized once; ModelNotFound (404) where the version has none."""
        stored = self.engine(name).model
        if stored.reference_json is None:
            raise ModelNotFound(missing_reference(stored.name, stored.version))
        return stored.reference_json

    # --- the endpoints: decode (rows | records) -> engine -> encode ----------------------------
    @admitted("/logprob")
    async def logprob(self, req: LogProbRequest) -> LogProbResponse:
        model = self.engine(req.model)
        if req.records is not None or not model.reads_rows:
            return await self.tables.logprob(model, req)
        if req.explain:
            raise InvalidInput("explain is for records; send the rows as records to have it", loc=("explain",))
        return await self.bits.logprob(
            model.bits("/logprob"), req.rows, req.masks, req.seed, req.n_importance, req.first_row
        )

    @admitted("/logprob")
    async def logprob_rows(
        self,
        model: str | None,
        x: np.ndarray,
        masks: Literal["all"] | int,
        seed: int | None,
        n_importance: int,
        first_row: int = 0,
    ) -> LogProbResponse:
        """POST /logprob of rows x (float32 0/1/NaN, parsed as the request schema parses them;
        no records, no explain): the same answer as logprob() of that request, without building
        it (the express handler's one-row requests)."""
        served = self.engine(model)
        if not served.reads_rows:
            req = LogProbRequest.model_construct(
                x=x, model=model, masks=masks, seed=seed, n_importance=n_importance, first_row=first_row
            )
            return await self.tables.logprob(served, req)
        return await self.bits.logprob(served.bits("/logprob"), x, masks, seed, n_importance, first_row)

    @admitted("/conditionals")
    async def conditionals(self, req: ConditionalsRequest) -> ConditionalsResponse:
        model = self.engine(req.model)
        if req.records is not None or not model.reads_rows:
            return await self.tables.conditionals(model, req)
        return await self.bits.conditionals(model.bits("/conditionals"), req.rows, req.mask)

    @admitted("/sample")
    async def sample(self, req: SampleRequest) -> SampleResponse:
        model = self.engine(req.model)
        if req.given is not None or req.encoding == "records" or not model.reads_rows:
            return await self.tables.sample(model, req)
        return await self.bits.sample(model.bits("/sample"), req)

    @admitted("/sample")
    async def sample_png(self, req: SampleRequest, scale: int) -> tuple[bytes, int]:
        """A grid of the samples as PNG, and the seed used."""
        model = self.engine(req.model)
        shape = model.image()
        return await self.bits.sample_png(model.bits("/sample"), shape, req, scale)

    @admitted("/impute")
    async def impute(self, req: ImputeRequest) -> ImputeResponse:
        model = self.engine(req.model)
        if req.records is not None or not model.reads_rows:
            return await self.tables.impute(model, req)
        return await self.bits.impute(model.bits("/impute"), req)

    @admitted("/denoise")
    async def denoise(self, req: DenoiseRequest) -> DenoiseResponse:
        """Rows only: a model that reads none refuses them (ModelEngine.bits)."""
        return await self.bits.denoise(self.engine(req.model).bits("/denoise"), req)
