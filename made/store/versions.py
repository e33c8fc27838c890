"""The model store: STORE/NAME/VERSION/{manifest.json, model.onnx}, read and verified.

Numpy/JSON only (no torch, no onnxruntime). Loading checks the manifest whole (one typed model,
`Manifest`, every field's type and the sizes it declares, bounded before anything is allocated
from them), every file the manifest lists against its sha256, so a missing, truncated or altered
file is refused with its name, and the graph's tensor shapes against the manifest before a
loader builds arrays from them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from made import onnx_wire as wire
from made.core.errors import DataError, ModelNotFound, ModelStoreError
from made.core.schema import Schema
from made.io.atomic import fsync_dir
from made.onnx_graph import ACTIVATIONS, OPSET

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

# Bounds on what a manifest declares, checked before anything is allocated from its numbers (a
# manifest saying dims 200000000 once made the loader build a 200-million-entry list). Each is
# far above the models made trains (the largest shipped: D=784, hidden 1000x1000, K=8) and below
# what would take a server's memory: the engine holds a masked float32 copy of the network per
# mask (service.engine.network.MaskWeights), and (D, K) arrays of the orderings.
MAX_DIMS = 1_000_000  # a 1000 x 1000 image of bits, or a table of a million columns
MAX_HIDDEN_WIDTH = 1 << 20  # units in one hidden layer (the shipped models have 256 to 1000)
MAX_HIDDEN_LAYERS = 64
MAX_MASKS = 1024  # MADE's ensembles use 1 to 32 masks
MAX_ORDERING_VALUES = 1 << 24  # dims x n_masks: 128 MiB as the engine's int64 orderings
# n_masks x the weights of one network (dims x hidden, ..., hidden x dims, and dims x dims with
# direct connections): the engine's per-mask float32 copies, 4 GiB at this bound; the shipped
# MNIST model needs 25 million of them (100 MB).
MAX_MASKED_WEIGHTS = 1 << 30
MAX_MANIFEST_BYTES = 256 << 20  # the orderings at MAX_ORDERING_VALUES, as export writes them


def table_graph_signature(schema: Any) -> dict[str, Any]:
    """The graph entry of a table model's manifest: network inputs in, column parameters out, and
    where each column's units start (made.core.schema.Schema.in_offsets / out_offsets)."""
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


class _Section(BaseModel):
    """A manifest section: the known fields typed strictly (a JSON number is not a string, true
    is not 1), unknown ones kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True)


class DatasetInfo(_Section):
    """`dataset`: the training data's name and where it was read from (a path or a name looked
    up in $MADE_DATA_DIR: never served as it is, see public_manifest)."""

    name: str | None = None
    source: str | None = None


class Metrics(_Section):
    """`metrics`: what training and evaluation measured; nats per example. test_nll is served
    (GET /models), so it must be a finite number."""

    test_nll: float | None = Field(None, allow_inf_nan=False)
    valid_nll: float | None = None
    test_nll_stderr: float | None = None
    valid_nll_stderr: float | None = None


class Manifest(_Section):
    """manifest.json, typed: what `write_version` writes (with training/export.py's fields), read
    back whole by `read_manifest`. Fields added since a model shipped have defaults."""

    format_version: int
    name: str
    version: str
    dims: int
    hidden: list[int]
    n_masks: int
    orderings: list[list[int]]
    files: dict[str, str]
    dataset: DatasetInfo
    metrics: Metrics
    created_at: str
    activation: str = "relu"  # a manifest written before the field existed is a ReLU model
    image_shape: list[int] | None = None
    direct: bool | None = None
    weight_dtype: Literal["float32", "float16"] | None = None
    columns: list[dict[str, Any]] | None = None  # table models: the schema (made.core.schema)
    graph: dict[str, Any] | None = None
    training: dict[str, Any] | None = None

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value  # an early manifest's "dataset": NAME

    @property
    def dataset_name(self) -> str | None:
        return self.dataset.name

    @property
    def test_nll(self) -> float | None:
        return self.metrics.test_nll

    @property
    def is_table(self) -> bool:
        return self.columns is not None


@dataclass(frozen=True)
class StoredModel:
    name: str
    version: str
    path: Path  # the version directory
    manifest: dict[str, Any]  # manifest.json as read (every field, unknown ones included)
    spec: Manifest  # the same, typed and checked (read_manifest)

    @property
    def dims(self) -> int:
        return self.spec.dims

    @property
    def n_masks(self) -> int:
        return self.spec.n_masks

    @property
    def orderings(self) -> np.ndarray:
        return np.asarray(self.spec.orderings, dtype=np.int64)

    @property
    def activation(self) -> str:
        """The hidden units' nonlinearity (relu or tanh); read_manifest has checked it."""
        return self.spec.activation

    @property
    def image_shape(self) -> list[int] | None:
        shape = self.spec.image_shape
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

    def public_manifest(self) -> dict[str, Any]:
        """The manifest as served to clients (GET /models/{name}): see public_manifest."""
        return public_manifest(self.manifest)


# Manifest fields that hold the path of a training file: served as the file's name only.
_PATH_FIELDS = (("dataset", "source"), ("training", "dataset"), ("training", "rebinarize"))
# Any other string of those sections that starts like a path: /x, ~/x, ./x, ../x, \\host\x, C:\x
_PATHLIKE = re.compile(r"^(/|~|\.\.?[\\/]|\\\\|[A-Za-z]:[\\/])")


def _file_name(path: str) -> str:
    return PureWindowsPath(path).name if "\\" in path else PurePosixPath(path).name


def _without_paths(value: Any) -> Any:
    if isinstance(value, str):
        return _file_name(value) if _PATHLIKE.match(value) else value
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    return value


def public_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """A copy of `manifest` fit to show to clients (GET /models/{name}): where training read its
    data (dataset.source, training.dataset, training.rebinarize) reduced to the file's name, and
    any other string of the dataset and training sections that starts like a path (absolute, ~
    or ../) too: "/home/x/data/diamonds_train.csv" -> "diamonds_train.csv". The server's
    directory layout is not served."""
    out = dict(manifest)
    for section in ("dataset", "training"):
        if section in out:
            out[section] = _without_paths(out[section])
    for section, key in _PATH_FIELDS:
        part = out.get(section)
        if isinstance(part, dict) and isinstance(part.get(key), str):
            out[section] = {**part, key: _file_name(part[key])}
    return out


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
    """manifest.json of a version, checked whole (parse_manifest): the dict as read."""
    return _read_manifest(Path(version_dir))[0]


def _read_manifest(version_dir: Path) -> tuple[dict[str, Any], Manifest]:
    path = version_dir / MANIFEST
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ModelStoreError(f"{path} holds {size} bytes, more than a manifest may ({MAX_MANIFEST_BYTES})")
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelStoreError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelStoreError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:  # nested deeper than the JSON parser goes
        raise ModelStoreError(f"{path} is not valid JSON: nested too deeply") from None
    except OSError as exc:
        raise ModelStoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    return manifest, parse_manifest(manifest, path)


def parse_manifest(manifest: Any, where: Path | str) -> Manifest:
    """The typed manifest, or ModelStoreError naming the first field that is wrong: missing, of
    the wrong type, out of bounds (MAX_*), or inconsistent with another (orderings, dims)."""
    if not isinstance(manifest, dict):
        raise ModelStoreError(f"{where} must hold a JSON object")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ModelStoreError(f"{where} lacks the field '{missing[0]}'")
    if manifest["format_version"] != FORMAT_VERSION or type(manifest["format_version"]) is not int:
        raise ModelStoreError(
            f"{where} has format_version {manifest['format_version']!r}, this build reads {FORMAT_VERSION}"
        )
    activation = manifest.get("activation", "relu")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ModelStoreError(
            f"{where} has activation {activation!r}; this build serves {' or '.join(map(repr, ACTIVATIONS))}"
        )
    try:
        spec = Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise ModelStoreError(f"{where}: {_field_error(exc.errors()[0])}") from None
    check_manifest_shapes(spec, where)
    return spec


_EXPECTED = {
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "int_parsing": "must be an integer",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
}


def _field_error(error: ErrorDetails) -> str:
    """One pydantic error as a sentence: 'metrics.test_nll: must be a number, got 'abc''."""
    loc = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
    problem = _EXPECTED.get(error["type"]) or error["msg"].replace("Input should be", "must be")
    if loc.startswith("orderings"):
        problem += " (each ordering a permutation of 0..dims-1)"
    shown = repr(error["input"])
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{loc or 'the manifest'}: {problem}, got {shown}"


def _check_weight_budget(spec: Manifest, direct: bool, where: Path | str) -> None:
    """The engine keeps a masked float32 copy of a bit model's network per mask: K x weights."""
    if spec.is_table:  # served from its stored graph alone
        return
    widths = [spec.dims, *spec.hidden, spec.dims]
    weights = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True)) + (spec.dims**2 if direct else 0)
    if spec.n_masks * weights > MAX_MASKED_WEIGHTS:
        raise ModelStoreError(
            f"{where}: n_masks x weights is {spec.n_masks} x {weights}, more than this build serves "
            f"({MAX_MASKED_WEIGHTS}); use fewer masks or smaller layers"
        )


def check_manifest_shapes(spec: Manifest, where: Path | str) -> None:
    """The sizes a manifest declares: bounded (MAX_*), and its orderings K permutations of
    0..dims-1 (their lengths checked before any is sorted or compared with a range)."""
    dims, k, hidden = spec.dims, spec.n_masks, spec.hidden
    if not 2 <= dims <= MAX_DIMS:
        raise ModelStoreError(f"{where}: dims: must be from 2 to {MAX_DIMS}, got {dims}")
    if not 1 <= k <= MAX_MASKS:
        raise ModelStoreError(f"{where}: n_masks: must be from 1 to {MAX_MASKS}, got {k}")
    if dims * k > MAX_ORDERING_VALUES:
        raise ModelStoreError(
            f"{where}: dims x n_masks is {dims * k}, more than this build serves ({MAX_ORDERING_VALUES})"
        )
    if len(hidden) > MAX_HIDDEN_LAYERS:
        raise ModelStoreError(f"{where}: hidden: must list at most {MAX_HIDDEN_LAYERS} layers, got {len(hidden)}")
    for i, width in enumerate(hidden):
        if not 1 <= width <= MAX_HIDDEN_WIDTH:
            raise ModelStoreError(f"{where}: hidden[{i}]: must be from 1 to {MAX_HIDDEN_WIDTH} units, got {width}")
    _check_weight_budget(spec, bool(spec.direct), where)
    orderings = spec.orderings
    if len(orderings) != k:
        raise ModelStoreError(f"{where}: 'orderings' must hold n_masks={k} lists, it holds {len(orderings)}")
    everything = range(dims)
    for i, order in enumerate(orderings):
        if len(order) != dims or sorted(order) != list(everything):
            raise ModelStoreError(f"{where}: orderings[{i}] is not a permutation of 0..{dims - 1}")
    if spec.image_shape is not None:
        shape = spec.image_shape
        if not 1 <= len(shape) <= 2 or min(shape) < 1 or math.prod(shape) != dims:
            raise ModelStoreError(
                f"{where}: image_shape: must be [H, W] of positive integers with H x W = dims {dims}, got {shape}"
            )
    for fname in spec.files:
        if fname in ("", ".", "..") or "/" in fname or "\\" in fname or fname == MANIFEST:
            raise ModelStoreError(f"{where}: files: {fname!r} is not the name of a file in the version directory")


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
    manifest, spec = _read_manifest(path)
    verify_files(path, manifest)
    model = StoredModel(name=name, version=version, path=path, manifest=manifest, spec=spec)
    check_graph(model)
    return model


def check_graph(model: StoredModel) -> None:
    """The graph's tensors have the shapes the manifest declares (dims or the columns' units,
    hidden, n_masks, direct), read from the file without building their values: a loader builds
    arrays from these tensors, and the engine a copy of them per mask, only once they agree."""
    path = model.onnx_path
    try:
        shapes = wire.initializer_shapes(path.read_bytes())
    except (OSError, wire.WireError) as exc:
        raise ModelStoreError(f"{path} is not a readable ONNX model: {exc}") from None
    spec, k = model.spec, model.spec.n_masks
    if model.is_table:
        try:
            n_in, n_out = model.schema.n_in, model.schema.n_out
        except ModelStoreError:  # refused when its schema is needed (StoredModel.schema), not here
            return
    else:
        n_in = n_out = spec.dims
    degrees = shapes.get("input_degrees")
    if degrees is None:
        raise ModelStoreError(f"{path} lacks the initializer 'input_degrees'; was it written by made export?")
    if degrees != (k, n_in):
        raise ModelStoreError(
            f"{path} does not match the orderings in its manifest: its input_degrees are "
            f"{'x'.join(map(str, degrees))}, the manifest's n_masks x inputs {k}x{n_in}"
        )
    widths = [n_in, *spec.hidden, n_out]
    n_layers = sum(1 for name in shapes if name.startswith("W") and name[1:].isdigit())
    if n_layers != len(widths) - 1:
        raise ModelStoreError(
            f"{path} does not match its manifest's hidden {spec.hidden}: the graph has {n_layers} weight layers"
        )
    expected: dict[str, tuple[int, ...]] = {}
    for l, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        expected[f"W{l}"], expected[f"b{l}"] = (fan_in, fan_out), (fan_out,)
        if l < n_layers - 1:
            expected[f"hidden_degrees_{l}"] = (k, fan_out)
    if model.is_table:
        expected["output_degrees"] = (k, n_out)
    if spec.direct or "direct_W" in shapes:
        if spec.direct is False:
            raise ModelStoreError(f"{path} has direct connections (direct_W), its manifest says direct: false")
        expected["direct_W"] = (n_in, n_out)
        _check_weight_budget(spec, True, path)
    for name, want in expected.items():
        got = shapes.get(name)
        if got is None:
            raise ModelStoreError(f"{path} lacks the initializer '{name}'; was it written by made export?")
        if got != want:
            raise ModelStoreError(
                f"{path} does not match its manifest's dims {spec.dims}, hidden {spec.hidden} and "
                f"n_masks {k}: {name} is {'x'.join(map(str, got))} in the graph, "
                f"{'x'.join(map(str, want))} by the manifest"
            )


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
