"""The access log's lines: written straight to the JSON handler where logging is as `made serve`
configures it, through logging otherwise, the same line either way."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from service.core.log_config import AccessLog, JsonFormatter, JsonStreamHandler

FIELDS = {
    "request_id": "abc-123",
    "method": "POST",
    "path": "/logprob",
    "status": 200,
    "duration_ms": 1.25,
    "model": "tiny",
    "client": "127.0.0.1",
}


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own (not propagating) with the handler and formatter logging_config sets."""
    stream = io.StringIO()
    handler = JsonStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("made.test.access")
    log.propagate, log.handlers, log.filters = False, [handler], []
    log.setLevel(logging.INFO)  # (setLevel, not the attribute: isEnabledFor caches)
    yield log, stream
    log.handlers, log.filters, log.propagate = [], [], True


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    for entry in entries:
        assert isinstance(entry.pop("ts"), str)  # the time differs, its place does not
    return entries


def test_the_direct_line_is_the_line_the_record_gives(
    logger: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    log, stream = logger
    handler = log.handlers[0]
    assert isinstance(handler, JsonStreamHandler)
    log.handlers = [handler]  # pytest's capture handlers, added for the test's call, would see records
    direct_writes: list[str] = []
    write_line = handler.write_line
    monkeypatch.setattr(handler, "write_line", lambda line, loop: (direct_writes.append(line), write_line(line, loop)))
    access = AccessLog(log)
    access.info("POST /logprob 200", FIELDS)  # straight to the handler's stream
    log.addFilter(lambda record: True)  # a filter: the record goes through logging
    access.info("POST /logprob 200", FIELDS)
    assert len(direct_writes) == 1
    direct, through_logging = stream.getvalue().splitlines()
    assert direct.split('"level"', 1)[1] == through_logging.split('"level"', 1)[1]  # byte for byte after ts
    assert lines(stream)[0] == {"level": "INFO", "logger": "made.test.access", "message": "POST /logprob 200", **FIELDS}


def test_other_handlers_and_levels_get_the_record(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    log.handlers = log.handlers[:1]  # ours, less pytest's capture handlers
    other = io.StringIO()
    log.addHandler(logging.StreamHandler(other))  # a user's handler beside ours: both see it
    AccessLog(log).info("POST /logprob 200", FIELDS)
    assert lines(stream)[0]["request_id"] == "abc-123" and other.getvalue() == "POST /logprob 200\n"
    log.setLevel(logging.WARNING)
    AccessLog(log).info("POST /logprob 200", FIELDS)
    assert len(stream.getvalue().splitlines()) == 1  # below the level: no line either way


def test_lines_written_in_the_loop_go_out_together_once_a_turn_and_in_order(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger

    async def serve() -> list[str]:
        log.handlers = log.handlers[:1]  # ours, less pytest's capture handlers
        access = AccessLog(log)
        access.info("POST /logprob 200", FIELDS)
        access.info("POST /sample 200", FIELDS)
        written = [stream.getvalue()]  # nothing yet: the loop has not turned
        await asyncio.sleep(0)
        written.append(stream.getvalue())
        access.info("POST /impute 200", FIELDS)
        log.warning("a record meanwhile")  # writes the waiting line first
        written.append(stream.getvalue())
        return written

    before, after_turn, after_record = asyncio.run(serve())
    assert before == ""
    assert [json.loads(line)["message"] for line in after_turn.splitlines()] == [
        "POST /logprob 200",
        "POST /sample 200",
    ]
    assert [json.loads(line)["message"] for line in after_record.splitlines()][2:] == [
        "POST /impute 200",
        "a record meanwhile",
    ]
