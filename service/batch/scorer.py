"""Scoring a block of `made score`'s rows: one model's engine and how the input's columns feed it.

What a row is:
- a bit model reads D columns of 0/1 by position; an empty, NA, NaN, null or ? cell is a missing
  value, summed out by the engine.
- a table model reads its columns by name from the header (other columns are carried through,
  not modelled; a model column the file lacks is unknown in every row), cells as the training
  files were read.
Rows with missing values that no mask's ordering can sum out exactly are sequential Monte Carlo
estimates, seeded by the row's own values: a rerun, or the same row in another block, agrees. A
row's score depends on nothing but the row, so the output is the same whatever the batch size,
the number of threads, or whether Ray ran it: the engines' network outputs for a row are the same
to the bit whatever the rows beside it (a single row included), and so are a table model's
estimates, which go through the engine a block at a time; a bit model's particle filter steps
through float64 matrix products whose last bits depend on the batch, so its estimated rows go
one at a time.

With `stderr` (made score --stderr) each row also gets `exact` and `stderr`, POST /logprob's:
whether its log p is exact, and the standard error of an estimate (NaN, written empty or null,
where exact). A row scored -inf under --impossible inf is exact, stderr none: a cell the model
gives no probability makes p(x_known) 0 whatever its unknown cells, no estimate.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from made.core.errors import ConfigError, DataError, ImpossibleValue
from made.core.masks import exact_orders
from made.core.schema import Schema
from made.io.csv import IMPOSSIBLE, MISSING_MARKERS, encode_column
from made.store.versions import StoredModel
from service.batch.inputs import Block
from service.engine.engine import Engine
from service.engine.table_engine import TableEngine

SCORE_COLUMN = "logprob"
STDERR_COLUMNS = ("exact", "stderr")  # made score --stderr: after logprob, as POST /logprob's CSV answer
IMPOSSIBLE_CHOICES = ("error", "inf")
COND_PREFIX = "cond_"


class Scorer:
    """One model's engine and how the input's columns feed it: a block in, its score columns
    out. One per process (or per Ray actor)."""

    def __init__(
        self,
        model: StoredModel,
        names: list[str],
        source: str,
        conditionals: bool = False,
        impossible: str = "error",
        stderr: bool = False,
    ):
        self.table = model.is_table
        self.conditionals = conditionals
        self.stderr = stderr  # the exact and stderr columns too
        self.source = source
        # "inf": a table row holding a cell the model gives no probability scores -inf, and the
        # first such cell's error is kept here to be named once the file is scored (score_file
        # checked the choice)
        self.impossible = impossible
        self.first_impossible: str | None = None
        check_columns(model, names, source, conditionals, stderr)
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

    @property
    def score_names(self) -> list[str]:
        return score_names(self.engine.dims, self.conditionals, self.stderr)

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
        out = np.full((len(block), len(schema)), np.nan)  # a column the file lacks: unknown
        told = self._told_impossible if self.impossible == "inf" else None
        for j, (col, src) in enumerate(zip(schema.columns, self.sources, strict=True)):
            if src is not None:
                out[:, j] = encode_column(col, block.column_text(src), block.where, told)
        return out

    def _told_impossible(self, error: ImpossibleValue) -> None:
        if self.first_impossible is None:
            self.first_impossible = str(error)

    # the engine
    def score(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """log p per row (with stderr, whether it is exact and the standard error of an estimate,
        NaN where exact; and the conditionals of complete rows of a bit model). Rows that need no
        estimate are scored in one call; the others seeded by their values, a table model's in one
        call, a bit model's each alone. Each column a float64 array, `exact` a bool one."""
        n = len(x)
        # rows holding a cell coded IMPOSSIBLE (--impossible inf): p = 0, log p -inf, not scored;
        # +inf is a number recorded as absent (ABSENT), which the model scores as data
        cells = x == IMPOSSIBLE
        impossible = cells.any(axis=1)
        if impossible.any():
            x = np.where(cells, np.nan, x)
        unknown = np.isnan(x)
        if isinstance(self.engine, Engine):
            exact = self.engine.exact_rows(~unknown)
        else:
            exact = exact_orders(self.engine.orderings, ~unknown).all(axis=0) | ~unknown.any(axis=1)
        logprob = np.full(n, -np.inf)
        # the engine's own exact and stderr (POST /logprob's); an impossible row: exact, p = 0
        is_exact = np.ones(n, dtype=bool)
        stderr = np.full(n, np.nan)
        complete = ~unknown.any(axis=1) & ~impossible
        exact = exact & ~impossible
        # complete rows, then rows whose missing values are summed out exactly: the engine scores
        # those two kinds apart (a row's answer does not depend on the rows beside it, to the bit)
        for rows in (np.flatnonzero(complete), np.flatnonzero(exact & ~complete)):
            if len(rows):
                result = self.engine.logprob(x[rows])
                logprob[rows], is_exact[rows], stderr[rows] = _answered(result)
        todo = np.flatnonzero(~exact & ~impossible)
        if len(todo) and isinstance(self.engine, TableEngine):
            # one call, each row seeded as if alone: a table model's answer for a row does not
            # depend on the other rows, to the bit (TableEngine.params), and one call is several
            # times cheaper than a call a row (bench/score_bench.py --missing)
            seeds = np.array([row_seed(x[i]) for i in todo], dtype=np.int64)
            result = self.engine.logprob(x[todo], row_seeds=seeds)
            logprob[todo], is_exact[todo], stderr[todo] = _answered(result)
        else:
            # a bit model's particle filter steps through float64 matrix products whose last bits
            # depend on the rows beside it: each row alone, for the same bytes whatever the batch
            for i in todo:
                result = self.engine.logprob(x[i : i + 1], seed=row_seed(x[i]))
                lp, ex, se = _answered(result)
                logprob[i], is_exact[i], stderr[i] = lp[0], ex[0], se[0]
        out = {SCORE_COLUMN: logprob}
        if self.stderr:
            out.update(zip(STDERR_COLUMNS, (is_exact, stderr), strict=True))
        if self.conditionals and isinstance(self.engine, Engine):
            engine = self.engine
            cond = np.full((n, engine.dims), np.nan)
            if complete.any():
                cond[complete] = engine.conditionals(x[complete], mask=0)
            out.update({f"{COND_PREFIX}{d}": cond[:, d] for d in range(engine.dims)})
        return out

    # output
    def to_arrow(self, block: Block, scores: dict[str, np.ndarray], x: np.ndarray, out_kind: str) -> Any:
        """The output rows as an Arrow table: the input's columns as they are, then the scores. A
        CSV's cells stay text, except in a Parquet output, which gets types where the model gives
        them: a bit model's 0/1 as uint8 (missing null), a table model's numeric columns that are
        never absent as float64, each cell's number as the file writes it (unknown cells null,
        which read back unknown); other columns, nullable numeric ones among them (where null
        would read back as absent, not as a `?`), are strings."""
        import pyarrow as pa

        if block.rows is not None or (block.text and out_kind == "parquet"):
            if out_kind == "parquet" and block.text and self.schema is None:
                arrays = [
                    pa.array(np.where(np.isnan(x[:, j]), 0, x[:, j]).astype(np.uint8), mask=np.isnan(x[:, j]))
                    for j in range(x.shape[1])
                ]
            else:
                arrays = [pa.array(block.column_text(j), type=pa.string()) for j in range(len(block.names))]
                if out_kind == "parquet" and self.schema is not None:
                    for col, src in zip(self.schema.columns, self.sources, strict=True):
                        # a nullable column stays text: null would read back as absent, and a `?`
                        # (unknown) cell of it must stay unknown
                        if src is not None and col.kind == "numeric" and not col.nullable:
                            values = _numbers_as_written(block.column_text(src))
                            arrays[src] = pa.array(values, type=pa.float64(), mask=np.isnan(values))
            table = pa.Table.from_arrays(arrays, names=block.names)
        else:
            table = block.table if isinstance(block.table, pa.Table) else pa.Table.from_batches([block.table])
            table = table.replace_schema_metadata(None)
        for name, values in scores.items():
            if values.dtype == np.bool_:  # exact (--stderr)
                table = table.append_column(pa.field(name, pa.bool_()), pa.array(values, type=pa.bool_()))
            else:
                table = table.append_column(
                    pa.field(name, pa.float64()), pa.array(values, type=pa.float64(), mask=np.isnan(values))
                )
        return table


def check_columns(model: StoredModel, names: list[str], source: str, conditionals: bool, stderr: bool = False) -> None:
    """Refuse an input whose columns cannot feed the model, or that has a column the output adds,
    before the engine is loaded."""
    extra = score_names(len(model.schema), conditionals, stderr)
    clash = [n for n in extra if n in names]
    if clash:
        added = ", which --stderr adds" if clash[0] in STDERR_COLUMNS else ""
        raise DataError(f"{source} already has a column '{clash[0]}'{added} (a scored file?); rename or drop it first")
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


def lacking_columns(model: StoredModel, names: list[str]) -> str | None:
    """A warning naming the table model's columns the input lacks (unknown in every row: summed
    out of log p, so the scores are of the columns it has), or None. A header cell that is a
    lacking name with a leading ' is named too: a spreadsheet-escaped header (made sample and
    made score write text that begins with = + - @ so) reads as another column."""
    if not model.is_table:
        return None
    lacking = [n for n in model.schema.names if n not in names]
    if not lacking:
        return None
    shown = ", ".join(repr(n) for n in lacking[:10]) + (f" and {len(lacking) - 10} more" if len(lacking) > 10 else "")
    text = f"the input lacks {len(lacking)} of model {model.name}'s columns ({shown}): unknown in every row, summed out"
    escaped = ["'" + n for n in lacking if "'" + n in names]
    if escaped:
        text += (
            f"; it has {escaped[0]!r}, that column escaped for a spreadsheet: write the file with "
            "--no-escape-formulas to score it as that column"
        )
    return text


def _numbers_as_written(cells: list[str]) -> np.ndarray:
    """A numeric column's cells for a typed output: each cell's own number, as the file holds it
    (0.7149, not the 0.71 the model reads at its resolution; one outside the bounds too), NaN
    (null) for a cell that holds none (unknown)."""
    out = np.empty(len(cells))
    for i, cell in enumerate(cells):
        try:
            out[i] = float(cell)
        except ValueError:
            out[i] = np.nan
    return out


def score_names(dims: int, conditionals: bool, stderr: bool = False) -> list[str]:
    """The columns the output adds, in order: logprob, exact and stderr (--stderr), cond_d."""
    return (
        [SCORE_COLUMN]
        + (list(STDERR_COLUMNS) if stderr else [])
        + ([f"{COND_PREFIX}{d}" for d in range(dims)] if conditionals else [])
    )


def _answered(result: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An engine's log p answer as (logprob, exact, stderr), stderr NaN where exact: as POST
    /logprob answers it (a table engine's stderr is 0 there, a bit engine's NaN; both null)."""
    exact = np.asarray(result.exact, dtype=bool)
    return result.logprob, exact, np.where(exact, np.nan, result.stderr)


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
    if text.lower() in MISSING_MARKERS:
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


def row_seed(row: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(row, dtype=np.float64).tobytes())
