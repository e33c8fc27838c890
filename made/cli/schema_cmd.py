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

from made.core.bounds import bounds_text, plain_number
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
    resolution, transform, nullable, and its atoms where any column has some)."""
    atoms = any(c.atoms for c in schema.columns)
    head = HEADER + (("atoms",) if atoms else ())
    rows = [head, *(_row(c) + ((_atoms(c),) if atoms else ()) for c in schema.columns)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _atoms(col: Column) -> str:
    """A column's atoms (point masses) as the schema table shows them: 0, 1.5; empty for none."""
    return ", ".join(plain_number(a) for a in col.atoms)


def print_schema(schema: Schema, notes: list[str], origin: str, prog: str, out: TextIO | None = None) -> None:
    """The schema's table under a line saying where it comes from, then one warning line per
    note (where a few cells decided something), on stderr by default."""
    out = out or sys.stderr
    print(f"schema ({origin}):", file=out)
    print(schema_table(schema), file=out)
    for note in notes:
        print(f"{prog}: warning: {note}", file=out)


def cmd_schema(args: argparse.Namespace) -> int:
    """`made schema CSV [--out FILE]`: the schema `made train --dataset CSV` infers, as JSON in
    the format `made train --schema` reads; its table and warnings on stderr. Inferred from the
    rows made train trains on: a training split with its valid and test files beside it
    (diamonds_train.csv) as it is; a single table from the training part of the split that made
    train writes (_single_table_splits), whose files are not written. Either way with bounds
    widened to a held-out value beyond them (made.io.tables.cover_splits), so that `made train
    --schema` reads every split back."""
    from made.io.atomic import atomic_write_text, check_output_path
    from made.io.data import SPLITS, split_files
    from made.io.tables import infer_schema, is_headered_bits, load_table_dataset, read_table, table_dataset
    from made.io.training_data import refuse_answer_names

    path = Path(args.csv)
    if not path.is_file():
        raise DataError(f"{path} is not a file; give a table (a CSV with a header row, or Parquet)")
    if args.out not in (None, "-"):
        check_output_path(args.out)  # before reading the table, not after
    drop = tuple(c.strip() for c in (args.drop_columns or "").split(",") if c.strip())
    splits = split_files(path)
    seed = args.seed  # made train's --seed: the same split
    single = None if splits else _single_table_splits(path, seed)
    origin = f"inferred from {path.name}"
    if splits.get("train") == path and all(s in splits for s in SPLITS):
        data = load_table_dataset(str(path), drop_columns=drop)  # checks --drop-columns too
        schema, notes = data.schema, data.notes
    elif isinstance(single, Path):
        data = load_table_dataset(str(single), drop_columns=drop)
        schema, notes = data.schema, data.notes
        origin = f"inferred from {single.name}, the training split of {path.name} beside it, as made train reads it"
    elif single is not None:
        sources = {s: f"{path} ({s} rows)" for s in single}
        data = table_dataset(single, sources, path.stem, str(path), drop_columns=drop)
        schema, notes = data.schema, data.notes
        origin = f"inferred from the training rows of {path.name}, split 80/10/10 by seed {seed} as made train does"
    else:  # a split file without the others beside it: made train cannot train on it; its own rows
        header, rows, lines = read_table(path)
        unknown = [c for c in drop if c not in header]
        if unknown:
            raise DataError(
                f"--drop-columns names {unknown[0]!r}, which {path} does not have (it has: {', '.join(header)})"
            )
        keep = [j for j, h in enumerate(header) if h not in drop]
        notes = []
        rows = [[r[j] for j in keep] for r in rows]
        schema = infer_schema([header[j] for j in keep], rows, str(path), notes, lines)
    refuse_answer_names(schema.names, str(path))  # as made train refuses it
    print_schema(schema, notes, origin, "made schema")
    if is_headered_bits(path):
        print(
            f"made schema: {path.name} holds only 0/1 cells: made train without --schema trains it as a model "
            "of bits (columns by position); with this schema as --schema, as a table of these named columns",
            file=sys.stderr,
        )
    text = json.dumps({"columns": schema.to_json()}, indent=1) + "\n"
    if args.out in (None, "-"):
        sys.stdout.write(text)
        return 0
    atomic_write_text(args.out, text)
    print(json.dumps({"columns": len(schema), "output": args.out}))
    return 0


def _single_table_splits(
    path: Path, seed: int
) -> Path | dict[str, tuple[list[str], list[list[str]], list[int]]] | None:
    """What `made train --dataset PATH` trains on, for a table with no split files of its own
    (made.cli.commands._split_single_table): the NAME_train.csv an earlier made train or made
    split wrote beside it, when all three are there; else the rows of each split it would draw
    (made.io.split.split_rows: 80/10/10 by made train's --seed, 0 unless given), in memory. None
    for a file whose name holds a split's word (split_paths refuses to split it)."""
    from made.cli.commands import warn_stale_splits
    from made.io.split import split_paths, split_rows
    from made.io.tables import read_table

    try:
        targets = split_paths(path)
    except DataError:
        return None
    there = [p for p in targets.values() if p.exists()]
    if there and len(there) < len(targets):
        raise DataError(f"{there[0]} exists without the other split files; write them with made split --force")
    if there:
        warn_stale_splits(path, targets, "made schema")
        return targets["train"]
    header, rows, lines = read_table(path)
    return {
        s: (header, [rows[i] for i in chosen], [lines[i] for i in chosen])
        for s, chosen in split_rows(len(rows), seed=seed).items()
    }


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
