"""The Open Inference Protocol (KServe v2, as Triton speaks it over HTTP) beside the API.

    GET  /v2                                server metadata: name, version, extensions
    GET  /v2/health/live, /v2/health/ready  liveness; readiness (503 until models are loaded)
    GET  /v2/models/{name}[/versions/{v}]   model metadata: input x, the outputs below
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

A model of bits takes one input, `x` ([N, D], FP32 with NaN for a missing value; FP64 and the
integer and BOOL types are read too, for complete rows), and gives these outputs:

    logprob       FP64 [N]     what POST /logprob answers for the same rows ("masks", "seed",
    exact         BOOL [N]     "n_importance" as request parameters)
    stderr        FP64 [N]     NaN where exact (null in JSON)
    conditionals  FP64 [N, D]  what POST /conditionals answers (parameter "mask", default 0)
    samples       UINT8 [n, D] what POST /sample answers for parameters "n", "seed" and "mask"
                               (default "mixture"); needs no input

Without `outputs`, the answer holds `logprob` when x is sent and `samples` when parameters.n is.
The response's parameters carry the `seed` used, when anything was random. Each output goes
through the same data-plane call as its endpoint (same checks, limits, batching and metrics),
with the request built from the tensor; only the tensor's own checks (shape, datatype, 0/1/NaN
values) are made here. Triton's binary tensor data extension is supported both ways (inputs
with "binary_data_size", outputs with "binary_data" or the request's "binary_data_output",
with the Inference-Header-Content-Length header), and gzip or deflate request bodies.

Errors are `{"error": "<one sentence>"}` as the protocol says (with the `detail`, `type` and
`request_id` every error of this server has): 400 for a bad request, 404 for an
unknown model or version, 401 without the API key (when MADE_API_KEY is set; the two health
endpoints are open, like /healthz and /readyz), 503 before the models are loaded. Models of a
table's columns are not served here (400 naming the model): they answer /logprob with records.

The tensor codec (decoding inputs, encoding outputs) is service.http.oip_tensors; here each
output is one data-plane call, with the request that endpoint would have parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from made.core.errors import InvalidInput, MadeError, ModelNotFound
from service.core.body_bounds import check_json_async
from service.core.dataplane import DataPlane
from service.core.log_config import request_context
from service.core.request_checks import new_seed
from service.core.schemas import ConditionalsRequest, LogProbRequest, SampleRequest
from service.engine.engine import Engine
from service.http.errors import NotReady, error_body, status_of
from service.http.oip_tensors import (
    HEADER_LENGTH,
    OUTPUTS,
    InferRequest,
    check_bits,
    decompress,
    describe,
    encode_response,
    parse_request,
    read_tensors,
    split_body,
    wanted_outputs,
)
from service.http.routers.deps import DataPlaneDep, SettingsDep, not_ready_reason

PLATFORM = "onnxruntime_onnx"  # what Triton calls an ONNX model run by onnxruntime
EXTENSIONS = ["binary_tensor_data"]
WHERE = "the Open Inference Protocol (/v2)"

_LOGPROB_OUTPUTS = {"logprob", "exact", "stderr"}
_NEEDS_X = _LOGPROB_OUTPUTS | {"conditionals"}

# Request parameters: ours, the extension's, and Triton's reserved ones (accepted, ignored: this
# server has its own timeout, MADE_REQUEST_TIMEOUT, and no sequences or priorities).
_PARAMETERS = ("n", "seed", "mask", "masks", "n_importance", "binary_data_output")
_IGNORED = {"priority", "timeout", "sequence_id", "sequence_start", "sequence_end"}
# Which request each parameter belongs to (the request validates it, as its endpoint does).
_LOGPROB_PARAMETERS = ("masks", "seed", "n_importance")
_SAMPLE_PARAMETERS = ("n", "seed", "mask")


def server_version() -> str:
    try:
        return version("made")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from made import __version__

        return __version__


# --- errors as the protocol has them -----------------------------------------------------------


def error_response(exc: MadeError) -> JSONResponse:
    """{"error": message} with the status the rest of the API gives, but 400 for bad input
    (the protocol's status for a request it cannot serve)."""
    status, kind = status_of(exc)
    if status == 422:
        status = 400
    retry = getattr(exc, "retry_after", None)  # 503 overloaded: when to retry, as the API says it
    return _error(status, kind, str(exc), retry_after=retry)


def _error(status: int, kind: str, message: str, retry_after: int | None = None) -> JSONResponse:
    ctx = request_context.get()
    if ctx is not None:
        ctx.error_type = kind  # a metrics label, as for every other endpoint
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    # The protocol's {"error"}, and the fields every error of this server has besides.
    return JSONResponse({"error": message, **error_body(status, kind, message)}, status_code=status, headers=headers)


class V2ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong, in one sentence (the protocol's field)")
    detail: str = Field(description="the same sentence, as every error of this server has it")
    type: str = Field(description="invalid_input, model_not_found, unauthorized, ...")
    request_id: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": V2ErrorResponse, "description": "a request this model cannot serve (names the problem)"},
    401: {"model": V2ErrorResponse, "description": "no or a wrong API key (when MADE_API_KEY is set)"},
    404: {"model": V2ErrorResponse, "description": "unknown model or version"},
    503: {"model": V2ErrorResponse, "description": "models not loaded yet, or overloaded (Retry-After)"},
}
INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "description": "the inference response: JSON, followed by binary tensor data when an output "
        f"asked for it ({HEADER_LENGTH} gives the JSON part's length)",
        "content": {"application/json": {"schema": {"type": "object"}}, "application/octet-stream": {}},
    },
    413: {"model": V2ErrorResponse, "description": "body over MADE_MAX_BODY_BYTES"},
    504: {"model": V2ErrorResponse, "description": "over MADE_REQUEST_TIMEOUT"},
}


class V2Route(APIRoute):
    """A route whose errors, the API key's 401 included (dependencies run inside the handler),
    answer {"error": ...} instead of the API's {"detail", "type", "request_id"}."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def v2_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except MadeError as exc:
                return error_response(exc)
            except RequestValidationError as exc:
                return _error(400, "invalid_input", describe(exc.errors()))
            except StarletteHTTPException as exc:
                message = exc.detail if isinstance(exc.detail, str) else "request failed"
                return _error(exc.status_code, "http_error", message)

        return v2_handler


# --- one inference ---------------------------------------------------------------------------


def _validated(cls: type[BaseModel], params: dict[str, Any], names: Sequence[str], **fields: Any) -> Any:
    """The endpoint's own request model, validating the parameters it takes (the rows are set
    after: they arrive as a tensor, not as the JSON lists its validator reads)."""
    body = {**{k: params[k] for k in names if k in params}, **fields}
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput(describe(exc.errors(), prefix="parameters")) from None


async def infer(dp: DataPlane, engine: Engine, req: InferRequest, binary: bytes, pinned: str | None = None) -> Response:
    """The request's outputs from the model's served version; `pinned` (/versions/{v}/infer): the
    version asked for, a 404 if another answered (a reload while the request was read or queued)."""
    unknown = sorted(set(req.parameters) - set(_PARAMETERS) - _IGNORED)
    if unknown:
        raise InvalidInput(f"unknown parameter {unknown[0]!r}; the parameters are {', '.join(_PARAMETERS)}")
    tensors = read_tensors(req, binary, dp.limits)
    extra = sorted(set(tensors) - {"x"})
    if extra:
        raise InvalidInput(
            f"unknown input {extra[0]!r}: model '{engine.name}' takes one input, x ([N, "
            f"{engine.dims}], FP32, NaN for a missing value)"
        )
    x = tensors.get("x")
    wanted = wanted_outputs(req, x is not None)
    names = {n for n, _ in wanted}
    if names & _NEEDS_X:
        first = next(n for n, _ in wanted if n in _NEEDS_X)
        if x is None:
            raise InvalidInput(f"output {first} needs input x ([N, {engine.dims}], FP32, NaN for a missing value)")
        if x.ndim != 2:
            raise InvalidInput(f"input x must have shape [N, D] (N rows of {engine.dims} values), got {list(x.shape)}")
        if len(x) == 0:
            raise InvalidInput("input x holds no rows; send at least one")
        check_bits(x, allow_missing="conditionals" not in names, output="conditionals")
    params = dict(req.parameters)
    params.setdefault("seed", new_seed())  # one seed for every random output, sent back
    values: dict[str, np.ndarray] = {}
    version, seed = engine.version, None
    if names & _LOGPROB_OUTPUTS:
        lp_req: LogProbRequest = _validated(LogProbRequest, params, _LOGPROB_PARAMETERS, model=engine.name, x=[[0]])
        lp = await dp.logprob(lp_req.model_copy(update={"x": x}))
        values["logprob"] = np.asarray(lp.logprob, dtype=np.float64)
        values["exact"] = np.asarray(lp.exact, dtype=np.bool_)
        values["stderr"] = np.array([np.nan if s is None else s for s in lp.stderr], dtype=np.float64)
        version = lp.version
        if lp.seed is not None:  # rows with missing values: importance draws
            seed = lp.seed
    if "conditionals" in names:
        c_req: ConditionalsRequest = _validated(ConditionalsRequest, params, ("mask",), model=engine.name, x=[[0]])
        cond = await dp.conditionals(c_req.model_copy(update={"x": x}))
        values["conditionals"] = np.asarray(cond.probs, dtype=np.float64).reshape(-1, engine.dims)
        version = cond.version
    if "samples" in names:
        if "n" not in req.parameters:
            raise InvalidInput(
                "output samples needs parameters.n, the number of samples (and parameters.seed to repeat them)"
            )
        s_req: SampleRequest = _validated(
            SampleRequest, params, _SAMPLE_PARAMETERS, model=engine.name, encoding="packed"
        )
        sampled = await dp.sample(s_req)
        values["samples"] = sampled.array().reshape(-1, engine.dims)
        version, seed = sampled.version, sampled.seed
    _check_pinned(engine.name, pinned, version)
    return encode_response(engine.name, version, req.id, seed, wanted, values)


# --- the routes ------------------------------------------------------------------------------


def _check_pinned(name: str, pinned: str | None, version: str) -> None:
    """A request pinned to a version (/versions/{v}/infer) answered by another (a reload while
    it waited): a 404 naming both, not the other version's answer."""
    if pinned is not None and version != pinned:
        raise ModelNotFound(
            f"model '{name}' has no version '{pinned}' served: version '{version}' replaced it while this request ran"
        )


def _engine(dp: DataPlane, name: str, model_version: str | None) -> Engine:
    engine = dp.engine(name).bits(WHERE)  # a model that reads no rows refuses, naming what it answers
    if model_version is not None and model_version != engine.version:
        raise ModelNotFound(
            f"model '{name}' has no version '{model_version}' served (it serves version '{engine.version}')"
        )
    return engine


def model_metadata(engine: Engine) -> dict[str, Any]:
    outputs = [
        {"name": name, "datatype": datatype, "shape": [-1, engine.dims] if wide else [-1]}
        for name, (datatype, wide) in OUTPUTS.items()
    ]
    return {
        "name": engine.name,
        "versions": [engine.version],
        "platform": PLATFORM,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, engine.dims]}],
        "outputs": outputs,
    }


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "the v2 inference request: inputs [x], outputs, parameters (n, seed, "
                    "mask, masks, n_importance, binary_data_output); binary tensor data may follow the JSON "
                    f"({HEADER_LENGTH} header)",
                },
                "example": {
                    "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 1, None, 1]}],
                    "outputs": [{"name": "logprob"}],
                },
            }
        },
    }
}


def make_router(dependencies: Sequence[DependsParam] = ()) -> APIRouter:
    """The /v2 endpoints; `dependencies` (the API key's check) guard all but the two health ones."""
    tags: list[str | Enum] = ["open inference protocol (v2)"]
    health = APIRouter(prefix="/v2", tags=tags, route_class=V2Route)
    guarded = APIRouter(prefix="/v2", tags=tags, route_class=V2Route)

    @health.get("/health/live")
    async def live() -> dict[str, bool]:
        """200 while the process runs."""
        return {"live": True}

    @health.get("/health/ready", responses={503: ERRORS[503]})
    async def ready(request: Request, dp: DataPlaneDep) -> dict[str, bool]:
        """200 once the models are loaded, else 503 with the reason (with MADE_API_KEY set, to a
        request that carries the key)."""
        if not dp.registry.ready:
            raise NotReady(not_ready_reason(request, dp))
        return {"ready": True}

    @guarded.get("", responses={401: ERRORS[401]})
    async def server_metadata() -> dict[str, Any]:
        """The server's name, version and protocol extensions."""
        return {"name": "made", "version": server_version(), "extensions": EXTENSIONS}

    @guarded.get("/models/{name}", responses=ERRORS)
    async def metadata(name: str, dp: DataPlaneDep) -> dict[str, Any]:
        """Input x ([N, D] FP32, NaN = missing) and the outputs of a model of bits."""
        return model_metadata(_engine(dp, name, None))

    @guarded.get("/models/{name}/versions/{model_version}", responses=ERRORS)
    async def version_metadata(name: str, model_version: str, dp: DataPlaneDep) -> dict[str, Any]:
        """As /v2/models/{name}, for the version served (404 for any other)."""
        return model_metadata(_engine(dp, name, model_version))

    @guarded.get("/models/{name}/ready", responses=ERRORS)
    async def model_ready(name: str, dp: DataPlaneDep) -> dict[str, Any]:
        """200 when the model is loaded and served here."""
        return {"name": _engine(dp, name, None).name, "ready": True}

    @guarded.get("/models/{name}/versions/{model_version}/ready", responses=ERRORS)
    async def version_ready(name: str, model_version: str, dp: DataPlaneDep) -> dict[str, Any]:
        return {"name": _engine(dp, name, model_version).name, "ready": True}

    async def _infer(request: Request, dp: DataPlane, name: str, model_version: str | None, limit: int) -> Response:
        engine = _engine(dp, name, model_version)
        body = await request.body()
        body = decompress(body, request.headers.get("content-encoding", ""), limit)
        head, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        await check_json_async(head, dp.limits)
        return await infer(dp, engine, parse_request(head), binary, model_version)

    @guarded.post("/models/{name}/infer", openapi_extra=_INFER_BODY, response_class=Response, responses=INFER_ERRORS)
    async def infer_latest(name: str, request: Request, dp: DataPlaneDep, settings: SettingsDep) -> Response:
        """Log-probabilities, conditionals or samples as v2 tensors (see the module's notes)."""
        return await _infer(request, dp, name, None, settings.max_body_bytes)

    @guarded.post(
        "/models/{name}/versions/{model_version}/infer",
        openapi_extra=_INFER_BODY,
        response_class=Response,
        responses=INFER_ERRORS,
    )
    async def infer_version(
        name: str, model_version: str, request: Request, dp: DataPlaneDep, settings: SettingsDep
    ) -> Response:
        """As /v2/models/{name}/infer, for the version served (404 for any other)."""
        return await _infer(request, dp, name, model_version, settings.max_body_bytes)

    router = APIRouter()
    router.include_router(health)
    router.include_router(guarded, dependencies=list(dependencies))
    return router
