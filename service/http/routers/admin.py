"""Administration: reload the model store without a restart.

Closed by default, like Triton's restricted APIs: the admin endpoints answer only with
`Authorization: Bearer <MADE_ADMIN_KEY>` (or `<MADE_API_KEY>` when only that is set), and a
server with neither key serves `off_router` instead, which answers every /admin path 404 with
the reason. Store polling (MADE_RELOAD_INTERVAL) needs no endpoint.
"""

from __future__ import annotations

import os
from typing import Literal, NoReturn

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from made.core.errors import ModelStoreError
from service.core.schemas import ErrorResponse
from service.http.errors import NotReady
from service.http.routers.deps import DataPlaneDep

router = APIRouter(prefix="/admin", tags=["admin"])
off_router = APIRouter(prefix="/admin", include_in_schema=False)

ADMIN_OFF = (
    "admin endpoints are off: the server has neither MADE_ADMIN_KEY nor MADE_API_KEY "
    "(set one, then send it as 'Authorization: Bearer <key>'; MADE_RELOAD_INTERVAL "
    "reloads the store without them)"
)


class ReloadEntry(BaseModel):
    name: str
    version: str
    status: Literal["loaded", "unchanged", "refused", "kept"] = Field(
        description="loaded: served from now on; unchanged: already served; refused: broken, not "
        "served (see reason); kept: still served though the store no longer offers it"
    )
    reason: str | None = Field(None, description="refused or kept: why")
    previous: str | None = Field(None, description="loaded: the version it replaced")
    cached: bool = Field(False, description="refused: refused before for the same files, not tried again")


class ReloadResponse(BaseModel):
    results: list[ReloadEntry] = Field(description="one entry per model version looked at")
    models: dict[str, str] = Field(description="model name -> version served after the reload")
    default: str | None
    pid: int = Field(description="the server process that reloaded (each of MADE_WORKERS reloads on its own)")


@router.post(
    "/reload",
    responses={
        401: {
            "model": ErrorResponse,
            "description": "missing or wrong admin key (MADE_ADMIN_KEY, or MADE_API_KEY when no admin key is set)",
        },
        503: {"model": ErrorResponse, "description": "store unreadable, or no model loads"},
    },
)
async def reload(dp: DataPlaneDep) -> ReloadResponse:
    """Serve each model's newest version that loads; broken versions are refused with a reason."""
    report = await dp.reload()
    if report.error:
        raise NotReady(report.error) if not report.ready else ModelStoreError(report.error)
    return ReloadResponse(
        results=[
            ReloadEntry(
                name=r.name, version=r.version, status=r.status, reason=r.reason, previous=r.previous, cached=r.cached
            )
            for r in report.results
        ],
        models=report.served,
        default=report.default,
        pid=os.getpid(),
    )


@off_router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], response_model=None)
async def admin_off(path: str) -> NoReturn:
    """Every /admin path on a server without an admin key: 404, saying why."""
    raise HTTPException(404, ADMIN_OFF)
