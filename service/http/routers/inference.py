"""Inference: log-probabilities, conditionals, samples, imputations, denoising. Each names its
model or gets the default; the data plane does the work. POST /logprob also has an express
handler (ExpressLogprob) for its common small JSON request."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import ConfigDict, Field, SecretStr, Strict, TypeAdapter, ValidationError, create_model
from starlette.types import Receive, Scope, Send

from service.core.body_bounds import decode_json
from service.core.dataplane import DataPlane
from service.core.schemas import (
    ConditionalsRequest,
    ConditionalsResponse,
    DenoiseRequest,
    DenoiseResponse,
    ErrorResponse,
    ImputeRequest,
    ImputeResponse,
    LogProbRequest,
    LogProbResponse,
    SampleRequest,
    SampleResponse,
)
from service.http.accept import JSON, PNG, offers, preferred
from service.http.auth import carries_key
from service.http.routers.deps import DataPlaneDep


class _JsonBody(Request):
    """A request whose JSON body FastAPI decodes (once, by Request.json) with the one decoder of
    JSON bodies, service.core.body_bounds.decode_json: a key named twice is a 422 naming it
    (service.http.errors answers the error FastAPI wraps), not the last value silently."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = decode_json(await self.body())
        return self._json


class JsonBodyRoute(APIRoute):
    """A route whose JSON body is read by _JsonBody."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def json_body_handler(request: Request) -> Response:
            return await handler(_JsonBody(request.scope, request.receive))

        return json_body_handler


router = APIRouter(tags=["inference"], route_class=JsonBodyRoute)

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "unknown model"},
    413: {"model": ErrorResponse, "description": "body over MADE_MAX_BODY_BYTES"},
    415: {"model": ErrorResponse, "description": "body sent as another type than application/json"},
    422: {"model": ErrorResponse, "description": "invalid input: names the row, column, problem"},
    503: {"model": ErrorResponse, "description": "models not loaded yet"},
    504: {"model": ErrorResponse, "description": "over MADE_REQUEST_TIMEOUT"},
}


def _csv_body(*options: tuple[str, str, str]) -> dict[str, Any]:
    """openapi_extra of a route that also reads a CSV body (service.http.csv_records): the
    text/csv request body and the query parameters that carry a CSV request's options."""
    model = ("model", "string", "the model (the default model when left out); CSV bodies only")
    return {
        "requestBody": {
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "description": "records with a header row, read by the one CSV reader (docs/api.md)",
                }
            }
        },
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": text}
            for name, kind, text in (model, *options)
        ],
    }


_SEED = ("seed", "integer", "CSV bodies: the seed of the draws")
_FIRST_ROW = (
    "first_row",
    "integer",
    "CSV bodies: the index of the first record in a larger call split into requests (rows draw from "
    "default_rng([seed, first_row + i]))",
)
_N_IMPORTANCE = ("n_importance", "integer", "CSV bodies: importance draws per mask")
_MASKS = ("masks", "string", "CSV bodies: 'all' or a number of masks")


@router.post(
    "/logprob",
    responses=ERRORS,
    response_model_exclude_none=True,
    openapi_extra=_csv_body(
        _SEED, _FIRST_ROW, _N_IMPORTANCE, _MASKS, ("explain", "boolean", "CSV bodies: add each column's surprisal")
    ),
)
async def logprob(req: LogProbRequest, dp: DataPlaneDep) -> LogProbResponse:
    """log p(x) per row in nats; missing values (null) summed out."""
    return await dp.logprob(req)


class ExpressLogprob:
    """POST /logprob with a small JSON body of rows, answered by the data plane without the
    app's per-request machinery (exception middleware, routing, dependency injection), which
    on a one-row request costs more than the model: kept because the plain route, measured
    against it side by side, answers far fewer such requests (docs/performance.md). RequestMiddleware
    calls it with the body it has read; the answer is the route's, byte for byte: the values
    the route would validate (express_request), the data plane's answer to them
    (DataPlane.logprob_rows, what the route's DataPlane.logprob runs for rows), the response serialized
    as FastAPI serializes a response model (pydantic's dump_json, response_model_exclude_none),
    errors through the app's own exception handlers. What it is not sure to answer as the route
    would, it declines before doing any work (returns False) and the app answers: another
    content type, a body over EXPRESS_MAX_BYTES, a body its strict parse leaves to the route
    (which then accepts it or names the problem), a body in which a key may be named twice (the
    route's decoder refuses it), an Accept header that does not take JSON (the CSV middleware's
    406), a missing or wrong API key (the route's 401). A dependency added to the route must be
    added here too."""

    EXPRESS_MAX_BYTES = 64 * 1024  # larger requests gain nothing; an invalid one is parsed twice

    def __init__(self, route: APIRoute, dataplane: DataPlane, api_key: SecretStr | None) -> None:
        self.route = route  # scope["route"]: the metrics label, as routing would set it
        self.dataplane = dataplane
        self.api_key = api_key

    async def __call__(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> bool:
        if not body or len(body) > self.EXPRESS_MAX_BYTES:
            return False
        content_type = authorization = accept = None
        for key, value in scope["headers"]:  # the first of each, as Starlette's Headers.get
            if key == b"content-type":
                content_type = content_type or value
            elif key == b"authorization":
                authorization = authorization or value
            elif key == b"accept":
                accept = accept or value
        if content_type is None or content_type.split(b";", 1)[0].strip().lower() != b"application/json":
            return False
        if self.api_key is not None and not carries_key(authorization, self.api_key):
            return False
        if accept is not None and preferred(accept.decode("latin-1"), _JSON_ONLY) != JSON:
            return False
        req = express_request(body)
        if req is None:
            return False
        scope["route"] = self.route
        try:
            answer = await self.dataplane.logprob_rows(
                req.model, req.x, req.masks, req.seed, req.n_importance, req.first_row
            )
        except Exception as exc:
            handler = _handler_of(scope["app"], exc)
            if handler is None:
                raise
            await (await handler(Request(scope, receive), exc))(scope, receive, send)
            return True
        # What Response(content, media_type="application/json") sends, without building one.
        content = _LOGPROB_RESPONSE.dump_json(answer, exclude_none=True)
        headers = [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})
        return True


_LOGPROB_RESPONSE = TypeAdapter(LogProbResponse)
_JSON_ONLY = offers("/logprob")

# The common /logprob body, strictly: rows of JSON 0, 1 and null, the other fields as
# LogProbRequest declares them (limits and all) but only as JSON spells them (no "1" for 1, no
# 1.0, no "true"), no x_b64 or records. Parsed and checked in one pass of pydantic's JSON
# parser, where the route parses with json.loads and checks the rows in Python
# (service.core.fields): for one row that takes longer than the model.
_STRICT = ConfigDict(extra="forbid", strict=True, protected_namespaces=())
_Bit = Annotated[int, Strict(), Field(ge=0, le=1)]
_ExpressBody = create_model(  # type: ignore[call-overload]
    "_ExpressBody",
    __config__=_STRICT,
    x=(list[list[_Bit | None]], ...),
    **{
        name: (field.annotation, field)
        for name, field in LogProbRequest.model_fields.items()
        if name in ("model", "masks", "seed", "first_row", "n_importance", "explain")
    },
)


# A key of the express body where the body has no backslash: no string holds a quote or an escape,
# so each match is a key, and a body that names one twice has more matches than fields set (only
# the top-level object has keys: the rows hold numbers and nulls).
_KEY = re.compile(rb'"(?:%s)"\s*:' % b"|".join(re.escape(name.encode()) for name in _ExpressBody.model_fields))


class ExpressBody(NamedTuple):
    """What express_request read: the fields of LogProbRequest it may set (the others, x_b64,
    shape, records and explain, are at their defaults)."""

    x: np.ndarray
    model: str | None
    masks: Literal["all"] | int
    seed: int | None
    n_importance: int
    first_row: int


def express_request(body: bytes) -> ExpressBody | None:
    """The request the route would validate from this body, or None where the strict parse
    cannot tell (the route then parses it, accepts or names the problem). Every body it accepts,
    LogProbRequest accepts with the same values (tests/test_service_express.py)."""
    try:
        parsed = _ExpressBody.model_validate_json(body)
    except ValidationError:  # not JSON, not UTF-8, another shape, another spelling
        return None
    if b"\\" in body or len(_KEY.findall(body)) != len(parsed.model_fields_set):
        return None  # a key named twice (pydantic keeps the last), or maybe: the route refuses it
    rows = parsed.x
    width = len(rows[0]) if rows else 0
    if not width or any(len(row) != width for row in rows) or parsed.explain:
        return None  # no rows, empty or ragged rows, explain of rows: the route says what is wrong
    return ExpressBody(
        np.array(rows, dtype=np.float32),  # None -> NaN, as _parse_rows converts
        parsed.model,
        parsed.masks,
        parsed.seed,
        parsed.n_importance,
        parsed.first_row,
    )


def _handler_of(app: Any, exc: Exception) -> Callable[[Request, Exception], Awaitable[Response]] | None:
    """The app's exception handler for exc, looked up as Starlette's exception middleware does."""
    handlers = app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers and cls is not Exception:
            handler: Callable[[Request, Exception], Awaitable[Response]] = handlers[cls]
            return handler
    return None


@router.post(
    "/conditionals",
    responses=ERRORS,
    response_model_exclude_none=True,
    openapi_extra=_csv_body(("mask", "integer", "CSV bodies: the mask k (default 0)")),
)
async def conditionals(req: ConditionalsRequest, dp: DataPlaneDep) -> ConditionalsResponse:
    """p(x_d = 1 | the dimensions before d in mask k's ordering), per row and dimension; for a
    table model's records, each column's distribution given the columns before it."""
    return await dp.conditionals(req)


@router.post(
    "/sample",
    response_model=SampleResponse,
    response_model_exclude_none=True,
    responses={
        **ERRORS,
        200: {
            "content": {"image/png": {}},
            "description": "JSON; or, with `Accept: image/png` on a model with image_shape, a grid",
        },
        406: {"model": ErrorResponse, "description": "image/png asked of a model without image_shape"},
    },
)
async def sample(
    req: SampleRequest,
    dp: DataPlaneDep,
    accept: Annotated[str | None, Header()] = None,
    scale: Annotated[int, Query(ge=1, le=16, description="PNG pixels per model pixel")] = 2,
) -> SampleResponse | Response:
    """n exact samples; the same seed on the same model version gives the same samples."""
    if preferred(accept, offers("/sample")) == PNG:  # JSON or CSV: the CSV middleware's choice
        png, seed = await dp.sample_png(req, scale)
        return Response(png, media_type="image/png", headers={"X-Seed": str(seed)})
    return await dp.sample(req)


@router.post(
    "/impute",
    responses=ERRORS,
    response_model_exclude_none=True,
    openapi_extra=_csv_body(
        _SEED, _FIRST_ROW, _N_IMPORTANCE, ("n_samples", "integer", "CSV bodies: completions per record")
    ),
)
async def impute(req: ImputeRequest, dp: DataPlaneDep) -> ImputeResponse:
    """Completions of the missing values (null) given the observed ones, with marginals."""
    return await dp.impute(req)


@router.post("/denoise", responses=ERRORS, response_model_exclude_none=True)
async def denoise(req: DenoiseRequest, dp: DataPlaneDep) -> DenoiseResponse:
    """The clean rows behind noisy ones (each bit flipped with probability eps): per-entry
    marginals p(clean = 1 | noisy), the most likely value of each entry, clean samples,
    log p(noisy) with its standard error and the effective sample size."""
    return await dp.denoise(req)
