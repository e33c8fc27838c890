"""Bounds on a JSON request body, checked on its bytes before anything is built from them.

A body within MADE_MAX_BODY_BYTES can still ask the parser for millions of objects (2.5 million
unknown keys in 30 MB, a list of a million rows of one value), each of which pydantic would then
validate and describe. `check_json` counts instead of building: a vectorised scan of the bytes
(numpy, which releases the GIL on large arrays, so a worker thread can run it beside the event
loop) finds the JSON structure outside strings (brackets, commas, colons), the depth of every
container and the items of each, and refuses with a 422 naming the field and the limit:

- at most MAX_DEPTH levels of nesting and MAX_FIELDS fields in the body's object;
- a top-level field's list at most MADE_MAX_ROWS items (rows, records, eps, inputs), its object
  at most MADE_MAX_WIDTH keys (given);
- a container one level further (a row of x, a record) at most MADE_MAX_WIDTH items;
- no number of more than MAX_DIGITS digits (Python's int() refuses 4300 and parses thousands
  slowly before that).

It does not decide that the JSON is valid: what passes is parsed and validated as before, and a
malformed body gets the parser's own message. Counting is exact for valid JSON; in malformed
JSON it may miscount, which at worst refuses with a bound a body that would have been refused
as invalid anyway.

`decode_json` is the one decoder of a JSON body (the routes', through service.http's route
class, and the /v2 inference request's): json.loads, refusing an object that names a key twice
(which json.loads would answer last-wins) with a 422 naming the key and where it is.
"""

from __future__ import annotations

import contextvars
import json
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np

from made.core.errors import InvalidInput

# Nesting that no request of the API needs (an Open Inference Protocol tensor nested as 2-D
# rows inside its input is 5 deep).
MAX_DEPTH = 16
# Fields in the body's top-level object: every request has fewer than 15.
MAX_FIELDS = 64
# Digits of one number (a seed is at most 2^53, 16 digits).
MAX_DIGITS = 100
# Bodies below this are scanned on the event loop (a few hundred microseconds); larger ones in a
# worker thread.
INLINE_BYTES = 256 * 1024

_OPEN = np.zeros(256, dtype=np.int32)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1
_STRUCTURAL = np.zeros(256, dtype=bool)
_STRUCTURAL[[ord(c) for c in "[]{},:"]] = True
_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[[ord(c) for c in "0123456789"]] = True


@dataclass(frozen=True)
class Limits:
    max_rows: int
    max_width: int


# The limits of the request being validated (set by RequestMiddleware): what a schema's
# validators bound before they build an array (x_b64's shape). The defaults are Settings'.
current_limits: contextvars.ContextVar[Limits] = contextvars.ContextVar(
    "made_limits",
    default=Limits(max_rows=10_000, max_width=16_384),  # noqa: B039 (frozen: immutable)
)


async def check_json_async(body: bytes, limits: Limits) -> None:
    """check_json from the event loop: inline for a small body, in a worker thread for one over
    INLINE_BYTES (numpy releases the GIL on the large arrays, so the loop goes on meanwhile)."""
    if len(body) <= INLINE_BYTES:
        check_json(body, limits)
    else:
        await anyio.to_thread.run_sync(check_json, body, limits)


def check_json(body: bytes, limits: Limits) -> None:
    """Raise InvalidInput if the JSON body is over one of the bounds; return otherwise. The
    bytes are scanned SCAN_BYTES at a time (what is carried from one piece to the next: the
    depth, whether a string is open, the container being counted at each level), so the scan's
    own memory is a few times SCAN_BYTES whatever the body's size."""
    if not body:
        return
    scan = _Scan(body, limits)
    start = 0
    while start < len(body):
        end = min(start + SCAN_BYTES, len(body))
        if body[end - 1] == ord("\\"):  # an escape stays whole within one piece: the backslashes
            while end < len(body) and body[end] == ord("\\"):  # and the byte after them (no piece
                end += 1  # ends on a backslash, so a run of them starts in the piece that ends it)
            end = min(end + 1, len(body))
        scan.feed(start, end)
        start = end


# Bytes scanned at once: the scan holds about 10 bytes of arrays per byte of a piece.
SCAN_BYTES = 1 << 22


class _Level:
    """The containers at one depth (2: values of top-level fields; 3: rows, records), counted
    as the pieces go by: a comma at that depth belongs to the last container opened at it."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.start = -1  # the last container opened at this depth (-1: none yet)
        self.commas = 0  # its commas so far

    def feed(self, body: np.ndarray, opens: np.ndarray, commas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(starts, items so far) of the containers this piece touched: the carried one and those
        it opened (positions in the body, sorted)."""
        owner = np.searchsorted(opens, commas, side="right") - 1
        self.commas += int(np.count_nonzero(owner < 0))
        counts = np.bincount(owner[owner >= 0], minlength=len(opens))
        starts = np.concatenate(([self.start], opens)) if self.start >= 0 else opens
        commas_in = np.concatenate(([self.commas], counts)) if self.start >= 0 else counts
        if len(opens):
            self.start, self.commas = int(opens[-1]), int(counts[-1])
        # A container with no comma holds one item, or none when it closes at once ([] or {}).
        after = body[np.minimum(starts + 1, len(body) - 1)]
        nonempty = ~np.isin(after, (ord("]"), ord("}"))) | (commas_in > 0)
        return starts, commas_in + nonempty


class _Scan:
    def __init__(self, body: bytes, limits: Limits) -> None:
        self.body = body
        self.bytes = np.frombuffer(body, dtype=np.uint8)  # a view, no copy
        self.limits = limits
        self.in_string = 0  # 1 while a string is open at the end of the last piece
        self.depth = 0
        self.digits = 0  # digits at the end of the last piece (a number may go on)
        self.is_object: bool | None = None  # whether the body is a JSON object (None: not seen yet)
        self.fields = 0
        self.tops: list[int] = []  # where each top-level field's value opens (its name is before it)
        self.levels = (_Level(2), _Level(3))

    def feed(self, lo: int, hi: int) -> None:
        # Escapes cannot open or close a string: blank out escaped backslashes, then escaped
        # quotes (same length, so positions stay).
        text = self.body[lo:hi].replace(b"\\\\", b"__").replace(b'\\"', b"__")
        a = np.frombuffer(text, dtype=np.uint8)
        quotes = np.flatnonzero(a == ord('"')).astype(np.int32)
        # The structural bytes outside strings (an even number of quotes before them), in order.
        marks = np.flatnonzero(_STRUCTURAL[a]).astype(np.int32)
        marks = marks[((np.searchsorted(quotes, marks) + self.in_string) & 1) == 0]
        self._check_digits(a, quotes)
        self.in_string = (self.in_string + len(quotes)) & 1
        chars = a[marks]
        step = _OPEN[chars]  # +1 at an opening bracket, -1 at a closing one
        depth = self.depth + np.cumsum(step, dtype=np.int32)  # containers open after each mark
        if len(depth):
            self.depth = int(depth[-1])
        deepest = int(depth.max(initial=0))
        if deepest > MAX_DEPTH:
            raise InvalidInput(
                "the request body is not valid JSON here: its arrays or objects nest too deeply "
                f"({deepest} levels; no request needs more than {MAX_DEPTH})"
            )
        if self.is_object is None and len(marks):
            self.is_object = bool(chars[0] == ord("{")) and not text[: int(marks[0])].strip()
        if not self.is_object:
            return  # not an object: the parser and the schema say what is wrong
        self.fields += int(np.count_nonzero((chars == ord(":")) & (depth == 1)))
        final = hi == len(self.body)  # counts so far are the body's own (else: at least these)
        if self.fields > MAX_FIELDS:
            raise InvalidInput(
                f"the request body has {_count(self.fields, final)} fields; a request has at most {MAX_FIELDS} "
                "(see /docs for the fields of each endpoint)"
            )
        is_open, is_comma = step > 0, chars == ord(",")
        for level in self.levels:
            opens = marks[is_open & (depth == level.depth)].astype(np.int64) + lo
            if level.depth == 2:
                self.tops.extend(opens.tolist())
            starts, items = level.feed(
                self.bytes, opens, marks[is_comma & (depth == level.depth)].astype(np.int64) + lo
            )
            if len(items):
                self._check(level.depth, starts, items, final)

    def _check(self, depth: int, starts: np.ndarray, items: np.ndarray, final: bool) -> None:
        """Raise for the first container over its limit: a top-level field's list MADE_MAX_ROWS
        items, its object MADE_MAX_WIDTH keys; anything one level further MADE_MAX_WIDTH."""
        is_list = self.bytes[starts] == ord("[")
        if depth == 2:
            limits = np.where(is_list, self.limits.max_rows, self.limits.max_width)
        else:
            limits = np.full(len(starts), self.limits.max_width)
        over = np.flatnonzero(items > limits)
        if not len(over):
            return
        i = int(over[0])
        count, start = int(items[i]), int(starts[i])
        if depth == 2:
            limit, setting, what = (
                (self.limits.max_rows, "MADE_MAX_ROWS", "items")
                if is_list[i]
                else (self.limits.max_width, "MADE_MAX_WIDTH", "keys")
            )
            name = _field_name(self.body, start)
            raise InvalidInput(
                f"{name} has {_count(count, final)} {what}; the limit is {limit} per request ({setting})",
                loc=(name,) if name != "a field" else (),
            )
        owner = max((t for t in self.tops if t < start), default=start)
        name = _field_name(self.body, owner)
        raise InvalidInput(
            f"{name}: an item holds {_count(count, final)} values; the limit is {self.limits.max_width} per row "
            "(MADE_MAX_WIDTH)",
            loc=(name,) if name != "a field" else (),
        )

    def _check_digits(self, a: np.ndarray, quotes: np.ndarray) -> None:
        """No run of digits outside strings longer than MAX_DIGITS (a run may span pieces)."""
        digits = _DIGIT[a]
        carried = self.digits
        self.digits = 0
        if not len(a):
            return
        starts = np.flatnonzero(digits[1:] & ~digits[:-1]) + 1
        if digits[0]:
            starts = np.concatenate(([0], starts))
        ends = np.flatnonzero(digits[:-1] & ~digits[1:]) + 1
        if digits[-1]:
            ends = np.concatenate((ends, [len(a)]))
        runs = ends - starts
        if len(runs) and digits[0]:
            runs[0] += carried
        if len(runs) and digits[-1]:
            self.digits = int(runs[-1])
        outside = ((np.searchsorted(quotes, starts) + self.in_string) & 1) == 0
        long = (runs > MAX_DIGITS) & outside
        if long.any():
            raise InvalidInput(
                f"the request body holds a number of {int(runs[long].max())} digits or more; numbers have at "
                f"most {MAX_DIGITS}"
            )


class _Repeated(Exception):
    """Raised by _unique_keys out of json.loads: an object named a key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook: the object, unless it names a key twice. Called for objects
    only, so a body of rows of numbers costs what it did; a body of records one dict() each."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Repeated
    return obj


def decode_json(body: bytes | str) -> Any:
    """The JSON value of a request body, as json.loads reads it (its errors unchanged: the
    callers name them), but an object that names a key twice is an InvalidInput naming the key
    and where it is (records[0]), not the last value silently."""
    try:
        return json.loads(body, object_pairs_hook=_unique_keys)
    except _Repeated:
        pass
    where, key = _first_repeated(json.loads(body, object_pairs_hook=_Pairs))  # the error path only
    place = (
        "the request body"
        if not where
        else "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if i else p for i, p in enumerate(where))
    )
    raise InvalidInput(
        f"{place} has the key {key!r} twice; the keys of a JSON object must be unique (which value was meant?)",
        loc=(*where, key),
    )


class _Pairs(list[tuple[str, Any]]):
    """An object as json.loads read it, its keys in order, repeats kept."""


def _first_repeated(value: Any, where: tuple[str | int, ...] = ()) -> tuple[tuple[str | int, ...], str]:
    """Where the first object (in the body's order) that names a key twice is, and the key;
    raises LookupError when none does."""
    if isinstance(value, _Pairs):
        seen: set[str] = set()
        for key, _ in value:
            if key in seen:
                return where, key
            seen.add(key)
        items: Any = ((key, item) for key, item in value)
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        raise LookupError
    for step, item in items:
        try:
            return _first_repeated(item, (*where, step))
        except LookupError:
            continue
    raise LookupError


def _count(n: int, final: bool) -> str:
    return str(n) if final else f"at least {n}"


def _field_name(text: bytes, start: int) -> str:
    """The key whose value opens at `start`: the last string before its colon."""
    head = text[max(0, start - 256) : start]
    colon = head.rfind(b":")
    close = head.rfind(b'"', 0, colon)
    open_ = head.rfind(b'"', 0, close)
    if colon < 0 or close < 0 or open_ < 0:
        return "a field"
    return head[open_ + 1 : close].decode("utf-8", "replace")
