"""CSV in and out for table models, so that a file is scored with one curl:

    curl -s localhost:8000/logprob?model=diamonds -H 'Content-Type: text/csv' -H 'Accept: text/csv' \\
        --data-binary @diamonds_test.csv

A pure ASGI middleware in front of the routers: a POST to /logprob, /impute or /conditionals sent
as text/csv becomes the JSON request {"records": [...]} (the options come from the query string:
model, seed, n_importance, masks, n_samples, explain, mask), read against the model's columns by
the project's one CSV reader (service.core.records.parse_csv over made.io.csv: the delimiter
found in the first line, a column named twice a 422, an empty cell absent where the column can
be absent, else unknown). The Python client sends a DataFrame this way, so that its empty cells
mean what a CSV file's do. With `Accept: text/csv`, /logprob answers the CSV it was sent
with `logprob`, `exact` and `stderr` columns added. Everything else passes through untouched,
and the route then validates, authorises and answers as for JSON.

A body is bounded before it is parsed: its lines and the cells of each line are counted on the
bytes against MADE_MAX_ROWS and MADE_MAX_WIDTH (service.core.records.check_csv_bounds), and a large
admitted body is parsed in a worker thread, so that no request holds the event loop. Text cells
of the CSV answer that a spreadsheet would run as formulas are escaped unless
MADE_CSV_ESCAPE_FORMULAS is false (made.io.csv.escape_formula).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import anyio.to_thread
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from made.core.errors import InvalidInput, MadeError
from made.core.schema import ABSENT
from made.io.csv import to_csv
from service.core.records import check_csv_bounds, parse_csv
from service.http.auth import carries_key
from service.http.errors import compressed, made_error_body
from service.http.middleware import replay_body

_PATHS = {"/logprob", "/impute", "/conditionals"}
_OPTIONS = {
    "model": str,
    "seed": int,
    "n_importance": int,
    "n_samples": int,
    "masks": str,
    "explain": str,
    "mask": int,
}
# Bodies (and answers of rows) past these are parsed (written) in a worker thread; smaller ones
# take less time than the hop to a thread.
_THREAD_BYTES = 64 * 1024
_THREAD_ROWS = 1000


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


class CsvRecordsMiddleware:
    def __init__(self, app: ASGIApp, *, dataplane: Any, api_key: Any = None) -> None:
        self.app = app
        self.dataplane = dataplane
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in _PATHS:
            await self.app(scope, receive, send)
            return
        content_type, authorization, encoding, accept = _head(scope["headers"])
        media = content_type.split(";")[0].strip().lower()
        if media != "text/csv" or not self._authorised(authorization):
            await self.app(scope, receive, send)  # JSON, or the route's 401
            return
        if encoding.strip().lower() not in ("", "identity"):
            refused = compressed(Request(scope))  # the JSON routes' 415, word for word
            assert refused is not None
            await refused(scope, receive, send)
            return
        body = await _read_body(receive)
        settings = self.dataplane.settings
        try:
            request, schema = self._options(scope)
            check_csv_bounds(body, max_rows=settings.max_rows, max_width=settings.max_width)
            if len(body) > _THREAD_BYTES:
                header, rows, payload = await anyio.to_thread.run_sync(_to_json, request, schema, body)
            else:
                header, rows, payload = _to_json(request, schema, body)
        except MadeError as exc:
            status, refusal = made_error_body(exc)  # as the app's error handler answers it
            await _send(send, status, "application/json", json.dumps(refusal).encode())
            return
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")] + [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        replay = replay_body(payload, receive)
        if "text/csv" not in accept or scope["path"] != "/logprob":
            await self.app(scope, replay, send)
            return
        await self.app(scope, replay, _CsvAnswer(send, header, rows, escape=settings.csv_escape_formulas))

    def _authorised(self, authorization: str) -> bool:
        return self.api_key is None or carries_key(authorization, self.api_key)

    def _options(self, scope: Scope) -> tuple[dict[str, Any], Any]:
        """The request's options from the query string, and the schema of the model it names."""
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        unknown = sorted(set(query) - set(_OPTIONS))
        if unknown:
            raise InvalidInput(
                f"query parameter {unknown[0]!r} is not an option of a CSV request ({', '.join(sorted(_OPTIONS))})"
            )
        request: dict[str, Any] = {}
        for key, value in query.items():
            if _OPTIONS[key] is int:
                try:
                    request[key] = int(value)
                except ValueError:
                    raise InvalidInput(f"query parameter {key} must be an integer, got {value!r}") from None
            elif key == "explain":
                request[key] = value.lower() in ("1", "true", "yes")
            elif key == "masks":
                request[key] = value if value == "all" else int(value) if value.isdigit() else value
            else:
                request[key] = value
        schema = self.dataplane.engine(request.get("model")).model.schema  # a bit model's: x0..x{D-1}
        return request, schema


def _to_json(request: dict[str, Any], schema: Any, body: bytes) -> tuple[list[str], list[list[str]], bytes]:
    """The CSV body as the JSON request's bytes, with its header and rows as read (for the answer);
    bounded beforehand (check_csv_bounds), run in a worker thread for a large body."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the CSV body is not UTF-8 text") from None
    values, header, rows = parse_csv(schema, text)
    request = {**request, "records": [_record(schema, row) for row in values]}
    return header, rows, json.dumps(request).encode()


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


class _CsvAnswer:
    """Turns /logprob's JSON answer into the CSV it was sent, with logprob, exact and stderr added;
    error answers stay JSON."""

    def __init__(self, send: Send, header: list[str], rows: list[list[str]], *, escape: bool = True) -> None:
        self.send, self.header, self.rows, self.escape = send, header, rows, escape
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
        status = self.start["status"]
        if status != 200:
            await self.send(self.start)
            await self.send({"type": "http.response.body", "body": body})
            return
        if len(self.rows) > _THREAD_ROWS:
            payload = await anyio.to_thread.run_sync(self._csv, body)
        else:
            payload = self._csv(body)
        keep = [(k, v) for k, v in self.start.get("headers", []) if k not in (b"content-type", b"content-length")]
        await _send(self.send, 200, "text/csv; charset=utf-8", payload, keep)

    def _csv(self, body: bytes) -> bytes:
        answer = json.loads(body)
        extra = ["logprob", "exact", "stderr"]
        scores = zip(answer["logprob"], answer["exact"], answer["stderr"], strict=True)
        rows = [
            [*row, lp, str(ex).lower(), "" if se is None else se]
            for row, (lp, ex, se) in zip(self.rows, scores, strict=True)
        ]
        return to_csv([*self.header, *extra], rows, escape=self.escape).encode()


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
