"""Administration: reload the model store without a restart (behind the API key when one is set)."""

from __future__ import annotations

import os
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from made.errors import ModelStoreError
from service.errors import NotReady
from service.routers.deps import DataPlaneDep
from service.schemas import ErrorResponse

router = APIRouter(prefix="/admin", tags=["admin"])


class ReloadEntry(BaseModel):
    name: str
    version: str
    status: Literal["loaded", "unchanged", "refused", "kept"] = Field(
        description="loaded: served from now on; unchanged: already served; refused: broken, not "
                    "served (see reason); kept: still served though the store no longer offers it")
    reason: str | None = Field(None, description="refused or kept: why")
    previous: str | None = Field(None, description="loaded: the version it replaced")
    cached: bool = Field(False, description="refused: refused before for the same files, not "
                                            "tried again")


class ReloadResponse(BaseModel):
    results: list[ReloadEntry] = Field(description="one entry per model version looked at")
    models: dict[str, str] = Field(description="model name -> version served after the reload")
    default: str | None
    pid: int = Field(description="the server process that reloaded (each of MADE_WORKERS "
                                 "reloads on its own)")


@router.post("/reload", responses={
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    503: {"model": ErrorResponse, "description": "store unreadable, or no model loads"},
})
async def reload(dp: DataPlaneDep) -> ReloadResponse:
    """Serve each model's newest version that loads; broken versions are refused with a reason."""
    report = await dp.reload()
    if report.error:
        raise NotReady(report.error) if not report.ready else ModelStoreError(report.error)
    return ReloadResponse(
        results=[ReloadEntry(name=r.name, version=r.version, status=r.status, reason=r.reason,
                             previous=r.previous, cached=r.cached) for r in report.results],
        models=report.served, default=report.default, pid=os.getpid())
