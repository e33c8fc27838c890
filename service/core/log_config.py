"""Structured logs: one JSON object per line, carrying the request id of the request being served.

The request id lives in a context variable set by the request middleware, so any log call made
while serving a request (in the event loop or in a worker thread) is tagged with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass
class RequestContext:
    """What the middleware, the error handlers and the data plane learn about one request."""

    request_id: str
    model: str = ""  # set once the request's model is resolved (a metrics label)
    error_type: str | None = None  # set by the error handlers
    disconnected: bool = False  # its client went before the answer (the middleware's watch)
    engine_started: bool = False  # an engine call of its own started (DataPlane), not a merged one


# A mutable object in the variable, so that what the handler sets is seen by the middleware.
request_context: ContextVar[RequestContext | None] = ContextVar("made_request", default=None)


def current_request_id() -> str | None:
    ctx = request_context.get()
    return ctx.request_id if ctx else None


# Attributes every LogRecord has; anything else came through `extra=` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}  # uvicorn's ANSI-coloured copy


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "message", "request_id"?, **extra, "exc_info"?}

    One line per request on the hot path: the encoder is built once, the timestamp's seconds
    are formatted once per second, and the record's fields are read once."""

    _encoder = json.JSONEncoder(default=str)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._second = -1
        self._second_text = ""

    def _timestamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:  # a race only formats the same second twice
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        exc_text = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(
            record.created, record.msecs, record.levelname, record.name, record.getMessage(), vars(record), exc_text
        )

    def line(
        self,
        created: float,
        msecs: float,
        level: str,
        logger: str,
        message: str,
        fields: dict[str, Any],
        exc_text: str | None = None,
    ) -> str:
        """The JSON line of a record with these attributes; `fields` are its attributes (the
        standard ones are skipped) or, for AccessLog's records never built, its extra fields."""
        entry: dict[str, Any] = {
            "ts": self._timestamp(created, msecs),
            "level": level,
            "logger": logger,
            "message": message,
        }
        request_id = fields.get("request_id") or current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in fields.items():
            if key not in _STANDARD and key not in entry and key[0] != "_":
                entry[key] = value
        if exc_text:
            entry["exc_info"] = exc_text
        return self._encoder.encode(entry)


class JsonStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """logging_config's handler: JSON lines on a stream. Lines that AccessLog formatted without a
    record (write_line, from the event loop) are written together once per turn of the loop: one
    write for all the requests a turn answered, not one each. A record written meanwhile, and
    flush() (logging's shutdown calls it), write them first, so lines keep their order."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def write_line(self, line: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line)
            first = len(self._pending) == 1
        if loop is None:
            self.flush()
        elif first:
            loop.call_soon(self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:  # under the lock: Handler.handle holds it
            self._write_pending()
        super().emit(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                self._write_pending()
            super().flush()

    def _write_pending(self) -> None:
        lines, self._pending = self._pending, []
        self.stream.write(self.terminator.join(lines) + self.terminator)


class AccessLog:
    """INFO lines of one logger, one per request (the access log). Where logging is as
    logging_config set it up (no filters, and the one handler the record would reach is a
    JsonStreamHandler with a JsonFormatter), the line is formatted from the fields and written
    straight to that handler's stream: the same line as the record would give, without
    building the record and walking the handlers, which on a one-row /logprob is a measurable
    share of the request (docs/performance.md: a JSON-logging library through logging costs
    more than the bound the project allows). Otherwise (caplog, a user's own handlers or
    filters) the record goes through logging as usual."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def info(self, message: str, fields: dict[str, Any]) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = self._sole_json_handler()
        if handler is not None:
            created = time.time()
            formatter: JsonFormatter = handler.formatter  # type: ignore[assignment]
            msecs = (created - int(created)) * 1000
            try:
                handler.write_line(formatter.line(created, msecs, "INFO", logger.name, message, fields), _loop())
                return
            except Exception:  # a closed or broken stream: logging's own handling of it
                pass
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, (), None, None, fields))

    def _sole_json_handler(self) -> JsonStreamHandler | None:
        found: JsonStreamHandler | None = None
        node: logging.Logger | None = self.logger
        while node is not None:
            if node.filters:
                return None
            for handler in node.handlers:
                if (
                    found is not None
                    or type(handler) is not JsonStreamHandler
                    or handler.filters
                    or handler.level > logging.INFO
                    or type(handler.formatter) is not JsonFormatter
                ):
                    return None
                found = handler
            node = node.parent if node.propagate else None
        return found


def _loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A dictConfig for our loggers and uvicorn's, all to stderr as JSON (uvicorn's access log is
    replaced by the request middleware's, which knows the request id, model and duration)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {"class": f"{__name__}.JsonStreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "made": {"level": level},
            "uvicorn": {"level": level},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"level": "WARNING"},
        },
        "root": {"handlers": ["stderr"], "level": level},
    }


def configure_logging(level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(level))
