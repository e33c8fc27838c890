"""CSV in and out for table models, so that a file is scored with one curl:

    curl -s localhost:8000/logprob?model=diamonds -H 'Content-Type: text/csv' -H 'Accept: text/csv' \\
        --data-binary @diamonds_test.csv

A pure ASGI middleware in front of the routers: a POST to /logprob or /impute sent as text/csv
becomes the JSON request {"records": [...]} (the options come from the query string: model, seed,
n_importance, masks, n_samples, explain), read against the model's columns as the training files
were (service.records.parse_csv). With `Accept: text/csv`, /logprob answers the CSV it was sent
with `logprob`, `exact` and `stderr` columns added. Everything else passes through untouched,
and the route then validates, authorises and answers as for JSON.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from made.errors import InvalidInput, MadeError
from made.schema import ABSENT
from service.errors import error_body, status_of
from service.middleware import replay_body
from service.records import parse_csv, to_csv
from service.routers.deps import same_key

_PATHS = {"/logprob", "/impute"}
_OPTIONS = {"model": str, "seed": int, "n_importance": int, "n_samples": int, "masks": str, "explain": str}


class CsvRecordsMiddleware:
    def __init__(self, app: ASGIApp, *, dataplane: Any, api_key: Any = None) -> None:
        self.app = app
        self.dataplane = dataplane
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in _PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "text/csv" or not self._authorised(headers):
            await self.app(scope, receive, send)  # JSON, or the route's 401
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            request, header, rows = self._to_json(scope, body)
        except MadeError as exc:
            status, kind = status_of(exc)
            await _send(send, status, "application/json", json.dumps(error_body(status, kind, str(exc))).encode())
            return
        payload = json.dumps(request).encode()
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")] + [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        replay = replay_body(payload, receive)
        if "text/csv" not in headers.get("accept", "") or scope["path"] != "/logprob":
            await self.app(scope, replay, send)
            return
        await self.app(scope, replay, _CsvAnswer(send, header, rows))

    def _authorised(self, headers: dict[str, str]) -> bool:
        if self.api_key is None:
            return True
        return same_key(headers.get("authorization", "").removeprefix("Bearer ").strip(), self.api_key)

    def _to_json(self, scope: Scope, body: bytes) -> tuple[dict[str, Any], list[str], list[list[str]]]:
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
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("the CSV body is not UTF-8 text") from None
        values, header, rows = parse_csv(schema, text)
        request["records"] = [_record(schema, row) for row in values]
        return request, header, rows


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

    def __init__(self, send: Send, header: list[str], rows: list[list[str]]) -> None:
        self.send, self.header, self.rows = send, header, rows
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
        answer = json.loads(body)
        extra = ["logprob", "exact", "stderr"]
        scores = zip(answer["logprob"], answer["exact"], answer["stderr"], strict=True)
        rows = [
            [*row, lp, str(ex).lower(), "" if se is None else se]
            for row, (lp, ex, se) in zip(self.rows, scores, strict=True)
        ]
        keep = [(k, v) for k, v in self.start.get("headers", []) if k not in (b"content-type", b"content-length")]
        await _send(self.send, 200, "text/csv; charset=utf-8", to_csv([*self.header, *extra], rows).encode(), keep)


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
