"""One reading of the Authorization header for every route (service.http.auth.bearer_token): the
scheme is case-insensitive (RFC 7235), so `bearer`, `Bearer` and `BEARER` with the key are
accepted, and a wrong key refused, alike on JSON routes, the express /logprob, the CSV
middleware and the admin endpoints."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from helpers import cpu_registry, store_of
from pydantic import SecretStr

from service.engine import ModelRegistry
from service.http.auth import bearer_token, carries_key
from service.settings import Settings
from service.testing import in_process

STORE = Path(__file__).resolve().parent.parent / "model_store"


def test_bearer_token_reads_the_scheme_in_any_case() -> None:
    for header in ("Bearer k", "bearer k", "BEARER k", "bEaReR\tk", "  Bearer   k  ", b"bearer k"):
        assert bearer_token(header) == "k", header
    for header in (None, "", "Bearer", "Bearer   ", "Basic k", "Bearerk", "Token k", "k"):
        assert bearer_token(header) is None, header
    assert bearer_token("Bearer a b") == "a b"  # the rest of the header, as HTTPBearer read it
    key = SecretStr("k")
    assert carries_key("bearer k", key) and not carries_key("bearer K", key) and not carries_key(None, key)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return store_of(tmp_path_factory.mktemp("auth") / "store", STORE / "diamonds", STORE / "mushrooms")


@pytest.fixture(scope="module")
def registry(store: Path) -> ModelRegistry:
    return cpu_registry(store)


CSV = b"carat,cut,color,clarity,depth,table,price,x,y,z\n0.3,Ideal,E,SI1,61.5,55,326,3.95,3.98,2.43\n"
RECORDS = {"model": "diamonds", "records": [{"carat": 0.3, "cut": "Ideal"}]}
BITS = {"model": "mushrooms", "x": [[0] * 112]}  # the express handler's request


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_every_route_reads_the_scheme_alike(store: Path, registry: ModelRegistry, scheme: str) -> None:
    settings = Settings(store=store, default_model="diamonds", api_key="k", admin_key="a")
    async with in_process(settings, registry) as client:
        http = client.http
        for key, status in (("k", 200), ("wrong", 401)):
            auth = {"Authorization": f"{scheme} {key}"}
            r = await http.post("/logprob", json=RECORDS, headers=auth)
            assert r.status_code == status, ("json", r.text)
            r = await http.post("/logprob", json=BITS, headers=auth)
            assert r.status_code == status, ("express", r.text)
            r = await http.post("/logprob?model=diamonds", content=CSV, headers={"Content-Type": "text/csv", **auth})
            assert r.status_code == status, ("csv", r.text)
            if status == 200:
                assert len(r.json()["logprob"]) == 1
            r = await http.get("/models", headers=auth)
            assert r.status_code == status, ("models", r.text)
        r = await http.post("/admin/reload", headers={"Authorization": f"{scheme} a"})
        assert r.status_code == 200, ("admin", r.text)
        r = await http.post("/admin/reload", headers={"Authorization": f"{scheme} k"})
        assert r.status_code == 401, ("admin with the API key", r.text)
        r = await http.post("/logprob", content=CSV, headers={"Content-Type": "text/csv", "Authorization": "Basic k"})
        assert r.status_code == 401 and "requires an API key" in r.json()["detail"]


@pytest.mark.anyio
async def test_open_probes_keep_the_load_failure_for_the_key_holder(tmp_path: Path) -> None:
    """/readyz and /v2/health/ready are open: on a server with an API key, a store that fails to
    load is a 503 without its reason (the store's paths, files, checksums) unless the request
    carries the key."""
    store = tmp_path / "store"
    store.mkdir()
    settings = Settings(store=store, api_key="k", admin_key="a")
    async with in_process(settings) as client:
        http = client.http
        for _ in range(500):
            r = await http.get("/readyz", headers={"Authorization": "Bearer k"})
            if "failed" in r.json()["detail"]:
                break
            await anyio.sleep(0.01)
        assert r.status_code == 503 and str(store) in r.json()["detail"]
        for path in ("/readyz", "/v2/health/ready"):
            for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer a"}):
                r = await http.get(path, headers=auth)
                assert r.status_code == 503, (path, auth)
                assert str(tmp_path) not in r.text and "server log" in r.json()["detail"], (path, auth, r.text)
            r = await http.get(path, headers={"Authorization": "Bearer k"})
            assert r.status_code == 503 and str(store) in r.json()["detail"], path


@pytest.mark.anyio
async def test_every_answer_is_nosniff_and_not_cached(store: Path, registry: ModelRegistry) -> None:
    """Answers (errors, which quote what was sent, too) carry X-Content-Type-Options: nosniff
    and Cache-Control: no-store; the playground's files keep their own Cache-Control."""
    settings = Settings(store=store, default_model="diamonds", api_key="k", admin_key="a")
    async with in_process(settings, registry) as client:
        http = client.http
        auth = {"Authorization": "Bearer k"}
        answers = [
            await http.post("/logprob", json=BITS, headers=auth),  # the express handler
            await http.post("/logprob", json=RECORDS, headers=auth),
            await http.post("/logprob?model=diamonds", content=CSV, headers={"Content-Type": "text/csv", **auth}),
            await http.get("/models/diamonds", headers=auth),
            await http.get("/models"),  # 401
            await http.get("/no/<script>"),  # 404 quoting the path
            await http.get("/metrics"),
        ]
        for r in answers:
            assert r.headers.get("x-content-type-options") == "nosniff", (r.request.url, r.headers)
            assert r.headers.get("cache-control") == "no-store", (r.request.url, r.headers)
        page = await http.get("/ui/")
        assert page.headers["cache-control"] == "no-cache" and page.headers["x-frame-options"] == "DENY"
        assert page.headers.get_list("x-content-type-options") == ["nosniff"]
