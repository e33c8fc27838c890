"""The Open Inference Protocol's tensor codec (KServe v2, as Triton speaks it over HTTP): the
inference request's JSON and binary parts in, numpy arrays out; arrays in, the inference
response out. Routes and the data plane calls are in service.http.oip.

Inputs are read as float64 (NaN = missing) from JSON data, flat or nested in row-major order, or
from the binary tensor data extension (little-endian, after the JSON part whose length the
Inference-Header-Content-Length header gives); their shapes are checked against MADE_MAX_ROWS
and MADE_MAX_WIDTH before any array is made. Outputs are written as JSON data, or as binary data
where asked ("binary_data", or the request's "binary_data_output"). Every refusal is an
InvalidInput of one sentence naming the tensor, the row and column where it has them.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError
from starlette.responses import Response

from made.core.errors import InvalidInput, format_value
from service.core.body_bounds import Limits, decode_json
from service.core.fields import REFUSED, json_value
from service.http.errors import PayloadTooLarge

HEADER_LENGTH = "Inference-Header-Content-Length"
_BYTE_COUNT = re.compile(r"[0-9]{1,15}")

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


def describe(errors: Sequence[Any], prefix: str = "") -> str:
    """One sentence for pydantic's errors: where ("inputs[0].shape[1]") and what."""
    parts = []
    for err in list(errors)[:5]:
        where = prefix
        for p in err.get("loc", ()):
            if p == "body":
                continue
            where += f"[{p}]" if isinstance(p, int) else (f".{p}" if where else str(p))
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") != REFUSED:
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


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
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
        obj = decode_json(head)  # a key named twice: an InvalidInput naming it
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
        raise InvalidInput(describe(exc.errors())) from None


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
            values = _binary_values(tensor, dtype, count, size, binary, offset)
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


def _binary_values(tensor: InferInput, dtype: Any, count: int, size: object, binary: bytes, offset: int) -> np.ndarray:
    """A tensor's `size` bytes of binary data at `offset` (little-endian `dtype`), as flat
    float64: its byte count checked against its shape and against what the body holds."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(f"input {tensor.name}: binary_data_size must be a byte count, got {json_value(size)}")
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
    if not count:
        return np.empty(0)
    little = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(binary, dtype=little, count=count, offset=offset).astype(np.float64)


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
        # as sent, not as numpy made them: one string turns every number of the array into text
        items = np.array(tensor.data, dtype=object).ravel().tolist()
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


def wanted_outputs(req: InferRequest, has_x: bool) -> list[tuple[str, bool]]:
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


def _json_numbers(a: np.ndarray) -> list[Any]:
    """A tensor's values for a JSON body; NaN (the stderr of an exact row) as null, since a bare
    NaN is not JSON and strict parsers (JavaScript, Go) refuse the whole answer. tritonclient and
    numpy read null back as NaN in a float tensor."""
    values: list[Any] = a.ravel().tolist()
    if a.dtype.kind == "f" and np.isnan(a).any():
        values = [None if v != v else v for v in values]
    return values


def encode_response(
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
            entry["data"] = _json_numbers(a)
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
