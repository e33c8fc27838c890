"""manifest.json, typed: the one model of a version's manifest, its checks and its public view.

Numpy/JSON only. `parse_manifest` is the manifest's only reader (every field's type checked,
the sizes it declares bounded before anything is allocated from them) and `Manifest` its only
writer (made.store.versions.write_version serializes one). Fields keep the names they have in
the file; unknown fields are kept as they are (a later build may add some).
"""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from made.core.errors import ModelStoreError

# Format 2: weights in a safetensors file and every graph the engine runs stored beside it
# (made.store.files). A format-1 version (one model.onnx holding its weights) is refused with the
# command that upgrades it in place.
FORMAT_VERSION = 2
UPGRADE_COMMAND = "made export --upgrade"
MANIFEST = "manifest.json"
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
ACTIVATIONS = ("relu", "tanh")  # the hidden units' nonlinearities this build serves
WEIGHT_DTYPES = ("float32", "float16")  # how a version stores its weight matrices
TABLE_OUTPUT = "params"  # a table model's graph output: every column's parameters, (N, U_out)

# Bounds on what a manifest declares, checked before anything is allocated from its numbers (a
# manifest saying dims 200000000 must not make the loader build a 200-million-entry list). Each
# is far above the models made trains and below what would take a server's memory: the engine
# holds a masked float32 copy of the network per mask (service.engine.network.MaskWeights), and
# (D, K) arrays of the orderings.
MAX_DIMS = 1_000_000  # a 1000 x 1000 image of bits, or a table of a million columns
MAX_HIDDEN_WIDTH = 1 << 20  # units in one hidden layer
MAX_HIDDEN_LAYERS = 64
MAX_MASKS = 1024  # MADE's ensembles use 1 to 32 masks
MAX_ORDERING_VALUES = 1 << 24  # dims x n_masks: 128 MiB as the engine's int64 orderings
# n_masks x the weights of one network (dims x hidden, ..., hidden x dims, and dims x dims with
# direct connections): the engine's per-mask float32 copies, 4 GiB at this bound.
MAX_MASKED_WEIGHTS = 1 << 30
MAX_MANIFEST_BYTES = 256 << 20  # the orderings at MAX_ORDERING_VALUES, as export writes them


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
    """manifest.json, typed: what made.store.versions.write_version writes (with
    training/export.py's fields), read back whole by parse_manifest. `files` maps each file of
    the version to its sha256. Fields added since a model shipped have defaults."""

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
        """A model of a table's columns (its manifest lists them), not of bit vectors."""
        return self.columns is not None

    def as_json(self) -> dict[str, Any]:
        """The fields as written (those the file or the writer set, unknown ones included)."""
        return self.model_dump(mode="json", exclude_unset=True)


def table_graph_signature(n_in: int, n_out: int, in_offsets: list[int], out_offsets: list[int]) -> dict[str, Any]:
    """The graph entry of a table model's manifest: network inputs in, column parameters out, and
    where each column's units start (made.core.schema.Schema.in_offsets / out_offsets)."""
    return {
        "inputs": {"x": f"float32 [N, {n_in}]", "mask_index": "int64 []"},
        "outputs": {TABLE_OUTPUT: f"float32 [N, {n_out}]"},
        "input_offsets": in_offsets,
        "output_offsets": out_offsets,
        "opset": 17,
    }


def parse_manifest(manifest: Any, where: Path | str, *, upgrading: bool = False) -> Manifest:
    """The typed manifest, or ModelStoreError naming the first field that is wrong: missing, of
    the wrong type, out of bounds (MAX_*), or inconsistent with another (orderings, dims). A
    format-1 manifest is refused with the command that upgrades it, unless `upgrading` (the
    upgrade reads it through here too)."""
    if not isinstance(manifest, dict):
        raise ModelStoreError(f"{where} must hold a JSON object")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ModelStoreError(f"{where} lacks the field '{missing[0]}'")
    found = manifest["format_version"]
    if type(found) is int and found == 1 and not upgrading:
        raise ModelStoreError(
            f"{where} is store format 1; rewrite it as format 2 with `{UPGRADE_COMMAND} {Path(where).parent}`"
        )
    if type(found) is not int or found not in ((1, FORMAT_VERSION) if upgrading else (FORMAT_VERSION,)):
        raise ModelStoreError(f"{where} has format_version {found!r}, this build reads {FORMAT_VERSION}")
    activation = manifest["activation"] if "activation" in manifest else "relu"  # noqa: SIM401 (the JSON, before typing)
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


def check_weight_budget(spec: Manifest, direct: bool, where: Path | str) -> None:
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
    _check_sizes(spec, where)
    check_weight_budget(spec, bool(spec.direct), where)
    dims, k, orderings = spec.dims, spec.n_masks, spec.orderings
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


def _check_sizes(spec: Manifest, where: Path | str) -> None:
    """dims, n_masks and the hidden widths within this build's bounds, before any is used."""
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


def public_manifest(manifest: Manifest) -> dict[str, Any]:
    """The manifest as JSON fit to show to clients (GET /models/{name}): every field the file
    holds, with where training read its data (dataset.source, training.dataset,
    training.rebinarize) reduced to the file's name, and any other string of the dataset and
    training sections that starts like a path (absolute, ~ or ../) too:
    "/home/x/data/diamonds_train.csv" -> "diamonds_train.csv". The server's directory layout is
    not served."""
    out = manifest.as_json()
    for section in ("dataset", "training"):
        if section in out:
            out[section] = _without_paths(out[section])
    for section, key in _PATH_FIELDS:
        part = out.get(section)
        if isinstance(part, dict) and isinstance(part.get(key), str):
            out[section] = {**part, key: _file_name(part[key])}
    return out
