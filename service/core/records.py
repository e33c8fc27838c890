"""Records of a table model over HTTP: JSON objects keyed by column name, or CSV text, to the
encoded (N, C) arrays the table engine runs on, and back. Validated once, here; every error
names the record, the column and what the column allows.

Unknown and absent are different things. A key left out of a JSON record, or null, is unknown:
the engine sums it out or imputes it. "NA" (or "") is a value recorded as absent, which a column
whose training data had empty cells models as data. A CSV body is read as the training files
were (empty and NA cells are absent where the column can be absent); a column the CSV leaves
out is unknown in every row, and so is an empty cell of a column that is never absent.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from typing import Any

import numpy as np

from made.core.errors import DataError, InvalidInput
from made.core.schema import ABSENT_LEVEL, MISSING_CELLS, Schema


def parse_records(schema: Schema, records: Any, field: str = "records") -> np.ndarray:
    """A list of JSON objects -> (N, C) float64 encoded cells, NaN where unknown."""
    if not isinstance(records, list) or not records:
        raise InvalidInput(f"{field} must be a non-empty list of objects keyed by column name", loc=(field,))
    known = set(schema.names)
    out = np.full((len(records), len(schema)), np.nan)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InvalidInput(
                f"{field}[{i}] must be an object keyed by column name, got {type(record).__name__}", loc=(field, i)
            )
        extra = [k for k in record if k not in known]
        if extra:
            raise InvalidInput(
                f"{field}[{i}] has no column {extra[0]!r}; the columns are {', '.join(schema.names)}",
                loc=(field, i, str(extra[0])),
            )
        for j, col in enumerate(schema.columns):
            try:
                out[i, j] = col.encode_cell(record.get(col.name), f"{field}[{i}]")
            except DataError as exc:
                raise InvalidInput(str(exc), loc=(field, i, col.name)) from None
    return out


def parse_given(schema: Schema, given: Any, field: str = "given") -> np.ndarray:
    """{column: value} -> one (C,) row of encoded cells, NaN for the columns not given."""
    if not isinstance(given, dict):
        raise InvalidInput(f"{field} must be an object of column: value", loc=(field,))
    row = parse_records(schema, [given], field)[0]
    if np.isnan(row).all():
        raise InvalidInput(f"{field} names no value; leave it out to sample without a condition", loc=(field,))
    return row


# The longest CSV cell a request may send: far more than any level or number, and below the csv
# module's own limit (field_size_limit, 131072), whose error is turned into the same answer.
MAX_CSV_CELL = 4096


def check_csv_bounds(body: bytes, *, max_rows: int, max_width: int) -> None:
    """Refuse a CSV body of more than max_rows lines after its header or a line of more than
    max_width cells, counted on the bytes (a C-speed count, before anything is decoded or
    parsed). Both counts are upper bounds of the rows and cells the body holds: blank lines and
    the line breaks inside quoted cells count as lines, quoted commas as separators."""
    end = len(body.rstrip())  # blank lines at the end are no rows
    breaks = body.count(b"\n", 0, end) + body.count(b"\r", 0, end) - body.count(b"\r\n", 0, end)
    if breaks > max_rows:
        raise InvalidInput(
            f"the CSV body has {breaks} lines after its header row; the limit is {max_rows} rows per "
            "request (MADE_MAX_ROWS)"
        )
    if body.count(b",", 0, end) < max_width:
        return  # no line can hold more cells
    for number, line in enumerate(body[:end].splitlines(), 1):  # at most max_rows + 1 lines
        cells = line.count(b",") + 1
        if cells > max_width:
            raise InvalidInput(
                f"CSV line {number} has {cells} columns; the limit is {max_width} per row (MADE_MAX_WIDTH)"
            )


def parse_csv(schema: Schema, text: str) -> tuple[np.ndarray, list[str], list[list[str]]]:
    """CSV text with a header row -> (encoded (N, C), the header, the rows as read). Columns the
    model does not know are kept for the answer, not modelled. A cell over MAX_CSV_CELL
    characters is refused naming its line and column."""
    text = text.lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows: list[list[str]] = []
    done = 0  # the lines read before the row being read
    try:
        for row in reader:
            _check_cells(row, reader.line_num)
            done = reader.line_num
            if header is None:
                header = [h.strip() for h in row]
            elif row and any(c.strip() for c in row):
                rows.append(row)
    except csv.Error as exc:
        line = reader.line_num
        if "field larger than field limit" in str(exc):
            column = _long_cell_column(text, done)
            raise InvalidInput(
                f"CSV line {line}, column {column}: a cell is longer than {MAX_CSV_CELL} characters (the limit)"
            ) from None
        raise InvalidInput(f"the CSV body cannot be read at line {line}: {exc}") from None
    if header is None:
        raise InvalidInput("the CSV body is empty; it needs a header row of column names")
    if not set(header) & set(schema.names):
        raise InvalidInput(f"the CSV header names none of the model's columns ({', '.join(schema.names)})")
    if not rows:
        raise InvalidInput("the CSV body has a header row but no rows")
    where = {name: header.index(name) for name in schema.names if name in header}
    out = np.full((len(rows), len(schema)), np.nan)
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise InvalidInput(f"CSV row {i} has {len(row)} cells, the header {len(header)}")
        for j, col in enumerate(schema.columns):
            if col.name not in where:
                continue
            cell = row[where[col.name]].strip()
            can_be_absent = col.nullable or ABSENT_LEVEL in col.levels
            if cell in MISSING_CELLS and not can_be_absent:
                continue  # unknown
            try:
                out[i, j] = col.encode_cell(cell, f"CSV row {i}")
            except DataError as exc:
                raise InvalidInput(str(exc), loc=("csv", i, col.name)) from None
    return out, header, rows


def _check_cells(row: list[str], line: int) -> None:
    if row and max(map(len, row)) > MAX_CSV_CELL:
        j = next(j for j, cell in enumerate(row) if len(cell) > MAX_CSV_CELL)
        raise InvalidInput(
            f"CSV line {line}, column {j + 1}: a cell of {len(row[j])} characters; the limit is {MAX_CSV_CELL}"
        )


def _long_cell_column(text: str, done: int) -> int:
    """The column (from 1) of the first cell over MAX_CSV_CELL characters in the row that starts
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
        elif not quoted and ch == ",":
            column, length = column + 1, 0
        elif not quoted and ch in "\r\n":
            break
        else:
            length += 1
            if length > MAX_CSV_CELL:
                break
    return column


# Spreadsheets run a cell that begins with one of these as a formula (OWASP, CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape_formula(cell: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (=, +, -, @, a tab or a carriage
    return first), with a leading ' (OWASP's advice); numbers (-3.5, +1e3, -inf) and cells of
    other types as they are. The one place every CSV the project writes escapes its cells."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_STARTS):
        try:
            float(cell)
        except ValueError:
            return "'" + cell
    return cell


def escape_formulas(cells: list[Any]) -> list[Any]:
    """The cells of a row or a column with escape_formula applied (the same list when none needs it)."""
    if not any(isinstance(c, str) and c.startswith(_FORMULA_STARTS) for c in cells):
        return cells
    return [escape_formula(c) for c in cells]


def to_csv(header: list[str], rows: list[list[Any]], *, escape: bool = True) -> str:
    """CSV text (None and NaN as empty cells); escape: text cells escaped as escape_formula says."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    clean = (["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in r] for r in rows)
    writer.writerow(escape_formulas(header) if escape else header)
    writer.writerows((escape_formulas(r) for r in clean) if escape else clean)
    return buffer.getvalue()


def decode_records(schema: Schema, values: np.ndarray) -> list[dict[str, Any]]:
    return schema.decode_rows(values)
