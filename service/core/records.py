"""Records of a table model over HTTP: JSON objects keyed by column name, or CSV text, to the
encoded (N, C) arrays the table engine runs on, and back. Validated once, here; every error
names the record, the column and what the column allows.

Unknown and absent are different things. A key left out of a JSON record, or null, is unknown:
the engine sums it out or imputes it. "NA" (or "") is a value recorded as absent, which a column
whose training data had empty cells models as data. A CSV body is read by the project's one
CSV reader (made.io.csv), as the training files and `made score`'s inputs are: an empty or NA
cell is absent where the column can be absent, else unknown; a column the CSV leaves out is
unknown in every row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from made.core.errors import DataError, InvalidInput
from made.core.schema import Schema
from made.io.csv import NumbersForNames, first_line_delimiter, read_csv_text, table_cell


def parse_records(schema: Schema, records: Any, field: str = "records") -> np.ndarray:
    """A list of JSON objects -> (N, C) float64 encoded cells, NaN where unknown."""
    if not isinstance(records, list) or not records:
        raise InvalidInput(f"{field} must be a non-empty list of objects keyed by column name", loc=(field,))
    out = np.full((len(records), len(schema)), np.nan)
    for i, record in enumerate(records):
        _encode_record(schema, record, out[i], f"{field}[{i}]", (field, i))
    return out


def _encode_record(
    schema: Schema, record: Any, out: np.ndarray, where: str, loc: tuple[str | int, ...], dotted: bool = False
) -> None:
    """One JSON object's cells into `out` (C,); errors name it `where` and its cells
    "where, column 'x'" (or "where.x" when `dotted`), at `loc` (+ the column)."""
    if not isinstance(record, dict):
        raise InvalidInput(f"{where} must be an object keyed by column name, got {type(record).__name__}", loc=loc)
    known = set(schema.names)
    extra = [k for k in record if k not in known]
    if extra:
        raise InvalidInput(f"{where} has no column {extra[0]!r}; {columns_text(schema)}", loc=(*loc, str(extra[0])))
    for j, col in enumerate(schema.columns):
        try:
            out[j] = col.encode_cell(record.get(col.name), where, label=f"{where}.{col.name}" if dotted else None)
        except DataError as exc:
            raise InvalidInput(str(exc), loc=(*loc, col.name)) from None


def parse_given(schema: Schema, given: Any, field: str = "given") -> np.ndarray:
    """{column: value} -> one (C,) row of encoded cells, NaN for the columns not given."""
    if not isinstance(given, dict):
        raise InvalidInput(f"{field} must be an object of column: value", loc=(field,))
    row = np.full(len(schema), np.nan)
    _encode_record(schema, given, row, field, (field,), dotted=True)  # errors: "given.cut: ..."
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
    the line breaks inside quoted cells count as lines, quoted delimiters as separators. The
    delimiter is the one the reader will find in the first line."""
    end = len(body.rstrip())  # blank lines at the end are no rows
    breaks = body.count(b"\n", 0, end) + body.count(b"\r", 0, end) - body.count(b"\r\n", 0, end)
    if breaks > max_rows:
        raise InvalidInput(
            f"the CSV body has {breaks} lines after its header row; the limit is {max_rows} rows per "
            "request (MADE_MAX_ROWS)"
        )
    first = body.find(b"\n", 0, end)
    delimiter = first_line_delimiter(body[: end if first < 0 else first].decode("latin-1")).encode()
    if body.count(delimiter, 0, end) < max_width:
        return  # no line can hold more cells
    for number, line in enumerate(body[:end].splitlines(), 1):  # at most max_rows + 1 lines
        cells = line.count(delimiter) + 1
        if cells > max_width:
            raise InvalidInput(
                f"CSV line {number} has {cells} columns; the limit is {max_width} per row (MADE_MAX_WIDTH)"
            )


def parse_csv(schema: Schema, text: str, model: str = "") -> tuple[np.ndarray, list[str], list[list[str]]]:
    """CSV text with a header row -> (encoded (N, C), the header, the rows as read), read by the
    project's one CSV reader (made.io.csv: the delimiter found in the first line, a column named
    twice refused, an empty cell absent where the column can be absent, else unknown). Columns
    the model does not know are kept for the answer, not modelled. A cell over MAX_CSV_CELL
    characters is refused naming its line and column. `model`: the default model's name where
    the request named none, for the error of a header that names none of its columns."""
    try:
        header, rows = read_csv_text(text, "CSV", max_cell=MAX_CSV_CELL)
    except DataError as exc:
        if schema == Schema.bits(len(schema)) and isinstance(exc, NumbersForNames):
            # a header-less file of 0/1 rows, as `made score` reads one: say which header it needs
            raise InvalidInput(
                f"{exc}: for a model of bits, x0,x1,...,x{len(schema) - 1} ({len(schema)} columns; "
                "made score reads a file without one)"
            ) from None
        raise InvalidInput(str(exc)) from None
    if not set(header) & set(schema.names):
        raise InvalidInput(_no_column(schema, model))
    if not rows:
        raise InvalidInput("the CSV body has a header row but no rows")
    where = {name: header.index(name) for name in schema.names if name in header}
    out = np.full((len(rows), len(schema)), np.nan)
    for i, row in enumerate(rows):
        for j, col in enumerate(schema.columns):
            if col.name in where:
                try:
                    out[i, j] = table_cell(col, row[where[col.name]], f"CSV row {i}")
                except DataError as exc:
                    raise InvalidInput(str(exc), loc=("csv", i, col.name)) from None
    return out, header, rows


def _no_column(schema: Schema, model: str) -> str:
    """The error of a CSV header that names none of the model's columns: sent without ?model= to
    a default model of bits (a table meant for a table model), one sentence rather than its D
    names."""
    if model and schema == Schema.bits(len(schema)):
        return (
            f"this CSV's header names no column of model {model!r} (a model of {len(schema)} bits, "
            f"x0..x{len(schema) - 1}); name the model with ?model=NAME"
        )
    return f"the CSV header names none of the model's columns ({', '.join(schema.names)})"


def decode_records(schema: Schema, values: np.ndarray) -> list[dict[str, Any]]:
    return schema.decode_rows(values)


LISTED_COLUMNS = 20  # a longer schema (a model of 784 bits) is summarised, not listed


def columns_text(schema: Schema) -> str:
    """The columns a record may name, for an error: all of them, or for a wide schema its size,
    its first and last names and where to find the rest."""
    names = schema.names
    if len(names) <= LISTED_COLUMNS:
        return f"the columns are {', '.join(names)}"
    return f"the model has {len(names)} columns ({', '.join(names[:3])}, ..., {names[-1]}; GET /models/NAME lists them)"
