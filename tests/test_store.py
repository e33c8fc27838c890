"""Reading the model store (made/store/versions.py): a missing, truncated or altered file and a manifest
lacking a field are refused with the file's name; hidden temporary directories are invisible;
the highest version is the one opened."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from made.core.errors import ModelNotFound, ModelStoreError
from made.store.versions import (
    REQUIRED,
    latest_version,
    list_names,
    list_versions,
    open_model,
    sha256_file,
)


@pytest.fixture
def store(tiny_store: Path, tmp_path: Path) -> Path:
    """A private copy of the session's store with model 'tiny' as version 1 (safe to damage)."""
    store = tmp_path / "store"
    (store / "tiny").mkdir(parents=True)
    shutil.copytree(tiny_store / "tiny" / "1", store / "tiny" / "1")
    return store


def _refusal(store: Path, name: str = "tiny", version: str | None = None) -> str:
    with pytest.raises(ModelStoreError) as info:
        open_model(store, name, version)
    message = str(info.value)
    assert "\n" not in message
    return message


def _edit_manifest(store: Path, change: dict[str, object], drop: str | None = None) -> Path:
    path = store / "tiny" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(change)
    if drop is not None:
        del manifest[drop]
    path.write_text(json.dumps(manifest))
    return path


def test_an_intact_copy_opens_and_describes_itself(store: Path) -> None:
    model = open_model(store, "tiny")
    assert (model.name, model.version, model.dims, model.n_masks) == ("tiny", "1", 8, 4)
    assert model.orderings.shape == (4, 8)
    assert sorted(model.orderings[0].tolist()) == list(range(8))
    assert model.onnx_path == store / "tiny" / "1" / "model.onnx"
    assert model.manifest["files"]["model.onnx"] == sha256_file(model.onnx_path)


def test_a_missing_model_file_is_refused_by_name(store: Path) -> None:
    onnx = store / "tiny" / "1" / "model.onnx"
    onnx.unlink()
    message = _refusal(store)
    assert str(onnx) in message and "missing" in message


def test_a_truncated_model_file_is_refused_by_name(store: Path) -> None:
    onnx = store / "tiny" / "1" / "model.onnx"
    data = onnx.read_bytes()
    onnx.write_bytes(data[: len(data) // 2])
    message = _refusal(store)
    assert str(onnx) in message and "checksum" in message


def test_one_altered_byte_is_refused_by_name(store: Path) -> None:
    onnx = store / "tiny" / "1" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    message = _refusal(store)
    assert str(onnx) in message and "checksum" in message


@pytest.mark.parametrize("field", REQUIRED)
def test_a_manifest_lacking_a_field_is_refused_by_name(store: Path, field: str) -> None:
    path = _edit_manifest(store, {}, drop=field)
    message = _refusal(store)
    assert str(path) in message and f"'{field}'" in message


def test_contract_fields_are_all_required() -> None:
    contract = {
        "format_version",
        "name",
        "version",
        "dims",
        "hidden",
        "n_masks",
        "orderings",
        "files",
        "dataset",
        "metrics",
        "created_at",
    }
    assert contract <= set(REQUIRED)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"format_version": 99}, "format_version"),
        ({"orderings": [[0, 1, 2, 3, 4, 5, 6, 6]] * 4}, "permutation"),
        ({"orderings": [list(range(8))] * 3}, "orderings"),
        ({"orderings": [3, 1, 4, 1]}, "permutation"),
        ({"orderings": [[0, 1, 2, 3, 4, 5, 6, "7"]] * 4}, "permutation"),
        ({"dims": 1}, "dims"),
        ({"files": {}}, "model.onnx"),
        ({"files": {"model.onnx": "0" * 64}}, "checksum"),
    ],
)
def test_an_inconsistent_manifest_is_refused_by_name(store: Path, change: dict[str, object], expected: str) -> None:
    _edit_manifest(store, change)
    message = _refusal(store)
    assert str(store / "tiny" / "1") in message and expected in message


def test_a_listed_extra_file_must_exist_and_match(store: Path) -> None:
    version_dir = store / "tiny" / "1"
    (version_dir / "sampler.onnx").write_bytes(b"extra")
    files = json.loads((version_dir / "manifest.json").read_text())["files"]
    _edit_manifest(store, {"files": {**files, "sampler.onnx": sha256_file(version_dir / "sampler.onnx")}})
    open_model(store, "tiny")
    (version_dir / "sampler.onnx").write_bytes(b"Extra")
    assert str(version_dir / "sampler.onnx") in _refusal(store)


def test_a_broken_or_missing_manifest_is_refused_by_name(store: Path) -> None:
    path = store / "tiny" / "1" / "manifest.json"
    path.write_text('{"format_version": 1, "name": ')
    assert str(path) in _refusal(store)
    path.write_text("[1, 2]")
    assert str(path) in _refusal(store)
    path.unlink()
    assert str(path) in _refusal(store)


def test_unknown_names_and_versions_are_not_found(store: Path) -> None:
    with pytest.raises(ModelNotFound, match="nosuch"):
        open_model(store, "nosuch")
    with pytest.raises(ModelNotFound, match="'7'"):
        open_model(store, "tiny", "7")
    assert list_versions(store / "absent", "tiny") == []
    assert list_names(store / "absent") == []


def test_the_highest_version_is_opened_and_temporary_directories_are_invisible(store: Path) -> None:
    base = store / "tiny"
    for version in ("2", "10", "9"):
        shutil.copytree(base / "1", base / version)
        path = base / version / "manifest.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "version": version}))
    # what a kill mid-export leaves: a hidden, possibly complete, temporary directory
    shutil.copytree(base / "1", base / ".11.x7q2.tmp")
    (base / "README").write_text("a stray file is not a version either")
    (store / ".trash").mkdir()
    assert list_versions(store, "tiny") == ["1", "2", "9", "10"]
    assert latest_version(store, "tiny") == "10"
    assert open_model(store, "tiny").version == "10"
    assert open_model(store, "tiny", "9").manifest["version"] == "9"
    assert list_names(store) == ["tiny"]


def test_the_activation_is_relu_or_tanh_and_anything_else_is_refused(store: Path) -> None:
    assert open_model(store, "tiny").activation == "relu"  # written by made export
    _edit_manifest(store, {}, drop="activation")
    assert open_model(store, "tiny").activation == "relu"  # a manifest from before the field
    _edit_manifest(store, {"activation": "tanh"})
    assert open_model(store, "tiny").activation == "tanh"
    for bad in ("sigmoid", "ReLU", None, 1):
        _edit_manifest(store, {"activation": bad})
        message = _refusal(store)
        assert "manifest.json has activation" in message and "'relu' or 'tanh'" in message, message
