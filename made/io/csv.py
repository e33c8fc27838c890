"""The one CSV reader and writer: training files, HTTP bodies, `made score` inputs and the Python
client's DataFrames are read (and the project's CSV answers written) by the functions here, so
that the same rows mean the same thing wherever they are sent.

Reading:
- The delimiter is the most frequent of ',', ';', '|' and tab in the first line (',' when none
  is there): a spreadsheet in a locale whose decimal mark is ',' writes ';'.
- Quoting is the csv module's (RFC 4180: a quoted cell may hold the delimiter, quotes doubled,
  line breaks); a UTF-8 byte-order mark (Excel) is no part of the first cell.
- A line holding nothing but spaces is no row; every other row must have as many cells as the
  header row (or the first row of a header-less file), else the error names its line.
- A header row names each column once: an empty name or a name given twice is refused naming
  the column, since a column read by name cannot be two columns.

One meaning of an empty cell in a table (`table_cell`): an empty, `NA` or `NaN` cell is the value
"absent" where the column can be absent (a category with the level `NA`, a nullable number:
the training data had empty cells there), and unknown (summed out, imputed) where it cannot; a
model column that the CSV leaves out is unknown in every row. Training refuses unknown cells (it
learns from complete rows). The cell `?` is unknown in every column (one that can be absent
included: the way to say "unknown" where an empty cell means absent); training refuses it as it
refuses every unknown cell, rather than learning `?` as a level that a request could then never
send (a column of an older model whose levels hold `?` keeps reading it as that level). A typed
value (Parquet, Arrow, a DataFrame) that is null or NaN is the empty cell. Bit data has its own
wider spelling of a missing cell (MISSING_MARKERS: the wild's NA, NaN, null, ?), since a 0/1
column has no level to confuse them with.

Writing: `to_csv` and `escape_formula`, the one place where a text cell that a spreadsheet would
run as a formula gets a leading ' (OWASP's advice on CSV injection).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from made.core.errors import DataError, ImpossibleValue
from made.core.schema import ABSENT_LEVEL, MISSING_CELLS, UNKNOWN_CELL, Column

# What a CSV may separate its cells with, found from its first line (the most frequent; the
# first of them on a tie).
DELIMITERS = (",", ";", "|", "\t")
# Cells that mean "no value" in bit data in the wild (pandas' defaults, UCI's '?'), compared
# lower-cased.
MISSING_MARKERS = frozenset({"", "na", "nan", "n/a", "null", "none", "?", "-"})


def sniff_delimiter(line: str, tab: bool = True) -> str | None:
    """The most frequent of DELIMITERS in a file's first line (tab only where `tab`), or None
    when it holds none of them (one column, or whitespace-separated text)."""
    counts = {d: line.count(d) for d in DELIMITERS if tab or d != "\t"}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else None


def first_line_delimiter(text: str) -> str:
    """The delimiter of a CSV text, from its first line; ',' for a file of one column."""
    end = text.find("\n")
    return sniff_delimiter(text if end < 0 else text[:end]) or ","


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_header(cells: Sequence[str]) -> bool:
    """A first line of names (none of them a number or a missing-value marker) is a header row;
    a first line of a header-less 0/1 file holds numbers."""
    return all(c.lower() not in MISSING_MARKERS and not is_number(c) for c in cells)


class NumbersForNames(DataError):
    """A first line of numbers where a header row of names is needed: the first row of a
    header-less file (check_header)."""


def check_header(header: Sequence[str], where: str) -> None:
    """Refuse a header row with a nameless column or a name given twice, naming the column; such a
    first line of numbers only (the first row of a header-less file, e.g. 0/1 cells) is refused as
    that, not as a column named twice (numbers that name each column once, 2019,2020, pass)."""
    numbers = bool(header) and all(is_number(c) for c in header)
    if numbers and ("" in header or len(set(header)) < len(header)):
        shown = ",".join(header[:4]) + (",..." if len(header) > 4 else "")
        raise NumbersForNames(
            f"{where}: the first line holds numbers ({shown}), not column names; a header row naming the columns "
            "must come first"
        )
    if "" in header:
        raise DataError(f"{where}: column {header.index('') + 1} of the header row has no name")
    seen: dict[str, int] = {}
    for j, name in enumerate(header):
        if name in seen:
            raise DataError(
                f"{where}: the header row names column {name!r} twice (columns {seen[name] + 1} and {j + 1}); "
                "each column must be named once"
            )
        seen[name] = j


def read_rows(
    lines: Iterable[str],
    delimiter: str,
    where: str,
    *,
    like: str = "the header row",
    max_cell: int | None = None,
    text: str | None = None,
) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each row of a CSV, the first (the header row, where there is one)
    included, cells as written (callers strip them). A row of another width than the first is
    refused naming its line; so is a line the csv module cannot read. max_cell: a cell longer
    than this is refused naming its line and column (the bound of a request body); `text` (the
    whole CSV, where the caller holds it) lets a cell past the csv module's own limit be named
    by its column too."""
    # strict: a cell that opens a quote and never closes it is an error, not the rest of the file
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    width: int | None = None
    done = 0  # the lines read before the row being read
    try:
        for row in reader:
            if max_cell is not None and row and max(map(len, row)) > max_cell:
                j = next(j for j, cell in enumerate(row) if len(cell) > max_cell)
                raise DataError(
                    f"{where} line {reader.line_num}, column {j + 1}: a cell of {len(row[j])} characters; "
                    f"the limit is {max_cell}"
                )
            done = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if width is None:
                width = len(row)
            elif len(row) != width:
                raise DataError(f"{where} line {reader.line_num} has {len(row)} values, expected {width} like {like}")
            yield reader.line_num, row
    except csv.Error as exc:
        line = reader.line_num
        if "field larger than field limit" in str(exc) and max_cell is not None:
            column = long_cell_column(text, done, delimiter, max_cell) if text is not None else None
            at = f", column {column}" if column is not None else ""
            too_long = f"a cell is longer than {max_cell} characters (the limit)"
            raise DataError(f"{where} line {line}{at}: {too_long}") from None
        if "unexpected end of data" in str(exc):
            raise DataError(
                f'{where} line {done + 1}: a quoted cell is never closed (a " opens it, and the data ends inside it)'
            ) from None
        raise DataError(f"{where} line {line} cannot be read as CSV: {exc}") from None


def long_cell_column(text: str, done: int, delimiter: str, max_cell: int) -> int:
    """The column (from 1) of the first cell over max_cell characters in the row that starts
    after the first `done` lines of text (a row the csv module refused for a cell over its own
    limit). Lines end at \\n, as the csv module's line numbers count them."""
    start = 0
    for _ in range(done):
        start = text.find("\n", start) + 1
        if start == 0:
            return 1
    column, length, quoted = 1, 0, False
    for ch in itertools.islice(text, start, None):
        if ch == '"':
            quoted = not quoted  # a doubled quote inside a quoted cell toggles twice
        elif not quoted and ch == delimiter:
            column, length = column + 1, 0
        elif not quoted and ch in "\r\n":
            break
        else:
            length += 1
            if length > max_cell:
                break
    return column


def read_csv_text(text: str, where: str, *, max_cell: int | None = None) -> tuple[list[str], list[list[str]]]:
    """A CSV text with a header row -> (the header's names, stripped; the rows as written). An
    empty text is refused; a header without rows is the caller's to judge."""
    text = text.lstrip("\ufeff")
    rows = read_rows(io.StringIO(text), first_line_delimiter(text), where, max_cell=max_cell, text=text)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{where} is empty; it needs a header row of column names")
    header = [h.strip() for h in first[1]]
    check_header(header, where)
    return header, [row for _, row in rows]


# --- cells of a table -----------------------------------------------------------------------------
def can_be_absent(col: Column) -> bool:
    """Whether a column models "absent" as a value (its training data had empty cells)."""
    return col.nullable or ABSENT_LEVEL in col.levels


def table_cell(col: Column, cell: str, where: str) -> float:
    """The one meaning of a CSV cell of a table column: `?` is unknown (NaN); an empty or NA cell
    is absent where the column can be absent, else unknown; any other cell is the column's value,
    or a DataError naming `where`, the column and what it allows."""
    text = cell.strip()
    if text == UNKNOWN_CELL and UNKNOWN_CELL not in col.levels:
        return math.nan
    if text in MISSING_CELLS and not can_be_absent(col) and text not in col.levels:
        return math.nan
    return col.encode_cell(text, where)


# encode_column's code for a cell the model gives no probability, where asked: -inf, since +inf is
# ABSENT (made.core.schema: a numeric cell recorded as NA, modelled as data) and NaN is unknown
IMPOSSIBLE = -math.inf


def encode_column(
    col: Column,
    cells: Sequence[str],
    where: Callable[[int], str],
    impossible: Callable[[ImpossibleValue], None] | None = None,
) -> np.ndarray:
    """table_cell of each cell of one column, (N,) float64; levels are looked up in a dict first
    (the cells of a large file are mostly levels). A cell the model gives no probability (outside
    the bounds, not a level; an empty or NA cell of a column never absent is unknown, not
    impossible, table_cell) raises its ImpossibleValue, or,
    given `impossible`, is told to it and coded IMPOSSIBLE (-inf; no cell's code is otherwise)."""
    codes: dict[str, float] = {}
    if col.kind != "numeric":
        codes = {level: float(i) for i, level in enumerate(col.levels)}
        if ABSENT_LEVEL in codes:
            codes[""] = codes[ABSENT_LEVEL]
    out = np.empty(len(cells))
    for i, raw in enumerate(cells):
        code = codes.get(raw.strip())
        if code is not None:
            out[i] = code
            continue
        try:
            out[i] = table_cell(col, raw, where(i))
        except ImpossibleValue as exc:
            if impossible is None:
                raise
            impossible(exc)
            out[i] = IMPOSSIBLE
    return out


def cell_text(value: Any) -> str:
    """A typed cell (Parquet, Arrow) as a CSV would hold it: null and NaN as the empty cell, a
    boolean as 1 or 0, anything else as str() writes it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def arrow_cells(column: Any) -> list[str]:
    """An Arrow (Parquet) column's cells as a CSV would hold them (cell_text); a float32 column's
    values as float32 writes them (-4.1, not the -4.099999904632568 of its float64 copy)."""
    import pyarrow as pa

    if pa.types.is_float32(column.type):
        return ["" if v is None or v != v else str(np.float32(v)) for v in column.to_pylist()]
    return [cell_text(v) for v in column.to_pylist()]


def value_text(value: Any) -> str:
    """A record's value (a DataFrame's cell) as the CSV cell that means what the JSON value
    would: a whole float as an integer (a level "3" may be sent as 3.0, as a column of integers
    with a gap holds it in pandas), other floats at full precision; otherwise as cell_text."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return cell_text(value)


# --- writing --------------------------------------------------------------------------------------
# Spreadsheets run a cell that begins with one of these as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape_formula(cell: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (=, +, -, @, a tab or a carriage
    return first), with a leading ' (OWASP's advice); numbers (-3.5, +1e3, -inf) and cells of
    other types as they are. The one place every CSV the project writes escapes its cells."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        try:
            float(cell)
        except ValueError:
            return "'" + cell
    return cell


def escape_formulas(cells: list[Any]) -> list[Any]:
    """The cells of a row or a column with escape_formula applied (the same list when none needs it)."""
    if not any(isinstance(c, str) and c.startswith(FORMULA_STARTS) for c in cells):
        return cells
    return [escape_formula(c) for c in cells]


def to_csv(header: list[str], rows: Iterable[list[Any]], *, escape: bool = True) -> str:
    """CSV text (None and NaN as empty cells); escape: text cells escaped as escape_formula says."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    clean = (["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in r] for r in rows)
    writer.writerow(escape_formulas(header) if escape else header)
    writer.writerows((escape_formulas(r) for r in clean) if escape else clean)
    return buffer.getvalue()
