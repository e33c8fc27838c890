"""service.core.body_bounds: a JSON body's structure counted on its bytes, before it is parsed. The
counts are checked against json.loads of the same bodies (generated, with strings full of the
bytes that would fool a naive scan), and a scan in pieces of a few bytes must say what a scan
in one piece says."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from made.core.errors import InvalidInput
from service.core import body_bounds
from service.core.body_bounds import MAX_DEPTH, MAX_DIGITS, MAX_FIELDS, Limits, check_json

LIMITS = Limits(max_rows=3, max_width=4)
TRICKY = st.text(alphabet='[]{},:"\\ab0 \n\t\u00e9', max_size=6)
LEAVES = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | TRICKY
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(TRICKY, inner, max_size=6),
    max_leaves=40,
)
BODIES = st.dictionaries(TRICKY, VALUES, max_size=8)


def depth_of(v: Any) -> int:
    if isinstance(v, list):
        return 1 + max(map(depth_of, v), default=0)
    if isinstance(v, dict):
        return 1 + max(map(depth_of, v.values()), default=0)
    return 0


def over_bounds(body: dict[str, Any], limits: Limits) -> bool:
    """What the scan should find, from the parsed body."""
    if depth_of(body) > MAX_DEPTH or len(body) > MAX_FIELDS:
        return True
    for value in body.values():
        if isinstance(value, list) and len(value) > limits.max_rows:
            return True
        if isinstance(value, dict) and len(value) > limits.max_width:
            return True
        inner = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else []
        if any(isinstance(v, list | dict) and len(v) > limits.max_width for v in inner):
            return True
    return False


def refusal(text: bytes, limits: Limits = LIMITS) -> str | None:
    try:
        check_json(text, limits)
    except InvalidInput as exc:
        return str(exc)
    return None


@settings(max_examples=300, deadline=None)
@given(BODIES, st.sampled_from([None, 0, 2]))
# a field within its limit beside one over it (each container has its own limit, not the widest's)
@example({"0": {"": None, "0": None, "00": None, "000": None}, "": [None] * 4}, None)
def test_the_scan_refuses_exactly_the_bodies_over_the_bounds(body: dict[str, Any], indent: int | None) -> None:
    text = json.dumps(body, indent=indent).encode()
    assert json.loads(text) == body
    assert (refusal(text) is not None) == over_bounds(body, LIMITS), (text, refusal(text))


@settings(max_examples=150, deadline=None)
@given(BODIES, st.integers(2, 11))
def test_a_scan_in_small_pieces_says_what_one_piece_says(body: dict[str, Any], piece: int) -> None:
    text = json.dumps(body).encode()
    whole = refusal(text)
    saved, body_bounds.SCAN_BYTES = body_bounds.SCAN_BYTES, piece
    try:
        pieces = refusal(text)
    finally:
        body_bounds.SCAN_BYTES = saved
    assert (whole is None) == (pieces is None), (text, whole, pieces)
    if whole is not None and pieces is not None:  # the first problem found may differ in its count
        assert whole.split(" has ")[0] == pieces.split(" has ")[0] or "at least" in pieces


def test_each_bound_is_named_with_its_setting_and_field() -> None:
    limits = Limits(max_rows=10, max_width=5)
    assert refusal(json.dumps({"x": [[0]] * 10}).encode(), limits) is None
    assert refusal(json.dumps({"x": [[0]] * 11}).encode(), limits) == (
        "x has 11 items; the limit is 10 per request (MADE_MAX_ROWS)"
    )
    assert refusal(json.dumps({"x": [[0] * 6]}).encode(), limits) == (
        "x: an item holds 6 values; the limit is 5 per row (MADE_MAX_WIDTH)"
    )
    assert refusal(json.dumps({"given": {str(i): 0 for i in range(6)}}).encode(), limits) == (
        "given has 6 keys; the limit is 5 per request (MADE_MAX_WIDTH)"
    )
    fields = {f"k{i}": 0 for i in range(MAX_FIELDS + 1)}
    assert refusal(json.dumps(fields).encode(), limits) == (
        f"the request body has {MAX_FIELDS + 1} fields; a request has at most {MAX_FIELDS} "
        "(see /docs for the fields of each endpoint)"
    )
    deep = b'{"x": ' + b"[" * (MAX_DEPTH + 5) + b"]" * (MAX_DEPTH + 5) + b"}"
    assert "nest too deeply" in (refusal(deep, limits) or "")
    assert refusal(b'{"n": ' + b"9" * (MAX_DIGITS + 1) + b"}", limits) == (
        f"the request body holds a number of {MAX_DIGITS + 1} digits or more; numbers have at most {MAX_DIGITS}"
    )
    assert refusal(json.dumps({"model": "9" * 500, "x": [], "y": {}}).encode(), limits) is None  # digits in a string


def test_a_long_body_stops_at_its_first_piece_over_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(body_bounds, "SCAN_BYTES", 64)
    text = b'{"x": [' + b",".join([b"[0]"] * 1000) + b"]}"
    assert refusal(text, Limits(max_rows=10, max_width=5)) == (
        "x has at least 15 items; the limit is 10 per request (MADE_MAX_ROWS)"
    )
