"""Reading the model store (made/store/): a missing, truncated or altered file, weights that do not
match the manifest and a manifest lacking a field are refused with the file's name; a format-1
version is refused with the command that upgrades it; hidden temporary directories are
invisible; the highest version is the one opened."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import MANIFEST_FIELDS
from safetensors.numpy import load_file, save_file

from made.core.errors import ModelNotFound, ModelStoreError
from made.store.files import BIT_FILES, WEIGHTS, sha256_file
from made.store.manifest import REQUIRED
from made.store.reference import REFERENCE
from made.store.versions import latest_version, list_names, list_versions, open_model


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
    """Rewrite the file as JSON (a damaged manifest is what is under test, not read through the store)."""
    path = store / "tiny" / "1" / "manifest.json"
    raw = json.loads(path.read_text())
    raw.update(change)
    if drop is not None:
        raw.pop(drop)
    path.write_text(json.dumps(raw))
    return path


def _rewrite_weights(store: Path, change: dict[str, np.ndarray], drop: str | None = None) -> Path:
    """Replace weights.safetensors by a valid file of other arrays, its checksum updated: only
    the shape check stands between it and the engine."""
    version_dir = store / "tiny" / "1"
    arrays = {**load_file(str(version_dir / WEIGHTS)), **change}
    if drop is not None:
        arrays.pop(drop)
    save_file(arrays, str(version_dir / WEIGHTS))
    files = json.loads((version_dir / "manifest.json").read_text())["files"]
    _edit_manifest(store, {"files": {**files, WEIGHTS: sha256_file(version_dir / WEIGHTS)}})
    return version_dir / WEIGHTS


def test_an_intact_copy_opens_and_describes_itself(store: Path) -> None:
    model = open_model(store, "tiny")
    assert (model.name, model.version, model.dims, model.n_masks) == ("tiny", "1", 8, 4)
    assert model.orderings.shape == (4, 8)
    assert sorted(model.orderings[0].tolist()) == list(range(8))
    assert model.onnx_path == store / "tiny" / "1" / "model.onnx"
    assert model.manifest.format_version == 2
    assert sorted(model.manifest.files) == sorted([*BIT_FILES, REFERENCE])  # the tiny data set has a test split
    for fname, digest in model.manifest.files.items():
        assert digest == sha256_file(model.file(fname))
    weights = model.weights()  # hidden [24, 24], direct connections
    assert sorted(weights) == ["W0", "W1", "W2", "b0", "b1", "b2", "direct_W"] + [
        "hidden_degrees_0",
        "hidden_degrees_1",
        "input_degrees",
    ]
    assert weights["W1"].shape == (24, 24) and weights["hidden_degrees_1"].shape == (4, 24)


@pytest.mark.parametrize("fname", BIT_FILES)
def test_a_missing_file_is_refused_by_name(store: Path, fname: str) -> None:
    path = store / "tiny" / "1" / fname
    path.unlink()
    message = _refusal(store)
    assert str(path) in message and "missing" in message


@pytest.mark.parametrize("fname", BIT_FILES)
def test_a_truncated_file_is_refused_by_name(store: Path, fname: str) -> None:
    path = store / "tiny" / "1" / fname
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = _refusal(store)
    assert str(path) in message and "checksum" in message


@pytest.mark.parametrize("fname", BIT_FILES)
def test_one_altered_byte_is_refused_by_name(store: Path, fname: str) -> None:
    path = store / "tiny" / "1" / fname
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    message = _refusal(store)
    assert str(path) in message and "checksum" in message


def test_weights_of_another_shape_are_refused_before_any_array_is_built(store: Path) -> None:
    weights = load_file(str(store / "tiny" / "1" / WEIGHTS))
    path = _rewrite_weights(store, {"W0": np.zeros((weights["W0"].shape[0], 3), dtype=np.float32)})
    message = _refusal(store)
    assert str(path) in message and "W0 is 8x3 in the file" in message, message


@pytest.mark.parametrize(
    ("change", "drop", "expected"),
    [
        ({}, "b1", "lacks the array 'b1'"),
        ({}, "direct_W", "lacks the array 'direct_W'"),
        ({"spare": np.zeros(2, dtype=np.float32)}, None, "holds the array 'spare'"),
        ({"input_degrees": np.zeros((4, 8), dtype=np.int64)}, None, "input_degrees is I64"),
    ],
)
def test_weights_the_manifest_does_not_describe_are_refused_by_name(
    store: Path, change: dict[str, np.ndarray], drop: str | None, expected: str
) -> None:
    path = _rewrite_weights(store, change, drop)
    message = _refusal(store)
    assert str(path) in message and expected in message, message


def test_a_weights_file_that_is_not_safetensors_is_refused_by_name(store: Path) -> None:
    path = store / "tiny" / "1" / WEIGHTS
    path.write_bytes(b"\xff" * 64)
    files = json.loads((store / "tiny" / "1" / "manifest.json").read_text())["files"]
    _edit_manifest(store, {"files": {**files, WEIGHTS: sha256_file(path)}})
    message = _refusal(store)
    assert str(path) in message and "not a readable safetensors file" in message, message


def test_a_format_1_version_is_refused_with_the_command_that_upgrades_it(store: Path) -> None:
    _edit_manifest(store, {"format_version": 1})
    message = _refusal(store)
    assert "store format 1" in message and f"made export --upgrade {store / 'tiny' / '1'}" in message, message


@pytest.mark.parametrize("field", REQUIRED)
def test_a_manifest_lacking_a_field_is_refused_by_name(store: Path, field: str) -> None:
    path = _edit_manifest(store, {}, drop=field)
    message = _refusal(store)
    assert str(path) in message and f"'{field}'" in message


def test_contract_fields_are_all_required() -> None:
    assert set(REQUIRED) >= MANIFEST_FIELDS


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"format_version": 99}, "format_version"),
        ({"orderings": [[0, 1, 2, 3, 4, 5, 6, 6]] * 4}, "permutation"),
        ({"orderings": [list(range(8))] * 3}, "orderings"),
        ({"orderings": [3, 1, 4, 1]}, "permutation"),
        ({"orderings": [[0, 1, 2, 3, 4, 5, 6, "7"]] * 4}, "permutation"),
        ({"dims": 1}, "dims"),
        ({"files": {}}, "weights.safetensors"),
        ({"files": {"weights.safetensors": "0" * 64}}, "model.onnx"),
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
    assert open_model(store, "tiny", "9").manifest.version == "9"
    assert list_names(store) == ["tiny"]


def test_a_version_whose_manifest_names_another_is_opened_as_its_folders_say_with_a_warning(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A copied folder: served as its folders say, as its reference.json is, but said in the log."""
    with caplog.at_level(logging.WARNING, logger="made.store"):
        open_model(store, "tiny", "1")
        assert caplog.records == []  # the manifest agrees with its folders
        shutil.copytree(store / "tiny", store / "copy")
        shutil.copytree(store / "copy" / "1", store / "copy" / "7")
        model = open_model(store, "copy", "7")
    assert (model.name, model.version) == ("copy", "7")
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert warning.getMessage() == (
        f"{store / 'copy' / '7'}: its manifest says model 'tiny' version 1; "
        "served as model 'copy' version 7 (its folders' names)"
    )


def test_a_missing_store_or_a_file_is_said_to_be_one_not_a_missing_model(store: Path) -> None:
    (store.parent / "afile").write_text("")
    for path, problem in (
        (store.parent / "absent", "does not exist"),
        (store.parent / "afile", "is a file, not a folder"),
    ):
        for version in (None, "1"):
            with pytest.raises(ModelStoreError) as info:
                open_model(path, "tiny", version)
            assert str(info.value) == f"model store {path} {problem}" and not isinstance(info.value, ModelNotFound)


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
