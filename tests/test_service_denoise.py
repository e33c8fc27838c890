"""POST /denoise over HTTP (starlette's TestClient and the in-process async client, real tiny models,
real onnxruntime): the engine's answers, the client methods, and bad input answered 422 naming
the field."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fastapi import FastAPI
from helpers import cpu_registry, metric

from service.client import MadeAPIError, MadeClient
from service.engine import ModelRegistry
from service.http.app import create_app
from service.settings import Settings
from service.testing import in_process

if TYPE_CHECKING:
    from starlette.testclient import TestClient

Y = [[0, 1, 1, 0, 1, 0, 0, 1], [1, 1, 1, 1, 0, 0, 0, 0]]


def settings(store: Path, **overrides: Any) -> Settings:
    return Settings(store=store, batch_delay_ms=1, **overrides)


def client_of(app: FastAPI) -> TestClient:
    """starlette's TestClient (an httpx.Client), imported here: its import warns that it would
    rather run on httpx2."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from starlette.testclient import TestClient
    return TestClient(app)


@pytest.fixture
def http(tiny_store: Path, registry: ModelRegistry) -> Iterator[TestClient]:
    with client_of(create_app(settings(tiny_store), registry)) as client:
        yield client


@pytest.fixture
def made(http: TestClient) -> MadeClient:
    return MadeClient(http=http)


def test_the_answer_is_the_engines(made: MadeClient, registry: ModelRegistry) -> None:
    r = made.denoise(Y, 0.1, n_samples=4, seed=3, n_importance=1600)  # the work of 1600 draws: 100 particles
    want = registry.get("tiny").denoise(np.array(Y, dtype=float), 0.1, n_samples=4, seed=3, n_importance=100)
    assert (r.model, r.version, r.seed) == ("tiny", "1", 3)
    np.testing.assert_array_equal(r.array(), want.samples)
    np.testing.assert_allclose(r.marginals, want.marginals, rtol=1e-12)
    assert r.most_likely == want.most_likely.tolist()
    np.testing.assert_allclose(r.logprob_noisy, want.logprob_noisy, rtol=1e-12)
    np.testing.assert_allclose(np.array(r.stderr, dtype=float), want.stderr, rtol=1e-12)
    np.testing.assert_allclose(r.ess, want.ess, rtol=1e-12)
    assert all(0 < e <= 4 * 100 + 1e-6 for e in r.ess)


def test_packed_rows_in_and_out_and_the_forms_of_eps(made: MadeClient) -> None:
    plain = made.denoise(Y, [0.1, 0.1], n_samples=3, seed=0, n_importance=50)
    packed = made.denoise(
        np.array(Y), np.full((2, 8), 0.1), n_samples=3, seed=0, n_importance=50, packed=True, packed_output=True
    )
    assert packed.samples is None and packed.shape == [2, 3, 8]
    np.testing.assert_array_equal(packed.array(), plain.array())
    assert packed.marginals == plain.marginals and packed.logprob_noisy == plain.logprob_noisy


def test_eps_zero_answers_the_row_and_its_logprob(made: MadeClient) -> None:
    r = made.denoise(Y, 0, n_samples=2, seed=0)
    assert r.marginals == [[float(v) for v in row] for row in Y] and r.most_likely == Y
    assert r.stderr == [0.0, 0.0]
    np.testing.assert_allclose(r.logprob_noisy, made.logprob(Y).logprob, atol=1e-9)


def test_a_seed_is_drawn_when_absent_and_repeats_the_answer(made: MadeClient) -> None:
    first = made.denoise(Y, 0.2, n_samples=2, n_importance=20)
    again = made.denoise(Y, 0.2, n_samples=2, n_importance=20, seed=first.seed)
    assert again.marginals == first.marginals and again.samples == first.samples


def test_null_entries_are_missing(made: MadeClient) -> None:
    r = made.denoise([[0, None, 1, 0, 1, None, 0, 1]], 0.05, n_samples=1, seed=0, n_importance=50)
    assert len(r.marginals[0]) == 8 and r.ess[0] > 1


@pytest.mark.anyio
async def test_the_async_client(tiny_store: Path, registry: ModelRegistry) -> None:
    async with in_process(settings(tiny_store), registry) as client:
        r = await client.denoise(Y, 0.1, n_samples=4, seed=3, n_importance=1600)  # 100 particles
    sync = registry.get("tiny").denoise(np.array(Y, dtype=float), 0.1, n_samples=4, seed=3, n_importance=100)
    np.testing.assert_array_equal(r.array(), sync.samples)


@pytest.mark.parametrize(
    ("body", "detail", "loc"),
    [
        ({"x": Y, "eps": 0.6}, "eps: eps is 0.6; a flip probability must be within [0, 0.5]", ["body", "eps"]),
        ({"x": Y, "eps": -0.1}, "eps: eps is -0.1; a flip probability must be within [0, 0.5]", ["body", "eps"]),
        ({"x": Y, "eps": "a"}, 'eps: eps must be a number within [0, 0.5], got "a"', ["body", "eps"]),
        ({"x": Y, "eps": True}, "eps: eps must be a number within [0, 0.5], got true", ["body", "eps"]),
        ({"x": Y, "eps": None}, "eps: eps must be a number within [0, 0.5], got null", ["body", "eps"]),
        ({"x": Y, "eps": []}, "eps: eps is an empty list", ["body", "eps"]),
        ({"x": Y, "eps": [0.1, 0.9]}, "eps: eps row 1 is 0.9", ["body", "eps"]),
        ({"x": Y, "eps": [[0.1] * 8, [0.1] * 7 + [1]]}, "eps: eps row 1, column 7 is 1", ["body", "eps"]),
        ({"x": Y, "eps": [[0.1] * 8, 0.1]}, "eps: eps row 1 must be a list of numbers", ["body", "eps"]),
        ({"x": Y, "eps": [[0.1] * 8, [0.1] * 7]}, "eps: eps rows differ in length", ["body", "eps"]),
        ({"x": Y, "eps": [0.1]}, "eps has 1 values, one per row, but x has 2 rows", ["body"]),
        ({"x": Y, "eps": [[0.1] * 7] * 2}, "eps has shape [2, 7] but x has shape [2, 8]", ["body"]),
        ({"x": Y}, "eps is required", ["body", "eps"]),
        (
            {"x": [[0, 1, 1, 0, 1, 0, 0, 2]], "eps": 0.1},
            "x: row 0, column 7: expected 0, 1 or null, got 2",
            ["body", "x"],
        ),
        ({"x": [[0, 1, 1]], "eps": 0.1}, "x: rows have 3 values but model 'tiny' has 8 dimensions", ["body", "x"]),
        (
            {"x": Y, "eps": 0.1, "n_importance": 0},
            "n_importance: input should be greater than or equal to 1",
            ["body", "n_importance"],
        ),
        (
            {"x": Y, "eps": 0.1, "n_samples": 6000},
            "2 rows x n_samples 6000 = 12000 samples; the limit is 10000",
            ["body", "n_samples"],
        ),
        (
            {"x": Y, "eps": 0.1, "n_importance": 100_000, "model": "tiny10"},
            "x: rows have 8 values but model 'tiny10' has 10 dimensions",
            ["body", "x"],
        ),
        ({"records": [{"a": 1}], "eps": 0.1}, "/denoise reads rows of 0/1", ["body", "records"]),
        ({"x": Y, "eps": 0.1, "noise": 0.1}, "noise is not a field of this request", ["body", "noise"]),
    ],
)
def test_bad_input_is_422_naming_the_field(http: TestClient, body: dict, detail: str, loc: list) -> None:
    r = http.post("/denoise", json=body)
    answer = r.json()
    assert r.status_code == 422, answer
    assert answer["detail"].startswith(detail), answer["detail"]
    assert answer["type"] == "invalid_input" and answer["errors"][0]["loc"] == loc, answer


def test_importance_draws_over_max_draws_are_refused(tiny_store: Path, registry: ModelRegistry) -> None:
    with client_of(create_app(settings(tiny_store, max_draws=150), registry)) as http:
        ok = http.post("/denoise", json={"x": Y + Y, "eps": [0.1, 0, 0, 0], "n_importance": 100})
        assert ok.status_code == 200  # rows with eps 0 everywhere draw nothing
        r = http.post("/denoise", json={"x": Y, "eps": 0.1, "n_particles": 100})
        worth = http.post("/denoise", json={"x": Y, "eps": 0.1, "n_importance": 1600})  # 100 particles
        both = http.post("/denoise", json={"x": Y, "eps": 0.1, "n_particles": 50, "n_importance": 800})
        fine = http.post("/denoise", json={"x": Y, "eps": 0.1, "n_particles": 50})
    assert r.status_code == 422 and r.json()["detail"].startswith(
        "2 noisy rows x 100 particles = 200 particles a mask; the limit is 150 per request (MADE_MAX_DRAWS)"
    )
    assert r.json()["errors"][0]["loc"] == ["body", "n_particles"]
    assert worth.status_code == 422 and worth.json()["detail"] == r.json()["detail"]
    assert both.status_code == 422 and "n_particles and n_importance both set the particles" in both.json()["detail"]
    assert fine.status_code == 200, fine.text


def test_n_importance_is_the_work_of_its_draws_in_particles(made: MadeClient, http: TestClient) -> None:
    """n_importance means draws-worth everywhere: n_importance / 16 particles (rounded up)."""
    old = made.denoise(Y, 0.1, n_samples=2, seed=4, n_importance=625)
    new = http.post("/denoise", json={"x": Y, "eps": 0.1, "n_samples": 2, "seed": 4, "n_particles": 40}).json()
    assert new["marginals"] == list(old.marginals) and new["ess"] == list(old.ess)
    fewer = http.post("/denoise", json={"x": Y, "eps": 0.1, "n_samples": 2, "seed": 4, "n_particles": 39}).json()
    assert fewer["marginals"] != new["marginals"]


def test_a_table_model_is_refused_with_what_it_answers(table_store: Path) -> None:
    with client_of(create_app(settings(table_store), cpu_registry(table_store))) as http:
        r = http.post("/denoise", json={"model": "cats", "x": [[0, 1]], "eps": 0.1})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("model 'cats' models the columns of a table; /denoise answers models of bits")


def test_metrics_and_openapi_know_the_endpoint(http: TestClient, made: MadeClient) -> None:
    made.denoise(Y, 0.1, n_importance=10)
    with pytest.raises(MadeAPIError):
        made.denoise(Y, 0.7)
    text = made.metrics()
    assert metric(text, "made_requests_total", endpoint="/denoise", model="tiny", status="200") == 1.0
    assert metric(text, "made_request_rows_count", endpoint="/denoise", model="tiny") == 1.0
    schema = http.get("/openapi.json").json()
    assert "/denoise" in schema["paths"]
    body = schema["components"]["schemas"]["DenoiseRequest"]
    assert "eps" in body["required"]
    assert "records" not in body["properties"] and "x" in body["properties"]  # rows of bits only
