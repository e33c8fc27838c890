"""Liveness and readiness: open even when an API key is set (probes carry none)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.core.schemas import ErrorResponse, HealthResponse, ReadyResponse
from service.http.errors import NotReady
from service.http.routers.deps import DataPlaneDep, not_ready_reason

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> HealthResponse:
    """200 while the process runs."""
    return HealthResponse()


@router.get("/readyz", responses={503: {"model": ErrorResponse, "description": "not ready"}})
async def readyz(request: Request, dp: DataPlaneDep) -> ReadyResponse:
    """200 once the models are loaded, else 503 with the reason (with MADE_API_KEY set, to a
    request that carries the key)."""
    if not dp.registry.ready:
        raise NotReady(not_ready_reason(request, dp))
    return ReadyResponse(models=dp.registry.names(), default=dp.registry.default_name)
