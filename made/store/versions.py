"""The model store: STORE/NAME/VERSION/{manifest.json, weights.safetensors, *.onnx}, read and
verified, and written atomically.

Numpy/JSON only (no torch, no onnx, no onnxruntime). Loading checks the manifest whole
(made.store.manifest.parse_manifest), every file the manifest lists against its sha256, so a
missing, truncated or altered file is refused with its name, and the weights' shapes against the
manifest before a loader builds arrays from them (made.store.files).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from made.core.errors import DataError, ModelNotFound, ModelStoreError
from made.core.schema import Schema
from made.io.atomic import fsync_dir
from made.store.files import MODEL_GRAPH, check_weights, load_weights, sha256_file, verify_files
from made.store.manifest import FORMAT_VERSION, MANIFEST, MAX_MANIFEST_BYTES, Manifest, parse_manifest, public_manifest
from made.store.reference import REFERENCE, Reference, parse_reference, read_reference, reference_bytes

log = logging.getLogger("made.store")

# the one rule of a model's name and a version's, wherever one enters the store: a single path
# component ('/' would write outside the store, a leading '.' hide it from readers), short enough
# for any file system's names, and the same text on every system (no spaces, no accents)
NAME_LENGTH = 64
_NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{NAME_LENGTH}}}")


def check_name(value: str, kind: str = "model name") -> str:
    """`value` where it may name a model (or, with kind="version", a version) in the store, or a
    ModelStoreError saying what it may be."""
    if not _NAME.fullmatch(value):
        shown = value if len(value) <= NAME_LENGTH else value[:NAME_LENGTH] + "..."
        raise ModelStoreError(
            f"invalid {kind} '{shown}': use letters, digits, '-' or '_', at most {NAME_LENGTH} of them"
        )
    return value


def version_key(version: str) -> tuple[int, int | str]:
    """Numeric versions sort numerically and above non-numeric ones."""
    return (1, int(version)) if version.isdigit() else (0, version)


@dataclass(frozen=True)
class StoredModel:
    name: str
    version: str
    path: Path  # the version directory
    manifest: Manifest  # manifest.json, typed and checked (unknown fields kept)
    reference: Reference | None = None  # reference.json where the version has one (made.store.reference)

    @property
    def dims(self) -> int:
        return self.manifest.dims

    @property
    def n_masks(self) -> int:
        return self.manifest.n_masks

    @property
    def orderings(self) -> np.ndarray:
        return np.asarray(self.manifest.orderings, dtype=np.int64)

    @property
    def activation(self) -> str:
        """The hidden units' nonlinearity (relu or tanh); parse_manifest has checked it."""
        return self.manifest.activation

    @property
    def image_shape(self) -> list[int] | None:
        shape = self.manifest.image_shape
        return list(shape) if shape else None

    @property
    def onnx_path(self) -> Path:
        """The graph of one mask's network (made.store.files.MODEL_GRAPH)."""
        return self.path / MODEL_GRAPH

    def file(self, name: str) -> Path:
        """One of the version's files (made.store.files names them)."""
        return self.path / name

    @property
    def is_table(self) -> bool:
        """A model of a table's columns (its manifest lists them), not of bit vectors."""
        return self.manifest.is_table

    @cached_property
    def schema(self) -> Schema:
        """Every model's columns: a table model's from its manifest; a bit model's are its D
        binary columns x0..x{D-1} (Schema.bits), which its manifest need not spell out."""
        if self.manifest.columns is None:
            return Schema.bits(self.dims)
        try:
            return Schema.from_json(self.manifest.columns, f"{self.path}/{MANIFEST}")
        except DataError as exc:
            raise ModelStoreError(f"{self.path}: the manifest's columns are not a valid schema: {exc}") from None

    def weights(self) -> dict[str, np.ndarray]:
        """The arrays of weights.safetensors, as stored (their shapes checked at open_model)."""
        return load_weights(self.path)

    def public_manifest(self) -> dict[str, Any]:
        """The manifest as served to clients (GET /models/{name}): see public_manifest."""
        return public_manifest(self.manifest)

    @cached_property
    def reference_json(self) -> bytes | None:
        """reference.json as served (GET /models/{name}/reference), serialized once."""
        return None if self.reference is None else reference_bytes(self.reference)


# The folder fsck keeps at the root of an ext filesystem: a fresh volume mounted as the store has it
_NOT_MODELS = frozenset({"lost+found"})


def store_problem(store: Path | str) -> str | None:
    """What keeps `store` from being a model store folder ("does not exist", "is a file, not a
    folder"), or None where it is a folder (whether it can be read is found when it is listed)."""
    if os.path.isdir(store):
        return None
    return "is a file, not a folder" if os.path.exists(store) else "does not exist"


def check_store(store: Path | str) -> None:
    """A ModelStoreError naming the store where it is not a folder (store_problem)."""
    problem = store_problem(store)
    if problem:
        raise ModelStoreError(f"model store {store} {problem}")


def list_names(store: Path) -> list[str]:
    """The models of a store: its folders with a version folder in them. Others are not models
    and are left alone: an empty folder (a model being copied in), a hidden one, `lost+found` at
    the root of a volume mounted as the store (Kubernetes' PVC)."""
    store = Path(store)
    if not store.is_dir():
        return []
    return sorted(
        p.name
        for p in store.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in _NOT_MODELS and list_versions(store, p.name)
    )


def list_versions(store: Path, name: str) -> list[str]:
    base = Path(store) / name
    if not os.path.isdir(base):  # False, not OSError, for a name too long to be a folder
        return []
    versions = [p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(versions, key=version_key)


def latest_version(store: Path, name: str) -> str:
    check_store(store)  # a missing store is not a missing model
    versions = list_versions(store, name)
    if not versions:
        raise ModelNotFound(f"no model named '{name}' in store {store}")
    return versions[-1]


def read_manifest(version_dir: Path, *, upgrading: bool = False) -> Manifest:
    """manifest.json of a version, checked whole (parse_manifest); `upgrading` also reads a
    format-1 manifest (training/export.py's upgrade)."""
    path = Path(version_dir) / MANIFEST
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ModelStoreError(f"{path} holds {size} bytes, more than a manifest may ({MAX_MANIFEST_BYTES})")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelStoreError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelStoreError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:  # nested deeper than the JSON parser goes
        raise ModelStoreError(f"{path} is not valid JSON: nested too deeply") from None
    except OSError as exc:
        raise ModelStoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_manifest(raw, path, upgrading=upgrading)


def open_model(store: Path, name: str, version: str | None = None) -> StoredModel:
    """Find NAME (its highest version unless one is given), read and verify it: the manifest,
    every listed file's sha256, the weights' shapes (a table model's once its schema reads)."""
    store = Path(store)
    if version is None:
        version = latest_version(store, name)  # which checks the store
    else:
        check_store(store)
    path = store / name / version
    if not os.path.isdir(path):
        raise ModelNotFound(f"no version '{version}' of model '{name}' in store {store}")
    manifest = read_manifest(path)
    if (manifest.name, manifest.version) != (name, version):
        # a folder copied under another name or number: served as its folders say, like its
        # reference.json (made.store.reference.parse_reference), but said once it is opened
        log.warning(
            "%s: its manifest says model '%s' version %s; served as model '%s' version %s (its folders' names)",
            path,
            manifest.name,
            manifest.version,
            name,
            version,
            extra={
                "model": name,
                "version": version,
                "manifest_name": manifest.name,
                "manifest_version": manifest.version,
            },
        )
    verify_files(path, manifest)
    model = StoredModel(name=name, version=version, path=path, manifest=manifest)
    if model.is_table:
        try:
            n_in, n_out = model.schema.n_in, model.schema.n_out
        except ModelStoreError:  # refused when its schema is needed (StoredModel.schema), not here
            return model
    else:
        n_in = n_out = model.dims
    check_weights(path, manifest, n_in, n_out)
    if REFERENCE in manifest.files:  # verified above with every listed file
        reference = read_reference(path, name, version, model.schema, bits=not model.is_table)
        model = StoredModel(name=name, version=version, path=path, manifest=manifest, reference=reference)
    return model


def next_version(store: Path, name: str) -> str:
    """The version a new export of NAME gets: one more than its highest numeric one."""
    check_name(name)
    numeric = [int(v) for v in list_versions(store, name) if v.isdigit()]
    return str(max(numeric, default=0) + 1)


class VersionTaken(ModelStoreError):
    """The version directory a new version was to be written as exists (written meanwhile by
    another export, where the number was picked by next_version)."""


def write_version(
    store: Path,
    name: str,
    files: Mapping[str, bytes],
    fields: dict[str, Any],
    version: str | None = None,
    *,
    replace: bool = False,
) -> Path:
    """Write STORE/NAME/VERSION/{manifest.json, files} atomically: the files are assembled in a
    hidden temporary directory, fsynced and renamed into place, so a reader never sees half a
    version. `fields` are the model's manifest entries; the store's own (format, name, version,
    checksums, and the creation time unless given) are added here, and the whole is checked as
    a reader checks it (parse_manifest) before anything is written. `replace`: the version
    exists and is swapped for the new one (an upgrade keeps its number). A new version's name
    and version follow check_name."""
    if not replace:  # a version rewritten in place keeps the name and number it has
        check_name(name)
        if version is not None:
            check_name(version, "version")
    try:
        (store / name).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelStoreError(f"cannot write to store {store}: {exc.strerror or exc}") from None
    version = version or next_version(store, name)
    final = store / name / version
    if final.exists() and not replace:
        raise VersionTaken(f"{final} already exists; pick another --version")
    if not replace:
        same = [v for v in list_versions(store, name) if version_key(v) == version_key(version)]
        if same:  # 08 beside 8: two folders of one number
            raise ModelStoreError(
                f"version {version} is version {same[0]}, which {store / name} has; pick another --version"
            )
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=store / name))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a served store must be readable by the server user
        for fname, data in files.items():
            (tmp / fname).write_bytes(data)
        raw = {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **fields,
            "format_version": FORMAT_VERSION,
            "name": name,
            "version": version,
            "files": {fname: sha256_file(tmp / fname) for fname in files},
        }
        manifest = parse_manifest(raw, tmp / MANIFEST)  # what a reader will accept, or nothing written
        (tmp / MANIFEST).write_text(json.dumps(manifest.as_json(), indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        if replace and final.exists():
            _exchange(tmp, final)  # tmp now holds the old version, removed below
        else:
            _publish(tmp, final)
        fsync_dir(store / name)
    except OSError as exc:
        raise ModelStoreError(f"cannot write {final}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename a new version's assembled directory into place: atomic, readers see no version or
    the whole one. A version directory there already (another export took the number since it
    was checked) is a VersionTaken."""
    try:
        os.rename(tmp, final)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise VersionTaken(f"{final} already exists; pick another --version") from None
        raise


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically (Linux renameat2 RENAME_EXCHANGE); where that is not
    available, by two renames (a reader may then find the version missing for that moment)."""
    rename_exchange, at_fdcwd = 2, -100
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None and renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return
    aside = a.with_name(a.name + ".old")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


def add_reference(version_dir: Path, reference: Reference) -> Path:
    """Add (or replace) reference.json of a version in place, atomically, as `made export
    --upgrade` rewrites one: the version keeps its number, manifest fields, creation time and
    every other file (each checked against its sha256 first); the reference is checked against
    the model as a reader checks it before anything is written."""
    version_dir = Path(version_dir)
    model = open_model(version_dir.parent.parent, version_dir.parent.name, version_dir.name)
    data = json.loads(reference_bytes(reference))
    parse_reference(data, version_dir / REFERENCE, model.name, model.version, model.schema, not model.is_table)
    files = {fname: (version_dir / fname).read_bytes() for fname in model.manifest.files if fname != REFERENCE}
    files[REFERENCE] = reference_bytes(reference)
    fields = model.manifest.as_json()
    for key in ("format_version", "name", "version", "files"):
        del fields[key]
    return write_version(version_dir.parent.parent, model.name, files, fields, model.version, replace=True)
