"""Errors mapped to HTTP in one place: a status and a one-sentence `detail` for each.

The domain errors come from made.core.errors (the engine raises them); the few that only HTTP has
(401, 413, 503, 504) live here. Every error body has the same shape:
`{"detail": "<one sentence>", "type": "<snake_case kind>", "request_id": "...", "errors"?: [...]}`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from made.core.errors import (
    ConfigError,
    DataError,
    InvalidInput,
    MadeError,
    ModelNotFound,
    ModelStoreError,
    NotAcceptable,
    NotReady,
    Overloaded,
    RequestTimeout,
)
from service.core.fields import REFUSED, json_value
from service.core.log_config import current_request_id, request_context

log = logging.getLogger("made.service")

# Problems a 422 lists in its `errors` (its detail names the first five and counts the rest).
MAX_LISTED = 10


class Unauthorized(MadeError):
    """The API key is configured and the request lacks it or carries a wrong one."""


class PayloadTooLarge(MadeError):
    """The body is over MADE_MAX_BODY_BYTES."""


# Most specific first: ModelNotFound is a ModelStoreError.
_STATUS: Sequence[tuple[type[MadeError], int, str]] = (
    (ModelNotFound, 404, "model_not_found"),
    (InvalidInput, 422, "invalid_input"),
    (DataError, 422, "invalid_input"),
    (Unauthorized, 401, "unauthorized"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (NotAcceptable, 406, "not_acceptable"),
    (NotReady, 503, "not_ready"),
    (Overloaded, 503, "overloaded"),
    (ModelStoreError, 503, "model_store_error"),
    (RequestTimeout, 504, "timeout"),
    (ConfigError, 500, "config_error"),
)


def status_of(exc: MadeError) -> tuple[int, str]:
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "error"


def error_body(status: int, kind: str, detail: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": detail, "type": kind, "request_id": current_request_id()}
    body.update(extra)
    return body


def error_response(
    status: int, kind: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    ctx = request_context.get()
    if ctx is not None:
        ctx.error_type = kind  # a metrics label
    headers = {**(headers or {}), **({"WWW-Authenticate": "Bearer"} if status == 401 else {})}
    return JSONResponse(error_body(status, kind, detail, **extra), status_code=status, headers=headers)


def made_error_body(exc: MadeError) -> tuple[int, dict[str, Any]]:
    """The status and body of a domain error, as every route answers it: a 422 lists its problem
    under `errors` (the shape of a validation error); the error type goes to the metrics."""
    status, kind = status_of(exc)
    ctx = request_context.get()
    if ctx is not None:
        ctx.error_type = kind  # a metrics label
    extra: dict[str, Any] = {}
    if status == 422:
        loc = list(getattr(exc, "loc", ()))
        where = loc if loc[:1] in (["query"], ["header"], ["path"]) else ["body", *loc]  # FastAPI's own roots
        extra["errors"] = [{"loc": where, "msg": str(exc), "type": kind}]
    return status, error_body(status, kind, str(exc), **extra)


def internal_error_body() -> dict[str, Any]:
    """A bug, not bad input: the client learns only the request id; the log has the traceback."""
    return error_body(500, "internal_error", "internal error; the server log has the details under this request id")


def describe_validation_error(err: Mapping[str, Any]) -> str:
    """One sentence for one pydantic error: where (field, row, column) and what was wrong."""
    loc = [p for p in err.get("loc", ()) if p != "body"]
    kind = str(err.get("type", ""))
    msg = str(err.get("msg", "invalid value"))
    field = _format_loc(loc)
    if kind == "json_invalid":
        ctx = err.get("ctx") or {}
        return f"the request body is not valid JSON ({ctx.get('error', msg)})"
    if kind == "missing":
        return f"{field} is required" if field else "the request needs a JSON body"
    if kind == "extra_forbidden":
        return f"{field} is not a field of this request"
    if kind == "model_attributes_type" or (kind == "dict_type" and not loc):
        return "the request body must be a JSON object"
    if kind != REFUSED:  # ours name row and column; pydantic's need the value
        msg = msg[:1].lower() + msg[1:]
        if "input" in err:
            msg += f", got {json_value(err['input'])}"
    return f"{field}: {msg}" if field else msg


def _format_loc(loc: Sequence[Any]) -> str:
    """("x", 3, 5) -> "x row 3, column 5"; ("mask",) -> "mask"."""
    names = [str(p) for p in loc if isinstance(p, str)]
    idx = [p for p in loc if isinstance(p, int)]
    where = ".".join(names)
    if idx:
        parts = [f"row {idx[0]}"] + ([f"column {idx[1]}"] if len(idx) > 1 else [])
        where = f"{where} {', '.join(parts)}" if where else ", ".join(parts)
    return where


def unreadable_body(exc: StarletteHTTPException) -> str | None:
    """What made a request body unreadable where FastAPI says only "There was an error parsing
    the body" (a 400 raised from the decoding error): bytes that are not UTF-8, or JSON nested
    deeper than the parser's recursion; None for any other HTTP error."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start : cause.start + 1].hex()
        return f"the request body is not valid JSON (not UTF-8: byte 0x{byte} at position {cause.start})"
    if isinstance(cause, RecursionError):
        return "the request body is not valid JSON here: its arrays or objects nest too deeply"
    return None


def compressed(request: Request) -> JSONResponse | None:
    """The 415 for a body sent with a Content-Encoding (only the /v2 inference endpoints decode
    gzip and deflate), once that body failed to parse as JSON; None for a plain body."""
    coding = request.headers.get("content-encoding", "").strip().lower()
    if coding in ("", "identity"):
        return None
    detail = (
        f"Content-Encoding '{coding}' is not supported here: send the request body uncompressed "
        "(the /v2 inference endpoints take gzip and deflate)"
    )
    return error_response(415, "unsupported_media_type", detail)


async def _made_error(request: Request, exc: MadeError) -> JSONResponse:
    status, body = made_error_body(exc)
    if status >= 500 and status != 503 and status != 504:
        log.error("request failed: %s", exc, extra={"error_type": body["type"]})
    retry = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry)} if retry is not None else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    if exc.errors() and exc.errors()[0].get("type") == "json_invalid" and (refused := compressed(request)):
        return refused
    problems = exc.errors()
    errors = [  # the first few, never the body: the detail counts the rest
        {"loc": list(e.get("loc", ())), "msg": describe_validation_error(e), "type": e.get("type")}
        for e in problems[:MAX_LISTED]
    ]
    content_type = request.headers.get("content-type", "")
    if errors and errors[0]["loc"] == ["body"] and "json" not in content_type:
        detail = (
            f"the request body must be JSON, sent with 'Content-Type: application/json' (got '{content_type}')"
            if content_type
            else "the request needs a JSON body, sent with 'Content-Type: application/json'"
        )
        if content_type:  # a body of another type: 415, as clients expect
            return error_response(415, "unsupported_media_type", detail)
        return error_response(
            422, "invalid_input", detail, errors=[{"loc": ["body"], "msg": detail, "type": "missing"}]
        )
    detail = "; ".join(dict.fromkeys(e["msg"] for e in errors[:5]))  # dedupe, keep order
    if len(problems) > 5:
        detail += f"; and {len(problems) - 5} more"
    return error_response(422, "invalid_input", detail, errors=errors)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and isinstance(exc.__cause__, MadeError):
        # the body decoder's own refusal (a key named twice), which FastAPI's parse wraps in a 400
        return await _made_error(request, exc.__cause__)
    if (unreadable := unreadable_body(exc)) is not None:  # the same answer as a body that is not JSON
        if refused := compressed(request):
            return refused
        errors = [{"loc": ["body"], "msg": unreadable, "type": "json_invalid"}]
        return error_response(422, "invalid_input", unreadable, errors=errors)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no endpoint at {request.url.path} (see /docs)"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    # under /v2 the Open Inference Protocol's clients read {"error"} (tritonclient fails without it)
    extra = {"error": detail} if under_v2(request.url.path) else {}
    return error_response(exc.status_code, kind, detail, headers=exc.headers, **extra)


def under_v2(path: str) -> bool:
    """A path of the Open Inference Protocol, whose clients read an error's {"error"} field."""
    return path == "/v2" or path.startswith("/v2/")


def install_error_handlers(app: FastAPI) -> None:
    """The one place where exceptions become HTTP responses; no traceback ever reaches a client."""
    app.add_exception_handler(MadeError, _made_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
