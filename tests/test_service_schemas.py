"""Request parsing: binary rows to numpy, and one clear sentence naming row and column otherwise."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from service.core.schemas import (
    ConditionalsRequest,
    LogProbRequest,
    SampleRequest,
    pack_rows,
    unpack_rows,
)
from service.http.errors import describe_validation_error


def message(model: type[BaseModel], body: dict) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return describe_validation_error(info.value.errors()[0])


def test_rows_with_null_become_nan() -> None:
    req = LogProbRequest.model_validate({"x": [[0, 1, None], [1, 1, 0]]})
    assert req.rows.dtype == np.float32  # what onnxruntime runs on: no copy before it
    np.testing.assert_array_equal(req.rows, [[0, 1, np.nan], [1, 1, 0]])


def test_float_zero_and_one_are_accepted() -> None:
    req = ConditionalsRequest.model_validate({"x": [[0.0, 1.0]]})
    np.testing.assert_array_equal(req.rows, [[0, 1]])


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        ([[0, 1], [1, 2]], "x: row 1, column 1: expected 0, 1 or null, got 2"),
        ([[0, 1], [1, 0.5]], "x: row 1, column 1: expected 0, 1 or null, got 0.5"),
        ([[0, True]], "x: row 0, column 1: expected 0, 1 or null, got true"),
        ([[0, "1"]], 'x: row 0, column 1: expected 0, 1 or null, got "1"'),
        ([[0, 1], [0, math.nan]], "x: row 1, column 1: expected 0, 1 or null, got NaN"),
        ([[0, 1], [1, [0]]], "x: row 1, column 1: expected 0, 1 or null, got [0]"),
        ([[0, 1], 5], "x: row 1 must be a list of 0, 1 or null, got 5"),
        ([[0, 1], [0, 1], [0, 1, 1]], "x: row 2 has 3 values but the other rows have 2"),
        ([], "x: holds no rows; send at least one"),
        ("0101", 'x: must be a list of rows, each a list of 0, 1 or null, got "0101"'),
    ],
)
def test_bad_values_are_named_by_row_and_column(x: object, expected: str) -> None:
    assert message(LogProbRequest, {"x": x}).startswith(expected)


def test_null_is_refused_where_rows_must_be_complete() -> None:
    assert message(ConditionalsRequest, {"x": [[0, 1], [None, 1]]}) == (
        "x: row 1, column 0 is null, but this endpoint needs complete rows (0 or 1 only)"
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"x": [[0]], "masks": "some"}, 'masks: must be "all" or a mask index (an integer from 0), got "some"'),
        ({"x": [[0]], "masks": -1}, 'masks: must be "all" or a mask index'),
        ({"x": [[0]], "masks": True}, 'masks: must be "all" or a mask index'),
        ({"x": [[0]], "seed": -3}, "seed: input should be greater than or equal to 0, got -3"),
        ({"x": [[0]], "n_importance": 0}, "n_importance: input should be greater than or equal to 1"),
        ({"x": [[0]], "mask": 1}, "mask is not a field of this request"),
        ({}, "send the rows as x (JSON lists), as x_b64 with shape, or as records (table models), got none of them"),
        (
            {"x": [[0, 1]], "records": [{"a": 1}]},
            "send the rows as x (JSON lists), as x_b64 with shape, or as "
            "records (table models), not x and records together",
        ),
    ],
)
def test_bad_options_say_what_was_expected(body: dict, expected: str) -> None:
    assert message(LogProbRequest, body).startswith(expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, "n is required"),
        ({"n": 0}, "n: input should be greater than or equal to 1, got 0"),
        ({"n": "3"}, 'n: input should be a valid integer, got "3"'),
        ({"n": 2.5}, "n: input should be a valid integer, got 2.5"),
        ({"n": 1, "mask": "all"}, 'mask: must be "mixture" or a mask index'),
        ({"n": 1, "encoding": "zip"}, "encoding: input should be 'json', 'packed' or 'records'"),
    ],
)
def test_sample_request_errors(body: dict, expected: str) -> None:
    assert message(SampleRequest, body).startswith(expected)


def test_packed_rows_round_trip_for_widths_not_multiple_of_8() -> None:
    rng = np.random.default_rng(0)
    a = (rng.random((5, 13)) < 0.5).astype(np.uint8)
    np.testing.assert_array_equal(unpack_rows(pack_rows(a), a.shape), a)
    req = LogProbRequest.model_validate({"x_b64": pack_rows(a), "shape": [5, 13]})
    np.testing.assert_array_equal(req.rows, a)
    assert req.x_b64 is None  # decoded once, into x


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"x_b64": pack_rows(np.ones((2, 8)))}, "x_b64 needs shape: [N, D]"),
        ({"x_b64": "!!", "shape": [1, 8]}, "x_b64 is not valid base64"),
        (
            {"x_b64": base64.b64encode(b"\x00" * 3).decode(), "shape": [2, 9]},
            "x_b64 holds 3 bytes but shape [2, 9] needs 4 (2 per row)",
        ),
        ({"x_b64": "AA==", "shape": [0, 8]}, "shape must be [N, D] with N >= 1 and D >= 1"),
        ({"x": [[0]], "x_b64": "AA==", "shape": [1, 1]}, "send the rows as x (JSON lists), as x_b64"),
    ],
)
def test_bad_packed_rows_are_explained(body: dict, expected: str) -> None:
    assert message(LogProbRequest, body).startswith(expected)


def test_openapi_schema_documents_rows_and_packed_encoding() -> None:
    schema = LogProbRequest.model_json_schema()
    x = schema["properties"]["x"]["anyOf"][0]
    assert x["type"] == "array" and x["items"]["type"] == "array"
    assert "packbits" in schema["properties"]["x_b64"]["anyOf"][0].get("description", "") or "packbits" in schema[
        "properties"
    ]["x_b64"].get("description", "")


def test_packed_rows_with_nonzero_padding_bits_are_refused_naming_the_row() -> None:
    a = np.zeros((3, 13), dtype=np.uint8)
    raw = bytearray(np.packbits(a, axis=1).tobytes())
    raw[2 * 2 + 1] |= 0x01  # row 2's last byte: bit 16, past its 13 values
    body = {"x_b64": base64.b64encode(bytes(raw)).decode(), "shape": [3, 13]}
    assert message(LogProbRequest, body).startswith(
        "x_b64 row 2: the padding bits after its 13 values are not 0 (the last 3 bits of the row's last byte)"
    )
    raw[2 * 2 + 1] = 0b1000  # the last of the 13 values (bit 13 of 16), not padding
    body = {"x_b64": base64.b64encode(bytes(raw)).decode(), "shape": [3, 13]}
    assert LogProbRequest.model_validate(body).rows[2].tolist() == [0] * 12 + [1]


def test_packed_rows_may_carry_the_whitespace_base64_tools_wrap_them_in() -> None:
    rng = np.random.default_rng(1)
    a = (rng.random((80, 13)) < 0.5).astype(np.uint8)
    wrapped = base64.encodebytes(np.packbits(a, axis=1).tobytes()).decode()  # 76-character lines, final newline
    assert "\n" in wrapped.rstrip("\n")
    for data in (wrapped, f"  {pack_rows(a)}\r\n", "\t".join(pack_rows(a))):
        req = LogProbRequest.model_validate({"x_b64": data, "shape": [80, 13]})
        np.testing.assert_array_equal(req.rows, a)
    assert message(LogProbRequest, {"x_b64": "AA-=", "shape": [1, 8]}).startswith(
        "x_b64 is not valid base64 (only A-Z, a-z, 0-9, '+', '/', '=' and whitespace)"
    )
