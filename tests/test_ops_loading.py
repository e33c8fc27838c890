"""Loading a store: whatever one version raises (a manifest field of the wrong type, sizes past
the bounds, MemoryError, a bug) refuses that version with a one-sentence reason, in the log and
in /readyz or the reload answer; the other models keep serving and GET /models answers 200.
GET /models/{name} shows no path of the server's files."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

import service.engine.engine as engine_module
from made.store.versions import MANIFEST
from service.settings import Settings
from service.testing import InProcessClient, in_process

pytestmark = pytest.mark.anyio

ADMIN_KEY = "4dm1n"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BAD_FIELDS = [
    ({"metrics.test_nll": "abc"}, "metrics.test_nll: must be a number, got 'abc'"),
    ({"image_shape": "16x7"}, "image_shape: must be a list, got '16x7'"),
    ({"dataset.name": [1]}, "dataset.name: must be a string, got [1]"),
    ({"dims": 200_000_000, "n_masks": 1, "orderings": [[0]]}, "dims: must be from 2 to 1000000, got 200000000"),
]


@pytest.fixture
def store(tiny_store: Path, tmp_path: Path) -> Path:
    """'tiny' version 1 (D=8) and 'tiny10' version 1 (D=10), copies safe to damage."""
    store = tmp_path / "store"
    for name in ("tiny", "tiny10"):
        shutil.copytree(tiny_store / name / "1", store / name / "1")
    return store


def _settings(store: Path) -> Settings:
    return Settings(store=store, providers=["cpu"], threads=1, batch_delay_ms=1, admin_key=ADMIN_KEY)


def _add_version(store: Path, version: str, change: dict[str, Any] | None = None) -> Path:
    """A copy of tiny version 1 as `version`, its manifest changed (a dotted key sets a field of
    a section), renamed into place as made export does."""
    tmp = store / "tiny" / f".{version}.tmp"
    shutil.copytree(store / "tiny" / "1", tmp)
    manifest = json.loads((tmp / MANIFEST).read_text())
    manifest["version"] = version
    for key, value in (change or {}).items():
        section, _, field = key.rpartition(".")
        (manifest[section] if section else manifest)[field] = value
    (tmp / MANIFEST).write_text(json.dumps(manifest))
    return tmp.rename(store / "tiny" / version)


async def _models(made: InProcessClient) -> dict[str, str]:
    r = await made.http.get("/models")
    assert r.status_code == 200, r.text
    return {m["name"]: m["version"] for m in r.json()["models"]}


async def _reload(made: InProcessClient) -> dict[str, Any]:
    r = await made.http.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _unready_detail(made: InProcessClient) -> str:
    """/readyz's detail once the start-up load has ended (never 'still loading' for good)."""
    with anyio.fail_after(20):
        while "still loading" in (r := await made.http.get("/readyz")).text:
            await anyio.sleep(0.01)
    assert r.status_code == 503, r.text
    detail: str = r.json()["detail"]
    return detail


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused model")]


@pytest.mark.parametrize(("change", "field"), BAD_FIELDS, ids=["test_nll", "image_shape", "dataset.name", "dims"])
async def test_a_bad_manifest_field_refuses_its_version_at_startup_and_on_reload(
    store: Path, change: dict[str, Any], field: str, caplog: pytest.LogCaptureFixture
) -> None:
    _add_version(store, "2", change)
    with caplog.at_level(logging.INFO, logger="made.engine"):
        async with in_process(_settings(store)) as made:
            await made.wait_ready()
            assert await _models(made) == {"tiny": "1", "tiny10": "1"}  # version 2 refused, 1 serves
            [logged] = _refusals(caplog)
            assert logged.startswith("refused model tiny version 2: ") and field in logged
            assert str(store / "tiny" / "2" / MANIFEST) in logged

            _add_version(store, "3", change)  # the same, dropped in while serving
            body = await _reload(made)
            assert [(r["version"], r["status"]) for r in body["results"] if r["name"] == "tiny"] == [
                ("3", "refused"),
                ("2", "refused"),
                ("1", "unchanged"),
            ]
            assert field in body["results"][0]["reason"] and body["models"] == {"tiny": "1", "tiny10": "1"}
            assert (await made.logprob([[0, 1, 1, 0, 1, 0, 0, 1]], model="tiny")).version == "1"
            shutil.rmtree(store / "tiny" / "3")
            shutil.rmtree(store / "tiny" / "2")
            await _reload(made)
            assert await _models(made) == {"tiny": "1", "tiny10": "1"}


async def test_a_model_with_no_version_that_loads_keeps_the_server_unready_with_the_reason(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = json.loads((store / "tiny" / "1" / MANIFEST).read_text())
    manifest["metrics"]["test_nll"] = "abc"
    (store / "tiny" / "1" / MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="made.engine"):
        async with in_process(_settings(store)) as made:
            detail = await _unready_detail(made)
            assert detail.startswith("models failed to load: no version of model 'tiny' loads (version 1: ")
            assert "metrics.test_nll: must be a number, got 'abc'" in detail
            assert len(_refusals(caplog)) == 1
            manifest["metrics"]["test_nll"] = 1.5  # fixed in place: the next reload serves it
            (store / "tiny" / "1" / MANIFEST).write_text(json.dumps(manifest))
            assert (await _reload(made))["models"] == {"tiny": "1", "tiny10": "1"}
            assert (await made.http.get("/readyz")).status_code == 200
            assert {m.name: m.test_nll for m in (await made.models()).models}["tiny"] == 1.5


def _failing_load_network(error: BaseException, version: str) -> Any:
    """load_network raising `error` for tiny's `version` (the engine's first step of a load)."""
    real = engine_module.load_network

    def load_network(onnx_path: Path, *args: Any, **kwargs: Any) -> Any:
        if (onnx_path.parent.parent.name, onnx_path.parent.name) == ("tiny", version):
            raise error
        return real(onnx_path, *args, **kwargs)

    return load_network


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (MemoryError(), "ran out of memory while loading (MemoryError)"),
        (RuntimeError(), "RuntimeError while loading (no message)"),
        (ValueError("bad\nshape"), "ValueError while loading: bad shape"),
    ],
)
async def test_an_exception_while_building_an_engine_refuses_that_version_with_a_reason(
    store: Path,
    error: BaseException,
    reason: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(engine_module, "load_network", _failing_load_network(error, "2"))
    _add_version(store, "2")
    with caplog.at_level(logging.INFO, logger="made.engine"):
        async with in_process(_settings(store)) as made:
            await made.wait_ready()  # at start-up: version 2 refused, 1 serves
            assert await _models(made) == {"tiny": "1", "tiny10": "1"}
            assert _refusals(caplog) == [f"refused model tiny version 2: {reason}"]
            body = await _reload(made)
            assert body["results"][0] == {
                "name": "tiny",
                "version": "2",
                "status": "refused",
                "reason": reason,
                "previous": None,
                "cached": True,
            }
    # the only version of a model: not ready, with the reason (not "still loading" for good)
    shutil.rmtree(store / "tiny" / "2")
    monkeypatch.setattr(engine_module, "load_network", _failing_load_network(error, "1"))
    async with in_process(_settings(store)) as made:
        detail = await _unready_detail(made)
        assert detail == f"models failed to load: no version of model 'tiny' loads (version 1: {reason})"


async def test_a_model_manifest_shows_no_path_of_the_servers_files(store: Path) -> None:
    async with in_process(_settings(store)) as made:
        await made.wait_ready()
        r = await made.http.get("/models/tiny")
        assert r.status_code == 200, r.text
        served = r.json()
    source = json.loads((store / "tiny" / "1" / MANIFEST).read_text())["dataset"]["source"]
    assert Path(source).is_absolute()  # what the store holds
    assert served["dataset"] == {"name": "d8", "source": "d8.npz"} and served["training"]["dataset"] == "d8.npz"

    def strings(value: Any) -> list[str]:
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    assert not [s for s in strings(served) if s.startswith(("/", "~", "..")) or str(store.parent) in s]
