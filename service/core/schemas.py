"""Request and response bodies of the HTTP API (pydantic), and the compact bit-packed encoding.

Binary matrices are parsed straight into numpy (NaN for null) by one validator that names the
row, the column and the problem, because pydantic's per-element validation of a
10000 x 784 list would be both slow and vague ("input should be a valid integer").
Imports neither fastapi nor the engine, so the typed client can share these models.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections import Counter
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from made.core.errors import InvalidInput
from service.core.body_bounds import current_limits

Encoding = Literal["json", "packed"]
StrictInt = Annotated[int, Strict()]
# At most 2^53 - 1: larger integers do not survive JSON parsers that read numbers as doubles.
Seed = Annotated[int, Strict(), Field(ge=0, le=2**53 - 1, description="seed of the random draws")]
ModelName = Annotated[
    str | None, Field(min_length=1, max_length=200, description="model to use; the server's default if absent")
]


# --- the compact encoding ---------------------------------------------------------------------


def pack_rows(a: np.ndarray) -> str:
    """Base64 of np.packbits(a, axis=-1): each row (last axis) padded to whole bytes, MSB first."""
    return base64.b64encode(np.packbits(np.asarray(a, dtype=np.uint8), axis=-1).tobytes()).decode()


def unpack_rows(data: str, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """Inverse of pack_rows: a uint8 array of `shape` (the last axis is the bit-packed one)."""
    *lead, d = shape
    raw = np.frombuffer(base64.b64decode(data), dtype=np.uint8)
    per_row = (d + 7) // 8
    return np.unpackbits(raw.reshape(*lead, per_row), axis=-1, count=d)


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("made_invalid", message)


def json_value(v: object) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, list | dict) and len(v) > 8:  # never dump a whole batch into a message
        return f"a list of {len(v)} items" if isinstance(v, list) else "an object"
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_rows(value: object, allow_missing: bool) -> np.ndarray:
    """A JSON list of rows of 0/1 (and null where allowed) -> (N, D) float32, NaN for null: the
    array the engine runs on (onnxruntime reads float32), validated here once (service.core.dataplane
    adds the width, which needs the model, and hands it to the engine as checked)."""
    expected = "0, 1 or null" if allow_missing else "0 or 1"
    if not isinstance(value, list):
        raise _fail(f"must be a list of rows, each a list of {expected}, got {json_value(value)}")
    if not value:
        raise _fail("holds no rows; send at least one")
    allowed = {int, float, type(None)} if allow_missing else {int, float}
    has_float = has_null = False
    for i, row in enumerate(value):
        if not isinstance(row, list):
            raise _fail(f"row {i} must be a list of {expected}, got {json_value(row)}")
        kinds = set(map(type, row))  # C speed; bool and str are caught here, not coerced
        if not kinds <= allowed:
            for j, v in enumerate(row):
                if type(v) not in allowed:
                    if v is None:
                        raise _fail(f"row {i}, column {j} is null, but this endpoint needs complete rows (0 or 1 only)")
                    raise _fail(f"row {i}, column {j}: expected {expected}, got {json_value(v)}")
        has_float |= float in kinds
        has_null |= type(None) in kinds
    lengths = Counter(map(len, value))
    if len(lengths) > 1:
        common = lengths.most_common(1)[0][0]
        i = next(i for i, row in enumerate(value) if len(row) != common)
        got = len(value[i])
        raise _fail(
            f"row {i} has {got} value{'s' * (got != 1)} but the other rows have {common}; "
            "every row needs one value per dimension"
        )
    # None -> NaN; 0 and 1 are exact; a number past float32 becomes inf, refused below by its JSON value
    with np.errstate(over="ignore"):
        a = np.array(value, dtype=np.float32)
    if a.shape[1] == 0:
        raise _fail("rows are empty; every row needs one value per dimension")
    if has_float:  # a JSON NaN literal must not pass for null
        for i, row in enumerate(value):
            for j, v in enumerate(row):
                if isinstance(v, float) and math.isnan(v):
                    raise _fail(f"row {i}, column {j}: expected {expected}, got NaN")
    valid = (a == 0) | (a == 1)
    if has_null:
        valid |= np.isnan(a)
    if not valid.all():
        i, j = (int(t) for t in np.argwhere(~valid)[0])
        raise _fail(f"row {i}, column {j}: expected {expected}, got {json_value(value[i][j])}")
    return a


def _rows_schema(allow_missing: bool) -> dict[str, Any]:
    cell: dict[str, Any] = {"type": "integer", "enum": [0, 1]}
    if allow_missing:
        cell = {"anyOf": [cell, {"type": "null"}]}
    what = "0/1 values, null where missing" if allow_missing else "0/1 values"
    return {
        "type": "array",
        "minItems": 1,
        "items": {"type": "array", "minItems": 1, "items": cell},
        "description": f"rows of {what}, one value per dimension",
        "example": [[0, 1, 1, 0]],
    }


# (N, D) float32 arrays once validated; NaN marks a missing value.
RowsWithMissing = Annotated[
    np.ndarray, PlainValidator(lambda v: _parse_rows(v, True)), WithJsonSchema(_rows_schema(True))
]
CompleteRows = Annotated[
    np.ndarray, PlainValidator(lambda v: _parse_rows(v, False)), WithJsonSchema(_rows_schema(False))
]


def _parse_masks(value: object) -> Literal["all"] | int:
    if value == "all" and isinstance(value, str):
        return "all"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _fail(f'must be "all" or a mask index (an integer from 0), got {json_value(value)}')


def _parse_sample_mask(value: object) -> Literal["mixture"] | int:
    if value == "mixture" and isinstance(value, str):
        return "mixture"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _fail(f'must be "mixture" or a mask index (an integer from 0), got {json_value(value)}')


def _parse_mask(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _fail(f"must be a mask index (an integer from 0), got {json_value(value)}")


_MASK_INDEX = {"type": "integer", "minimum": 0}
MasksSpec = Annotated[
    Literal["all"] | int,
    PlainValidator(_parse_masks),
    WithJsonSchema(
        {
            "anyOf": [{"const": "all"}, _MASK_INDEX],
            "default": "all",
            "description": '"all": the ensemble as a mixture; k: mask k alone',
        }
    ),
]
SampleMask = Annotated[
    Literal["mixture"] | int,
    PlainValidator(_parse_sample_mask),
    WithJsonSchema(
        {
            "anyOf": [{"const": "mixture"}, _MASK_INDEX],
            "default": "mixture",
            "description": '"mixture": each sample draws its mask uniformly; k: mask k',
        }
    ),
]
MaskIndex = Annotated[
    int, PlainValidator(_parse_mask), WithJsonSchema({**_MASK_INDEX, "default": 0, "description": "mask k"})
]


# --- requests ------------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())


Record = dict[str, Any]


class _RowsRequest(_Request):
    """Rows as JSON lists (`x`), or bit-packed (`x_b64` + `shape`) for large complete batches; or,
    for a model of a table's columns, `records`."""

    x: np.ndarray | None = None  # (N, D) float32, NaN for null; each request types it
    x_b64: str | None = Field(
        None,
        description="compact alternative to x for complete rows: base64 of "
        "numpy.packbits(rows, axis=1) (each row padded to whole bytes, most significant bit "
        "first); needs `shape`",
    )
    shape: tuple[StrictInt, StrictInt] | None = Field(
        None, description="[N, D] of the rows in x_b64", examples=[[2, 784]]
    )
    records: list[Record] | None = Field(
        None,
        description="models of a table's columns: one object per row, keyed by column name "
        '(GET /models/{name} lists the columns); a key left out or null is unknown, "NA" a value '
        "recorded as absent",
        examples=[[{"cut": "Ideal", "carat": 0.3, "price": None}]],
    )

    @model_validator(mode="after")
    def _one_encoding(self) -> _RowsRequest:
        given = [n for n, v in (("x", self.x), ("x_b64", self.x_b64), ("records", self.records)) if v is not None]
        if len(given) != 1:
            raise _fail(
                "send the rows as x (JSON lists), as x_b64 with shape, or as records (table "
                "models), " + (f"not {' and '.join(given)} together" if given else "got none of them")
            )
        if self.records is not None:
            return self
        if self.x_b64 is not None:
            self.x = _decode_packed(self.x_b64, self.shape)
            self.x_b64 = None
        return self

    @property
    def rows(self) -> np.ndarray:
        """(N, D) float32, NaN where missing: from x or x_b64, whichever came."""
        if self.x is None:
            raise InvalidInput("/denoise reads rows of 0/1 (x or x_b64), not records", loc=("records",))
        return self.x


def _decode_packed(data: str, shape: tuple[int, int] | None) -> np.ndarray:
    if shape is None:
        raise _fail("x_b64 needs shape: [N, D], the number of rows and of dimensions")
    n, d = shape
    if n < 1 or d < 1:
        raise _fail(f"shape must be [N, D] with N >= 1 and D >= 1, got [{n}, {d}]")
    limits = current_limits.get()
    if n > limits.max_rows:
        raise _fail(f"shape has {n} rows; the limit is {limits.max_rows} per request (MADE_MAX_ROWS)")
    if d > limits.max_width:
        raise _fail(f"shape has {d} values a row; the limit is {limits.max_width} (MADE_MAX_WIDTH)")
    if len(data) > 4 * ((n * ((d + 7) // 8) + 2) // 3):  # longer than its base64 could be: not decoded
        raise _fail(f"x_b64 holds more data than shape [{n}, {d}] needs ({(d + 7) // 8} bytes per row)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _fail("x_b64 is not valid base64") from None
    need = n * ((d + 7) // 8)
    if len(raw) != need:
        raise _fail(f"x_b64 holds {len(raw)} bytes but shape [{n}, {d}] needs {need} ({(d + 7) // 8} per row)")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8).reshape(n, -1), axis=1, count=d)
    return bits.astype(np.float32)


class LogProbRequest(_RowsRequest):
    model: ModelName = None
    x: RowsWithMissing | None = None
    masks: MasksSpec = "all"
    seed: Seed | None = None
    n_importance: StrictInt = Field(
        1000,
        ge=1,
        le=100_000,
        description="draws per mask and row for rows whose missing values need importance sampling",
    )
    explain: bool = Field(
        False, description="records: add each column's surprisal, to say which field makes a record unlikely"
    )


class ConditionalsRequest(_RowsRequest):
    model: ModelName = None
    x: CompleteRows | None = None
    mask: MaskIndex = 0


class SampleRequest(_Request):
    model: ModelName = None
    n: StrictInt = Field(..., ge=1, description="number of samples (at most MADE_MAX_SAMPLES)")
    seed: Seed | None = None
    mask: SampleMask = "mixture"
    encoding: Literal["json", "packed", "records"] = Field(
        "json",
        description='"packed": samples come as samples_b64 (bit-packed rows, base64) with shape, instead of JSON '
        'lists; "records": as records keyed by column name (a model of bits: columns x0..x{D-1}). A table model '
        "answers records either way",
    )
    given: Record | None = Field(
        None,
        description="{column: value} that every sampled record meets (records out); exact where "
        "a mask's ordering puts the given columns first, importance-weighted otherwise (see ess)",
        examples=[{"cut": "Ideal", "color": "E"}],
    )


class ImputeRequest(_RowsRequest):
    model: ModelName = None
    x: RowsWithMissing | None = None
    n_samples: StrictInt = Field(10, ge=1, description="completions per row")
    seed: Seed | None = None
    n_importance: StrictInt = Field(1000, ge=1, le=100_000, description="draws per mask and row")
    encoding: Encoding = Field("json", description='"packed": samples come as samples_b64')


def _eps_number(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _fail(f"{where} must be a number within [0, 0.5], got {json_value(v)}")
    if not 0.0 <= v <= 0.5:  # NaN fails too
        raise _fail(f"{where} is {json_value(v)}; a flip probability must be within [0, 0.5]")
    return float(v)


def _eps_numbers(values: list[Any], where: str) -> np.ndarray:
    """A list of numbers within [0, 0.5] -> float64; `where` names item j (format with j)."""
    if not set(map(type, values)) <= {int, float}:  # C speed; bool, str, null, lists caught here
        for j, v in enumerate(values):
            _eps_number(v, where.format(j=j))
    a = np.array(values, dtype=np.float64)
    bad = ~((a >= 0) & (a <= 0.5))  # NaN included
    if bad.any():
        j = int(np.argmax(bad))
        _eps_number(values[j], where.format(j=j))
    return a


def _parse_eps(value: object) -> np.ndarray:
    """eps: a number, a list of numbers (one per row) or a list of lists (one per entry, the shape
    of x), each within [0, 0.5] -> a 0-, 1- or 2-D float64 array (checked against x later)."""
    if not isinstance(value, list):
        return np.array(_eps_number(value, "eps"))
    if not value:
        raise _fail("eps is an empty list; send a number, one per row or one per entry")
    if not any(isinstance(v, list) for v in value):
        return _eps_numbers(value, "eps row {j}")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, list):
            raise _fail(
                f"eps row {i} must be a list of numbers like the other rows (a per-entry "
                f"eps has the shape of x), got {json_value(row)}"
            )
        rows.append(_eps_numbers(row, f"eps row {i}, column {{j}}"))
    if len({len(r) for r in rows}) > 1:
        raise _fail("eps rows differ in length; a per-entry eps has the shape of x")
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1)


_EPS_NUMBER = {"type": "number", "minimum": 0, "maximum": 0.5}
EpsSpec = Annotated[
    np.ndarray,
    PlainValidator(_parse_eps),
    WithJsonSchema(
        {
            "anyOf": [
                _EPS_NUMBER,
                {"type": "array", "items": _EPS_NUMBER},
                {"type": "array", "items": {"type": "array", "items": _EPS_NUMBER}},
            ],
            "description": "flip probability of the noise, within [0, 0.5]: one number for "
            "every entry, a list (one per row) or a list of lists (one per entry, the shape "
            "of x). 0: the entry is exact; 0.5: it says nothing (as a null in x)",
            "examples": [0.1],
        }
    ),
]


class DenoiseRequest(_RowsRequest):
    """Noisy rows of 0/1 (null: missing) with independent bit flips of probability eps."""

    model: ModelName = None
    x: RowsWithMissing | None = None
    eps: EpsSpec
    n_samples: StrictInt = Field(
        10, ge=0, description="clean rows drawn from the posterior per row (0: marginals and estimates only)"
    )
    seed: Seed | None = None
    n_importance: StrictInt = Field(1000, ge=1, le=100_000, description="draws per mask and row")
    encoding: Encoding = Field("json", description='"packed": samples come as samples_b64')

    @model_validator(mode="after")
    def _eps_fits_x(self) -> DenoiseRequest:
        if self.x is None:  # records: refused where the model is known
            return self
        n, d = self.x.shape
        eps = self.eps
        if eps.ndim == 1 and len(eps) != n:
            raise _fail(f"eps has {len(eps)} values, one per row, but x has {n} row{'s' * (n != 1)}")
        if eps.ndim == 2 and eps.shape != (n, d):
            raise _fail(
                f"eps has shape [{eps.shape[0]}, {eps.shape[1]}] but x has shape [{n}, {d}]; "
                "a per-entry eps has one value per value of x"
            )
        return self


# --- responses -----------------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(description="the model that answered")
    version: str = Field(description="its version in the store")


class LogProbResponse(_Response):
    logprob: list[float] = Field(description="log p(x) per row, in nats (log p(x_observed) where values are missing)")
    exact: list[bool] = Field(description="false where logprob is an importance-sampling estimate")
    stderr: list[float | None] = Field(description="standard error of estimated rows, else null")
    seed: int | None = Field(
        None, description="seed of the importance draws (rows with missing values); send it back to repeat the estimate"
    )
    surprisal: list[dict[str, dict[str, float | None]]] | None = Field(
        None,
        description="explain: per record and column, in_order = -log p(x_c | the columns before c) "
        "averaged over the masks, given_others = -log p(x_c | every other column) under the mixture, in the "
        "units of in_order (a number's rounding bin, or its density where it has no decimals; NA a mass)",
    )


class ConditionalsResponse(_Response):
    mask: int
    ordering: list[int] = Field(
        description="the order in which mask k generates the dimensions (table "
        "models: the columns, by their index in the model's columns)"
    )
    probs: list[list[float]] | None = Field(
        None, description="models of bits: probs[i][d] = p(x_d = 1 | the dimensions before d in ordering), for row i"
    )
    column_order: list[str] | None = Field(
        None, description="table models: the column names in the order mask k generates them"
    )
    conditionals: list[dict[str, dict[str, int | float | None]]] | None = Field(
        None,
        description="table models: conditionals[i][column] = that column's distribution given the "
        "columns before it in mask k's ordering, for record i: {level: probability} for a category; "
        '{"mean", "sd", "q05", "q50", "q95"} of its value for a number (and "p_absent" where it can be NA)',
    )


class SampleResponse(_Response):
    seed: int = Field(description="the seed that produced these samples (drawn when not sent)")
    mask: Literal["mixture"] | int
    samples: list[list[int]] | None = Field(None, description="n rows of 0/1 (encoding json)")
    samples_b64: str | None = Field(None, description="encoding packed: base64 of numpy.packbits(samples, axis=1)")
    shape: list[int] | None = Field(None, description="encoding packed: [n, D]")
    records: list[Record] | None = Field(None, description="table models: n sampled records")
    exact: bool | None = Field(
        None, description="given: false where the records are resampled from importance-weighted draws"
    )
    ess: float | None = Field(None, description="given: the effective sample size behind the records")

    def array(self) -> np.ndarray:
        """The samples as an (n, D) uint8 array, whichever the encoding."""
        if self.samples_b64 is not None and self.shape is not None:
            return unpack_rows(self.samples_b64, self.shape)
        return np.asarray(self.samples, dtype=np.uint8)


class ImputeResponse(_Response):
    seed: int
    samples: list[list[list[int]]] | list[list[Record]] | None = Field(
        None, description="samples[i]: n_samples completions of row i (encoding json), as records for table models"
    )
    samples_b64: str | None = Field(None, description="encoding packed: base64 of numpy.packbits(samples, axis=2)")
    shape: list[int] | None = Field(None, description="encoding packed: [N, n_samples, D]")
    marginals: list[list[float]] | None = Field(None, description="p(x_d = 1 | x_observed) (bit models)")
    records: list[Record] | None = Field(
        None,
        description="table models: each record with its unknown cells filled by their most likely "
        "level, or the median of a number",
    )
    distributions: list[dict[str, dict[str, Any]]] | None = Field(
        None,
        description="table models: per record, each unknown column's distribution: {level: probability} "
        'for categories; {"mean", "sd", "q05", "q50", "q95"} for numbers (and "p_absent" where it can be NA)',
    )
    logprob_observed: list[float] = Field(description="log p(x_observed) per row, nats")
    stderr: list[float | None] = Field(description="standard error of logprob_observed where estimated, else null")
    exact: list[bool]
    ess: list[float] = Field(description="effective sample size behind each row's estimates")

    def array(self) -> np.ndarray:
        """The completions as an (N, n_samples, D) uint8 array, whichever the encoding."""
        if self.samples_b64 is not None and self.shape is not None:
            return unpack_rows(self.samples_b64, self.shape)
        return np.asarray(self.samples, dtype=np.uint8)


class DenoiseResponse(_Response):
    seed: int = Field(description="the seed of the draws (drawn when not sent)")
    samples: list[list[list[int]]] | None = Field(
        None,
        description="samples[i]: n_samples clean rows for noisy row i, resampled from the "
        "importance-weighted draws with probability proportional to their weights (encoding json)",
    )
    samples_b64: str | None = Field(None, description="encoding packed: base64 of numpy.packbits(samples, axis=2)")
    shape: list[int] | None = Field(None, description="encoding packed: [N, n_samples, D]")
    marginals: list[list[float]] = Field(description="p(clean x_d = 1 | noisy row), per entry")
    most_likely: list[list[int]] = Field(
        description="the most likely clean value of each entry on its own: 1 where marginals > 0.5 "
        "(the noisy value at exactly 0.5)"
    )
    logprob_noisy: list[float] = Field(
        description="log p(noisy row) per row, nats: the model's probability of the row after the noise"
    )
    stderr: list[float | None] = Field(
        description="standard error of logprob_noisy (0 where eps is 0 everywhere; null with n_importance 1)"
    )
    ess: list[float] = Field(description="effective sample size of each row's importance weights")

    def array(self) -> np.ndarray:
        """The clean samples as an (N, n_samples, D) uint8 array, whichever the encoding."""
        if self.samples_b64 is not None and self.shape is not None:
            return unpack_rows(self.samples_b64, self.shape)
        return np.asarray(self.samples, dtype=np.uint8)


class ModelInfo(BaseModel):
    name: str
    version: str
    dims: int
    n_masks: int
    default: bool
    image_shape: list[int] | None = None
    dataset: str | None = None
    test_nll: float | None = Field(None, description="nats per example on the test split")
    providers: list[str] = Field(default_factory=list, description="onnxruntime providers running")
    columns: list[str] | None = Field(default=None, description="table models: the column names records use")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    default: str | None


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    models: list[str]
    default: str | None


class ErrorResponse(BaseModel):
    detail: str = Field(description="one sentence: what was wrong, where, what was expected")
    type: str = Field(description="invalid_input, model_not_found, unauthorized, ...")
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="422: each problem with its loc")
