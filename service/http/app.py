"""`create_app()`: assembles settings, model registry, data plane, middleware, errors and routers.

Nothing here handles a request. Models load in the background at startup, so /healthz answers at
once and /readyz turns 200 when they are in; a broken store keeps /readyz at 503 with the reason.
With MADE_RELOAD_INTERVAL > 0 a background task reloads the store that often (POST /admin/reload
does it on demand, when an admin key is set).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute

from made.core.errors import MadeError
from service.core.dataplane import DataPlane
from service.core.metrics import Metrics
from service.engine import ModelRegistry, requested_providers
from service.engine.runtime import limit_blas_threads, release_freed_memory
from service.http import oip, ui
from service.http.csv_records import CsvRecordsMiddleware
from service.http.errors import install_error_handlers
from service.http.middleware import RequestMiddleware
from service.http.routers import admin, health, inference, metrics, models
from service.http.routers.deps import admin_key, require_admin_key, require_api_key
from service.settings import Settings

log = logging.getLogger("made.service")

# Seconds the shutdown waits for merged engine calls still running once requests are answered.
CLOSE_GRACE_S = 1.0

DESCRIPTION = """Density estimation with MADE models of binary data, served from ONNX.

Binary rows are lists of 0/1 (`null` for a missing value where an endpoint accepts it), or
bit-packed with `x_b64` + `shape` for large complete batches. Every request may name its
`model`; the default model serves otherwise. Errors have the body
`{"detail", "type", "request_id"}`: 422 names the row, column and problem, 404 an unknown model,
413 a body over `MADE_MAX_BODY_BYTES`, 401 a missing or wrong API key (when `MADE_API_KEY` is
set: `Authorization: Bearer <key>` on every endpoint but /healthz, /readyz and /metrics).
Admin endpoints (/admin/...) take their own key, `MADE_ADMIN_KEY` (else `MADE_API_KEY`), and
are off (404) on a server with neither.
Rows and columns are counted from 0.
"""


def build_registry(settings: Settings) -> ModelRegistry:
    providers = requested_providers(settings.providers) if settings.providers else None
    return ModelRegistry(
        settings.store, default_model=settings.default_model, providers=providers, threads=settings.threads or None
    )


async def _load(registry: ModelRegistry, dataplane: DataPlane) -> None:
    try:
        await anyio.to_thread.run_sync(registry.load)
    except MadeError as exc:
        dataplane.load_error = f"models failed to load: {exc}"
        log.error("models failed to load: %s", exc, extra={"store": str(registry.store)})
        return
    dataplane.publish_models()
    log.info("ready", extra={"models": registry.names(), "default": registry.default_name})


async def _poll_store(dataplane: DataPlane, interval: float) -> None:
    """Reload every `interval` seconds; a failure is logged and the next round tries again."""
    while True:
        await asyncio.sleep(interval)
        try:
            await dataplane.reload()
        except Exception:  # a bug must not end the polling (the log has the traceback)
            dataplane.metrics.reload_failures.inc()
            log.exception("reload of store %s failed", dataplane.registry.store)


def _route_of(endpoint: Callable[..., Any]) -> APIRoute:
    return next(r for r in inference.router.routes if isinstance(r, APIRoute) and r.endpoint is endpoint)


def create_app(settings: Settings | None = None, registry: ModelRegistry | None = None) -> FastAPI:
    """The service. `registry` may be passed already loaded (tests share one between apps)."""
    settings = settings or Settings()
    release_freed_memory()  # what a large request allocates goes back to the system after it
    limit_blas_threads(settings.blas_threads)  # for the process, here in the thread that builds the app
    registry = registry or build_registry(settings)
    app_metrics = Metrics()
    dataplane = DataPlane(registry, settings, app_metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = []
        if registry.ready:
            dataplane.publish_models()
        else:
            tasks.append(asyncio.create_task(_load(registry, dataplane)))
        if settings.reload_interval > 0:
            tasks.append(asyncio.create_task(_poll_store(dataplane, settings.reload_interval)))
        yield
        for task in tasks:
            task.cancel()  # a load or reload in its thread finishes unobserved
        dataplane.cancel_all("shutdown")  # engine calls still running stop at their next chunk
        # Requests in flight have been answered: let queued batches finish, but not for longer
        # than CLOSE_GRACE_S: a merged engine call has no checkpoint, and one of a large
        # MADE_MAX_BATCH held the exit for its whole length, past MADE_SHUTDOWN_TIMEOUT.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(dataplane.aclose(), CLOSE_GRACE_S)
        log.info("stopped")

    app = FastAPI(
        title="MADE density models",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = app_metrics
    app.state.dataplane = dataplane
    # Added first, so it runs inside RequestMiddleware (request ids, the body size limit).
    app.add_middleware(CsvRecordsMiddleware, dataplane=dataplane, api_key=settings.api_key)
    # POST /logprob's small JSON requests take the express handler, the rest the routes.
    express = inference.ExpressLogprob(_route_of(inference.logprob), dataplane, settings.api_key)
    app.add_middleware(
        RequestMiddleware,
        metrics=app_metrics,
        max_body_bytes=settings.max_body_bytes,
        limits=dataplane.limits,
        read_timeout=settings.read_timeout,
        express={"/logprob": express},
    )
    install_error_handlers(app)
    # Only a server with a key declares the bearer scheme, so the OpenAPI document tells the truth.
    protected = [Depends(require_api_key)] if settings.api_key is not None else []
    # The inference routes first: a request is matched against the routes in order.
    app.include_router(inference.router, dependencies=protected)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(models.router, dependencies=protected)
    app.include_router(oip.make_router(protected))  # the Open Inference Protocol (KServe v2), /v2
    # Admin endpoints: their own key (MADE_ADMIN_KEY, else MADE_API_KEY), not the API key's
    # check (one Authorization header holds one key); off without either.
    if settings.ui:  # the playground: open like /docs (the page holds no data; it asks for the key)
        app.include_router(ui.router)
    if admin_key(settings) is not None:
        app.include_router(admin.router, dependencies=[Depends(require_admin_key)])
    else:
        app.include_router(admin.off_router)
    return app
