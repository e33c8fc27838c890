"""reference.json (made.store.reference): what the playground sets a model's answers beside, written
by `made export` (the run's torch model) and by `made export --reference` (the serving engine),
verified and checked at load, and served by GET /models/{name}/reference."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import cpu_registry, store_of

from made.cli import main
from made.core.errors import ModelStoreError
from made.core.schema import ABSENT
from made.io.data import load_dataset
from made.io.tables import load_table_dataset
from made.store.files import sha256_file
from made.store.reference import MAX_EXAMPLES, N_QUANTILES, REFERENCE
from made.store.versions import open_model
from service.engine.registry import build_engine
from service.settings import Settings
from service.testing import in_process

SHIPPED = Path(__file__).resolve().parent.parent / "model_store"
Q = np.linspace(0, 1, N_QUANTILES)


def engine_logprob(store: Path, name: str, rows: np.ndarray) -> np.ndarray:
    engine = build_engine(open_model(store, name), ["CPUExecutionProvider"], 1)
    return np.asarray(engine.logprob(rows.astype(np.float64), masks="all").logprob)


def check_marginals(reference: dict, schema, train: np.ndarray) -> None:
    assert list(reference["marginals"]) == schema.names
    for j, col in enumerate(schema.columns):
        m = reference["marginals"][col.name]
        if col.kind == "numeric":
            assert m["kind"] == "number" and len(m["edges"]) == 21 and len(m["counts"]) == 20
            absent = int((train[:, j] == ABSENT).sum())
            assert sum(m["counts"]) + absent == len(train)
            assert m["p_absent"] == pytest.approx(absent / len(train))
            assert np.all(np.diff(m["edges"]) > 0)
        else:
            assert m["kind"] == "category" and set(m["levels"]) <= set(col.levels)
            assert sum(m["levels"].values()) == pytest.approx(1.0)
            for k, level in enumerate(col.levels):
                assert m["levels"][level] == pytest.approx(np.mean(train[:, j] == k))


def test_export_writes_the_reference_of_a_bit_model(tiny_store: Path) -> None:
    data = load_dataset(str(tiny_store.parent / "d8.npz"))
    test, train = data.split("test"), data.split("train")
    model = open_model(tiny_store, "tiny")
    assert model.reference is not None and REFERENCE in model.manifest.files
    ref = json.loads((model.path / REFERENCE).read_text())
    assert (ref["model"], ref["version"], ref["split"], ref["n_rows"]) == ("tiny", "1", "test", len(test))
    want = np.quantile(engine_logprob(tiny_store, "tiny", test), Q)
    np.testing.assert_allclose(ref["logprob_quantiles"], want, rtol=1e-5, atol=1e-4)  # torch vs onnxruntime
    assert np.all(np.diff(ref["logprob_quantiles"]) >= 0)
    assert 1 <= len(ref["examples"]) <= MAX_EXAMPLES
    rows = {tuple(r) for r in test.tolist()}
    assert all(len(e) == 8 and tuple(e) in rows for e in ref["examples"])
    check_marginals(ref, model.schema, train)


def test_export_writes_the_reference_of_a_table_model(table_store: Path) -> None:
    model = open_model(table_store, "mixed")
    data = load_table_dataset(str(table_store.parent / "mixed_train.csv"), schema=model.schema)
    test, train = data.split("test"), data.split("train")
    ref = json.loads((model.path / REFERENCE).read_text())
    assert ref["n_rows"] == len(test)
    want = np.quantile(engine_logprob(table_store, "mixed", test), Q)
    np.testing.assert_allclose(ref["logprob_quantiles"], want, rtol=1e-4, atol=1e-3)
    records = model.schema.decode_rows(test)
    assert len(ref["examples"]) == MAX_EXAMPLES and all(e in records for e in ref["examples"])
    check_marginals(ref, model.schema, train)
    assert ref["marginals"]["budget"]["p_absent"] > 0.1  # the nullable number


def test_made_export_reference_adds_it_in_place(tmp_path: Path, table_store: Path) -> None:
    store = store_of(tmp_path / "store", table_store / "cats")
    version = store / "cats" / "1"
    before = json.loads((version / "manifest.json").read_text())
    others = {f: sha256_file(version / f) for f in before["files"] if f != REFERENCE}
    (version / REFERENCE).unlink()
    del before["files"][REFERENCE]
    (version / "manifest.json").write_text(json.dumps(before))
    assert open_model(store, "cats").reference is None  # a version without it loads as before
    csv = table_store.parent / "cats_train.csv"
    assert main(["export", "--reference", str(csv), str(version)]) == 0
    after = json.loads((version / "manifest.json").read_text())
    assert {k: v for k, v in after.items() if k != "files"} == {k: v for k, v in before.items() if k != "files"}
    assert {f: sha256_file(version / f) for f in others} == others and REFERENCE in after["files"]
    model = open_model(store, "cats")
    test = load_table_dataset(str(csv), schema=model.schema).split("test")
    ref = json.loads((version / REFERENCE).read_text())
    np.testing.assert_allclose(ref["logprob_quantiles"], np.quantile(engine_logprob(store, "cats", test), Q))
    assert ref["marginals"]["d"]["levels"]["NA"] > 0  # an empty cell is the level NA


def _rewrite(version: Path, change) -> None:  # type: ignore[no-untyped-def]
    ref = json.loads((version / REFERENCE).read_text())
    change(ref)
    (version / REFERENCE).write_text(json.dumps(ref))
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["files"][REFERENCE] = hashlib.sha256((version / REFERENCE).read_bytes()).hexdigest()
    (version / "manifest.json").write_text(json.dumps(manifest))


def test_a_damaged_or_foreign_reference_is_refused(tmp_path: Path, tiny_store: Path) -> None:
    store = store_of(tmp_path / "store", tiny_store / "tiny")
    version = store / "tiny" / "1"
    original = (version / REFERENCE).read_bytes()
    (version / REFERENCE).write_bytes(original.replace(b'"test"', b'"tset"'))
    with pytest.raises(ModelStoreError, match=r"reference\.json does not match its manifest checksum"):
        open_model(store, "tiny")
    (version / REFERENCE).write_bytes(original)
    cases = [
        (lambda r: r["marginals"].pop("x7"), "its marginals must be of the model's 8 columns"),
        (lambda r: r["examples"].__setitem__(0, [0] * 7), r"examples\[0\] must be a row of 8 0/1 values"),
        (lambda r: r["examples"].extend(r["examples"][:1]), "examples: List should have at most 16 items"),
        (lambda r: r["examples"].__setitem__(0, [2] * 8), r"examples\[0\]\[0\]: Input should be 0 or 1"),
        (lambda r: r.update(logprob_quantiles=r["logprob_quantiles"][::-1]), "must ascend"),
        (lambda r: r.update(logprob_quantiles=r["logprob_quantiles"][:50]), "logprob_quantiles"),
        (lambda r: r["marginals"]["x0"]["levels"].update({"2": 0.0}), "'x0' has no level '2'"),
        (lambda r: r["marginals"].update(x0={"kind": "number", "edges": [], "counts": [], "p_absent": 0}), "edges"),
    ]
    for change, message in cases:
        (version / REFERENCE).write_bytes(original)
        _rewrite(version, change)
        with pytest.raises(ModelStoreError, match=message) as info:
            open_model(store, "tiny")
        assert REFERENCE in str(info.value) and "\n" not in str(info.value)
    (version / REFERENCE).write_bytes(original)
    _rewrite(version, lambda r: r.update(version="9"))  # a copy of another version: served as this one
    assert open_model(store, "tiny").reference.version == "1"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_the_endpoint_serves_it_or_says_how_to_write_it(tmp_path: Path, tiny_store: Path) -> None:
    store = store_of(tmp_path / "store", tiny_store / "tiny", tiny_store / "tiny1")
    version = store / "tiny1" / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    del manifest["files"][REFERENCE]
    (version / "manifest.json").write_text(json.dumps(manifest))
    (version / REFERENCE).unlink()
    registry = cpu_registry(store, "tiny")
    async with in_process(Settings(store=store, default_model="tiny", api_key="k"), registry) as client:
        http = client.http
        assert (await http.get("/models/tiny/reference")).status_code == 401
        auth = {"Authorization": "Bearer k"}
        r = await http.get("/models/tiny/reference", headers=auth)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        assert r.json() == json.loads((store / "tiny" / "1" / REFERENCE).read_text())
        r = await http.get("/models/tiny1/reference", headers=auth)
        assert r.status_code == 404
        assert "model 'tiny1' version 1 has no reference.json" in r.json()["detail"]
        assert "made export --reference DATASET STORE/tiny1/1" in r.json()["detail"]
        assert (await http.get("/models/nope/reference", headers=auth)).status_code == 404


@pytest.mark.parametrize("name", ["binarized-mnist", "mushrooms", "diamonds", "health-insurance"])
def test_every_shipped_model_has_a_reference(name: str) -> None:
    model = open_model(SHIPPED, name)
    ref = model.reference
    assert ref is not None, f"{name} ships no reference.json: run made export --reference"
    assert (model.path / REFERENCE).stat().st_size < 100_000
    assert (ref.model, ref.version, ref.split) == (name, model.version, "test")
    assert ref.n_rows == model.manifest.metrics.model_extra.get("test_n", ref.n_rows)  # type: ignore[union-attr]
    assert len(ref.examples) == MAX_EXAMPLES and list(ref.marginals) == model.schema.names
    # the median held-out log p is near the test NLL the manifest reports
    assert abs(-ref.logprob_quantiles[50] - model.manifest.test_nll) < 0.1 * model.manifest.test_nll  # type: ignore[operator]
