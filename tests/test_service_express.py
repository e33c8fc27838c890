"""POST /logprob's express handler (service.http.routers.inference.ExpressLogprob) answers exactly as
the route: its strict parse accepts nothing the route's LogProbRequest would read otherwise, and
the same body through the express handler and through the route gives the same status, body and
headers (the route is reached with a `+json` content type, which the express handler leaves to
it)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import metric
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace

from service.core.schemas import LogProbRequest
from service.engine import ModelRegistry
from service.http.app import create_app
from service.http.routers.inference import express_request
from service.settings import Settings

pytestmark = pytest.mark.anyio

EXPRESS = {"Content-Type": "application/json"}
ROUTE = {"Content-Type": "application/vnd.made+json"}  # JSON to FastAPI, not to the express handler


async def client(tiny_store: Path, registry: ModelRegistry, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(store=tiny_store, batch_delay_ms=1, **overrides), registry)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://made.test") as http,
    ):
        yield http


@pytest.fixture
async def http(tiny_store: Path, registry: ModelRegistry) -> AsyncIterator[httpx.AsyncClient]:
    async for c in client(tiny_store, registry):
        yield c


def same_answer(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code
    assert {k: v for k, v in a.headers.items() if k != "x-request-id"} == {
        k: v for k, v in b.headers.items() if k != "x-request-id"
    }
    if a.status_code == 200:
        assert a.content == b.content
    else:  # the request id differs; the rest of the error is the same
        ja, jb = a.json(), b.json()
        assert ja.pop("request_id") == a.headers["x-request-id"]
        assert jb.pop("request_id") == b.headers["x-request-id"]
        assert ja == jb


ROW = [0, 1, 1, 0, 1, 0, 0, 1]
BODIES: list[Any] = [
    {"x": [ROW]},
    {"x": [ROW, [1] * 8, [0] * 8], "masks": 2},
    {"x": [ROW], "masks": "all", "model": "tiny1"},
    {"x": [[0, None, 1, None, 1, 0, 0, None]], "seed": 3, "n_importance": 20},
    {"x": [[None] * 8], "seed": 0, "n_importance": 5, "masks": 1},
    {"x": [ROW], "model": "tiny10"},  # width: the data plane's 422
    {"x": [ROW], "model": "nope"},  # 404
    {"x": [ROW], "masks": 9},  # no mask 9: 422
    {"x": [ROW], "explain": True},  # explain is for records: 422
    {"x": [ROW[:7] + [2]]},  # not 0/1: the route's 422
    {"x": [ROW, ROW[:5]]},  # ragged
    {"x": []},
    {"x": [[]]},
    {"x": [ROW], "n_importance": 0},
    {"x": [ROW], "seed": -1},
    {"x": [ROW], "extra": 1},
    {"x": [[1.0] * 8]},  # floats 0/1: the route takes them
    {"x": [ROW], "masks": "1"},
    {"x_b64": "AA==", "shape": [1, 8]},
    [ROW],  # not an object
]


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
async def test_express_answers_as_the_route(http: httpx.AsyncClient, body: Any) -> None:
    content = json.dumps(body)
    same_answer(
        await http.post("/logprob", content=content, headers=EXPRESS),
        await http.post("/logprob", content=content, headers=ROUTE),
    )


async def test_bodies_the_express_parse_leaves_to_the_route(http: httpx.AsyncClient) -> None:
    for content in (b"", b"{", b'{"x": [[0, 1]]', b"\xff", b'{"x": [[NaN, 1]]}', b'{"model": "\\ud800", "x": [[1]]}'):
        same_answer(
            await http.post("/logprob", content=content, headers=EXPRESS),
            await http.post("/logprob", content=content, headers=ROUTE),
        )


async def test_express_counts_in_the_metrics_and_logs_as_the_route(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    from service.core.log_config import JsonFormatter

    with caplog.at_level("INFO", logger="made.service.access"):
        r = await http.post("/logprob", json={"x": [ROW]}, headers={"X-Request-ID": "express-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "express-1"
    metrics = (await http.get("/metrics")).text
    assert metric(metrics, "made_requests_total", endpoint="/logprob", model="tiny", status="200") == 1.0
    assert metric(metrics, "made_request_rows_count", endpoint="/logprob", model="tiny") == 1.0
    access = [json.loads(JsonFormatter().format(rec)) for rec in caplog.records if rec.name == "made.service.access"]
    assert access[-1]["request_id"] == "express-1" and access[-1]["status"] == 200
    assert access[-1]["path"] == "/logprob" and access[-1]["model"] == "tiny" and access[-1]["message"].endswith(" 200")


class _RecordingTracer(trace.Tracer):
    """Spans that record their names and nothing else (opentelemetry-api has no SDK here)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
        self.names.append(name)
        return trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)

    def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return trace.use_span(self.start_span(name), end_on_exit=True)


class _RecordingProvider(trace.TracerProvider):
    def __init__(self) -> None:
        self.names: list[str] = []

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _RecordingTracer(self.names)


async def test_fastapi_opentelemetry_traces_requests_only_when_asked(
    tiny_store: Path, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = _RecordingProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)  # as an SDK would set it
    for on in (False, True):
        provider.names.clear()
        async for http in client(tiny_store, registry, opentelemetry=on):
            assert (await http.post("/logprob", json={"x": [ROW]}, headers=EXPRESS)).status_code == 200
            assert (await http.post("/logprob", json={"x": [ROW]}, headers=ROUTE)).status_code == 200
        # a server span per request when on (the route's also has its operation spans); none off
        assert provider.names.count("POST") == (2 if on else 0) and (on or not provider.names), provider.names


async def test_express_needs_the_api_key_as_the_route(tiny_store: Path, registry: ModelRegistry) -> None:
    async for http in client(tiny_store, registry, api_key="s3cret"):
        for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            same_answer(
                await http.post("/logprob", json={"x": [ROW]}, headers={**EXPRESS, **auth}),
                await http.post("/logprob", json={"x": [ROW]}, headers={**ROUTE, **auth}),
            )
        for auth in ({"Authorization": "Bearer s3cret"}, {"Authorization": "bearer  s3cret "}):
            r = await http.post("/logprob", json={"x": [ROW]}, headers={**EXPRESS, **auth})
            assert r.status_code == 200
            same_answer(r, await http.post("/logprob", json={"x": [ROW]}, headers={**ROUTE, **auth}))


# Bodies near the common one, so that many parse: rows mostly of 0, 1 and null (else a value the
# route reads otherwise or refuses), options mostly valid, now and then an odd JSON value.
ODD = st.recursive(
    st.none() | st.booleans() | st.sampled_from([0.0, 1.0, 0.5, 2**53, -1, 10**6, "", "1", "all"]),
    lambda inner: st.lists(inner, max_size=2),
    max_leaves=6,
)
CELL = st.sampled_from([0, 1, None] * 20 + [1.0, 0.0, True, False, "1", 2, -1])
ROWS = st.integers(1, 4).flatmap(lambda d: st.lists(st.lists(CELL, min_size=d, max_size=d), min_size=1, max_size=3))
X = st.one_of(ROWS, ROWS, ROWS, st.lists(st.lists(CELL, max_size=4), max_size=3), ODD)
OPTIONS = {
    "model": st.sampled_from([None, "tiny", "tiny1", "", "x" * 200, "x" * 201, 1]),
    "masks": st.sampled_from(["all", 0, 3, 2**70, "mixture", -1, True, 1.0, "0"]),
    "seed": st.sampled_from([None, 0, 7, 2**53 - 1, 2**53, -1, 1.5, True, "1"]),
    "n_importance": st.sampled_from([1, 1000, 100_000, 100_001, 0, 5.0, True, "5"]),
    "explain": st.sampled_from([False, True, 0, 1, "true", None]),
    "x_b64": st.sampled_from(["AA==", None]),
    "records": st.sampled_from([None, [{"a": 1}]]),
    "other": ODD,
}
RARE = {"x_b64", "records", "other"}


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {} if draw(st.integers(0, 19)) == 0 else {"x": draw(X)}
    for name, values in OPTIONS.items():
        if draw(st.integers(0, 19 if name in RARE else 2)) == 0:
            body[name] = draw(values if name in RARE or draw(st.integers(0, 7)) else ODD)
    return body


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_what_the_express_parse_accepts_the_route_reads_the_same(body: dict[str, Any]) -> None:
    content = json.dumps(body).encode()
    fast = express_request(content)
    if fast is None:
        return
    slow = LogProbRequest.model_validate(json.loads(content))
    for name, field in LogProbRequest.model_fields.items():
        b = getattr(slow, name)
        if name not in fast._fields:  # x_b64, shape, records, explain: at their defaults
            assert b == field.default, name
            continue
        a = getattr(fast, name)
        if isinstance(a, np.ndarray):
            assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b, equal_nan=True)
        else:
            assert a == b and type(a) is type(b), name
