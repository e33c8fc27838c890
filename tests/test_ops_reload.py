"""Hot reload: a version dropped into the store is served without a restart while requests keep
succeeding; a broken one (altered bytes, a manifest of the wrong shape) is refused with a logged
reason and the version served so far stays. In-process, then against a real `made serve`."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from conftest import train_tiny, write_npz
from helpers import json_lines, metric, metric_samples, post_ok, reload_result

from made.store.files import MODEL_GRAPH
from made.store.manifest import MANIFEST
from made.store.versions import open_model
from service.engine.engine import Engine
from service.settings import Settings
from service.testing import InProcessClient, in_process, made_serve
from training.export import export_run

pytestmark = pytest.mark.anyio

ROW = [[0, 1, 1, 0, 1, 0, 0, 1]]
KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_KEY = "4dm1n"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two finished tiny runs of the same architecture with different weights (D=8)."""
    base = tmp_path_factory.mktemp("reload-runs")
    data = write_npz(base / "d8.npz", 8, seed=1)
    return {
        s: train_tiny(base / f"run-{s}", data, hidden=[12], masks=2, epochs=2, seed=i, order_agnostic=True)
        for i, s in enumerate(("a", "b"))
    }


@pytest.fixture
def store(runs: dict[str, Path], tmp_path: Path) -> Path:
    """A store with 'm' version 1 (run a)."""
    store = tmp_path / "store"
    export_run(runs["a"], store, "m")
    return store


def _settings(store: Path, **kw: Any) -> Settings:
    """Admin endpoints on (MADE_ADMIN_KEY) unless kw says otherwise."""
    kw.setdefault("admin_key", ADMIN_KEY)
    return Settings(store=store, providers=["cpu"], threads=1, batch_delay_ms=1, **kw)


def _logprob(store: Path, version: str) -> float:
    engine = Engine(open_model(store, "m", version), ["CPUExecutionProvider"], threads=1)
    return float(engine.logprob(np.asarray(ROW, dtype=np.float64)).logprob[0])


def _copy_version(store: Path, src: str, dst: str) -> Path:
    """A new version that is a copy of another, under a hidden name first, then renamed into
    place as `made export` does (a half-copied directory is never visible)."""
    tmp = store / "m" / f".{dst}.tmp"
    shutil.copytree(store / "m" / src, tmp)
    manifest = json.loads((tmp / MANIFEST).read_text())
    manifest["version"] = dst
    (tmp / MANIFEST).write_text(json.dumps(manifest))
    return tmp.rename(store / "m" / dst)


def _alter_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _wrong_dims(version_dir: Path) -> None:
    """A manifest claiming one more dimension than the graph has (itself consistent)."""
    manifest = json.loads((version_dir / MANIFEST).read_text())
    dims = manifest["dims"] + 1
    manifest.update(dims=dims, orderings=[list(range(dims))] * manifest["n_masks"])
    (version_dir / MANIFEST).write_text(json.dumps(manifest))


async def _reload(made: InProcessClient, **kw: Any) -> dict[str, Any]:
    kw.setdefault("headers", ADMIN)
    return await post_ok(made, "/admin/reload", None, **kw)


async def _served(made: InProcessClient) -> str:
    return (await made.models()).models[0].version


async def test_a_new_version_is_served_after_reload_and_no_request_in_flight_fails(
    store: Path, runs: dict[str, Path]
) -> None:
    v1 = _logprob(store, "1")
    async with in_process(_settings(store)) as made:
        await made.wait_ready()
        seen: list[tuple[str, float]] = []
        failures: list[str] = []
        stop = anyio.Event()

        async def hammer(path: str, body: dict[str, Any]) -> None:
            while not stop.is_set():
                r = await made.http.post(path, json=body)
                if r.status_code != 200:
                    failures.append(f"{path} {r.status_code} {r.text[:200]}")
                elif path == "/logprob":
                    seen.append((r.json()["version"], r.json()["logprob"][0]))
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(hammer, "/logprob", {"x": ROW})
            tg.start_soon(hammer, "/sample", {"n": 3, "seed": 1})
            tg.start_soon(hammer, "/conditionals", {"x": ROW, "mask": 1})
            tg.start_soon(hammer, "/impute", {"x": [[0, None, 1, None, 1, 0, 0, 1]], "n_samples": 2, "seed": 0})
            with anyio.fail_after(60):  # enough answers on each side of the swap, however slow the machine
                while len(seen) < 6:
                    await anyio.sleep(0.01)
                export_run(runs["b"], store, "m")  # version 2, different weights
                body = await _reload(made)
                while sum(v == "2" for v, _ in seen) < 6:
                    await anyio.sleep(0.01)
            stop.set()
        assert failures == []
        assert body["results"] == [reload_result("m", "2", "loaded", previous="1")]
        assert body["models"] == {"m": "2"} and body["default"] == "m"
        assert await _served(made) == "2"
        # every answer came whole from one version: version 1 until the swap, version 2 after
        versions = [v for v, _ in seen]
        assert versions.count("1") > 5 and versions.count("2") > 5
        assert versions[0] == "1" and versions[-1] == "2"
        assert versions == sorted(versions), "a request after the swap got the old version"
        v2 = _logprob(store, "2")
        assert v1 != pytest.approx(v2)
        for version, lp in seen:
            assert lp == pytest.approx(v1 if version == "1" else v2, rel=1e-6)
        metrics = await made.metrics()
        info = metric_samples(metrics, "made_model_info")
        assert [(s.labels, s.value) for s in info] == [  # the replaced version is gone
            ({"model": "m", "providers": "CPUExecutionProvider", "version": "2"}, 1.0)
        ]
        assert metric(metrics, "made_model_reloads_total", model="m", outcome="loaded") == 1.0

        # Nothing new: nothing changes. Removing the served version rolls back to the one below.
        assert (await _reload(made))["results"][0]["status"] == "unchanged"
        shutil.rmtree(store / "m" / "2")
        body = await _reload(made)
        assert body["results"][0] == reload_result("m", "1", "loaded", previous="2")
        assert (await made.logprob(ROW)).logprob[0] == pytest.approx(v1, rel=1e-6)


async def test_broken_versions_are_refused_with_a_logged_reason_and_the_old_one_keeps_serving(
    store: Path, runs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    v1 = _logprob(store, "1")
    async with in_process(_settings(store)) as made:
        await made.wait_ready()
        _alter_one_byte(_copy_version(store, "1", "2") / MODEL_GRAPH)
        _wrong_dims(_copy_version(store, "1", "3"))
        with caplog.at_level(logging.INFO, logger="made.engine"):
            body = await _reload(made)
        reasons = {r["version"]: r["reason"] for r in body["results"]}
        assert [(r["version"], r["status"]) for r in body["results"]] == [
            ("3", "refused"),
            ("2", "refused"),
            ("1", "unchanged"),
        ]
        assert "weights.safetensors does not match its manifest's dims 9" in reasons["3"]
        assert f"{store / 'm' / '2' / MODEL_GRAPH} does not match its manifest checksum" in reasons["2"]
        assert body["models"] == {"m": "1"}
        logged = [r for r in caplog.records if r.getMessage().startswith("refused model m")]
        assert [(r.levelname, getattr(r, "version", None)) for r in logged] == [("ERROR", "3"), ("ERROR", "2")]
        assert reasons["2"] in logged[1].getMessage()
        assert await _served(made) == "1"
        assert (await made.logprob(ROW)).logprob[0] == pytest.approx(v1, rel=1e-6)

        # Asked again, the same broken files are not loaded (nor logged) again ...
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="made.engine"):
            again = await _reload(made)
        assert [(r["version"], r["status"], r["cached"]) for r in again["results"]] == [
            ("3", "refused", True),
            ("2", "refused", True),
            ("1", "unchanged", False),
        ]
        assert not [r for r in caplog.records if r.getMessage().startswith("refused")]
        # ... but a good version above them is served.
        export_run(runs["b"], store, "m")  # version 4
        body = await _reload(made)
        assert body["results"][0]["status"] == "loaded" and body["models"] == {"m": "4"}

        # The served version altered in place is refused; the copy in memory keeps serving.
        _alter_one_byte(store / "m" / "4" / MODEL_GRAPH)
        body = await _reload(made)
        assert body["results"][0]["status"] == "refused"
        assert body["results"][-1]["status"] == "kept" and body["models"] == {"m": "4"}
        assert (await made.logprob(ROW)).version == "4"
        metrics = await made.metrics()
        assert metric(metrics, "made_model_reloads_total", model="m", outcome="refused") == 3.0


async def test_a_v2_request_pinned_to_a_version_is_not_answered_by_the_next(store: Path, runs: dict[str, Path]) -> None:
    """POST /v2/models/m/versions/1/infer checks the version served when its (whole) body has
    arrived; a reload after that check, while the work waited for a thread, had version 2 answer
    it. Now a 404 naming both; unpinned, version 2 answers."""
    from made.core.errors import ModelNotFound
    from service.http.oip import _engine, infer, parse_request

    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": ROW[0]}]}).encode()
    async with in_process(_settings(store)) as made:
        await made.wait_ready()
        transport = made.http._transport
        assert isinstance(transport, httpx.ASGITransport)
        dp = transport.app.state.dataplane  # type: ignore[attr-defined]
        checked = _engine(dp, "m", "1")  # the route's check passed: version 1 served
        export_run(runs["b"], store, "m")  # version 2
        await _reload(made)
        with pytest.raises(ModelNotFound) as info:
            await infer(dp, checked, parse_request(body), b"", pinned="1")
        assert str(info.value) == "model 'm' has no version '1' served: version '2' replaced it while this request ran"
        answered = await infer(dp, checked, parse_request(body), b"")
        assert json.loads(answered.body)["model_version"] == "2"
        # over HTTP, a request arriving after the reload is refused by the route's own check
        r = await made.http.post("/v2/models/m/versions/1/infer", content=body)
        assert r.status_code == 404 and "it serves version '2'" in r.json()["error"]


async def test_admin_endpoints_are_off_without_an_admin_or_api_key(store: Path) -> None:
    async with in_process(_settings(store, admin_key=None)) as made:
        await made.wait_ready()
        for method, path in (("POST", "/admin/reload"), ("GET", "/admin/reload"), ("POST", "/admin/anything")):
            for headers in ({}, ADMIN, AUTH):
                r = await made.http.request(method, path, headers=headers)
                assert r.status_code == 404 and r.json()["type"] == "not_found", (path, r.text)
                assert r.json()["detail"].startswith(
                    "admin endpoints are off: the server has neither MADE_ADMIN_KEY nor MADE_API_KEY"
                ), r.json()
        spec = (await made.http.get("/openapi.json")).json()
        assert not [p for p in spec["paths"] if p.startswith("/admin")]
        assert (await made.logprob(ROW)).version == "1"  # the rest is served as usual


async def test_reload_answers_only_with_the_admin_key(store: Path) -> None:
    async with in_process(_settings(store, api_key=KEY)) as made:
        await made.wait_ready()
        for headers, detail in (
            ({}, "admin endpoints require the admin key: send 'Authorization: Bearer <MADE_ADMIN_KEY>'"),
            ({"Authorization": "Bearer wrong"}, "the admin key in the Authorization header is wrong"),
            (AUTH, "the admin key in the Authorization header is wrong"),
        ):  # the API key
            r = await made.http.post("/admin/reload", headers=headers)
            assert r.status_code == 401 and r.json()["type"] == "unauthorized", r.text
            assert r.json()["detail"] == detail and r.headers["www-authenticate"] == "Bearer"
        assert (await _reload(made, headers=ADMIN))["models"] == {"m": "1"}
        # and the admin key is not the API key
        assert (await made.http.post("/logprob", json={"x": ROW}, headers=ADMIN)).status_code == 401
        assert (await made.http.post("/logprob", json={"x": ROW}, headers=AUTH)).status_code == 200
        spec = (await made.http.get("/openapi.json")).json()
        assert spec["paths"]["/admin/reload"]["post"]["security"] == [{"AdminKey": []}]
    # an admin key alone: the admin endpoints need it, the others stay open
    async with in_process(_settings(store)) as made:
        await made.wait_ready()
        assert (await made.http.post("/admin/reload")).status_code == 401
        assert (await made.http.post("/admin/reload", headers=AUTH)).status_code == 401
        assert (await _reload(made, headers=ADMIN))["models"] == {"m": "1"}
        assert (await made.logprob(ROW)).version == "1"


async def test_reload_takes_the_api_key_when_no_admin_key_is_set(store: Path) -> None:
    async with in_process(_settings(store, api_key=KEY, admin_key=None)) as made:
        await made.wait_ready()
        r = await made.http.post("/admin/reload")
        assert r.status_code == 401 and r.json()["detail"] == (
            "admin endpoints require the admin key: send 'Authorization: Bearer <MADE_API_KEY>'"
        )
        r = await made.http.post("/admin/reload", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert (await _reload(made, headers=AUTH))["models"] == {"m": "1"}


async def test_the_store_is_polled_every_reload_interval(store: Path, runs: dict[str, Path]) -> None:
    # no key at all: the admin endpoints are off, polling needs none of them
    async with in_process(_settings(store, admin_key=None, reload_interval=0.05)) as made:
        await made.wait_ready()
        export_run(runs["b"], store, "m")
        with anyio.fail_after(20):
            while await _served(made) != "2":
                await anyio.sleep(0.05)


async def test_a_store_empty_at_startup_becomes_ready_on_reload(tmp_path: Path, runs: dict[str, Path]) -> None:
    store = tmp_path / "store"
    store.mkdir()
    async with in_process(_settings(store)) as made:
        with anyio.fail_after(20):
            while "failed" not in (r := await made.http.get("/readyz")).text:
                await anyio.sleep(0.01)
        assert r.status_code == 503
        r = await made.http.post("/admin/reload", headers=ADMIN)
        assert r.status_code == 503 and "holds no models" in r.json()["detail"]
        export_run(runs["a"], store, "m")
        body = await _reload(made)
        assert body["results"][0]["status"] == "loaded" and body["default"] == "m"
        assert (await made.http.get("/readyz")).status_code == 200
        assert (await made.logprob(ROW)).version == "1"


async def test_a_store_gone_is_a_503_on_reload_and_the_models_loaded_keep_serving(
    store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store deleted, unmounted or replaced by a file: 503 model_store_error, logged once while
    polling repeats it; a store that is there but empty is a store whose models all left (kept)."""
    async with in_process(_settings(store)) as made:
        await made.wait_ready()
        moved = store.rename(tmp_path / "moved")
        with caplog.at_level(logging.ERROR, logger="made.engine"):
            for problem in ("does not exist", "does not exist", "is a file, not a folder"):
                if problem.startswith("is a file"):
                    store.write_text("")
                r = await made.http.post("/admin/reload", headers=ADMIN)
                assert r.status_code == 503, r.text
                assert r.json()["type"] == "model_store_error"
                assert r.json()["detail"] == f"model store {store} {problem}"
                assert (await made.logprob(ROW)).version == "1"
                assert (await made.http.get("/readyz")).status_code == 200
        assert [r.getMessage() for r in caplog.records] == [
            f"reload failed: model store {store} {p}; the models loaded are still served"
            for p in ("does not exist", "is a file, not a folder")
        ]
        store.unlink()
        store.mkdir()
        assert (await _reload(made))["results"] == [
            reload_result(
                "m",
                "1",
                "kept",
                reason=f"model 'm' is no longer in store {store}; still served until the server restarts",
            )
        ]
        store.rmdir()
        moved.rename(store)
        assert (await _reload(made))["results"] == [reload_result("m", "1", "unchanged")]


# --- a real `made serve` ------------------------------------------------------------------------


@pytest.mark.slow
def test_made_serve_swaps_versions_under_load_and_refuses_a_broken_one(store: Path, runs: dict[str, Path]) -> None:
    env = {"MADE_API_KEY": KEY, "MADE_PROVIDERS": "cpu", "MADE_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with made_serve(store, env=env) as server:
        versions: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def client(path: str, body: dict[str, Any]) -> None:
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as http:
                while not stop.is_set():
                    try:
                        r = http.post(path, json=body)
                    except httpx.HTTPError as exc:
                        failures.append(f"{path}: {exc!r}")
                        continue
                    if r.status_code != 200:
                        failures.append(f"{path}: {r.status_code} {r.text[:200]}")
                    else:
                        versions.append(r.json()["version"])

        threads = [
            threading.Thread(target=client, args=args)
            for args in (
                ("/logprob", {"x": ROW}),
                ("/sample", {"n": 2, "seed": 0}),
                ("/impute", {"x": [[0, None, 1, None, 1, 0, 0, 1]], "seed": 0}),
            )
        ]
        for t in threads:
            t.start()
        try:
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as admin:
                time.sleep(0.5)
                export_run(runs["b"], store, "m")
                r = admin.post("/admin/reload")
                assert r.status_code == 200, r.text
                assert r.json()["results"][0]["status"] == "loaded"
                assert admin.get("/models").json()["models"][0]["version"] == "2"
                time.sleep(0.5)
                _alter_one_byte(_copy_version(store, "2", "3") / MODEL_GRAPH)
                r = admin.post("/admin/reload")
                assert r.status_code == 200
                refused = r.json()["results"][0]
                assert refused["status"] == "refused" and refused["version"] == "3"
                assert "does not match its manifest checksum" in refused["reason"]
                assert r.json()["models"] == {"m": "2"}
                time.sleep(0.5)
                assert admin.post("/admin/reload", headers={"Authorization": ""}).status_code == 401
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        logs = json_lines(server.logs())
    assert failures == []
    assert versions.count("1") > 5 and versions.count("2") > 5 and "3" not in versions
    assert versions.index("2") > versions.index("1")
    refusals = [e for e in logs if e["message"].startswith("refused model m version 3")]
    assert len(refusals) == 1 and refusals[0]["level"] == "ERROR"
    assert "does not match its manifest checksum" in refusals[0]["reason"]
    assert any(e["message"] == "reloaded model m: version 2 replaces 1" for e in logs)
