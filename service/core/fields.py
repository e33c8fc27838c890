"""The fields of the API's requests, parsed into numpy once: rows of bits (JSON lists, or
bit-packed with a shape), mask choices, and the noise level eps of /denoise.

Binary matrices are parsed straight into numpy (NaN for null) by one validator that names the
row, the column and the problem, because pydantic's per-element validation of a large list of
lists would be both slow and vague ("input should be a valid integer"). Each refusal is a
PydanticCustomError of type "invalid_input" (the type of every other refusal of a value, a
record's or a CSV cell's too) whose message is one sentence; json_value shows a value in such a
sentence as JSON spells it, never a whole batch. Imports neither fastapi nor the engine.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, PlainValidator, Strict, WithJsonSchema
from pydantic_core import PydanticCustomError

from service.core.body_bounds import current_limits

Encoding = Literal["json", "packed"]
StrictInt = Annotated[int, Strict()]
# At most 2^53 - 1: larger integers do not survive JSON parsers that read numbers as doubles.
Seed = Annotated[int, Strict(), Field(ge=0, le=2**53 - 1, description="seed of the random draws")]
ModelName = Annotated[
    str | None, Field(min_length=1, max_length=200, description="model to use; the server's default if absent")
]


# the pydantic error type of a field's own refusal: its message is a whole sentence (naming the
# row and column), which the error handlers show as it is, without pydantic's ", got VALUE"
REFUSED = "invalid_input"


def fail(message: str) -> PydanticCustomError:
    """A field's refusal: one sentence, reported as the request's 422."""
    return PydanticCustomError(REFUSED, message)


def json_value(v: object) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, list | dict) and len(v) > 8:  # never dump a whole batch into a message
        return f"a list of {len(v)} items" if isinstance(v, list) else "an object"
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_rows(value: object, allow_missing: bool) -> np.ndarray:
    """A JSON list of rows of 0/1 (and null where allowed) -> (N, D) float32, NaN for null: the
    array the engine runs on (onnxruntime reads float32), validated here once (service.core.request_checks
    adds the width, which needs the model, and hands it to the engine as checked)."""
    expected = "0, 1 or null" if allow_missing else "0 or 1"
    if not isinstance(value, list):
        raise fail(f"must be a list of rows, each a list of {expected}, got {json_value(value)}")
    if not value:
        raise fail("holds no rows; send at least one")
    has_float, has_null = _check_cell_types(value, allow_missing, expected)
    _check_lengths(value)
    # None -> NaN; 0 and 1 are exact; a number past float32 becomes inf, refused below by its JSON value
    with np.errstate(over="ignore"):
        a = np.array(value, dtype=np.float32)
    if a.shape[1] == 0:
        raise fail("rows are empty; every row needs one value per dimension")
    if has_float:  # a JSON NaN literal must not pass for null
        for i, row in enumerate(value):
            for j, v in enumerate(row):
                if isinstance(v, float) and math.isnan(v):
                    raise fail(f"row {i}, column {j}: expected {expected}, got NaN")
    valid = (a == 0) | (a == 1)
    if has_null:
        valid |= np.isnan(a)
    if not valid.all():
        i, j = (int(t) for t in np.argwhere(~valid)[0])
        raise fail(f"row {i}, column {j}: expected {expected}, got {json_value(value[i][j])}")
    return a


def _check_cell_types(rows: list[Any], allow_missing: bool, expected: str) -> tuple[bool, bool]:
    """Every row a list of numbers (and nulls where allowed), the first other cell refused by
    its row and column; (whether any cell is a float, whether any is null)."""
    allowed = {int, float, type(None)} if allow_missing else {int, float}
    has_float = has_null = False
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise fail(f"row {i} must be a list of {expected}, got {json_value(row)}")
        kinds = set(map(type, row))  # C speed; bool and str are caught here, not coerced
        if not kinds <= allowed:
            j, v = next((j, v) for j, v in enumerate(row) if type(v) not in allowed)
            if v is None:
                raise fail(f"row {i}, column {j} is null, but this endpoint needs complete rows (0 or 1 only)")
            raise fail(f"row {i}, column {j}: expected {expected}, got {json_value(v)}")
        has_float |= float in kinds
        has_null |= type(None) in kinds
    return has_float, has_null


def _check_lengths(rows: list[list[Any]]) -> None:
    """Every row as long as the others: the first that is not is named, against the common length."""
    lengths = Counter(map(len, rows))
    if len(lengths) > 1:
        common = lengths.most_common(1)[0][0]
        i = next(i for i, row in enumerate(rows) if len(row) != common)
        got = len(rows[i])
        raise fail(
            f"row {i} has {got} value{'s' * (got != 1)} but the other rows have {common}; "
            "every row needs one value per dimension"
        )


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


def _mask_index(value: object, expected: str = "a mask index (an integer from 0)") -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise fail(f"must be {expected}, got {json_value(value)}")


def _word_or_mask(word: str) -> Callable[[object], str | int]:
    """The validator of a field that takes `word` (its default) or a mask index."""

    def parse(value: object) -> str | int:
        if value == word and isinstance(value, str):
            return word
        return _mask_index(value, f'"{word}" or a mask index (an integer from 0)')

    return parse


_MASK_INDEX = {"type": "integer", "minimum": 0}


def _word_or_mask_schema(word: str, description: str) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [{"const": word}, _MASK_INDEX], "default": word, "description": description})


MasksSpec = Annotated[
    Literal["all"] | int,
    PlainValidator(_word_or_mask("all")),
    _word_or_mask_schema("all", '"all": the ensemble as a mixture; k: mask k alone'),
]
SampleMask = Annotated[
    Literal["mixture"] | int,
    PlainValidator(_word_or_mask("mixture")),
    _word_or_mask_schema("mixture", '"mixture": each sample draws its mask uniformly; k: mask k'),
]
MaskIndex = Annotated[
    int, PlainValidator(_mask_index), WithJsonSchema({**_MASK_INDEX, "default": 0, "description": "mask k"})
]


def _packed_shape(v: Any) -> tuple[int, int]:
    """x_b64's shape: a list of two integers, [N, D] (their ranges are decode_packed's)."""
    if not isinstance(v, list | tuple) or len(v) != 2 or any(type(n) is not int for n in v):
        raise fail(f"shape must be [N, D], the number of rows and of dimensions, got {json_value(v)}")
    return int(v[0]), int(v[1])


PackedShape = Annotated[
    tuple[int, int],
    PlainValidator(_packed_shape),
    WithJsonSchema({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2, "example": [2, 784]}),
]


# The whitespace base64 tools put in their output (line breaks every 76 characters, a final
# newline): skipped, as base64.b64decode(validate=False) skips it; anything else not base64 is refused
_BASE64_WHITESPACE = dict.fromkeys(map(ord, " \t\n\r\v\f"))


def decode_packed(data: str, shape: tuple[int, int] | None) -> np.ndarray:
    if shape is None:
        raise fail("x_b64 needs shape: [N, D], the number of rows and of dimensions")
    n, d = shape
    if n < 1 or d < 1:
        raise fail(f"shape must be [N, D] with N >= 1 and D >= 1, got [{n}, {d}]")
    limits = current_limits.get()
    if n > limits.max_rows:
        raise fail(f"shape has {n} rows; the limit is {limits.max_rows} per request (MADE_MAX_ROWS)")
    if d > limits.max_width:
        raise fail(f"shape has {d} values a row; the limit is {limits.max_width} (MADE_MAX_WIDTH)")
    data = data.translate(_BASE64_WHITESPACE)  # line breaks and spaces, as base64 tools wrap it
    if len(data) > 4 * ((n * ((d + 7) // 8) + 2) // 3):  # longer than its base64 could be: not decoded
        raise fail(f"x_b64 holds more data than shape [{n}, {d}] needs ({(d + 7) // 8} bytes per row)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise fail("x_b64 is not valid base64 (only A-Z, a-z, 0-9, '+', '/', '=' and whitespace)") from None
    need = n * ((d + 7) // 8)
    if len(raw) != need:
        raise fail(f"x_b64 holds {len(raw)} bytes but shape [{n}, {d}] needs {need} ({(d + 7) // 8} per row)")
    packed = np.frombuffer(raw, dtype=np.uint8).reshape(n, -1)
    if d % 8:  # the last byte of a row is padded with 0 bits, as numpy.packbits pads it
        padded = np.flatnonzero(packed[:, -1] & ((1 << (8 - d % 8)) - 1))
        if padded.size:
            raise fail(
                f"x_b64 row {int(padded[0])}: the padding bits after its {d} values are not 0 (the last "
                f"{8 - d % 8} bits of the row's last byte); pack rows with numpy.packbits(rows, axis=1)"
            )
    bits = np.unpackbits(packed, axis=1, count=d)
    return bits.astype(np.float32)


def _eps_number(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise fail(f"{where} must be a number within [0, 0.5], got {json_value(v)}")
    if not 0.0 <= v <= 0.5:  # NaN fails too
        raise fail(f"{where} is {json_value(v)}; a flip probability must be within [0, 0.5]")
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
        raise fail("eps is an empty list; send a number, one per row or one per entry")
    if not any(isinstance(v, list) for v in value):
        return _eps_numbers(value, "eps row {j}")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, list):
            raise fail(
                f"eps row {i} must be a list of numbers like the other rows (a per-entry "
                f"eps has the shape of x), got {json_value(row)}"
            )
        rows.append(_eps_numbers(row, f"eps row {i}, column {{j}}"))
    if len({len(r) for r in rows}) > 1:
        raise fail("eps rows differ in length; a per-entry eps has the shape of x")
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
