"""One request of the HTTP API and how its answer reads (Call), what both clients send each its
own way (service.client.clients); a request of many records split into batches (splittable,
Batches) and their answers merged; an error answer raised as MadeAPIError."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Records = Sequence[dict[str, Any]] | Any  # a list of {column: value}, or a pandas DataFrame


class MadeAPIError(Exception):
    """The server answered with an error status."""

    def __init__(self, status_code: int, detail: str, type: str = "", request_id: str | None = None) -> None:
        super().__init__(f"{status_code} {type}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.type = type
        self.request_id = request_id


def parsed(model: type[M]) -> Callable[[httpx.Response], M]:
    """A response read as the service's response model `model`."""
    return lambda response: model.model_validate(response.json())


def json_body(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return body


def is_frame(records: Records) -> bool:
    return hasattr(records, "to_dict") and hasattr(records, "columns") and hasattr(records, "isna")


@dataclass
class Call(Generic[T]):
    """One request, and how its response reads: what both clients send, each its own way."""

    method: str
    path: str
    finish: Callable[[httpx.Response], T]  # the checked response -> the call's result
    payload: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None  # a body that is not JSON (a DataFrame's CSV)
    params: dict[str, str] | None = None  # the options of a CSV body, in the query string
    # a request whose answer is only a step (finish's Any): the call it leads to, given that answer
    then: Callable[[Any], Call[T]] | None = None
    # a request of `rows` records that may go as several: the call of records [start, stop)
    # with the call's seed and first_row = start (splittable), whose answers merge into one
    # (Batches.result); `seed`, the caller's seed of the whole call (None: the server's, or the
    # client's once it splits)
    rows: int = 0
    part: Callable[[int, int, int], Call[T]] | None = None
    seed: int | None = None

    def next(self, result: Any) -> Call[T] | None:
        """The call to send after this one (given this one's result), if any."""
        return self.then(result) if self.then is not None else None

    @property
    def json(self) -> dict[str, Any] | None:
        if self.payload is None:
            return None
        return {k: v for k, v in self.payload.items() if v is not None}

    def send(self) -> dict[str, Any]:
        """The arguments of httpx's request() for this call: its payload encoded here, the one
        place payloads are (numpy's scalars and arrays as the numbers and lists they hold)."""
        body = self.json
        if body is None:
            return {"content": self.content, "params": self.params, "headers": self.headers}
        content = json.dumps(body, default=_plain, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        headers = {"Content-Type": "application/json", **self.headers}
        return {"content": content.encode(), "params": self.params, "headers": headers}


def _plain(value: Any) -> Any:
    """A value json cannot encode as it is: a numpy scalar or array as the Python number or
    list it holds; anything else refused as json refuses it."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _too_large(exc: MadeAPIError) -> bool:
    """A refusal that a smaller batch may pass: a body over the size limit, a request over one
    of the per-request limits (MADE_MAX_ROWS, _DRAWS, _WORK, _SAMPLES, named anywhere in the
    detail), more records than explain takes at a time, or past the timeout."""
    if exc.status_code in (413, 504):
        return True
    return exc.status_code == 422 and ("MADE_MAX_" in exc.detail or exc.detail.startswith(_EXPLAIN_CAP))


# The start of the refusal of more explained records than one request takes (service.core.tableplane).
_EXPLAIN_CAP = "explain is for a few records at a time"


def _new_seed() -> int:
    """A seed for a split call that was given none, drawn as the server draws one."""
    return secrets.randbelow(2**31)


def splittable(
    call: Call[T],
    rows: int,
    build: Callable[[Records, int | None, int], Call[T]],
    records: Records,
    seed: int | None,
) -> Call[T]:
    """`call` (of all `rows` records, with the caller's `seed`) able to go as batches: records
    [start, stop) with the call's seed and first_row = start (build(records, seed, first_row))."""

    def part(start: int, stop: int, call_seed: int) -> Call[T]:
        chunk: Records = records.iloc[start:stop] if is_frame(records) else list(records)[start:stop]  # type: ignore[union-attr]
        return build(chunk, call_seed, start)

    call.rows, call.part, call.seed = rows, part, seed
    return call


class Batches(Generic[T]):
    """The batches of a splittable call, one after another: records [start, stop) a batch, at
    most `max_rows` a batch, halved while the server refuses one as too large (_too_large); the
    two clients send what next() gives and report each answer or refusal.

    Every batch goes with the call's one seed: the caller's, or where the caller gave none, one
    drawn here once the call splits, and the merged answer's seed is that one. Each batch also
    sends first_row, the index of its first record in the call: the server draws row i of a
    request from default_rng([seed, first_row + i]), so every record draws what it would in one
    request of all the records with that seed, and the split answer is that request's answer,
    whatever max_rows is and however often a refused batch is halved (a 504 that depends on the
    load changes the batches, not the answer; a model of bits' particle-filter estimates agree to
    float64 rounding, since its passes pack the rows' particles together)."""

    def __init__(self, call: Call[T], max_rows: int):
        assert call.part is not None
        self.call, self.part, self.seed = call, call.part, call.seed
        self.answers: list[Any] = []
        self.start, self.size, self.stop = 0, min(max_rows, max(call.rows, 1)), 0

    def next(self) -> Call[T] | None:
        """The next batch's call (the whole call, unsplit, where one batch holds every record)."""
        if self.start >= self.call.rows and self.answers:
            return None
        self.stop = min(self.call.rows, self.start + self.size)
        if (self.start, self.stop) == (0, self.call.rows):
            return replace(self.call, part=None)
        if self.seed is None:
            self.seed = _new_seed()
        return self.part(self.start, self.stop, self.seed)

    def answered(self, answer: T) -> None:
        self.answers.append(answer)
        self.start = self.stop

    def refused(self, exc: MadeAPIError) -> None:
        """A refusal: the batch halved where a smaller one may pass, else raised; a batch after
        the first says which records it held, since the server counts a request's rows from 0."""
        if not _too_large(exc) or self.stop - self.start <= 1:
            if self.start == 0 and self.stop == self.call.rows:
                raise exc
            where = f"in records {self.start} to {self.stop - 1} of this call: one request, its rows counted from 0"
            raise MadeAPIError(exc.status_code, f"{exc.detail} ({where})", exc.type, exc.request_id) from exc
        self.size = (self.stop - self.start) // 2

    def result(self) -> T:
        """The batches' answers as one, its seed the call's where a batch drew with it (none
        where no batch drew anything, as the server answers a request of complete records)."""
        merged = merge_answers(self.answers)
        if len(self.answers) > 1 and isinstance(merged, BaseModel) and "seed" in type(merged).model_fields:
            drew = any(getattr(a, "seed", None) is not None for a in self.answers)
            merged = merged.model_copy(update={"seed": self.seed if drew else None})
        return merged  # type: ignore[no-any-return]


def merge_answers(answers: list[Any]) -> Any:
    """The answers of a request's batches as one: DataFrames concatenated, a response's lists
    (one entry per record) concatenated, its other fields the first batch's."""
    first = answers[0]
    if len(answers) == 1:
        return first
    if not isinstance(first, BaseModel):
        import pandas as pd

        return pd.concat(answers)
    update = {name: [v for a in answers for v in getattr(a, name)] for name, value in first if isinstance(value, list)}
    return first.model_copy(update=update)


def check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:  # not JSON (a proxy's page): its text
            body = None
        if not isinstance(body, dict) or "detail" not in body:  # a list, a string, another object
            raise MadeAPIError(response.status_code, response.text)
        request_id = body.get("request_id")
        raise MadeAPIError(
            response.status_code,
            str(body["detail"]),
            str(body.get("type", "")),
            request_id if isinstance(request_id, str) else None,
        )
    return response


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
