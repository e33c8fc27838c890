"""Cooperative cancellation of engine work whose caller has gone (its request timed out, the
server is shutting down).

A thread cannot be killed, so long engine calls stop themselves: they go through the network
in chunks and call `checkpoint()` between chunks, which raises `Abandoned` once the caller
cancelled the token it runs under. The token travels in a context variable: the service sets
it (`running_under`) in the request's context, which anyio copies into the worker thread that
runs the call, so no engine signature carries it. Work run with no token is never abandoned.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator


class Abandoned(Exception):
    """Raised inside an engine call at a checkpoint after its token was cancelled: nobody waits
    for the answer any more. Not a MadeError: it never reaches a client."""


class CancelToken:
    """Set once by the waiting side (the event loop), read by the working thread."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: str | None = None  # None: not cancelled

    def cancel(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    @property
    def cancelled(self) -> bool:
        return self.reason is not None


_current: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("made_cancel", default=None)


def checkpoint() -> None:
    """Raise Abandoned if the work running here was cancelled; call it between chunks."""
    token = _current.get()
    if token is not None and token.reason is not None:
        raise Abandoned(token.reason)


@contextlib.contextmanager
def running_under(token: CancelToken) -> Iterator[CancelToken]:
    """Engine calls started (in threads) within this block run under `token`."""
    reset = _current.set(token)
    try:
        yield token
    finally:
        _current.reset(reset)
