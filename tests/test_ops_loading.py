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
import numpy as np
import pytest
from helpers import post_ok, reload_result

import service.engine.engine as engine_module
from made.core.errors import ModelStoreError
from made.store.files import BIT_FILES, sha256_file
from made.store.manifest import MANIFEST
from made.store.versions import open_model
from service.engine.engine import Engine
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
    raw = json.loads((tmp / MANIFEST).read_text())  # the file as JSON: a damaged one is under test
    raw["version"] = version
    for key, value in (change or {}).items():
        section, _, field = key.rpartition(".")
        (raw[section] if section else raw)[field] = value
    (tmp / MANIFEST).write_text(json.dumps(raw))
    return tmp.rename(store / "tiny" / version)


async def _models(made: InProcessClient) -> dict[str, str]:
    r = await made.http.get("/models")
    assert r.status_code == 200, r.text
    return {m["name"]: m["version"] for m in r.json()["models"]}


async def _reload(made: InProcessClient) -> dict[str, Any]:
    return await post_ok(made, "/admin/reload", None, headers=ADMIN)


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

    def load_network(model: Any, *args: Any, **kwargs: Any) -> Any:
        if (model.name, model.version) == ("tiny", version):
            raise error
        return real(model, *args, **kwargs)

    return load_network


async def test_a_default_model_the_store_lacks_keeps_the_server_unready_naming_the_setting(store: Path) -> None:
    """Not a start-up error: a server may start before its store is filled, and a reload retries."""
    async with in_process(_settings(store).model_copy(update={"default_model": "nope"})) as made:
        detail = await _unready_detail(made)
        assert detail == (
            f"models failed to load: default model 'nope' (MADE_DEFAULT_MODEL) is not in store {store} "
            "(it has: tiny, tiny10)"
        )
        shutil.copytree(store / "tiny", store / "nope")  # the model arrives
        body = await _reload(made)
        assert body["default"] == "nope" and (await made.http.get("/readyz")).status_code == 200


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
            assert body["results"][0] == reload_result("tiny", "2", "refused", reason=reason, cached=True)
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


@pytest.mark.parametrize("fname", BIT_FILES)
def test_a_damaged_file_with_a_matching_checksum_loads_or_is_refused_naming_a_file(store: Path, fname: str) -> None:
    """Past the checksum (damage made before export wrote it), the parsers of the stored files
    (safetensors, onnxruntime) and the load-time checks answer every damage: the model loads,
    or a ModelStoreError names one of its files; never another exception or a crash. Seeded
    byte flips and truncations, 25 per file."""
    version_dir = store / "tiny" / "1"
    good = (version_dir / fname).read_bytes()
    raw = json.loads((version_dir / MANIFEST).read_text())  # rewritten with each damage's checksum
    rng = np.random.default_rng(sum(fname.encode()))
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(25):
        data = bytearray(good)
        if trial % 5 == 4:
            del data[int(rng.integers(1, len(data))) :]
        else:
            for at in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                data[int(at)] ^= int(rng.integers(1, 256))
        (version_dir / fname).write_bytes(bytes(data))
        raw["files"][fname] = sha256_file(version_dir / fname)
        (version_dir / MANIFEST).write_text(json.dumps(raw))
        try:
            engine = Engine(open_model(store, "tiny"), ["CPUExecutionProvider"], threads=1)
            engine.jacobi_sampler(), engine.graph_scores()  # the device path's sessions, built on demand
        except ModelStoreError as exc:
            message = str(exc)
            assert "\n" not in message and str(version_dir) in message, message
            outcomes["refused"] += 1
        else:
            outcomes["loaded"] += 1
    assert outcomes["refused"] >= 1 or fname == "scores_observed.onnx", outcomes  # built on a first request
