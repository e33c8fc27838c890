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
import math
from typing import Any

import numpy as np

from made.errors import DataError, InvalidInput
from made.schema import ABSENT_LEVEL, MISSING_CELLS, Schema


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


def parse_csv(schema: Schema, text: str) -> tuple[np.ndarray, list[str], list[list[str]]]:
    """CSV text with a header row -> (encoded (N, C), the header, the rows as read). Columns the
    model does not know are kept for the answer, not modelled."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise InvalidInput("the CSV body is empty; it needs a header row of column names") from None
    if not set(header) & set(schema.names):
        raise InvalidInput(f"the CSV header names none of the model's columns ({', '.join(schema.names)})")
    rows = [r for r in reader if r and any(c.strip() for c in r)]
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


def to_csv(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in r] for r in rows)
    return buffer.getvalue()


def decode_records(schema: Schema, values: np.ndarray) -> list[dict[str, Any]]:
    return schema.decode_rows(values)
