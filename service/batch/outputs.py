"""The output of `made score`: the input's rows with their score columns, as CSV or Parquet.

The output keeps the input's columns as they were: a CSV's cells as text, a Parquet file's
columns with their types (see Scorer.to_arrow for a CSV read into a Parquet output). It is
written to a temporary file beside it and renamed into place at the end (open_output): a bad
cell halfway through leaves no output at all. In a CSV output, text cells that a spreadsheet
would run as formulas (=cmd, +HYPERLINK(...), @SUM(...): made.io.csv.escape_formula)
get a leading ' unless escaping is off (`--no-escape-formulas`, for trusted pipelines); Parquet
is written as is.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from made.core.progress import PLAIN_EVERY_S, Progress
from made.io.atomic import atomic_path
from made.io.csv import escape_formulas as escape_cells
from service.batch.inputs import Block


class CsvSink:
    """CSV output: the input's cells unchanged (text), scores at full precision (repr of the
    float64, which reads back to the same number), an empty cell for none; a bool column
    (--stderr's exact) as true/false, as POST /logprob's CSV answer writes it. escape: text cells
    a spreadsheet would run as formulas get a leading ' (made.io.csv.escape_formula)."""

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
        columns = [_score_cells(v) for v in scores.values()]
        self.writer.writerows([*row, *extra] for row, extra in zip(rows, zip(*columns, strict=True), strict=True))

    def write_arrow(self, table: Any, n_scores: int) -> None:
        """An Arrow table whose last n_scores columns are scores: float64 (null: none), or bool."""
        names = [str(n) for n in table.column_names]
        base = names[: len(names) - n_scores]
        block = Block(base, table=table.select(base), text=False)
        self._header(names)
        columns = [block.column_text(j) for j in range(len(base))]
        if self.escape:
            columns = [escape_cells(column) for column in columns]
        columns += [_score_cells(table.column(name).to_numpy(zero_copy_only=False)) for name in names[len(base) :]]
        self.writer.writerows(zip(*columns, strict=True))


def _may_need_escape(rows: list[list[str]]) -> bool:
    """False when no cell of rows can begin a formula: one C-speed search of the joined cells
    (a cell holding a line break may make it say True, and the rows are then checked cell by cell)."""
    joined = "\n" + "\n".join(itertools.chain.from_iterable(rows))
    return any(f"\n{c}" in joined for c in "=+-@\t\r")


def _score_cells(values: np.ndarray) -> list[str]:
    """A score column's cells: a float64's repr (empty for NaN), a bool's true/false."""
    values = np.asarray(values)
    if values.dtype == np.bool_:
        return ["true" if v else "false" for v in values.tolist()]
    return ["" if v != v else repr(v) for v in np.asarray(values, dtype=np.float64).tolist()]


class ParquetSink:
    """Parquet output: the Arrow tables as they come, one row group each."""

    def __init__(self, path: Path):
        self.path = path
        self.writer: Any = None

    def write_arrow(self, table: Any, n_scores: int = 0) -> None:
        """An Arrow table (n_scores: unused, as CsvSink's); later tables are cast to the first's
        schema, so a column's type is the same in every row group."""
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        elif table.schema != self.writer.schema:
            table = table.cast(self.writer.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@contextlib.contextmanager
def open_output(path: Path, kind: str, delimiter: str, escape: bool) -> Iterator[CsvSink | ParquetSink]:
    """A sink writing to a temporary file beside path, renamed into place when the block ends
    without an error (an error leaves no output)."""
    with atomic_path(path) as tmp:
        if kind == "csv":
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                yield CsvSink(fh, delimiter, escape)
            return
        sink = ParquetSink(tmp)
        try:
            yield sink
        finally:
            sink.close()


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
    impossible_rows: int | None = None  # rows scored -inf (made score --impossible inf); None: not asked

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
        } | ({} if self.impossible_rows is None else {"impossible_rows": self.impossible_rows})


class Tally:
    """Rows and blocks written since `start` (a perf_counter time), and when the first block was."""

    def __init__(self, start: float, impossible: bool = False):
        self.start = start
        self.rows = self.blocks = 0
        self.impossible: int | None = 0 if impossible else None  # rows whose logprob is -inf
        self.first: tuple[float, int] | None = None  # (seconds, rows) when the first block was written

    def add(self, rows: int, logprob: Any = None) -> None:
        """A block of `rows` written; logprob, its scores (an array, or a column's values), counts
        the rows scored -inf where asked."""
        if self.impossible is not None and logprob is not None:
            self.impossible += int(np.count_nonzero(np.isneginf(np.asarray(logprob, dtype=np.float64))))
        self.rows, self.blocks = self.rows + rows, self.blocks + 1
        self.first = self.first or (time.perf_counter() - self.start, self.rows)

    def result(self, output: Path, model: str, version: str, ray: str | None) -> ScoreResult:
        first = self.first or (0.0, 0)
        seconds = time.perf_counter() - self.start
        return ScoreResult(
            self.rows, self.blocks, seconds, str(output), model, version, ray, *first, impossible_rows=self.impossible
        )


def score_progress(
    total: int | None, unit: str, enabled: bool, stream: IO[str] | None = None, every_s: float = PLAIN_EVERY_S
) -> Progress:
    """Progress over the input's bytes (unit "B", a CSV) or rows: a bar on a terminal, else a
    plain line with the rows scored, the share of the input done and the rate."""

    def plain(p: Progress) -> str:
        done = f" ({100 * p.position / p.total:.0f}%)" if p.total else ""
        return f"made score: {p.items:,} rows{done}, {p.rate:,.0f} rows/s"

    return Progress(
        total,
        unit,
        enabled,
        stream,
        desc="scoring",
        plain=plain,
        postfix=lambda p: f"{p.items:,} rows",
        every_s=every_s,
    )
