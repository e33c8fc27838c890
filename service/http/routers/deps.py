"""Dependencies shared by the routers, as aliases that keep route signatures short."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.core.dataplane import DataPlane
from service.http.auth import bearer_token, same_key
from service.http.errors import Unauthorized
from service.settings import Settings

# The bearer schemes declare the key in the OpenAPI document; what a request carries is read by
# service.http.auth.bearer_token, the one parser of the Authorization header (the CSV middleware and
# the express /logprob handler use it too).
_bearer = HTTPBearer(auto_error=False, description="MADE_API_KEY, when the server sets one")
_admin_bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminKey", description="MADE_ADMIN_KEY, or MADE_API_KEY when no admin key is set"
)


# async, though they only read app.state: FastAPI runs a sync dependency in a worker thread.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_dataplane(request: Request) -> DataPlane:
    dataplane: DataPlane = request.app.state.dataplane
    return dataplane


SettingsDep = Annotated[Settings, Depends(get_settings)]
DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]


async def require_api_key(
    request: Request,
    settings: SettingsDep,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries `Authorization: Bearer <MADE_API_KEY>` (when one is set)."""
    if settings.api_key is None:
        return
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise Unauthorized("this server requires an API key: send 'Authorization: Bearer <key>'")
    if not same_key(token, settings.api_key):
        raise Unauthorized("the API key in the Authorization header is wrong")


def not_ready_reason(request: Request, dp: DataPlane) -> str:
    """Why the models are not served yet, as the open readiness probes (/readyz,
    /v2/health/ready) say it. The reason of a failed load names the store's paths, files and
    checksums: on a server with an API key it goes only to a request that carries the key (and
    to the log); an open probe without it is told where to look. Probes read the status only."""
    if dp.load_error is None:
        return "models are still loading"
    settings: Settings = request.app.state.settings
    if settings.api_key is not None and not _carries(request, settings.api_key):
        return "models failed to load; the server log says why (or send the API key for the reason)"
    return dp.load_error


def _carries(request: Request, key: SecretStr) -> bool:
    token = bearer_token(request.headers.get("authorization"))
    return token is not None and same_key(token, key)


def admin_key(settings: Settings) -> tuple[SecretStr, str] | None:
    """The key admin endpoints answer to and its variable: MADE_ADMIN_KEY, else MADE_API_KEY;
    None when neither is set, and the admin endpoints are off."""
    if settings.admin_key is not None:
        return settings.admin_key, "MADE_ADMIN_KEY"
    if settings.api_key is not None:
        return settings.api_key, "MADE_API_KEY"
    return None


async def require_admin_key(
    request: Request,
    settings: SettingsDep,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    """401 unless the request carries `Authorization: Bearer <admin key>` (see admin_key); the
    app mounts the admin endpoints only when there is one."""
    key = admin_key(settings)
    if key is None:  # not mounted then; refuse all the same
        raise Unauthorized("admin endpoints are off: the server has no MADE_ADMIN_KEY")
    secret, variable = key
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise Unauthorized(f"admin endpoints require the admin key: send 'Authorization: Bearer <{variable}>'")
    if not same_key(token, secret):
        raise Unauthorized("the admin key in the Authorization header is wrong")
