"""The model store: STORE/NAME/VERSION/{manifest.json, model.onnx}, read and verified.

Numpy/JSON only (no torch, no onnxruntime). Loading checks every file the manifest lists
against its sha256, so a missing, truncated or altered file is refused with its name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from made.atomic import fsync_dir
from made.errors import DataError, ModelNotFound, ModelStoreError
from made.onnx_graph import ACTIVATIONS, OPSET
from made.schema import Schema

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
TABLE_OUTPUT = "params"  # a table model's graph output: every column's parameters, (N, U_out)
REQUIRED = (
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
)


def table_graph_signature(schema: Any) -> dict[str, Any]:
    """The graph entry of a table model's manifest: network inputs in, column parameters out, and
    where each column's units start (made.schema.Schema.in_offsets / out_offsets)."""
    return {
        "inputs": {"x": f"float32 [N, {schema.n_in}]", "mask_index": "int64 []"},
        "outputs": {TABLE_OUTPUT: f"float32 [N, {schema.n_out}]"},
        "input_offsets": schema.in_offsets.tolist(),
        "output_offsets": schema.out_offsets.tolist(),
        "opset": 17,
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version_key(version: str) -> tuple[int, int | str]:
    """Numeric versions sort numerically and above non-numeric ones."""
    return (1, int(version)) if version.isdigit() else (0, version)


@dataclass(frozen=True)
class StoredModel:
    name: str
    version: str
    path: Path  # the version directory
    manifest: dict[str, Any]

    @property
    def dims(self) -> int:
        return int(self.manifest["dims"])

    @property
    def n_masks(self) -> int:
        return int(self.manifest["n_masks"])

    @property
    def orderings(self) -> np.ndarray:
        return np.asarray(self.manifest["orderings"], dtype=np.int64)

    @property
    def activation(self) -> str:
        """The hidden units' nonlinearity (relu or tanh); read_manifest has checked it. A
        manifest written before the field existed is a ReLU model."""
        return str(self.manifest.get("activation", "relu"))

    @property
    def image_shape(self) -> list[int] | None:
        shape = self.manifest.get("image_shape")
        return list(shape) if shape else None

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def is_table(self) -> bool:
        """A model of a table's columns (its manifest lists them), not of bit vectors."""
        return "columns" in self.manifest

    @cached_property
    def schema(self) -> Schema:
        """Every model's columns: a table model's from its manifest; a bit model's are its D
        binary columns x0..x{D-1} (Schema.bits), which its manifest need not spell out."""
        if not self.is_table:
            return Schema.bits(self.dims)
        try:
            return Schema.from_json(self.manifest["columns"], f"{self.path}/{MANIFEST}")
        except DataError as exc:
            raise ModelStoreError(f"{self.path}: the manifest's columns are not a valid schema: {exc}") from None


def list_names(store: Path) -> list[str]:
    store = Path(store)
    if not store.is_dir():
        return []
    return sorted(p.name for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_versions(store: Path, name: str) -> list[str]:
    base = Path(store) / name
    if not base.is_dir():
        return []
    versions = [p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(versions, key=version_key)


def latest_version(store: Path, name: str) -> str:
    versions = list_versions(store, name)
    if not versions:
        raise ModelNotFound(f"no model named '{name}' in store {store}")
    return versions[-1]


def read_manifest(version_dir: Path) -> dict[str, Any]:
    path = Path(version_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelStoreError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelStoreError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ModelStoreError(f"{path} must hold a JSON object")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ModelStoreError(f"{path} lacks the field '{missing[0]}'")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ModelStoreError(
            f"{path} has format_version {manifest['format_version']}, this build reads {FORMAT_VERSION}"
        )
    check_manifest_shapes(manifest, path)
    activation = manifest.get("activation", "relu")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ModelStoreError(
            f"{path} has activation {activation!r}; this build serves {' or '.join(map(repr, ACTIVATIONS))}"
        )
    return manifest


def check_manifest_shapes(manifest: dict[str, Any], where: Path) -> None:
    dims, k = manifest["dims"], manifest["n_masks"]
    orderings = manifest["orderings"]
    if not (isinstance(dims, int) and dims >= 2 and isinstance(k, int) and k >= 1):
        raise ModelStoreError(f"{where}: dims and n_masks must be positive integers")
    if not isinstance(orderings, list) or len(orderings) != k:
        raise ModelStoreError(f"{where}: 'orderings' must hold n_masks={k} lists")
    for i, order in enumerate(orderings):
        ints = isinstance(order, list) and all(type(v) is int for v in order)
        if not ints or sorted(order) != list(range(dims)):
            raise ModelStoreError(f"{where}: orderings[{i}] is not a permutation of 0..{dims - 1}")


def verify_files(version_dir: Path, manifest: dict[str, Any]) -> None:
    """Every listed file exists and matches its sha256; the ONNX model must be listed."""
    files = manifest["files"]
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise ModelStoreError(f"{version_dir / MANIFEST} does not list {MODEL_FILE} in 'files'")
    for fname, expected in files.items():
        path = Path(version_dir) / fname
        if not path.is_file():
            raise ModelStoreError(f"{path} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelStoreError(
                f"{path} does not match its manifest checksum (truncated or altered): "
                f"sha256 {actual[:12]}..., expected {str(expected)[:12]}..."
            )


def open_model(store: Path, name: str, version: str | None = None) -> StoredModel:
    """Find NAME (its highest version unless one is given), read and verify it."""
    store = Path(store)
    if version is None:
        version = latest_version(store, name)
    path = store / name / version
    if not path.is_dir():
        raise ModelNotFound(f"no version '{version}' of model '{name}' in store {store}")
    manifest = read_manifest(path)
    verify_files(path, manifest)
    return StoredModel(name=name, version=version, path=path, manifest=manifest)


def next_version(store: Path, name: str) -> str:
    numeric = [int(v) for v in list_versions(store, name) if v.isdigit()]
    return str(max(numeric, default=0) + 1)


def write_version(store: Path, name: str, graph: bytes, fields: dict[str, Any], version: str | None = None) -> Path:
    """Write STORE/NAME/VERSION/{model.onnx, manifest.json} atomically: the files are assembled
    in a hidden temporary directory and renamed into place, so a reader never sees half a version.
    `graph` is the serialized ONNX model; `fields` are the model's manifest entries; the store's
    own (format, name, version, checksums, graph signature, creation time) are added here. The
    manifest's one writer, beside its reader (read_manifest)."""
    try:
        (store / name).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelStoreError(f"cannot write to store {store}: {exc.strerror or exc}") from None
    version = version or next_version(store, name)
    final = store / name / version
    if final.exists():
        raise ModelStoreError(f"{final} already exists; pick another --version")
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=store / name))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a served store must be readable by the server user
        (tmp / MODEL_FILE).write_bytes(graph)
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "version": version,
            "activation": "relu",
            "graph": {
                "inputs": {"x": "float32 [N, D]", "mask_index": "int64 []"},
                "outputs": {"logits": "float32 [N, D]"},
                "opset": OPSET,
            },
            **fields,  # a table model brings its own graph signature
            "files": {MODEL_FILE: sha256_file(tmp / MODEL_FILE)},
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(tmp, final)  # atomic: readers see no version or the whole one
        fsync_dir(store / name)
    except OSError as exc:
        raise ModelStoreError(f"cannot write {final}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
