"""`create_app()`: assembles settings, model registry, data plane, middleware, errors and routers.

Nothing here handles a request. Models load in the background at startup, so /healthz answers at
once and /readyz turns 200 when they are in; a broken store keeps /readyz at 503 with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import Depends, FastAPI

from made.errors import MadeError
from service.dataplane import DataPlane
from service.engine import ModelRegistry, requested_providers
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import RequestMiddleware
from service.routers import health, inference, metrics, models
from service.routers.deps import require_api_key
from service.settings import Settings

log = logging.getLogger("made.service")

DESCRIPTION = """Density estimation with MADE models of binary data, served from ONNX.

Binary rows are lists of 0/1 (`null` for a missing value where an endpoint accepts it), or
bit-packed with `x_b64` + `shape` for large complete batches. Every request may name its
`model`; the default model serves otherwise. Errors have the body
`{"detail", "type", "request_id"}`: 422 names the row, column and problem, 404 an unknown model,
413 a body over `MADE_MAX_BODY_BYTES`, 401 a missing or wrong API key (when `MADE_API_KEY` is
set: `Authorization: Bearer <key>` on every endpoint but /healthz, /readyz and /metrics).
Rows and columns are counted from 0.
"""


def build_registry(settings: Settings) -> ModelRegistry:
    providers = requested_providers(",".join(settings.providers)) if settings.providers else None
    return ModelRegistry(settings.store, default_model=settings.default_model, providers=providers,
                         threads=settings.threads or None)


async def _load(registry: ModelRegistry, dataplane: DataPlane, metrics: Metrics) -> None:
    try:
        await anyio.to_thread.run_sync(registry.load)
    except MadeError as exc:
        dataplane.load_error = f"models failed to load: {exc}"
        log.error("models failed to load: %s", exc, extra={"store": str(registry.store)})
        return
    _publish(registry, metrics)
    log.info("ready", extra={"models": registry.names(), "default": registry.default_name})


def _publish(registry: ModelRegistry, metrics: Metrics) -> None:
    for engine in registry.engines():
        metrics.model_info.labels(engine.name, engine.version, ",".join(engine.providers)).set(1)
    metrics.models_loaded.set(len(registry.names()))


def create_app(settings: Settings | None = None, registry: ModelRegistry | None = None) -> FastAPI:
    """The service. `registry` may be passed already loaded (tests share one between apps)."""
    settings = settings or Settings()
    registry = registry or build_registry(settings)
    app_metrics = Metrics()
    dataplane = DataPlane(registry, settings, app_metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = None
        if registry.ready:
            _publish(registry, app_metrics)
        else:
            loader = asyncio.create_task(_load(registry, dataplane, app_metrics))
        yield
        if loader is not None and not loader.done():
            loader.cancel()
        await dataplane.aclose()  # requests in flight have finished: let queued batches finish
        log.info("stopped")

    app = FastAPI(title="MADE density models", version="1", description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = app_metrics
    app.state.dataplane = dataplane
    app.add_middleware(RequestMiddleware, metrics=app_metrics,
                       max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    # Only a server with a key declares the bearer scheme, so the OpenAPI document tells the truth.
    protected = [Depends(require_api_key)] if settings.api_key is not None else []
    app.include_router(models.router, dependencies=protected)
    app.include_router(inference.router, dependencies=protected)
    return app

