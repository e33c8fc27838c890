"""`made score`: a CSV or Parquet file in, the same rows with a `logprob` column out.

Locally the file is read, scored and written in blocks of `batch_size` rows (the csv module or
pyarrow's Parquet reader, the engine, then a CSV or Parquet writer), a few blocks in memory at a
time whatever the file's size: blocks are read and written in the main thread and scored by one
thread per core, each engine call on one onnxruntime thread. With `ray` (an address, or "local"
for an in-process Ray with two CPUs) Ray Data reads the file, scores its blocks in a pool of
actors that each load the engine once, and streams the scored blocks back, in order, to the same
writer. A row's score depends on nothing but the row (see _two_or_more), so the output is the
same file either way, whatever the batch size. Nothing here imports torch, and Ray only inside
`score_on_ray`.

What a row is:
- a bit model reads D columns of 0/1 by position (a CSV may start with a header row of names; a
  header-less file gets the names x_0 .. x_{D-1} in the output); an empty, NA, NaN, null or ?
  cell is a missing value, summed out by the engine.
- a table model reads its columns by name from the header (other columns are carried through,
  not modelled; a model column the file lacks is unknown in every row), cells as the training
  files were read (service.core.records.parse_csv's rules).
Rows with missing values that no mask's ordering can sum out exactly are importance-sampling
estimates, seeded by the row's own values: a rerun, or the same row in another block, agrees.

The output keeps the input's columns as they were: a CSV's cells as text (in a Parquet output,
string columns, except a bit model's 0/1 columns, which become uint8 with missing cells null), a
Parquet file's columns with their types. It is written to a temporary file beside it and renamed
into place at the end: a bad cell halfway through leaves no output at all (and the error names
its line and column). In a CSV output, text cells that a spreadsheet would run as formulas (=cmd,
+HYPERLINK(...), @SUM(...): service.core.records.escape_formula) get a leading ' unless
escape_formulas is off (`--no-escape-formulas`, for trusted pipelines); Parquet is written as is.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import io
import itertools
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from made.core.errors import ConfigError, DataError, MadeError
from made.core.masks import exact_orders
from made.core.schema import ABSENT_LEVEL, MISSING_CELLS, Schema
from made.io.atomic import atomic_path
from made.io.data import _MISSING_MARKERS, _is_header, sniff_delimiter
from made.io.tables import _cell_text
from made.store.versions import MANIFEST, StoredModel, open_model
from service.core.records import escape_formulas as escape_cells
from service.engine.engine import Engine
from service.engine.table_engine import TableEngine

SCORE_COLUMN = "logprob"
COND_PREFIX = "cond_"
DEFAULT_BATCH_SIZE = 4096
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
RAY_LOCAL_CPUS = 2
_BLOCK_BYTES = 4 << 20  # on Ray: the input is cut into blocks of at most this many bytes (or more blocks)
_PROGRESS_EVERY_S = 10.0  # plain progress lines (no terminal): at most one per this many seconds


def _file_kind(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise DataError(f"{what} {path} has the extension '{path.suffix}'; expected .csv (or .tsv) or .parquet")


def _pyarrow(path: Path) -> Any:
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
    kind = _file_kind(path, "input file")
    size = path.stat().st_size
    if kind == "parquet":
        pa = _pyarrow(path)
        try:
            meta = pa.parquet.ParquetFile(path)
            names = [str(n) for n in meta.schema_arrow.names]
            rows = int(meta.metadata.num_rows)
        except Exception as exc:
            raise DataError(f"cannot read {path} as Parquet: {_first_line(exc)}") from None
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
    header = table or _is_header(cells)
    if header:
        if any(c == "" for c in cells):
            raise DataError(f"{path}: column {cells.index('') + 1} of the header row has no name")
        dup = sorted({c for c in cells if cells.count(c) > 1})
        if dup:
            raise DataError(f"{path}: the header row names {dup} more than once")
    names = cells if header else [f"x_{j}" for j in range(len(cells))]
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
        values = self.table.column(j).to_pylist()
        return values if self.text else [_cell_text(v) for v in values]

    def text_rows(self) -> list[list[str]]:
        if self.rows is not None:
            return self.rows
        columns = [self.column_text(j) for j in range(len(self.names))]
        return [list(r) for r in zip(*columns, strict=True)]


def read_csv_blocks(plan: InputPlan, batch_size: int, progress: Progress | None = None) -> Iterator[Block]:
    """Blocks of at most batch_size rows; a row of another width than the header (or the first
    row) is refused naming its line."""
    width, path = len(plan.names), plan.path
    with open(path, "rb") as raw:
        fh = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.reader(fh, delimiter=plan.delimiter)
        rows: list[list[str]] = []
        lines: list[int] = []
        skip_header = plan.header
        try:
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip() and width > 1):
                    continue
                if skip_header:
                    skip_header = False
                    continue
                if len(row) != width:
                    like = "the header row" if plan.header else "the first row"
                    raise DataError(
                        f"{path} line {reader.line_num} has {len(row)} values, expected {width} like {like}"
                    )
                rows.append(row)
                lines.append(reader.line_num)
                if len(rows) == batch_size:
                    yield _text_block(plan, rows, lines)
                    if progress is not None:
                        progress.update(len(rows), raw.tell())
                    rows, lines = [], []
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not UTF-8 text: {exc.reason} (after line {reader.line_num})") from None
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num}: {exc}") from None
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
    pa = _pyarrow(plan.path)
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
        raise DataError(f"cannot read {path} as Parquet: {_first_line(exc)}") from None


# --- scoring ---------------------------------------------------------------------------------------
class Scorer:
    """One model's engine and how the input's columns feed it: a block in, its score columns
    out. One per process (or per Ray actor)."""

    def __init__(self, model: StoredModel, names: list[str], source: str, conditionals: bool = False):
        self.table = model.is_table
        self.conditionals = conditionals
        self.source = source
        check_columns(model, names, source, conditionals)
        # one onnxruntime thread per session: results that do not depend on the machine's cores;
        # blocks are scored in parallel instead (score_file's threads, or Ray's actors)
        self.engine: Engine | TableEngine = TableEngine(model, threads=1) if self.table else Engine(model, threads=1)
        self.schema: Schema | None = self.engine.schema if isinstance(self.engine, TableEngine) else None
        # table models: input column index of each model column (None: unknown in every row)
        self.sources = (
            [names.index(c.name) if c.name in names else None for c in self.schema.columns]
            if self.schema is not None
            else []
        )
        self._level_codes: list[dict[str, float]] = []
        if self.schema is not None:
            for col in self.schema.columns:
                codes = {level: float(i) for i, level in enumerate(col.levels)} if col.kind != "numeric" else {}
                if ABSENT_LEVEL in codes:
                    codes[""] = codes[ABSENT_LEVEL]
                self._level_codes.append(codes)

    @property
    def score_names(self) -> list[str]:
        return score_names(self.engine.dims, self.conditionals)

    # encoding
    def encode(self, block: Block) -> np.ndarray:
        """(N, D) float64 for the engine: 0/1 (bits) or codes and values (tables), NaN unknown."""
        return self._encode_table(block) if self.schema is not None else self._encode_bits(block)

    def _encode_bits(self, block: Block) -> np.ndarray:
        if block.text or block.rows is not None:
            x = _bits_from_text(block.text_rows(), block.where)
        else:
            x = _bits_from_arrow(block, self.source)
        bad = ~np.isnan(x) & (x != 0) & (x != 1)
        if bad.any():
            r, c = (int(i) for i in np.argwhere(bad)[0])
            value = x[r, c]
            shown = _number_text(value)
            raise DataError(
                f"{block.where(r)}, column {c + 1} ({block.names[c]}) holds {shown}, expected 0 or 1 "
                "(or an empty cell for a missing value)"
            )
        return x

    def _encode_table(self, block: Block) -> np.ndarray:
        schema = self.schema
        assert schema is not None
        out = np.full((len(block), len(schema)), np.nan)
        for j, (col, src) in enumerate(zip(schema.columns, self.sources, strict=True)):
            if src is None:
                continue
            can_be_absent = col.nullable or ABSENT_LEVEL in col.levels
            codes = self._level_codes[j]
            cells = block.column_text(src)
            column = out[:, j]
            for i, raw in enumerate(cells):
                cell = raw.strip()
                if cell in MISSING_CELLS and not can_be_absent:
                    continue  # unknown: summed out
                code = codes.get(cell)
                column[i] = code if code is not None else col.encode_cell(cell, block.where(i))
        return out

    # the engine
    def score(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """log p per row (and the conditionals of complete rows of a bit model). Rows that need no
        estimate are scored in one call; each of the others alone, seeded by its values."""
        n = len(x)
        unknown = np.isnan(x)
        if isinstance(self.engine, Engine):
            exact = self.engine.exact_rows(~unknown)
        else:
            exact = exact_orders(self.engine.orderings, ~unknown).all(axis=0) | ~unknown.any(axis=1)
        logprob = np.empty(n)
        complete = ~unknown.any(axis=1)
        # complete rows, then rows whose missing values are summed out exactly: the engine scores
        # those two kinds apart, and each call must hold two rows or more (see _two_or_more)
        for rows in (np.flatnonzero(complete), np.flatnonzero(exact & ~complete)):
            if len(rows):
                logprob[rows] = _two_or_more(lambda part: self.engine.logprob(part).logprob, x[rows])
        for i in np.flatnonzero(~exact):
            logprob[i] = self.engine.logprob(x[i : i + 1], seed=_row_seed(x[i])).logprob[0]
        out = {SCORE_COLUMN: logprob}
        if self.conditionals and isinstance(self.engine, Engine):
            engine = self.engine
            cond = np.full((n, engine.dims), np.nan)
            if complete.any():
                cond[complete] = _two_or_more(lambda rows: engine.conditionals(rows, mask=0), x[complete])
            out.update({f"{COND_PREFIX}{d}": cond[:, d] for d in range(engine.dims)})
        return out

    # output
    def to_arrow(self, block: Block, scores: dict[str, np.ndarray], x: np.ndarray, out_kind: str) -> Any:
        """The output rows as an Arrow table: the input's columns as they are (a CSV's text; for a
        Parquet output of a bit model's CSV, 0/1 as uint8 with missing cells null), then the scores."""
        import pyarrow as pa

        if block.rows is not None or (block.text and out_kind == "parquet"):
            if out_kind == "parquet" and block.text and self.schema is None:
                arrays = [
                    pa.array(np.where(np.isnan(x[:, j]), 0, x[:, j]).astype(np.uint8), mask=np.isnan(x[:, j]))
                    for j in range(x.shape[1])
                ]
            else:
                arrays = [pa.array(block.column_text(j), type=pa.string()) for j in range(len(block.names))]
            table = pa.Table.from_arrays(arrays, names=block.names)
        else:
            table = block.table if isinstance(block.table, pa.Table) else pa.Table.from_batches([block.table])
            table = table.replace_schema_metadata(None)
        for name, values in scores.items():
            table = table.append_column(
                pa.field(name, pa.float64()), pa.array(values, type=pa.float64(), mask=np.isnan(values))
            )
        return table


def check_columns(model: StoredModel, names: list[str], source: str, conditionals: bool) -> None:
    """Refuse an input whose columns cannot feed the model, before the engine is loaded."""
    extra = score_names(len(model.schema), conditionals)
    clash = [n for n in extra if n in names]
    if clash:
        raise DataError(f"{source} already has a column '{clash[0]}' (a scored file?); rename or drop it first")
    if model.is_table:
        if conditionals:
            raise ConfigError(
                f"--conditionals is for models of bits; {model.name} is a table model "
                "(POST /logprob with explain gives per-column surprisal)"
            )
        wanted = model.schema.names
        if not set(wanted) & set(names):
            raise DataError(
                f"{source} has none of model {model.name}'s columns ({', '.join(wanted)}); "
                f"it has: {', '.join(names[:20])}"
            )
        return
    if len(names) != model.dims:
        raise DataError(f"{source} has {len(names)} columns, model {model.name} has {model.dims} dimensions")


def _two_or_more(run: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> np.ndarray:
    """run(rows), never on a single row: onnxruntime multiplies one row by another kernel than
    several, rounding the float32 sums differently; with one thread per session and two rows or
    more, a row's score does not depend on the rows it is scored with (nor on --batch-size, nor
    on local vs Ray)."""
    if len(rows) != 1:
        return run(rows)
    return run(np.repeat(rows, 2, axis=0))[:1]


def score_names(dims: int, conditionals: bool) -> list[str]:
    return [SCORE_COLUMN] + ([f"{COND_PREFIX}{d}" for d in range(dims)] if conditionals else [])


def _bits_from_text(rows: list[list[str]], where: Callable[[int], str]) -> np.ndarray:
    try:
        return np.array(rows, dtype=np.float64)  # the fast path: every cell a number
    except ValueError:
        pass
    out = np.empty((len(rows), len(rows[0]) if rows else 0))
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            out[i, j] = _bit_cell(cell, where, i, j)
    return out


def _bit_cell(cell: str, where: Callable[[int], str], i: int, j: int) -> float:
    """A text cell of bit data: its number, or NaN for a missing-value marker."""
    text = cell.strip()
    if text.lower() in _MISSING_MARKERS:
        return math.nan
    try:
        return float(text)
    except ValueError:
        shown = repr(text if len(text) <= 40 else text[:40] + "...")
        raise DataError(
            f"{where(i)}, column {j + 1} holds {shown}, expected 0 or 1 (or an empty cell for a missing value)"
        ) from None


def _bits_from_arrow(block: Block, source: str) -> np.ndarray:
    """A Parquet file's (or Ray's) columns of bits: numbers or booleans, nulls missing; strings
    are read as a CSV's cells."""
    import pyarrow as pa

    out = np.empty((len(block), len(block.names)))
    for j in range(len(block.names)):
        column = block.table.column(j)
        kind = column.type
        if (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind)
            or pa.types.is_decimal(kind)
        ):
            out[:, j] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            cells = block.column_text(j)
            out[:, j] = [_bit_cell(c, block.where, i, j) for i, c in enumerate(cells)]
        else:
            raise DataError(f"{source}: column {j + 1} ({block.names[j]}) holds {kind} values, expected 0/1 numbers")
    return out


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _row_seed(row: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(row, dtype=np.float64).tobytes())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# --- writing ---------------------------------------------------------------------------------------
class CsvSink:
    """CSV output: the input's cells unchanged (text), scores at full precision (repr of the
    float64, which reads back to the same number), an empty cell for none. escape: text cells a
    spreadsheet would run as formulas get a leading ' (service.core.records.escape_formula)."""

    def __init__(self, fh: IO[str], delimiter: str, escape: bool = True):
        self.writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
        self.escape = escape
        self.started = False

    def _header(self, names: list[str]) -> None:
        if not self.started:
            self.writer.writerow(escape_cells(names) if self.escape else names)
            self.started = True

    def write_rows(self, names: list[str], rows: list[list[str]], scores: dict[str, np.ndarray]) -> None:
        self._header([*names, *scores])
        if self.escape and _may_need_escape(rows):
            rows = [escape_cells(row) for row in rows]
        columns = [_float_cells(v) for v in scores.values()]
        self.writer.writerows([*row, *extra] for row, extra in zip(rows, zip(*columns, strict=True), strict=True))

    def write_arrow(self, table: Any, n_scores: int) -> None:
        """An Arrow table whose last n_scores columns are float64 scores."""
        names = [str(n) for n in table.column_names]
        base = names[: len(names) - n_scores]
        block = Block(base, table=table.select(base), text=False)
        self._header(names)
        columns = [block.column_text(j) for j in range(len(base))]
        if self.escape:
            columns = [escape_cells(column) for column in columns]
        columns += [_float_cells(table.column(name).to_numpy(zero_copy_only=False)) for name in names[len(base) :]]
        self.writer.writerows(zip(*columns, strict=True))


def _may_need_escape(rows: list[list[str]]) -> bool:
    """False when no cell of rows can begin a formula: one C-speed search of the joined cells
    (a cell holding a line break may make it say True, and the rows are then checked cell by cell)."""
    joined = "\n" + "\n".join(itertools.chain.from_iterable(rows))
    return any(f"\n{c}" in joined for c in "=+-@\t\r")


def _float_cells(values: np.ndarray) -> list[str]:
    return ["" if v != v else repr(v) for v in np.asarray(values, dtype=np.float64).tolist()]


class ParquetSink:
    def __init__(self, path: Path):
        self.path = path
        self.writer: Any = None

    def write_arrow(self, table: Any) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        elif table.schema != self.writer.schema:
            table = table.cast(self.writer.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --- progress --------------------------------------------------------------------------------------
class Progress:
    """On a terminal (with tqdm installed): a bar over the file's bytes (CSV) or rows (Parquet).
    Otherwise a plain line on stderr at most every _PROGRESS_EVERY_S seconds."""

    def __init__(self, total: int | None, unit: str, enabled: bool, stream: IO[str] | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.unit = total, unit
        self.enabled = enabled
        self.rows = 0
        self.position = 0
        self.start = time.perf_counter()
        self.last_line = self.start
        self.bar: Any = None
        if enabled and self.stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                scale = unit == "B"
                self.bar = tqdm(
                    total=total,
                    file=self.stream,
                    unit=unit,
                    unit_scale=scale,
                    unit_divisor=1024,
                    dynamic_ncols=True,
                    mininterval=0.5,
                    desc="scoring",
                )

    def update(self, rows: int, position: int) -> None:
        """rows scored since the last call; position: bytes read (CSV) or rows read so far."""
        self.rows += rows
        step, self.position = position - self.position, position
        if self.bar is not None:
            self.bar.update(step)
            self.bar.set_postfix_str(f"{self.rows:,} rows", refresh=False)
            return
        now = time.perf_counter()
        if self.enabled and now - self.last_line >= _PROGRESS_EVERY_S:
            self.last_line = now
            rate = self.rows / max(now - self.start, 1e-9)
            done = f" ({100 * position / self.total:.0f}%)" if self.total else ""
            print(f"made score: {self.rows:,} rows{done}, {rate:,.0f} rows/s", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- the command -----------------------------------------------------------------------------------
@dataclass
class ScoreResult:
    rows: int
    blocks: int  # blocks read (local) or scored batches received (Ray)
    seconds: float
    output: str
    model: str
    version: str
    ray: str | None
    first_block_seconds: float = 0.0  # until the first block was written: start-up (Ray, model) + one block
    first_block_rows: int = 0

    @property
    def steady_rows_per_s(self) -> float:
        """The rate once started: the rows after the first block over the time after it."""
        rest = self.seconds - self.first_block_seconds
        return (self.rows - self.first_block_rows) / rest if rest > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "blocks": self.blocks,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows / max(self.seconds, 1e-9), 1),
            "startup_s": round(self.first_block_seconds, 3),
            "output": self.output,
            "model": self.model,
            "version": self.version,
            "ray": self.ray,
        }


def score_file(
    store: str | Path,
    name: str,
    input_path: str | Path,
    output_path: str | Path,
    *,
    version: str | None = None,
    conditionals: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ray: str | None = None,
    progress: bool = True,
    threads: int | None = None,
    escape_formulas: bool = True,
) -> ScoreResult:
    """Score every row of input_path with model `name` of `store`; write output_path atomically.
    threads: blocks scored at once (default: the CPU cores this process may use). escape_formulas:
    text cells of a CSV output that a spreadsheet would run as formulas get a leading '."""
    start = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size!r}")
    source, output = Path(input_path), Path(output_path)
    out_kind = _file_kind(output, "output file")
    if not output.parent.is_dir():
        raise DataError(f"the output's folder {output.parent} does not exist")
    if output.exists() and output.is_dir():
        raise DataError(f"output {output} is a folder; name a .csv or .parquet file")
    if source.exists() and output.exists() and source.resolve() == output.resolve():
        raise DataError(f"--output {output} is the input file; write the scores to another file")
    if out_kind == "parquet":
        _pyarrow(output)
    model = open_model(Path(store), name, version)
    plan = inspect_input(source, table=model.is_table)
    check_columns(model, plan.names, str(source), conditionals)
    if ray is not None:
        return score_on_ray(
            model,
            plan,
            output,
            out_kind,
            address=ray,
            conditionals=conditionals,
            batch_size=batch_size,
            progress=progress,
            start=start,
            escape_formulas=escape_formulas,
        )
    scorer = Scorer(model, plan.names, str(source), conditionals)
    delimiter = "\t" if output.suffix.lower() == ".tsv" else (plan.delimiter if plan.kind == "csv" else ",")
    unit, total = ("B", plan.size) if plan.kind == "csv" else ("rows", plan.rows)
    bar = Progress(total, unit, progress)
    rows = blocks = 0
    first: tuple[float, int] | None = None  # (seconds, rows) when the first block was written
    try:
        with atomic_path(output) as tmp:
            blocks_in = (
                read_csv_blocks(plan, batch_size, bar)
                if plan.kind == "csv"
                else read_parquet_blocks(plan, batch_size, bar)
            )
            scored = _scored_blocks(scorer, blocks_in, threads or _cores())
            if out_kind == "csv":
                with open(tmp, "w", encoding="utf-8", newline="") as fh:
                    sink = CsvSink(fh, delimiter, escape_formulas)
                    for block, x, scores in scored:
                        if block.rows is not None:
                            sink.write_rows(block.names, block.rows, scores)
                        else:
                            sink.write_arrow(scorer.to_arrow(block, scores, x, "csv"), len(scores))
                        rows, blocks = rows + len(block), blocks + 1
                        first = first or (time.perf_counter() - start, rows)
            else:
                parquet = ParquetSink(tmp)
                try:
                    for block, x, scores in scored:
                        parquet.write_arrow(scorer.to_arrow(block, scores, x, "parquet"))
                        rows, blocks = rows + len(block), blocks + 1
                        first = first or (time.perf_counter() - start, rows)
                finally:
                    parquet.close()
            if rows == 0:
                raise DataError(f"{source} holds a header row but no rows")
    finally:
        bar.close()
    return ScoreResult(
        rows, blocks, time.perf_counter() - start, str(output), model.name, model.version, None, *(first or (0.0, 0))
    )


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _scored_blocks(
    scorer: Scorer, blocks: Iterator[Block], threads: int
) -> Iterator[tuple[Block, np.ndarray, dict[str, np.ndarray]]]:
    """(block, its encoded rows, its scores) in the input's order. Blocks are read and encoded
    here and scored by `threads` threads (onnxruntime lets go of the GIL), at most threads + 1
    blocks in memory at once."""
    if threads <= 1:
        for block in blocks:
            x = scorer.encode(block)
            yield block, x, scorer.score(x)
        return
    pending: collections.deque[tuple[Block, np.ndarray, concurrent.futures.Future[dict[str, np.ndarray]]]]
    pending = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="made-score") as pool:
        try:
            for block in blocks:
                x = scorer.encode(block)
                pending.append((block, x, pool.submit(scorer.score, x)))
                while pending and (len(pending) > threads or pending[0][2].done()):
                    done, x_done, future = pending.popleft()
                    yield done, x_done, future.result()
            while pending:
                done, x_done, future = pending.popleft()
                yield done, x_done, future.result()
        finally:
            for _, _, future in pending:
                future.cancel()


# --- Ray -------------------------------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--ray needs Ray, which is not installed: pip install made[ray] (or pip install 'ray[data]')"
        ) from None
    return ray


class RayScorer:
    """A Ray actor's scorer: the model arrives as its files' bytes (the cluster's nodes need not
    see the store), is verified and loaded once, then scores every batch the actor is given."""

    def __init__(
        self,
        files: dict[str, bytes],
        name: str,
        version: str,
        names: list[str],
        source: str,
        text: bool,
        conditionals: bool,
        out_kind: str,
    ):
        tmp = Path(tempfile.mkdtemp(prefix="made-score-"))
        try:
            folder = tmp / name / version
            folder.mkdir(parents=True)
            for fname, data in files.items():
                (folder / fname).write_bytes(data)
            self.scorer = Scorer(open_model(tmp, name, version), names, source, conditionals)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.names, self.source, self.text, self.out_kind = names, source, text, out_kind

    def __call__(self, table: Any) -> Any:
        source = self.source
        block = Block(self.names, table=table, text=self.text, where=lambda i: f"{source}: a row")
        x = self.scorer.encode(block)
        return self.scorer.to_arrow(block, self.scorer.score(x), x, self.out_kind)


def _model_files(model: StoredModel) -> dict[str, bytes]:
    names = [MANIFEST, *model.manifest["files"]]
    return {fname: (model.path / fname).read_bytes() for fname in names}


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[Any]:
    """Ray, connected: an in-process one with RAY_LOCAL_CPUS CPUs for "local", else the cluster
    at `address` (e.g. ray://head:10001 or auto). One already initialised (tests) is reused."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        if address == "local":
            ray.init(num_cpus=RAY_LOCAL_CPUS, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except Exception as exc:
        raise ConfigError(f"cannot start Ray ({address}): {_first_line(exc)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def score_on_ray(
    model: StoredModel,
    plan: InputPlan,
    output: Path,
    out_kind: str,
    *,
    address: str,
    conditionals: bool,
    batch_size: int,
    progress: bool,
    start: float,
    escape_formulas: bool = True,
) -> ScoreResult:
    """Ray Data: read the file, map_batches over a pool of RayScorer actors (each loads the engine
    once, with one onnxruntime thread like the local path's), then stream the scored blocks back in order and write
    them with the local path's writers, atomically. With a remote cluster the input path must be
    readable from its nodes (a shared folder, s3://...), and made must be installed there."""
    ray = _import_ray()
    import pyarrow as pa
    import pyarrow.csv as pacsv

    files = _model_files(model)
    dims = len(model.schema)
    n_scores = len(score_names(dims, conditionals))
    source = str(plan.path.resolve())
    rows = blocks = 0
    first: tuple[float, int] | None = None
    with ray_session(address):
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        saved = (
            ctx.execution_options.preserve_order,
            ctx.enable_progress_bars,
            ctx.print_on_execution_start,
            ctx.raise_original_map_exception,
            ctx.target_max_block_size,
        )
        ctx.execution_options.preserve_order = True  # the output's rows in the input's order
        ctx.enable_progress_bars = False  # ours instead
        ctx.print_on_execution_start = False
        ctx.raise_original_map_exception = True  # a bad cell's DataError, not a wrapper
        ctx.target_max_block_size = _BLOCK_BYTES  # reads stream out blocks of this size for the actors
        # every CPU of the cluster scores, in actors of at most one CPU each, except what one read
        # task takes (an actor pool holding every CPU would starve the reads feeding it)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        actors = max(1, int(cpus))
        read_cpus = min(1.0, cpus / 2)
        actor_cpus = min(1.0, (cpus - read_cpus) / actors)
        # blocks to spread over the actors: at least four per actor, at most _BLOCK_BYTES each
        n_blocks = max(4 * actors, math.ceil(plan.size / _BLOCK_BYTES))
        text = plan.kind == "csv"
        if text:
            ds = ray.data.read_csv(
                source,
                num_cpus=read_cpus,
                override_num_blocks=n_blocks,
                read_options=pacsv.ReadOptions(column_names=plan.names, skip_rows=int(plan.header)),
                parse_options=pacsv.ParseOptions(delimiter=plan.delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in plan.names},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        else:
            ds = ray.data.read_parquet(source, num_cpus=read_cpus, override_num_blocks=n_blocks)
        ds = ds.map_batches(
            RayScorer,
            batch_size=batch_size,
            batch_format="pyarrow",
            num_cpus=actor_cpus,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            fn_constructor_kwargs=dict(
                files=files,
                name=model.name,
                version=model.version,
                names=plan.names,
                source=str(plan.path),
                text=text,
                conditionals=conditionals,
                out_kind=out_kind,
            ),
        )
        bar = Progress(plan.rows, "rows", progress)
        delimiter = "\t" if output.suffix.lower() == ".tsv" else plan.delimiter
        try:
            with atomic_path(output) as tmp:
                parquet = ParquetSink(tmp) if out_kind == "parquet" else None
                with contextlib.ExitStack() as stack:
                    csv_sink = None
                    if parquet is None:
                        fh = stack.enter_context(open(tmp, "w", encoding="utf-8", newline=""))
                        csv_sink = CsvSink(fh, delimiter, escape_formulas)
                    else:
                        stack.callback(parquet.close)
                    for table in _ray_batches(ds, plan):
                        if parquet is not None:
                            parquet.write_arrow(table)
                        else:
                            assert csv_sink is not None
                            csv_sink.write_arrow(table, n_scores)
                        rows, blocks = rows + table.num_rows, blocks + 1
                        first = first or (time.perf_counter() - start, rows)
                        bar.update(table.num_rows, rows)
                if rows == 0:
                    raise DataError(f"{plan.path} holds a header row but no rows")
        finally:
            bar.close()
            (
                ctx.execution_options.preserve_order,
                ctx.enable_progress_bars,
                ctx.print_on_execution_start,
                ctx.raise_original_map_exception,
                ctx.target_max_block_size,
            ) = saved
    return ScoreResult(
        rows, blocks, time.perf_counter() - start, str(output), model.name, model.version, address, *(first or (0.0, 0))
    )


def _ray_batches(ds: Any, plan: InputPlan) -> Iterator[Any]:
    """The scored blocks in order; a MadeError raised in an actor comes back as itself, a file
    Ray's reader cannot parse as a one-line DataError."""
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)
    except MadeError:
        raise
    except Exception as exc:
        cause: BaseException | None = exc
        seen = 0
        while cause is not None and seen < 10:
            if isinstance(cause, MadeError):
                raise cause from None
            cause = getattr(cause, "cause", None) or cause.__cause__
            seen += 1
        text = str(exc)
        if "ArrowInvalid" in text or "CSV parse error" in text or "Parquet" in text:
            line = next((ln for ln in text.splitlines() if "Error" in ln or "error" in ln), _first_line(exc))
            raise DataError(f"cannot read {plan.path}: {line.strip()}") from None
        raise
