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
    stderr        FP64 [N]     NaN where exact
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
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Callable, Coroutine, Sequence
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from made.core.errors import InvalidInput, MadeError, ModelNotFound, format_value
from service.core.body_bounds import Limits, check_json_async
from service.core.dataplane import DataPlane, new_seed
from service.core.log_config import request_context
from service.core.schemas import ConditionalsRequest, ErrorResponse, LogProbRequest, SampleRequest, json_value
from service.engine import Engine
from service.http.errors import NotReady, PayloadTooLarge, error_body, status_of
from service.http.routers.deps import DataPlaneDep, SettingsDep

PLATFORM = "onnxruntime_onnx"  # what Triton calls an ONNX model run by onnxruntime
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "Inference-Header-Content-Length"
_BYTE_COUNT = re.compile(r"[0-9]{1,15}")
WHERE = "the Open Inference Protocol (/v2)"

# Input datatypes read, and their numpy types (binary data is little-endian). BYTES and BF16
# have no meaning for rows of bits (BF16 has no numpy type either).
DTYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
FLOATS = {"FP16", "FP32", "FP64"}

# Output name -> (datatype, whether its shape is [n, D] rather than [n]).
OUTPUTS: dict[str, tuple[str, bool]] = {
    "logprob": ("FP64", False),
    "exact": ("BOOL", False),
    "stderr": ("FP64", False),
    "conditionals": ("FP64", True),
    "samples": ("UINT8", True),
}
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
    return _error(status, kind, str(exc))


def _error(status: int, kind: str, message: str) -> JSONResponse:
    ctx = request_context.get()
    if ctx is not None:
        ctx.error_type = kind  # a metrics label, as for every other endpoint
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
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
    503: {"model": V2ErrorResponse, "description": "models not loaded yet"},
}
INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "description": "the inference response: JSON, followed by binary tensor data when an output "
        f"asked for it ({HEADER_LENGTH} gives the JSON part's length)",
        "content": {"application/json": {"schema": {"type": "object"}}, "application/octet-stream": {}},
    },
    413: {"model": ErrorResponse, "description": "body over MADE_MAX_BODY_BYTES"},
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
                return _error(400, "invalid_input", _describe(exc.errors()))
            except StarletteHTTPException as exc:
                message = exc.detail if isinstance(exc.detail, str) else "request failed"
                return _error(exc.status_code, "http_error", message)

        return v2_handler


def _describe(errors: Sequence[Any], prefix: str = "") -> str:
    """One sentence for pydantic's errors: where ("inputs[0].shape[1]") and what."""
    parts = []
    for err in list(errors)[:5]:
        where = prefix
        for p in err.get("loc", ()):
            if p == "body":
                continue
            where += f"[{p}]" if isinstance(p, int) else (f".{p}" if where else str(p))
        msg = str(err.get("msg", "invalid value"))
        if not str(err.get("type", "")).startswith("made_"):
            msg = msg[:1].lower() + msg[1:]
            if "input" in err and err.get("type") != "missing":
                msg += f", got {json_value(err['input'])}"
        if err.get("type") == "extra_forbidden":
            msg = "is not a field of the inference request"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(dict.fromkeys(parts))


# --- the inference request -------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InferInput(_Strict):
    name: str
    shape: list[Annotated[int, Strict(), Field(ge=0)]]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestedOutput(_Strict):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(_Strict):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InferInput] = Field(default_factory=list)
    outputs: list[RequestedOutput] | None = None


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidInput(f"Content-Encoding {encoding} is not supported (gzip, deflate or none)")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)  # bounded: a small bomb must not fill memory
    except zlib.error as exc:
        raise InvalidInput(f"the request body is not valid {encoding} data ({exc})") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the request body is over {limit} bytes once decompressed (MADE_MAX_BODY_BYTES)")
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part of the body and the binary data after it (the extension's)."""
    if header_length is None:
        return body, b""
    given = header_length.strip()
    # ASCII digits only, and few of them: str.isdigit() takes '²' and int() refuses 4300 digits
    if not _BYTE_COUNT.fullmatch(given) or int(given) > len(body):
        shown = header_length if len(header_length) <= 40 else header_length[:37] + "..."
        raise InvalidInput(
            f"{HEADER_LENGTH} is {shown!r}, but it must be the byte "
            f"length of the JSON part of the body ({len(body)} bytes in all)"
        )
    return body[: int(given)], body[int(given) :]


def parse_request(head: bytes) -> InferRequest:
    """The JSON inference request: the body's JSON part (split_body), bounded beforehand."""
    try:
        obj = json.loads(head)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"the inference request is not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidInput(
            "the inference request is not valid JSON here: its arrays or objects nest too deeply"
        ) from None
    if not isinstance(obj, dict):
        raise InvalidInput("the inference request must be a JSON object with inputs")
    try:
        return InferRequest.model_validate(obj)
    except ValidationError as exc:
        raise InvalidInput(_describe(exc.errors())) from None


def read_tensors(req: InferRequest, binary: bytes, limits: Limits | None = None) -> dict[str, np.ndarray]:
    """Every input as float64 (NaN = missing), from JSON data or from the binary part; with
    `limits`, shapes past MADE_MAX_ROWS rows or MADE_MAX_WIDTH values a row are refused before
    any array is made."""
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in req.inputs:
        if tensor.name in tensors:
            raise InvalidInput(f"input {tensor.name} is sent twice")
        dtype = DTYPES.get(tensor.datatype)
        if dtype is None:
            raise InvalidInput(
                f"input {tensor.name}: datatype {tensor.datatype!r} is not read here; send "
                "FP32 (NaN for a missing value), FP64, or an integer or BOOL type for "
                "complete rows"
            )
        if limits is not None:
            _check_shape(tensor, limits)
        count = math.prod(tensor.shape)
        size = tensor.parameters.get("binary_data_size")
        unknown = sorted(set(tensor.parameters) - {"binary_data_size"})
        if unknown:
            raise InvalidInput(
                f"input {tensor.name}: parameter {unknown[0]} is not supported (of the "
                "extensions only binary_tensor_data is; no shared memory)"
            )
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(
                    f"input {tensor.name}: binary_data_size must be a byte count, got {json_value(size)}"
                )
            if tensor.data is not None:
                raise InvalidInput(f"input {tensor.name} has both data and binary_data_size; send one")
            need = count * np.dtype(dtype).itemsize
            if size != need:
                raise InvalidInput(
                    f"input {tensor.name}: binary_data_size is {size} bytes, but shape "
                    f"{tensor.shape} of {tensor.datatype} needs {need}"
                )
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input {tensor.name}: the body ends before its {size} bytes of binary "
                    f"data (is {HEADER_LENGTH} set to the JSON part's length?)"
                )
            little = np.dtype(dtype).newbyteorder("<")
            values = (
                np.frombuffer(binary, dtype=little, count=count, offset=offset).astype(np.float64)
                if count
                else np.empty(0)
            )
            offset += size
        else:
            values = _json_values(tensor, count)
            if np.isnan(values).any() and tensor.datatype not in FLOATS:
                raise InvalidInput(
                    f"input {tensor.name}: a missing value (NaN or null) needs FP32 or FP64 data, not {tensor.datatype}"
                )
        tensors[tensor.name] = values.reshape(tensor.shape)
    if offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary) - offset} bytes of binary data that no input's binary_data_size accounts for"
        )
    return tensors


def _check_shape(tensor: InferInput, limits: Limits) -> None:
    shape = tensor.shape
    if shape and shape[0] > limits.max_rows:
        raise InvalidInput(
            f"{tensor.name} has {shape[0]} rows; the limit is {limits.max_rows} per request (MADE_MAX_ROWS)"
        )
    if len(shape) > 1 and math.prod(shape[1:]) > limits.max_width:
        raise InvalidInput(
            f"input {tensor.name} has shape {shape}: {math.prod(shape[1:])} values a row; the limit is "
            f"{limits.max_width} (MADE_MAX_WIDTH)"
        )


def _json_values(tensor: InferInput, count: int) -> np.ndarray:
    """The JSON data of a tensor, flat or nested in row-major order, as flat float64."""
    if not isinstance(tensor.data, list):
        raise InvalidInput(
            f"input {tensor.name} needs data: a list of its values, flat or nested in "
            "row-major order (or binary data, with binary_data_size)"
        )
    try:
        values = np.array(tensor.data)
    except ValueError:
        raise InvalidInput(
            f"input {tensor.name}: the nested lists of data are ragged; nest them as the "
            f"shape {tensor.shape} or send them flat"
        ) from None
    if values.dtype.kind not in "biuf":  # null (missing), strings, objects
        items = values.ravel().tolist() if values.dtype == object else [values.ravel()[0].item()]
        for v in items:
            if v is not None and type(v) not in (int, float, bool):
                raise InvalidInput(
                    f"input {tensor.name}: data must hold numbers (NaN or null for a "
                    f"missing value), got {json_value(v)}"
                )
    try:
        values = values.astype(np.float64).ravel()
    except (OverflowError, TypeError, ValueError):  # an integer past float64's range
        raise InvalidInput(f"input {tensor.name}: data holds a number out of range") from None
    if values.size != count:
        raise InvalidInput(
            f"input {tensor.name}: shape {tensor.shape} needs {count} values, but data holds {values.size}"
        )
    return values


def check_bits(x: np.ndarray, allow_missing: bool, output: str) -> None:
    """Every value 0 or 1, or NaN (missing) where allowed; else the first offender, named."""
    missing = np.isnan(x)
    valid = (x == 0) | (x == 1)
    if allow_missing:
        valid |= missing
    if valid.all():
        return
    i, j = (int(t) for t in np.argwhere(~valid)[0])
    if missing[i, j]:
        raise InvalidInput(
            f"input x: row {i}, column {j} is missing (NaN), but output {output} needs complete rows (0 or 1 only)"
        )
    expected = "0, 1 or NaN (missing)" if allow_missing else "0 or 1"
    raise InvalidInput(f"input x: row {i}, column {j}: expected {expected}, got {format_value(x[i, j])}")


# --- one inference ---------------------------------------------------------------------------


def _validated(cls: type[BaseModel], params: dict[str, Any], names: Sequence[str], **fields: Any) -> Any:
    """The endpoint's own request model, validating the parameters it takes (the rows are set
    after: they arrive as a tensor, not as the JSON lists its validator reads)."""
    body = {**{k: params[k] for k in names if k in params}, **fields}
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput(_describe(exc.errors(), prefix="parameters")) from None


def _wanted_outputs(req: InferRequest, has_x: bool) -> list[tuple[str, bool]]:
    """(name, binary) of each output to answer."""
    default_binary = req.parameters.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise InvalidInput(f"parameters.binary_data_output must be true or false, got {json_value(default_binary)}")
    if req.outputs is None:
        names = [*(["logprob"] if has_x else []), *(["samples"] if "n" in req.parameters else [])]
        if not names:
            raise InvalidInput(
                "send input x (rows to score: output logprob) or parameters.n (the number of samples: output samples)"
            )
        return [(n, default_binary) for n in names]
    wanted: list[tuple[str, bool]] = []
    for out in req.outputs:
        if out.name not in OUTPUTS:
            raise InvalidInput(f"unknown output {out.name!r}; the outputs are {', '.join(OUTPUTS)}")
        if any(out.name == n for n, _ in wanted):
            raise InvalidInput(f"output {out.name} is requested twice")
        unknown = sorted(set(out.parameters) - {"binary_data"})
        if unknown:
            raise InvalidInput(
                f"output {out.name}: parameter {unknown[0]} is not supported (of the "
                "extensions only binary_tensor_data is: no classification, no shared memory)"
            )
        binary = out.parameters.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise InvalidInput(f"output {out.name}: binary_data must be true or false, got {json_value(binary)}")
        wanted.append((out.name, binary))
    if not wanted:
        raise InvalidInput("outputs is empty; ask for at least one of " + ", ".join(OUTPUTS))
    return wanted


async def infer(dp: DataPlane, engine: Engine, req: InferRequest, binary: bytes) -> Response:
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
    wanted = _wanted_outputs(req, x is not None)
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
    return _response(engine.name, version, req.id, seed, wanted, values)


def _response(
    name: str,
    version: str,
    request_id: str | None,
    seed: int | None,
    wanted: list[tuple[str, bool]],
    values: dict[str, np.ndarray],
) -> Response:
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for out, binary in wanted:
        datatype = OUTPUTS[out][0]
        a = values[out]
        entry: dict[str, Any] = {"name": out, "datatype": datatype, "shape": list(a.shape)}
        if binary:
            raw = np.ascontiguousarray(a, dtype=np.dtype(DTYPES[datatype]).newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = a.ravel().tolist()  # NaN (stderr of exact rows) is written as NaN
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": name, "model_version": version}
    if request_id is not None:
        body["id"] = request_id
    if seed is not None:
        body["parameters"] = {"seed": seed}
    body["outputs"] = outputs
    head = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(
        head + b"".join(chunks), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(head))}
    )


# --- the routes ------------------------------------------------------------------------------


def _engine(dp: DataPlane, name: str, model_version: str | None) -> Engine:
    engine = dp.bits_engine(name, WHERE)
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
                    "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 1, "NaN", 1]}],
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
    async def ready(dp: DataPlaneDep) -> dict[str, bool]:
        """200 once the models are loaded, else 503 with the reason."""
        if not dp.registry.ready:
            raise NotReady(dp.load_error or "models are still loading")
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
        body = _decompress(body, request.headers.get("content-encoding", ""), limit)
        head, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        await check_json_async(head, dp.limits)
        return await infer(dp, engine, parse_request(head), binary)

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
