"""Structured logs: one JSON object per line, carrying the request id of the request being served.

The request id lives in a context variable set by the request middleware, so any log call made
while serving a request (in the event loop or in a worker thread) is tagged with it.
"""

from __future__ import annotations

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
        entry: dict[str, Any] = {
            "ts": self._timestamp(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = vars(record)
        request_id = fields.get("request_id") or current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in fields.items():
            if key not in _STANDARD and key not in entry and key[0] != "_":
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return self._encoder.encode(entry)


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A dictConfig for our loggers and uvicorn's, all to stderr as JSON (uvicorn's access log is
    replaced by the request middleware's, which knows the request id, model and duration)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
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
