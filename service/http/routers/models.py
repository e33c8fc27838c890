"""The models this server holds."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

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
