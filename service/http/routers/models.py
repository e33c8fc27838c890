"""The models this server holds."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from service.core.schemas import ErrorResponse, ModelsResponse
from service.http.routers.deps import DataPlaneDep

router = APIRouter(tags=["models"])


@router.get("/models")
async def list_models(dp: DataPlaneDep) -> ModelsResponse:
    """Every loaded model (its highest version) and which one is the default."""
    return dp.models()


@router.get("/models/{name}", responses={404: {"model": ErrorResponse, "description": "unknown"}})
async def get_model(name: str, dp: DataPlaneDep) -> dict[str, Any]:
    """The manifest of one model."""
    return dp.manifest(name)


@router.get(
    "/models/{name}/reference",
    response_class=Response,
    responses={
        200: {"content": {"application/json": {}}, "description": "reference.json of the served version"},
        404: {"model": ErrorResponse, "description": "unknown model, or its version has no reference.json"},
    },
)
async def get_reference(name: str, dp: DataPlaneDep) -> Response:
    """What the served version's answers are set beside (its reference.json, read at load): the
    log p quantiles of held-out rows (q = 0, 0.01, ..., 1), up to 16 held-out rows, and every
    column's training marginal."""
    return Response(content=dp.reference(name), media_type="application/json")
