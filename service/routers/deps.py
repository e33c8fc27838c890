"""Dependencies shared by the routers, as aliases that keep route signatures short."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.dataplane import DataPlane
from service.errors import Unauthorized
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="MADE_API_KEY, when the server sets one")


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
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries `Authorization: Bearer <MADE_API_KEY>` (when one is set)."""
    if settings.api_key is None:
        return
    if credentials is None:
        raise Unauthorized("this server requires an API key: send 'Authorization: Bearer <key>'")
    # Constant time: the comparison must not reveal how many leading bytes matched.
    if not hmac.compare_digest(credentials.credentials.encode(),
                               settings.api_key.get_secret_value().encode()):
        raise Unauthorized("the API key in the Authorization header is wrong")
