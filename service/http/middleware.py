"""The request middleware (pure ASGI): request id, body size limit, metrics and the access log.

Pure ASGI rather than BaseHTTPMiddleware: it neither buffers responses nor runs the app in
another task, so the request context it sets is the one the handlers see. A path may have an
express handler (service.http.routers.inference.ExpressLogprob) that answers the common request
with the body already read here, ahead of the app's routing and dependency injection; what
it declines, the app answers.

A request to an engine endpoint whose client disconnects before its answer starts is cancelled:
once the body is read, one task per request waits on `receive` for the server's
`http.disconnect` and cancels the request's task, as a request timeout does. Its work that has
not started (waiting for an engine thread, or its pieces waiting for a merged call) is dropped;
an engine call of its own that runs stops at its next checkpoint (service.engine.cancel); a
merged call with other requests' rows runs on, without its share. Counted in
made_disconnected_total, logged once, and its access-log line has status 499.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from made.core.errors import InvalidInput
from service.core.body_bounds import Limits, check_json_async, current_limits
from service.core.log_config import AccessLog, RequestContext, request_context
from service.core.metrics import Metrics
from service.http.errors import error_body, internal_error_body, made_error_body, under_v2

log = logging.getLogger("made.service.access")
access_log = AccessLog(log)

# A body this small cannot hold anything over the bounds that its parse and validation would not
# refuse at once (no number of 4300 digits, a few hundred items): not scanned (the one-row
# /logprob stays as fast as it was).
_UNSCANNED_BYTES = 4096
_SLOW: Literal["slow"] = "slow"  # _read_limited: the body did not arrive in time

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
# The POST paths whose work is the engine's, cancelled when their client disconnects (not
# /admin/reload: a reload cut short in the event loop would leave its bookkeeping half done).
_CANCELLABLE = frozenset({"/logprob", "/conditionals", "/sample", "/impute", "/denoise"})
_CLIENT_GONE = 499  # nginx's "client closed request": the access log's and metrics' status

# A lean handler of one POST path: (scope, body, receive, send) -> whether it answered. One that
# declines (False) has sent nothing, and the app answers the request as usual.
Express = Callable[[Scope, bytes, Receive, Send], Awaitable[bool]]


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        limits: Limits | None = None,
        read_timeout: float | None = None,
        express: Mapping[str, Express] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        # Bounds on a JSON body's structure, checked before it is parsed (service.core.body_bounds).
        self.limits = limits
        # Seconds the body may take to arrive (MADE_READ_TIMEOUT): a slow client gets 408.
        self.read_timeout = read_timeout
        # POST paths with a lean handler that may answer a request before the app (see Express).
        self.express = dict(express or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming, length, content_type = _request_head(scope["headers"])
        # an id that is only an id (not a secret): 128 random bits without a system call
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else f"{random.getrandbits(128):032x}"
        ctx = RequestContext(request_id=request_id)
        token = request_context.set(ctx)
        if self.limits is not None:
            current_limits.set(self.limits)  # the request's own task: gone with it
        start = time.perf_counter()
        status = 500  # until a response starts
        started = False
        self.metrics.requests_in_flight += 1

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = _with_safe_headers(message.get("headers", []), ctx.request_id)
            await send(message)

        try:
            await self._answer(scope, receive, send_with_id, ctx, length, content_type, lambda: started)
        except asyncio.CancelledError:
            if ctx.disconnected and not started and _uncancelled():
                # cancelled by the watch of _answer: nobody to answer
                status = _CLIENT_GONE
                ctx.error_type = "client_disconnected"
                self._gone(scope, ctx, time.perf_counter() - start)
                return
            # The server is shutting down and its grace period is over (uvicorn cancels the
            # requests left): one still waiting or running is told to come back, and its task
            # ends there (re-raised, uvicorn would log the cancellation as an error).
            if started:
                raise
            ctx.error_type = "shutting_down"
            gone = error_body(
                503, "shutting_down", "the server is shutting down; retry the request (another replica may answer)"
            )
            await _send_json(send_with_id, 503, gone, retry_after=1)
        except Exception:
            # Here, not in an exception handler: Starlette's outermost middleware would answer
            # after this request's context (its id) is gone. Re-raised for the server's log.
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started:
                ctx.error_type = "internal_error"
                await _send_json(send_with_id, 500, internal_error_body())
            raise
        finally:
            self.metrics.requests_in_flight -= 1
            self._finished(scope, ctx, status, time.perf_counter() - start)
            request_context.reset(token)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        ctx: RequestContext,
        length: str,
        content_type: bytes,
        started: Callable[[], bool],
    ) -> None:
        """The refusals of the body (too large, too slow, over the bounds), else the express
        handler of the path or the app, with the body read; an engine path's request is
        cancelled if its client disconnects before the answer starts (`started()`)."""
        read = await self._read_limited(scope, receive, length)
        if read is None:
            await self._too_large(send, ctx, content_type, scope["path"])
        elif read == _SLOW:
            await self._too_slow(send, ctx)
        elif (refused := await self._over_bounds(scope, content_type, read[1])) is not None:
            await _send_json(send, 422, refused)
        else:
            replay, body = read
            watch = None
            if body is not None and _cancellable(scope):
                watch = asyncio.get_running_loop().create_task(
                    _until_disconnect(receive, ctx, started, asyncio.current_task())  # type: ignore[arg-type]
                )
                replay = replay_body(body, functools.partial(asyncio.shield, watch))
            try:
                express = self.express.get(scope["path"]) if scope["method"] == "POST" else None
                if express is None or body is None or not await express(scope, body, replay, send):
                    await self.app(scope, replay, send)
            finally:
                if watch is not None:
                    watch.cancel()

    def _gone(self, scope: Scope, ctx: RequestContext, elapsed: float) -> None:
        """Counted and logged once: a request cancelled because its client disconnected."""
        endpoint = getattr(scope.get("route"), "path", None) or scope["path"]
        self.metrics.child(self.metrics.disconnected, endpoint).inc()
        log.info(
            "client disconnected before its answer: request cancelled"
            + ("; its engine call stops at its next checkpoint" if ctx.engine_started else ", its work not started"),
            extra={
                "path": scope["path"],
                "engine_started": ctx.engine_started,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )

    def _finished(self, scope: Scope, ctx: RequestContext, status: int, elapsed: float) -> None:
        """The request's metrics and its access-log line."""
        endpoint = _route_path(scope)
        self.metrics.observe_request(endpoint, ctx.model, status, elapsed, ctx.error_type)
        access_log.info(
            f"{scope['method']} {scope['path']} {status}",
            {
                "request_id": ctx.request_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "model": ctx.model or None,
                "client": (scope.get("client") or ("", 0))[0],
            },
        )

    async def _over_bounds(self, scope: Scope, content_type: bytes, body: bytes | None) -> dict[str, Any] | None:
        """The 422 body for a JSON body over the bounds of service.core.body_bounds, or None. /v2
        checks its own (it may be compressed or carry binary data after its JSON)."""
        if self.limits is None or body is None or len(body) <= _UNSCANNED_BYTES or scope["path"].startswith("/v2"):
            return None
        media = content_type.split(b";", 1)[0].strip().lower()
        if media != b"application/json" and not media.endswith(b"+json"):
            return None
        try:
            await check_json_async(body, self.limits)
        except InvalidInput as exc:
            return made_error_body(exc)[1]
        return None

    async def _read_limited(
        self, scope: Scope, receive: Receive, length: str
    ) -> tuple[Receive, bytes | None] | Literal["slow"] | None:
        """A receive that replays the body and the body (None: not read); None when the body is
        over the limit; _SLOW when it did not arrive within the read timeout."""
        if scope["method"] not in _BODY_METHODS:
            return receive, None
        if length.isdigit() and int(length) > self.max_body_bytes:
            return None  # refused before reading a byte
        if self.read_timeout is None:
            return await self._read_body(receive)
        try:
            async with asyncio.timeout(self.read_timeout):
                return await self._read_body(receive)
        except TimeoutError:
            return _SLOW

    async def _read_body(self, receive: Receive) -> tuple[Receive, bytes | None] | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return receive, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        return replay_body(body, receive), body

    async def _too_slow(self, send: Send, ctx: RequestContext) -> None:
        ctx.error_type = "request_timeout"
        body = error_body(
            408,
            "request_timeout",
            f"the request body did not arrive within {self.read_timeout:g} s (MADE_READ_TIMEOUT); "
            "the connection is closed",
        )
        await _send_json(send, 408, body)

    async def _too_large(self, send: Send, ctx: RequestContext, content_type: bytes = b"", path: str = "") -> None:
        ctx.error_type = "payload_too_large"
        v2 = under_v2(path)
        detail = f"the request body is over {self.max_body_bytes} bytes (MADE_MAX_BODY_BYTES); " + _smaller_body_hint(
            content_type, v2
        )
        body: dict[str, Any] = error_body(413, "payload_too_large", detail)
        if v2:  # the Open Inference Protocol's error field, which its clients read
            body = {"error": detail, **body}
        await _send_json(send, 413, body)


def _smaller_body_hint(content_type: bytes, v2: bool = False) -> str:
    """What makes a body of this type fit: a CSV is split, JSON rows of bits are packed, a /v2
    request's complete rows sent as a byte a value (its limit holds once a gzip body is inflated)."""
    if v2:
        return "send fewer rows per request, or complete rows as binary UINT8 or BOOL data (a byte a value)"
    media = content_type.split(b";", 1)[0].strip().lower()
    if media in (b"text/csv", b"application/csv"):
        return "split the CSV into smaller files (fewer rows per request), or raise MADE_MAX_BODY_BYTES"
    return "send fewer rows or records per request (smaller batches), or rows of bits packed as x_b64"


def _cancellable(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] == "POST" and (path in _CANCELLABLE or (path.startswith("/v2/") and path.endswith("/infer")))


async def _until_disconnect(
    receive: Receive, ctx: RequestContext, started: Callable[[], bool], request: asyncio.Task[Any]
) -> Message:
    """The message after the body (http.disconnect, once the client has gone or the answer is
    sent); a client gone before the answer started cancels the request's task."""
    message = await receive()
    if message["type"] == "http.disconnect" and not started():
        ctx.disconnected = True
        request.cancel("client disconnected")
    return message


def _uncancelled() -> bool:
    """Whether the current task's one pending cancellation (the watch's) is undone: False
    where another (shutdown) is pending too."""
    task = asyncio.current_task()
    return task is not None and task.uncancel() == 0


def _request_head(headers: list[tuple[bytes, bytes]]) -> tuple[str, str, bytes]:
    """X-Request-ID, Content-Length and the first Content-Type of a request ("" where absent)."""
    incoming = length = ""
    content_type = b""
    for key, value in headers:  # ASGI header names are lower-case bytes
        if key == b"x-request-id":
            incoming = value.decode("latin-1")
        elif key == b"content-length":
            length = value.decode("latin-1")
        elif key == b"content-type" and not content_type:
            content_type = value
    return incoming, length, content_type


def _with_safe_headers(headers: Any, request_id: str) -> list[tuple[bytes, bytes]]:
    """A response's headers with its request id, and what every answer of this server carries
    unless its route set its own: `X-Content-Type-Options: nosniff` (an error quotes the path and
    the values sent: a browser must not read such an answer as anything but its type) and
    `Cache-Control: no-store` (an answer to a request with the API key is no cache's to keep or
    share; the playground's files set their own)."""
    out = [*headers, (b"x-request-id", request_id.encode())]
    names = {key.lower() for key, _ in out}
    if b"x-content-type-options" not in names:
        out.append((b"x-content-type-options", b"nosniff"))
    if b"cache-control" not in names:
        out.append((b"cache-control", b"no-store"))
    return out


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` as the whole request, then waits on `receive` (the disconnect),
    as Starlette does after a body."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_json(send: Send, status: int, body: dict[str, Any], retry_after: int | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _route_path(scope: Scope) -> str:
    """The route a request's metrics are labelled with: the one that answered it, else the one of
    the app's documented routes (its OpenAPI paths) that its path matches (a body refused before
    routing: over its bounds, too large, too slow), else "unmatched" (no such endpoint): a
    bounded set of labels either way."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return str(route.path)
    app = scope.get("app")
    if app is None:
        return "unmatched"
    patterns = _ROUTE_PATTERNS.get(app)
    if patterns is None:
        paths = app.openapi().get("paths", {}) if hasattr(app, "openapi") else {}
        patterns = _ROUTE_PATTERNS[app] = [
            (re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)) + "$"), path) for path in paths
        ]
    return next((path for pattern, path in patterns if pattern.match(scope["path"])), "unmatched")


# Each app's documented routes as (pattern, path template), made once (_route_path).
_ROUTE_PATTERNS: weakref.WeakKeyDictionary[Any, list[tuple[re.Pattern[str], str]]] = weakref.WeakKeyDictionary()
