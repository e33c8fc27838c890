"""Tables of named columns: CSV files with a header row (or Parquet), split into train/valid/test
files as bit data sets are; the schema inferred from the training split (or given); and the UCI
bit sets read as categories through their one-hot groups.

Inference, column by column over the training split's cells (empty and `NA` cells are absent):
- numbers only: two values and never absent -> binary; integers with at most MAX_INT_LEVELS
  distinct values -> categorical; otherwise numeric (log-transformed when all values are positive
  and the distribution is skewed, recorded at the most decimals the file uses);
- anything else -> categorical, unless almost every row has its own value (free text: an error
  naming the column, which `--drop-columns` leaves out).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from made.core.errors import DataError
from made.core.schema import (
    ABSENT,
    ABSENT_LEVEL,
    DEFAULT_COMPONENTS,
    MAX_DECIMALS,
    MISSING_CELLS,
    Column,
    Schema,
    transformed,
)
from made.io.csv import UNKNOWN_CELL, cell_text, check_header, read_rows, sniff_delimiter, table_cell
from made.io.data import SPLITS, dataset_name, resolve, split_files

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")
MAX_INT_LEVELS = 20  # integer columns with at most this many values are categories (counts, codes)
MAX_LEVELS = 1000  # more distinct strings than this (or than half the rows) is free text


@dataclass
class TableDataset:
    name: str
    source: str
    schema: Schema
    splits: dict[str, np.ndarray]  # split -> (N, C) float64 encoded cells (see made.core.schema)
    image_shape: list[int] | None = None

    @property
    def dims(self) -> int:
        return len(self.schema)

    def split(self, name: str) -> np.ndarray:
        if name not in self.splits:
            raise DataError(f"data set {self.source} has no '{name}' split (it has: {', '.join(self.splits)})")
        return self.splits[name]


# --- reading files ---------------------------------------------------------------------------------
def read_table(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """(column names, rows of cells as text, the file line of each row), by the one CSV reader
    (made.io.csv); a CSV needs a header row, and a Parquet file's typed cells are read as the
    text a CSV would hold (made.io.csv.cell_text)."""
    if path.suffix == ".parquet":
        return _read_parquet(path)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        delimiter = sniff_delimiter(fh.readline()) or ","
        fh.seek(0)
        read = read_rows(fh, delimiter, str(path))
        first = next(read, None)
        if first is None:
            raise DataError(f"{path} is empty; a table needs a header row of column names")
        header = [h.strip() for h in first[1]]
        _check_header(path, header)
        lines, rows = [], []
        for line, row in read:
            lines.append(line)
            rows.append(row)
    if not rows:
        raise DataError(f"{path} holds a header row but no rows")
    return header, rows, lines


def _check_header(path: Path, header: list[str]) -> None:
    if header and all(_number(h) is not None for h in header):
        raise DataError(f"{path}: the first line holds numbers, not column names; a table needs a header row")
    check_header(header, str(path))


def _read_parquet(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow: pip install pyarrow (or save the table as CSV)") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise DataError(f"cannot read {path} as Parquet: {exc}") from None
    header = [str(n) for n in table.column_names]
    _check_header(path, header)
    columns = [[cell_text(v) for v in table.column(i).to_pylist()] for i in range(table.num_columns)]
    rows = [list(r) for r in zip(*columns, strict=True)]
    return header, rows, list(range(1, len(rows) + 1))


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _decimals(text: str) -> int | None:
    """Decimal places a number is written with; None for exponent notation."""
    text = text.strip().lower()
    if "e" in text or "inf" in text or "nan" in text:
        return None
    return len(text.split(".", 1)[1]) if "." in text else 0


# --- inference -------------------------------------------------------------------------------------
def infer_column(name: str, cells: list[str], source: str) -> Column:
    # `?` (unknown) is neither a value nor absent: encode_table refuses it, naming its line
    absent = sum(c.strip() in MISSING_CELLS for c in cells)
    present = [c.strip() for c in cells if c.strip() not in MISSING_CELLS and c.strip() != UNKNOWN_CELL]
    distinct = sorted(set(present))
    parsed = [_number(c) for c in distinct]
    numbers = [n for n in parsed if n is not None]
    if distinct and len(numbers) == len(distinct):
        values = sorted(zip(numbers, distinct, strict=True))  # levels in numeric order
        if len(distinct) <= 2 and absent == 0:
            levels = [t for _, t in values]
            if len(levels) == 1:
                return Column(name, "categorical", tuple(levels))
            return Column(name, "binary", tuple(levels))
        if len(distinct) <= MAX_INT_LEVELS and all(n.is_integer() for n, _ in values):
            levels = [t for _, t in values] + ([ABSENT_LEVEL] if absent else [])
            return Column(name, "categorical", tuple(levels))
        return _numeric_column(name, present, absent > 0)
    if not distinct:
        raise DataError(f"{source}: column '{name}' is empty in every row; leave it out with --drop-columns {name}")
    if len(distinct) > MAX_LEVELS or (len(distinct) > 50 and len(distinct) > len(cells) / 2):
        raise DataError(
            f"{source}: column '{name}' looks like free text ({len(distinct)} distinct values in "
            f"{len(cells)} rows, e.g. {distinct[0]!r}); leave it out with --drop-columns {name}"
        )
    levels = distinct + ([ABSENT_LEVEL] if absent and ABSENT_LEVEL not in distinct else [])
    if len(levels) == 2 and not absent:
        return Column(name, "binary", tuple(levels))
    return Column(name, "categorical", tuple(levels))


def _numeric_column(name: str, present: list[str], nullable: bool) -> Column:
    values = np.array([float(c) for c in present])
    places = [_decimals(c) for c in present]
    decimals: int | None = None if any(p is None for p in places) else max(p for p in places if p is not None)
    if decimals is not None and decimals > MAX_DECIMALS:
        decimals = None
    transform = "none"
    if values.min() > 0 and values.std() > 0:
        skew = float(np.mean(((values - values.mean()) / values.std()) ** 3))
        transform = "log" if skew > 1.0 else "none"
    col = Column(
        name, "numeric", transform=transform, decimals=decimals, nullable=nullable, components=DEFAULT_COMPONENTS
    )
    t = transformed(col, values)
    scale = float(t.std()) or 1.0
    return Column(
        name,
        "numeric",
        transform=transform,
        loc=float(t.mean()),
        scale=scale,
        decimals=decimals,
        nullable=nullable,
        components=DEFAULT_COMPONENTS,
    )


def infer_schema(header: list[str], rows: list[list[str]], source: str) -> Schema:
    return Schema(tuple(infer_column(name, [r[j] for r in rows], source) for j, name in enumerate(header)))


# --- encoding --------------------------------------------------------------------------------------
def encode_table(schema: Schema, header: list[str], rows: list[list[str]], lines: list[int], source: str) -> np.ndarray:
    """Cells of a file -> (N, C) float64 in the schema's column order; errors name line and column.
    A cell is read as every CSV is (made.io.csv.table_cell); an unknown one (empty in a column
    that is never absent) is refused, since training and evaluation need complete rows."""
    missing = [c.name for c in schema.columns if c.name not in header]
    if missing:
        raise DataError(f"{source} has no column {missing[0]!r} (it has: {', '.join(header)})")
    out = np.empty((len(rows), len(schema)), dtype=np.float64)
    for j, col in enumerate(schema.columns):
        src = header.index(col.name)
        cells = [r[src] for r in rows]
        try:
            out[:, j] = _encode_fast(col, cells)
        except (KeyError, ValueError):  # the slow path finds the first bad cell and names it
            for i, cell in enumerate(cells):
                where = f"{source} line {lines[i]}"
                out[i, j] = table_cell(col, cell, where)
                if math.isnan(out[i, j]) and cell.strip() == UNKNOWN_CELL:
                    raise DataError(
                        f"{where}, column '{col.name}' is '?' (unknown): training and evaluation learn from "
                        "complete rows; fill the cell, drop the row, or leave it empty where the value is absent"
                    ) from None
                if math.isnan(out[i, j]):
                    raise DataError(
                        f"{where}, column '{col.name}' is empty, and this column is never absent in the "
                        "training data: a cell it cannot model; fill the cell or drop the row"
                    ) from None
    return out


def _encode_fast(col: Column, cells: list[str]) -> np.ndarray:
    if col.kind != "numeric":
        codes = {level: float(i) for i, level in enumerate(col.levels)}
        if ABSENT_LEVEL in codes:
            codes[""] = codes[ABSENT_LEVEL]
        return np.array([codes[c.strip()] for c in cells])
    values = np.array([ABSENT if c.strip() in MISSING_CELLS else float(c) for c in cells])
    if (values == ABSENT).any() and not col.nullable:
        raise ValueError("absent")
    finite = values[values != ABSENT]
    if not np.isfinite(finite).all() or (col.transform == "log" and (finite < 0).any()):
        raise ValueError("bad number")
    return values


# --- data sets -------------------------------------------------------------------------------------
def is_table_file(path: Path) -> bool:
    """A CSV whose first line names its columns and whose cells are not all 0/1 (or any Parquet
    file) is a table; a header-less 0/1 matrix stays bit data."""
    if path.suffix == ".parquet":
        return True
    if path.suffix not in (".csv", ".tsv", ".txt") or not path.is_file():
        return False
    with open(path, encoding="utf-8-sig", newline="") as fh:
        first, second = fh.readline(), fh.readline()
    delimiter = sniff_delimiter(first) or ","
    head = [c.strip() for c in next(csv.reader([first], delimiter=delimiter), [])]
    cells = [c.strip() for c in next(csv.reader([second], delimiter=delimiter), [])]
    if not head or any(_number(h) is not None for h in head):
        return False
    return any(c not in ("0", "1") for c in cells)


def load_table_dataset(
    name_or_path: str,
    schema: Schema | None = None,
    drop_columns: tuple[str, ...] = (),
    splits: tuple[str, ...] = SPLITS,
) -> TableDataset:
    """The splits of a table; the schema is inferred from the training split unless given."""
    path = resolve(name_or_path)
    files = split_files(path)
    if not files and path.is_file():
        files = {s: path for s in splits} if len(splits) == 1 else {}
    missing = [s for s in splits if s not in files]
    if missing:
        raise DataError(
            f"no '{missing[0]}' file found beside {path} (name them like {path.stem}_train"
            f"{path.suffix}, ..._valid, ..._test; `made split {path.name}` writes them from one file)"
        )
    read = {s: read_table(files[s]) for s in splits}
    if schema is None:
        header, rows, _ = read.get("train") or read[splits[0]]
        unknown = [c for c in drop_columns if c not in header]
        if unknown:
            raise DataError(
                f"--drop-columns names {unknown[0]!r}, which {path} does not have (it has: {', '.join(header)})"
            )
        keep = [j for j, h in enumerate(header) if h not in drop_columns]
        schema = infer_schema(
            [header[j] for j in keep], [[r[j] for j in keep] for r in rows], str(files.get("train", path))
        )
    arrays = {s: encode_table(schema, h, r, lines, str(files[s])) for s, (h, r, lines) in read.items()}
    return TableDataset(name=dataset_name(files[splits[0]]), source=str(path), schema=schema, splits=arrays)


def read_groups(path: str | Path, dims: int) -> Schema:
    """A groups file (../shared/data/groups/NAME.json) -> a schema of one categorical column per
    one-hot group (levels: which bit is set, plus "none" where no bit may be) and one binary
    column per bit outside every group."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        groups = [(list(map(int, g["columns"])), bool(g.get("none", False))) for g in data["groups"]]
    except FileNotFoundError:
        raise DataError(f"groups file not found: {path}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f'cannot read {path} as a groups file ({{"groups": [{{"columns": [...], "none": bool}}]}}): {exc}'
        ) from None
    if data.get("dims") not in (None, dims):
        raise DataError(f"{path} describes {data['dims']} bit columns but the data have {dims}")
    owner: dict[int, int] = {}
    for g, (bits, _) in enumerate(groups):
        for b in bits:
            if not 0 <= b < dims or b in owner:
                raise DataError(f"{path}: bit {b} of group {g} is outside 0..{dims - 1} or in two groups")
            owner[b] = g
    columns: list[Column] = []
    done: set[int] = set()
    for b in range(dims):
        if b not in owner:
            columns.append(Column(f"bit{b}", "binary", ("0", "1"), bits=(b,)))
            continue
        g = owner[b]
        if g in done:
            continue
        done.add(g)
        bits, none = groups[g]
        levels = tuple(f"bit{i}" for i in bits) + (("none",) if none else ())
        name = f"bits{bits[0]}-{bits[-1]}"
        columns.append(Column(name, "categorical", levels, bits=tuple(bits), none_level=none))
    return Schema(tuple(columns))


def load_grouped_bits(data: Any, groups: Schema) -> TableDataset:
    """A bit data set (made.io.data.Dataset) read through its groups as categories."""
    arrays = {s: groups.encode_bits(a, f"{data.source}[{s}]") for s, a in data.splits.items()}
    return TableDataset(name=data.name, source=data.source, schema=groups, splits=arrays)
