"""CSV in and out for table models, so that a file is scored with one curl:

    curl -s localhost:8000/logprob?model=diamonds -H 'Content-Type: text/csv' -H 'Accept: text/csv' \\
        --data-binary @diamonds_test.csv

A pure ASGI middleware in front of the routers: a POST to /logprob, /impute or /conditionals sent
as text/csv becomes the JSON request {"records": [...]} (the options come from the query string:
model and the route's own: seed, first_row, n_importance, masks, n_samples, explain or mask, as
its JSON request has them), read against the model's columns by
the project's one CSV reader (service.core.records.parse_csv over made.io.csv: the delimiter
found in the first line, a column named twice a 422, an empty cell absent where the column can
be absent, else unknown; a boolean option true/false, 1/0, yes/no or on/off, else a 422). The
Python client sends a DataFrame this way, so that its empty cells mean what a CSV file's do.

The answer's type is chosen here for every inference POST, by service.http.accept (q-values
honoured; a 406 naming the route's types where the Accept header takes none of them). As CSV,
/logprob answers the CSV it was sent with `logprob`, `exact` and `stderr` columns added (and with
explain, `surprisal.COLUMN` and `surprisal_in_order.COLUMN`; a CSV that already has one of them,
not a column of the model, is a 422 naming it, before the model runs), /impute the CSV it was
sent with its unknown cells at their most likely values; a JSON request to /sample or /impute
gets its answer's records as CSV. Errors stay JSON. Everything else passes through untouched,
and the route then validates, authorises and answers as for JSON. The scope is changed in place,
so that the route the router finds labels the request's metrics; a request refused here is
labelled by its route too.

A body is bounded before it is parsed: its lines and the cells of each line are counted on the
bytes against MADE_MAX_ROWS and MADE_MAX_WIDTH (service.core.records.check_csv_bounds), and a large
admitted body is parsed in a worker thread, so that no request holds the event loop. Text cells
of the CSV answer that a spreadsheet would run as formulas are escaped unless
MADE_CSV_ESCAPE_FORMULAS is false (made.io.csv.escape_formula).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import anyio.to_thread
import numpy as np
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from made.core.errors import InvalidInput, MadeError, NotAcceptable
from made.core.schema import ABSENT
from made.io.csv import to_csv
from service.core.records import check_csv_bounds, parse_csv
from service.core.schemas import ConditionalsRequest, ImputeRequest, LogProbRequest
from service.http.accept import CSV, NEGOTIATED, offers, preferred, refusal
from service.http.auth import carries_key
from service.http.errors import compressed, made_error_body
from service.http.middleware import replay_body

_PATHS = {"/logprob", "/impute", "/conditionals"}  # CSV bodies
_OPTIONS = {
    "model": str,
    "seed": int,
    "first_row": int,
    "n_importance": int,
    "n_samples": int,
    "masks": str,
    "explain": bool,
    "mask": int,
}
# Each CSV route's options: those of _OPTIONS its JSON request has (an option of another route,
# /logprob?mask=2, is named as a query parameter of this one, not as an unknown body field)
_REQUESTS: dict[str, type[BaseModel]] = {
    "/logprob": LogProbRequest,
    "/impute": ImputeRequest,
    "/conditionals": ConditionalsRequest,
}
_ROUTE_OPTIONS = {path: sorted(set(_OPTIONS) & set(model.model_fields)) for path, model in _REQUESTS.items()}
# A boolean option read as FastAPI reads a boolean query parameter: true/false, 1/0, yes/no,
# on/off (t/f, y/n), in any case; anything else is a 422 naming the option.
_BOOLEAN = TypeAdapter(bool)
# Bodies (and answers of rows) past these are parsed (written) in a worker thread; smaller ones
# take less time than the hop to a thread.
_THREAD_BYTES = 64 * 1024
_THREAD_ROWS = 1000


class _Sent(NamedTuple):
    """A CSV body as read: its header and rows as written, the model's columns, and which of
    their cells were unknown (row by row, in the model's column order)."""

    header: list[str]
    rows: list[list[str]]
    names: list[str]
    unknown: Any  # (N, C) bool


def _head(headers: list[tuple[bytes, bytes]]) -> tuple[str, str, str, str]:
    """Content-Type, Authorization, Content-Encoding and Accept of a request ("" where absent):
    the first of each, as Starlette's Headers.get."""
    content_type = authorization = encoding = accept = ""
    for key, value in headers:  # ASGI header names are lower-case bytes
        if key == b"content-type":
            content_type = content_type or value.decode("latin-1")
        elif key == b"authorization":
            authorization = authorization or value.decode("latin-1")
        elif key == b"content-encoding":
            encoding = encoding or value.decode("latin-1")
        elif key == b"accept":
            accept = accept or value.decode("latin-1")
    return content_type, authorization, encoding, accept


async def _read_body(receive: Receive) -> bytes:
    """The whole request body (RequestMiddleware, outside this one, has bounded its size)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _route_of(scope: Scope) -> Any:
    """The app's POST route of this path, looked for in the routers it includes too (FastAPI
    wraps them): the metrics label of an answer given before routing. None where not found."""
    stack = list(getattr(scope.get("app"), "routes", ()))
    while stack:
        route = stack.pop(0)
        if getattr(route, "path", None) == scope["path"] and "POST" in (getattr(route, "methods", None) or ()):
            return route
        stack.extend(getattr(getattr(route, "original_router", None), "routes", ()))
    return None


def _label(scope: Scope) -> None:
    """Label a request answered here by its route, as the route's own answer would be."""
    if scope.get("route") is None:
        scope["route"] = _route_of(scope)


class CsvRecordsMiddleware:
    def __init__(self, app: ASGIApp, *, dataplane: Any, api_key: Any = None) -> None:
        self.app = app
        self.dataplane = dataplane
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" and scope["method"] == "POST" else ""
        if path not in NEGOTIATED:
            await self.app(scope, receive, send)
            return
        content_type, authorization, encoding, accept = _head(scope["headers"])
        media = content_type.split(";")[0].strip().lower()
        if not self._authorised(authorization):
            await self.app(scope, receive, send)  # the route's 401
            return
        csv_body = media == "text/csv" and path in _PATHS
        # The answer's type, chosen here for every inference route (service.http.accept).
        answer = preferred(accept, offers(path, csv_body))
        if answer is None:
            await _refuse(scope, send, refusal(path, accept, csv_body))
        elif csv_body:
            await self._csv_body(scope, receive, send, encoding, as_csv=answer == CSV)
        elif answer == CSV:  # a JSON request to /sample or /impute, a CSV answer
            escape = self.dataplane.settings.csv_escape_formulas
            # an answer that has no CSV form (packed samples, a model of bits' imputations) goes
            # as JSON where the Accept header takes it, else it is the 406 that names why
            fallback = None if preferred(accept, offers(path)[:1]) else _no_csv(path, accept)
            await self.app(scope, receive, _CsvAnswer(send, _json_records, escape=escape, fallback=fallback))
        else:
            await self.app(scope, receive, send)

    async def _csv_body(self, scope: Scope, receive: Receive, send: Send, encoding: str, *, as_csv: bool) -> None:
        """A CSV body, turned into the JSON request for the route; its answer as CSV where asked."""
        if encoding.strip().lower() not in ("", "identity"):
            refused = compressed(Request(scope))  # the JSON routes' 415, word for word
            assert refused is not None
            _label(scope)
            await refused(scope, receive, send)
            return
        body = await _read_body(receive)
        settings = self.dataplane.settings
        render = _RENDER.get(scope["path"]) if as_csv else None
        try:
            request, schema, model = self._options(scope)
            try:
                check_csv_bounds(body, max_rows=settings.max_rows, max_width=settings.max_width)
                if len(body) > _THREAD_BYTES:
                    sent, payload = await anyio.to_thread.run_sync(_to_json, request, schema, body, model)
                else:
                    sent, payload = _to_json(request, schema, body, model)
            except InvalidInput as exc:
                raise _one_line_hint(exc, body) from None
            if render is not None:
                _check_answer_columns(scope["path"], request, sent)
        except MadeError as exc:
            await _refuse(scope, send, exc)
            return
        # In place, not a copy: the router sets scope["route"] on it, the metrics label
        # RequestMiddleware reads when the answer is done.
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")] + [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        replay = replay_body(payload, receive)
        if render is None:
            await self.app(scope, replay, send)
            return
        answer = _CsvAnswer(send, lambda a: render(sent, a), escape=settings.csv_escape_formulas, rows=len(sent.rows))
        await self.app(scope, replay, answer)

    def _authorised(self, authorization: str) -> bool:
        return self.api_key is None or carries_key(authorization, self.api_key)

    def _options(self, scope: Scope) -> tuple[dict[str, Any], Any, str]:
        """The request's options from the query string, the schema of the model it names, and the
        default model's name where it names none ("" where it does)."""
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs):  # last-wins would pick one silently
            twice = next(key for key, _ in pairs if sum(k == key for k, _ in pairs) > 1)
            raise InvalidInput(f"query parameter {_shown(twice)} is given twice; give it once", loc=("query", twice))
        path = scope["path"]
        unknown = sorted(set(query) - set(_ROUTE_OPTIONS[path]))
        if unknown:
            raise InvalidInput(
                f"query parameter {_shown(unknown[0])} is not an option of a CSV request to {path} "
                f"({', '.join(_ROUTE_OPTIONS[path])})",
                loc=("query", unknown[0][:40]),
            )
        request: dict[str, Any] = {}
        for key, value in query.items():
            shown = _shown(value)
            if _OPTIONS[key] is int:
                # as JSON writes an integer: Python's int() also takes 1_0, +1, ' 1' and a full-width
                # 1, and past 4,300 digits raises (a 500); no option's integer needs 20 digits
                if not _INTEGER.fullmatch(value):
                    raise InvalidInput(f"query parameter {key} must be an integer, got {shown}", loc=("query", key))
                request[key] = int(value)
            elif _OPTIONS[key] is bool:
                try:
                    request[key] = _BOOLEAN.validate_python(value)
                except ValidationError:
                    raise InvalidInput(
                        f"query parameter {key} must be a boolean (true or false, 1 or 0, yes or no, on or off), "
                        f"got {shown}",
                        loc=("query", key),
                    ) from None
            elif key == "model" and not value:
                raise InvalidInput("query parameter model is empty: name a model, or leave it out", loc=("query", key))
            elif key == "masks":  # "all" or a number of masks; anything else the route names
                request[key] = int(value) if _INTEGER.fullmatch(value) else value
            else:
                request[key] = value
        engine = self.dataplane.engine(request.get("model"))
        defaulted = "" if "model" in request else str(engine.name)  # the default: named in errors
        return request, engine.model.schema, defaulted  # a bit model's schema: x0..x{D-1}


_INTEGER = re.compile(r"-?[0-9]{1,19}")


def _shown(text: str) -> str:
    """A query key or value as an error quotes it: repr (a line break stays on the error's one
    line), cut at 40 characters."""
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"


def _one_line_hint(exc: InvalidInput, body: bytes) -> InvalidInput:
    """A CSV body's error, with a hint where the body is a single line: `curl -d @FILE` sends a
    file with its line breaks removed, its header and rows run together into one line, which the
    error about its cells alone does not explain."""
    text = body.strip()
    if b"\n" in text or b"\r" in text:
        return exc
    return InvalidInput(
        f"{exc} (the body is a single line: curl -d @FILE drops a file's line breaks; send it with "
        "--data-binary @FILE)",
        exc.loc,
    )


def _to_json(request: dict[str, Any], schema: Any, body: bytes, model: str = "") -> tuple[_Sent, bytes]:
    """The CSV body as read (for the answer) and as the JSON request's bytes; bounded beforehand
    (check_csv_bounds), run in a worker thread for a large body."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the CSV body is not UTF-8 text") from None
    values, header, rows = parse_csv(schema, text, model)
    request = {**request, "records": [_record(schema, row) for row in values]}
    return _Sent(header, rows, list(schema.names), np.isnan(values)), json.dumps(request).encode()


def _record(schema: Any, row: Any) -> dict[str, Any]:
    """An encoded row as a JSON record: unknown cells left out, numbers as they were sent."""
    out: dict[str, Any] = {}
    for col, v in zip(schema.columns, row, strict=True):
        if v != v:  # NaN: unknown
            continue
        if col.kind == "numeric":
            out[col.name] = "NA" if v == ABSENT else float(v)
        else:
            out[col.name] = col.levels[int(v)]
    return out


def _check_answer_columns(path: str, request: dict[str, Any], sent: _Sent) -> None:
    """Refuse, before the model runs, a CSV whose CSV answer would name a column twice: one it
    was sent with that the answer adds (a scored file sent again), as `made score` refuses an
    input with a logprob column. A column of the model is the model's (not refused here)."""
    if path != "/logprob":
        return  # /impute adds only the model's columns the CSV left out
    added = ["logprob", "exact", "stderr"]
    if request.get("explain"):
        added += [f"surprisal.{n}" for n in sent.names] + [f"surprisal_in_order.{n}" for n in sent.names]
    model = set(sent.names)
    clash = [c for c in added if c in sent.header and c not in model]
    if clash:
        what = "logprob, exact and stderr" + (
            ", and surprisal.COLUMN and surprisal_in_order.COLUMN per model column" if request.get("explain") else ""
        )
        named = ", ".join(repr(c) for c in clash)
        raise InvalidInput(
            f"the CSV already has the column{'s' if len(clash) > 1 else ''} {named} (a scored file?), which the CSV "
            f"answer of /logprob adds ({what}); rename or drop {'them' if len(clash) > 1 else 'it'} first"
        )


# --- answers as CSV: (header, rows) from the JSON answer ------------------------------------------
Table = tuple[list[str], list[list[Any]]]


def _logprob_csv(sent: _Sent, answer: dict[str, Any]) -> Table:
    """The CSV sent, with logprob, exact and stderr added; with explain, surprisal.COLUMN (given
    the other columns) and surprisal_in_order.COLUMN (given the columns before it) per column."""
    scores = zip(answer["logprob"], answer["exact"], answer["stderr"], strict=True)
    rows = [
        [*row, lp, str(ex).lower(), "" if se is None else se]
        for row, (lp, ex, se) in zip(sent.rows, scores, strict=True)
    ]
    header = [*sent.header, "logprob", "exact", "stderr"]
    surprisal = answer.get("surprisal")
    if surprisal:
        names = [n for n in sent.names if n in surprisal[0]]
        header += [f"surprisal.{n}" for n in names] + [f"surprisal_in_order.{n}" for n in names]
        for row, per_column in zip(rows, surprisal, strict=True):
            row += [per_column[n].get("given_others") for n in names]
            row += [per_column[n].get("in_order") for n in names]
    return header, rows


def _impute_csv(sent: _Sent, answer: dict[str, Any]) -> Table:
    """The CSV sent with each unknown cell of a model column at its most likely value (the
    answer's records); the model's columns the CSV left out added at the end."""
    missing = [n for n in sent.names if n not in sent.header]
    where = {name: sent.header.index(name) for name in sent.names if name in sent.header}
    rows: list[list[Any]] = []
    for i, (row, record) in enumerate(zip(sent.rows, answer["records"], strict=True)):
        out: list[Any] = list(row)
        for j, name in enumerate(sent.names):
            if name in where and sent.unknown[i, j]:
                out[where[name]] = record.get(name)
        rows.append(out + [record.get(n) for n in missing])
    return [*sent.header, *missing], rows


_RENDER: dict[str, Callable[[_Sent, dict[str, Any]], Table]] = {"/logprob": _logprob_csv, "/impute": _impute_csv}


def _json_records(answer: dict[str, Any]) -> Table | None:
    """A JSON request's answer as CSV: its records (the model's columns in order), or a bit
    model's sampled rows under x0..x{D-1}; None where it holds neither (the JSON goes as it is)."""
    records = answer.get("records")
    if records:
        header = list(dict.fromkeys(k for r in records for k in r))
        return header, [[r.get(k) for k in header] for r in records]
    samples = answer.get("samples")
    if samples and isinstance(samples[0], list) and samples[0] and isinstance(samples[0][0], int):
        return [f"x{j}" for j in range(len(samples[0]))], samples
    return None


class _CsvAnswer:
    """Turns a route's JSON answer into CSV (render: the header and rows, or None to leave it
    JSON); error answers, and answers of another type (a PNG), stay as they are."""

    def __init__(
        self,
        send: Send,
        render: Callable[[dict[str, Any]], Table | None],
        *,
        escape: bool = True,
        rows: int = 0,
        fallback: MadeError | None = None,
    ) -> None:
        self.send, self.render, self.escape, self.rows = send, render, escape, rows
        self.fallback = fallback  # what an answer render leaves as JSON gets instead (None: the JSON)
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(self.chunks)
        headers = self.start.get("headers", [])
        json_answer = any(k == b"content-type" and v.startswith(b"application/json") for k, v in headers)
        payload = None
        if self.start["status"] == 200 and json_answer:
            if self.rows > _THREAD_ROWS or len(body) > _THREAD_BYTES:
                payload = await anyio.to_thread.run_sync(self._csv, body)
            else:
                payload = self._csv(body)
        if payload is None and self.fallback is not None and self.start["status"] == 200 and json_answer:
            status, error = made_error_body(self.fallback)
            await _send(self.send, status, "application/json", json.dumps(error).encode(), [])
            return
        if payload is None:
            await self.send(self.start)
            await self.send({"type": "http.response.body", "body": body})
            return
        keep = [(k, v) for k, v in headers if k not in (b"content-type", b"content-length")]
        await _send(self.send, 200, "text/csv; charset=utf-8", payload, keep)

    def _csv(self, body: bytes) -> bytes | None:
        table = self.render(json.loads(body))
        if table is None:
            return None
        header, rows = table
        return to_csv(header, rows, escape=self.escape).encode()


def _no_csv(path: str, accept: str) -> NotAcceptable:
    """The 406 of a JSON request whose answer turned out to have no CSV form, where the Accept
    header takes only CSV."""
    return NotAcceptable(
        f"this answer of POST {path} has no CSV form (packed samples, or a model of bits' imputations: rows "
        f"of samples per record); the Accept header {accept!r} takes no JSON (send 'Accept: application/json')"
    )


async def _refuse(scope: Scope, send: Send, exc: MadeError) -> None:
    """A request refused here, answered as the app's error handler answers the error."""
    status, body = made_error_body(exc)
    _label(scope)
    await _send(send, status, "application/json", json.dumps(body).encode())


async def _send(
    send: Send, status: int, media: str, payload: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *(headers or []),
                (b"content-type", media.encode()),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
