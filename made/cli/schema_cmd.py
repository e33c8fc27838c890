"""The inferred schema, shown and edited: the table `made train` and `made schema` print, `made
schema CSV` (the schema of a table as JSON, to edit and give back with `made train --schema`),
and `made export --bounds` (bounds added to a stored model's numeric columns in place).

How bounds and resolutions are chosen: made.io.tables (numeric_bounds, numeric_precision) and
docs/tables.md, "Bounds, precision and the schema".
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import numpy as np

from made.core.bounds import bounds_text
from made.core.errors import ConfigError, DataError
from made.core.schema import ABSENT, Column, Schema

HEADER = ("column", "kind", "levels", "bounds", "resolution", "transform", "nullable")


def _row(col: Column) -> tuple[str, ...]:
    if col.kind != "numeric":
        return (col.name, col.kind, str(len(col.levels)), "", "", "", "")
    resolution = "continuous" if col.decimals is None else str(np.format_float_positional(col.resolution, trim="-"))
    bounds = bounds_text(col) if col.bounded else "none"
    return (col.name, col.kind, "", bounds, resolution, col.transform, "yes" if col.nullable else "no")


def schema_table(schema: Schema) -> str:
    """The schema as a plain-text table: one line per column (kind, number of levels, bounds,
    resolution, transform, nullable)."""
    rows = [HEADER, *(_row(c) for c in schema.columns)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def print_schema(schema: Schema, notes: list[str], origin: str, prog: str, out: TextIO | None = None) -> None:
    """The schema's table under a line saying where it comes from, then one warning line per
    note (where a few cells decided something), on stderr by default."""
    out = out or sys.stderr
    print(f"schema ({origin}):", file=out)
    print(schema_table(schema), file=out)
    for note in notes:
        print(f"{prog}: warning: {note}", file=out)


def cmd_schema(args: argparse.Namespace) -> int:
    """`made schema CSV [--out FILE]`: the schema inferred from a table (its training split) as
    JSON, in the format `made train --schema` reads; its table and warnings on stderr. Where CSV
    is a training split with its valid and test files beside it (diamonds_train.csv), the schema
    is the one `made train --dataset CSV` infers: bounds widened to a held-out value beyond them
    (made.io.tables.cover_splits), so that `made train --schema` reads every split back."""
    from made.io.atomic import atomic_write_text, check_output_path
    from made.io.data import SPLITS, split_files
    from made.io.tables import infer_schema, load_table_dataset, read_table

    path = Path(args.csv)
    if not path.is_file():
        raise DataError(f"{path} is not a file; give a table (a CSV with a header row, or Parquet)")
    if args.out not in (None, "-"):
        check_output_path(args.out)  # before reading the table, not after
    drop = [c.strip() for c in (args.drop_columns or "").split(",") if c.strip()]
    splits = split_files(path)
    if splits.get("train") == path and all(s in splits for s in SPLITS):
        data = load_table_dataset(str(path), drop_columns=tuple(drop))  # checks --drop-columns too
        schema, notes = data.schema, data.notes
    else:
        header, rows, _ = read_table(path)
        unknown = [c for c in drop if c not in header]
        if unknown:
            raise DataError(
                f"--drop-columns names {unknown[0]!r}, which {path} does not have (it has: {', '.join(header)})"
            )
        keep = [j for j, h in enumerate(header) if h not in drop]
        notes = []
        schema = infer_schema([header[j] for j in keep], [[r[j] for j in keep] for r in rows], str(path), notes)
    print_schema(schema, notes, f"inferred from {path.name}", "made schema")
    text = json.dumps({"columns": schema.to_json()}, indent=1) + "\n"
    if args.out in (None, "-"):
        sys.stdout.write(text)
        return 0
    atomic_write_text(args.out, text)
    print(json.dumps({"columns": len(schema), "output": args.out}))
    return 0


def bounded_schema(schema: Schema, train: np.ndarray) -> Schema:
    """The schema with bounds inferred from a training split's encoded values for each numeric
    column that has none (made.io.tables.numeric_bounds); columns with bounds stay as they are."""
    from made.io.tables import numeric_bounds

    columns = []
    for j, col in enumerate(schema.columns):
        if col.kind == "numeric" and not col.bounded:
            v = train[:, j]
            present = v[~np.isnan(v) & (v != ABSENT)]
            if len(present):
                log_scale = col.transform == "log" and col.decimals is None
                lower, upper = numeric_bounds(present, col.decimals, log_scale=log_scale)
                col = replace(col, lower=lower, upper=upper)
        columns.append(col)
    return Schema(tuple(columns))


def export_bounds(version_dir: Path, dataset: str) -> Path:
    """`made export --bounds DATASET STORE/NAME/VERSION`: the version rewritten in place with
    bounds on its numeric columns, inferred from DATASET's training split as `made train` infers
    them; the network is the same, so the model becomes its truncation to the bounds (made.core.heads).
    Where a held-out split holds a value beyond them, the bound moves to it (a note on stderr
    says so). Any reference.json is stale afterwards (its log p are of the untruncated model):
    rerun `made export --reference`."""
    from made.io.tables import cover_splits, load_table_dataset
    from made.store.versions import open_model, write_version

    model = open_model(version_dir.parent.parent, version_dir.parent.name, version_dir.name)
    if not model.is_table:
        raise ConfigError(f"{version_dir} is a model of bits; only a table model's numeric columns have bounds")
    data = load_table_dataset(dataset, schema=model.schema)
    notes: list[str] = []
    schema = cover_splits(bounded_schema(model.schema, data.split("train")), data.splits, notes)
    print_schema(schema, notes, f"{model.name} version {model.version}, bounds from {dataset}", "made export")
    files = {fname: (version_dir / fname).read_bytes() for fname in model.manifest.files}
    fields = model.manifest.as_json()
    for key in ("format_version", "name", "version", "files"):
        del fields[key]
    fields["columns"] = schema.to_json()
    store = version_dir.parent.parent
    write_version(store, model.name, files, fields, model.version, replace=True)
    # the recorded valid/test NLL, rescored by the serving engine: the bounded model's, not training's
    fields["metrics"] = {**(fields.get("metrics") or {}), **_rescored(store, model.name, model.version, dataset)}
    return write_version(store, model.name, files, fields, model.version, replace=True)


def _rescored(store: Path, name: str, version: str, dataset: str) -> dict[str, float]:
    """{valid_nll, valid_nll_stderr, test_nll, test_nll_stderr} of a stored version on DATASET's
    splits, by the serving engine (as `made evaluate` scores them); {} for a version that is not
    the latest (`made evaluate` scores the latest)."""
    from made.store.versions import latest_version
    from service.engine.evaluate import evaluate_store_model

    out: dict[str, float] = {}
    if latest_version(store, name) != version:
        return out
    for split in ("valid", "test"):
        result = evaluate_store_model(store, name, dataset, split)
        out[f"{split}_nll"], out[f"{split}_nll_stderr"] = result["nll"], result["stderr"]
    return out
