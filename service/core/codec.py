"""What each codec of the data plane (bits: service.core.bitplane, records:
service.core.tableplane) runs with, given by the DataPlane that owns it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from service.settings import Settings


class Codec:
    """A codec's settings (its limits), the data plane's engine threads (in_thread: the
    request's fair turn, abandoned when the request times out) and its request timeout (timed:
    MADE_REQUEST_TIMEOUT, with cancellation of the engine calls under it)."""

    def __init__(
        self,
        settings: Settings,
        in_thread: Callable[..., Awaitable[Any]],
        timed: Callable[[Awaitable[Any]], Awaitable[Any]],
    ) -> None:
        self.settings = settings
        self._in_thread = in_thread
        self._timed = timed
