"""The input of `made score`: what a CSV or Parquet file holds, checked before any model is
loaded, then read in blocks of rows.

A CSV is read with the csv module as text cells (its first line names the columns, or, for a
bit model's header-less file, the names x0 .. x{D-1} are made up); a row of another width is
refused naming its line. A Parquet file is read with pyarrow in record batches that keep their
types. Each block knows how to name its rows in errors (a CSV's line numbers, a Parquet file's
row numbers), so a bad cell's error points into the file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from made.core.errors import DataError, MadeError
from made.core.progress import Progress
from made.core.schema import Schema
from made.io.csv import arrow_cells, check_header, is_header, read_rows, sniff_delimiter

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")


def file_kind(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise DataError(f"{what} {path} has the extension '{path.suffix}'; expected .csv (or .tsv) or .parquet")


def need_pyarrow(path: Path) -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataError(f"{path}: Parquet needs pyarrow: pip install pyarrow (or use CSV)") from None
    return pyarrow


# --- the input: what the file holds, checked before any model is loaded -------------------------
@dataclass
class InputPlan:
    path: Path
    kind: str  # "csv" | "parquet"
    names: list[str]  # the input's column names (generated for a header-less CSV)
    header: bool  # a CSV's first line names its columns
    delimiter: str = ","
    rows: int | None = None  # known for Parquet (its metadata)
    size: int = 0  # bytes


def inspect_input(path: Path, table: bool) -> InputPlan:
    """The input's columns, from its first line or its Parquet schema; refused if empty."""
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    kind = file_kind(path, "input file")
    size = path.stat().st_size
    if kind == "parquet":
        pa = need_pyarrow(path)
        try:
            meta = pa.parquet.ParquetFile(path)
            names = [str(n) for n in meta.schema_arrow.names]
            rows = int(meta.metadata.num_rows)
        except Exception as exc:
            raise DataError(f"cannot read {path} as Parquet: {first_line(exc)}") from None
        if rows == 0:
            raise DataError(f"{path} holds no rows")
        return InputPlan(path, kind, names, True, rows=rows, size=size)
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first = next((line for line in fh if line.strip()), None)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    if first is None:
        raise DataError(f"{path} is empty")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else (sniff_delimiter(first) or ",")
    cells = [c.strip() for c in next(csv.reader([first], delimiter=delimiter))]
    header = table or is_header(cells)
    if header:
        check_header(cells, str(path))
    # a header-less file's columns get a model of bits' names (Schema.bits: x0 ...), so that the
    # scored file goes back to the API as a CSV body as it is
    names = cells if header else Schema.bits(len(cells)).names
    return InputPlan(path, kind, names, header, delimiter=delimiter, size=size)


# --- blocks of rows --------------------------------------------------------------------------------
@dataclass
class Block:
    """Rows of the input: text cells from a CSV (rows), or an Arrow table (a Parquet file's typed
    columns, or a CSV's cells as strings when Ray read it). `where(i)` names row i in errors."""

    names: list[str]
    rows: list[list[str]] | None = None
    table: Any = None  # pyarrow.Table | pyarrow.RecordBatch
    text: bool = True  # cells are a CSV's text (not a Parquet file's typed values)
    where: Callable[[int], str] = field(default=lambda i: f"row {i + 1}")

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else int(self.table.num_rows)

    def column_text(self, j: int) -> list[str]:
        if self.rows is not None:
            return [r[j] for r in self.rows]
        if self.text:
            return list(self.table.column(j).to_pylist())
        return arrow_cells(self.table.column(j))

    def text_rows(self) -> list[list[str]]:
        if self.rows is not None:
            return self.rows
        columns = [self.column_text(j) for j in range(len(self.names))]
        return [list(r) for r in zip(*columns, strict=True)]


def read_csv_blocks(plan: InputPlan, batch_size: int, progress: Progress | None = None) -> Iterator[Block]:
    """Blocks of at most batch_size rows, read by the one CSV reader (made.io.csv.read_rows); a
    row of another width than the header (or the first row) is refused naming its line."""
    path = plan.path
    with open(path, "rb") as raw:
        fh = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        like = "the header row" if plan.header else "the first row"
        read = read_rows(fh, plan.delimiter, str(path), like=like)
        rows: list[list[str]] = []
        lines: list[int] = []
        line = 0
        try:
            if plan.header:
                line = next(read, (0, []))[0]
            for line, row in read:
                rows.append(row)
                lines.append(line)
                if len(rows) == batch_size:
                    yield _text_block(plan, rows, lines)
                    if progress is not None:
                        progress.update(len(rows), raw.tell())
                    rows, lines = [], []
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not UTF-8 text: {exc.reason} (after line {line})") from None
        if rows:
            yield _text_block(plan, rows, lines)
            if progress is not None:
                progress.update(len(rows), raw.tell())


def _row_namer(path: str, first: int) -> Callable[[int], str]:
    return lambda i: f"{path} row {first + i + 1}"


def _text_block(plan: InputPlan, rows: list[list[str]], lines: list[int]) -> Block:
    path = plan.path
    return Block(plan.names, rows=rows, text=True, where=lambda i: f"{path} line {lines[i]}")


def read_parquet_blocks(plan: InputPlan, batch_size: int, progress: Progress | None = None) -> Iterator[Block]:
    pa = need_pyarrow(plan.path)
    path = plan.path
    done = 0
    try:
        batches = pa.parquet.ParquetFile(path).iter_batches(batch_size=batch_size)
        for batch in batches:
            yield Block(plan.names, table=batch, text=False, where=_row_namer(str(path), done))
            done += batch.num_rows
            if progress is not None:
                progress.update(batch.num_rows, done)
    except MadeError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read {path} as Parquet: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
