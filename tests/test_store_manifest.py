"""The manifest, typed (made.store.manifest.Manifest): every field of the wrong type is refused with a
reason naming it, the sizes it declares are bounded before anything is allocated from them, the
stored weights must have the shapes it declares, and what clients are shown of it holds no
path of the server's files."""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from made.core.errors import ModelStoreError
from made.store.manifest import MANIFEST, Manifest, public_manifest
from made.store.versions import list_names, open_model

SHIPPED = Path(__file__).resolve().parents[1] / "model_store"


@pytest.fixture
def store(tiny_store: Path, tmp_path: Path) -> Path:
    """A private copy of 'tiny' version 1 (D=8, K=4, hidden 24x24, direct), safe to damage."""
    store = tmp_path / "store"
    shutil.copytree(tiny_store / "tiny" / "1", store / "tiny" / "1")
    return store


def _edit(store: Path, change: dict[str, Any]) -> Path:
    """Set manifest fields; a dotted key sets a field of a section (metrics.test_nll)."""
    path = store / "tiny" / "1" / MANIFEST
    raw = json.loads(path.read_text())  # the file as JSON: what is under test is a damaged one
    for key, value in change.items():
        section, _, field = key.rpartition(".")
        (raw[section] if section else raw)[field] = value
    path.write_text(json.dumps(raw))
    return path


def _refusal(store: Path) -> str:
    with pytest.raises(ModelStoreError) as info:
        open_model(store, "tiny")
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(store / "tiny" / "1")), message
    return message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"metrics.test_nll": "abc"}, "metrics.test_nll: must be a number, got 'abc'"),
        ({"metrics.test_nll": float("nan")}, "metrics.test_nll: must be a finite number"),
        ({"image_shape": "16x7"}, "image_shape: must be a list, got '16x7'"),
        ({"image_shape": [3, 3]}, "image_shape: must be [H, W]"),
        ({"dataset.name": [1]}, "dataset.name: must be a string, got [1]"),
        ({"dataset": 7}, "dataset: must be an object, got 7"),
        ({"metrics": None}, "metrics: must be an object"),
        ({"dims": "8"}, "dims: must be an integer, got '8'"),
        ({"dims": True}, "dims: must be an integer"),
        ({"n_masks": 4.0}, "n_masks: must be an integer"),
        ({"hidden": "24,24"}, "hidden: must be a list"),
        ({"hidden": [24, "24"]}, "hidden[1]: must be an integer"),
        ({"name": 3}, "name: must be a string"),
        ({"version": 1}, "version: must be a string"),
        ({"created_at": 20260101}, "created_at: must be a string"),
        ({"files": ["model.onnx"]}, "files: must be an object"),
        ({"files": {"../../model.onnx": "0" * 64, "model.onnx": "0" * 64}}, "files: '../../model.onnx'"),
        ({"direct": "yes"}, "direct: must be true or false"),
        ({"weight_dtype": "int8"}, "weight_dtype: must be 'float32' or 'float16'"),
        ({"columns": "a,b"}, "columns: must be a list"),
    ],
)
def test_a_field_of_the_wrong_type_is_refused_naming_it(store: Path, change: dict[str, Any], expected: str) -> None:
    open_model(store, "tiny")  # as written it opens
    _edit(store, change)
    assert expected in _refusal(store)


def test_huge_dims_are_refused_before_anything_is_allocated(store: Path) -> None:
    _edit(store, {"dims": 200_000_000, "n_masks": 1, "orderings": [[0]]})
    tracemalloc.start()
    began = time.perf_counter()
    try:
        message = _refusal(store)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - began < 2.0
    assert peak < 20 << 20, f"{peak} bytes allocated"
    assert "dims: must be from 2 to 1000000, got 200000000" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"n_masks": 100_000, "orderings": [[0]]}, "n_masks: must be from 1 to 1024, got 100000"),
        ({"hidden": [24, 10**9]}, "hidden[1]: must be from 1 to"),
        ({"hidden": [24] * 100}, "hidden: must list at most 64 layers"),
        ({"hidden": [1 << 20, 1 << 20]}, "n_masks x weights"),
        ({"orderings": [list(range(8))] * 3}, "'orderings' must hold n_masks=4 lists, it holds 3"),
    ],
)
def test_sizes_are_bounded_and_consistent(store: Path, change: dict[str, Any], expected: str) -> None:
    _edit(store, change)
    assert expected in _refusal(store)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"hidden": [24, 25]}, "W1 is 24x24 in the file, 24x25 by the manifest"),
        ({"hidden": [24]}, "W1 is 24x24 in the file, 24x8 by the manifest"),
        ({"direct": False}, "has direct connections (direct_W), its manifest says direct: false"),
        ({"n_masks": 2, "orderings": [list(range(8))] * 2}, "input_degrees is 4x8 in the file, 2x8 by the manifest"),
        ({"weight_dtype": "float16"}, "W0 is F32, the manifest's weights are float16"),
    ],
)
def test_the_weights_must_have_the_shapes_the_manifest_declares(
    store: Path, change: dict[str, Any], expected: str
) -> None:
    """Checked on weights.safetensors' header before the engine builds arrays from it."""
    _edit(store, change)
    assert expected in _refusal(store)


def test_the_typed_manifest_gives_what_the_model_list_serves(store: Path) -> None:
    model = open_model(store, "tiny")
    manifest = model.manifest
    assert manifest.dataset_name == manifest.dataset.name == "d8"
    assert manifest.test_nll == manifest.metrics.test_nll and manifest.test_nll is not None
    assert (manifest.image_shape, manifest.activation, manifest.direct) == (None, "relu", True)
    assert manifest.model_extra is not None and "training" not in manifest.model_extra  # known: typed
    _edit(store, {"metrics.test_nll": 12, "image_shape": [2, 4], "future_field": {"any": "thing"}})
    model = open_model(store, "tiny")
    assert model.manifest.test_nll == 12.0 and model.image_shape == [2, 4]
    assert model.manifest.model_extra == {"future_field": {"any": "thing"}}  # unknown fields are kept
    assert model.public_manifest()["future_field"] == {"any": "thing"}  # and served


@pytest.mark.parametrize("name", list_names(SHIPPED))
def test_every_shipped_manifest_is_accepted_and_served_without_paths(name: str) -> None:
    model = open_model(SHIPPED, name)
    served = public_manifest(model.manifest)
    source, training = model.manifest.dataset.source, model.manifest.training
    assert source is not None and training is not None
    assert served["dataset"]["source"] == Path(source).name
    assert served["training"]["dataset"] == Path(training["dataset"]).name
    assert "/" not in json.dumps({k: served[k] for k in ("dataset", "training")})
    assert served["orderings"] == model.manifest.orderings
    assert served["metrics"] == model.manifest.metrics.model_dump(mode="json", exclude_unset=True)
    assert source.count("/") > 0  # the store's copy is left as it is
    on_disk = json.loads((model.path / MANIFEST).read_text())
    assert served == {**on_disk, "dataset": served["dataset"], "training": served["training"]}  # all else as stored


def test_public_manifest_reduces_every_path_of_a_training_file_to_its_name() -> None:
    manifest = Manifest.model_validate(
        {
            "format_version": 2,
            "name": "m",
            "version": "1",
            "dims": 2,
            "hidden": [4],
            "n_masks": 1,
            "orderings": [[0, 1]],
            "files": {},
            "metrics": {},
            "created_at": "2026-01-01T00:00:00+00:00",
            "dataset": {"name": "diamonds", "source": "/home/x/data/diamonds_train.csv", "groups": [["a/b", "c"]]},
            "training": {
                "dataset": "C:\\data\\diamonds_train.csv",
                "extra": {"cache": "~/cache/x.npz", "up": "../d/y.npz"},
            },
            "columns": [{"name": "km/h"}],
        }
    )
    served = public_manifest(manifest)
    assert served["dataset"] == {"name": "diamonds", "source": "diamonds_train.csv", "groups": [["a/b", "c"]]}
    assert served["training"] == {"dataset": "diamonds_train.csv", "extra": {"cache": "x.npz", "up": "y.npz"}}
    assert served["columns"] == [{"name": "km/h"}]  # not a path: left alone
    assert manifest.dataset.source == "/home/x/data/diamonds_train.csv"  # a copy
