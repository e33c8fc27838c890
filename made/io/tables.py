"""Tables of named columns: CSV files with a header row (or Parquet), split into train/valid/test
files as bit data sets are; the schema inferred from the training split (or given); and the UCI
bit sets read as categories through their one-hot groups.

Inference, column by column over the training split's cells (empty, `NA` and `NaN` cells are
absent):
- numbers only (with a leading zero in fewer than LEADING_ZERO_SHARE of the cells): two values and
  never absent -> binary; integers with at most MAX_INT_LEVELS distinct values -> categorical; otherwise numeric
  (log-transformed when all values are positive and the distribution is skewed), recorded at
  the resolution of the bulk of its cells and bounded by the training values
  (`numeric_precision`, `numeric_bounds`; docs/tables.md, "Bounds, precision and the schema");
- numbers in NUMBER_SHARE of the cells, numeric but for the rest (`n/a`, `-`, or numbers with a
  decimal comma) -> an error naming those cells and their lines (_refuse_spoiled_numbers);
- anything else (codes such as the zip 02681 included) -> categorical, unless almost every row
  has its own value (free text: an error naming the column, which `--drop-columns` leaves out).
A given schema (--schema) is read as it is, but for the fields its numeric columns leave out
(complete_schema).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from made.core.bounds import value_bounds
from made.core.errors import DataError
from made.core.schema import (
    ABSENT,
    ABSENT_LEVEL,
    DEFAULT_COMPONENTS,
    MAX_ATOMS,
    MAX_DECIMALS,
    MISSING_CELLS,
    UNSET_ATOMS,
    Column,
    Schema,
    round_to_precision,
    transformed,
)
from made.io.csv import UNKNOWN_CELL, arrow_cells, check_header, read_rows, sniff_delimiter, table_cell
from made.io.data import SPLITS, dataset_name, resolve, split_files

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")
MAX_INT_LEVELS = 20  # integer columns with at most this many values are categories (counts, codes)
MAX_LEVELS = 1000  # more distinct strings than this (or than half the rows) is free text
PRECISION_SHARE = 0.99  # a numeric column's resolution: the fewest decimals that write this share of its cells
# bounds: the training range widened on either side by BOUND_MARGIN / sqrt(rows) of it, one rule at
# every size (numeric_bounds says why): 900 rows 10%, 43,152 (diamonds) 1.4%, 124 (wine) 27%, 36 50%
BOUND_MARGIN = 3.0
# a numeric column's value gets a point mass of its own (numeric_atoms) where it holds this share
# of the present cells, and this many times the share of any value within ATOM_REACH grid steps
ATOM_SHARE = 0.05
ATOM_RATIO = 4.0
ATOM_REACH = 2
# a column at least this share of whose present cells are numbers is numeric: the rest are refused,
# named, rather than read as levels (_refuse_spoiled_numbers)
NUMBER_SHARE = 0.9
# a category whose present cells are this share numbers or more (and not a few integers) is noted:
# its numbers became levels because of its other cells (_note_numbers_as_levels)
NUMBERS_AS_LEVELS_SHARE = 0.5
# a column whose number-like cells are written with a leading zero (02681, 007) in at least this
# share of its present cells is one of codes (a category of the cells as written)
LEADING_ZERO_SHARE = 0.01


@dataclass
class TableDataset:
    name: str
    source: str
    schema: Schema
    splits: dict[str, np.ndarray]  # split -> (N, C) float64 encoded cells (see made.core.schema)
    image_shape: list[int] | None = None
    notes: list[str] = field(default_factory=list)  # where a few cells decided the inferred schema

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
    columns = [arrow_cells(table.column(i)) for i in range(table.num_columns)]
    rows = [list(r) for r in zip(*columns, strict=True)]
    return header, rows, list(range(1, len(rows) + 1))


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _is_infinite(text: str) -> bool:
    try:
        return math.isinf(float(text))
    except ValueError:
        return False


def _decimals(text: str) -> int:
    """The decimal places a number needs as written: trailing zeros do not count (`118.0` is a
    whole number, `5.10` has 1), and exponent notation counts its exponent (`1.5e-05` has 6)."""
    text = text.strip().lower().lstrip("+-")
    mantissa, _, exponent = text.partition("e")
    fraction = mantissa.split(".", 1)[1].rstrip("0") if "." in mantissa else ""
    try:
        shift = int(exponent) if exponent else 0
    except ValueError:
        return 0
    return max(len(fraction) - shift, 0)


# --- inference -------------------------------------------------------------------------------------
def infer_column(
    name: str, cells: list[str], source: str, notes: list[str] | None = None, lines: list[int] | None = None
) -> Column:
    """A column's kind, levels, scaling, precision and bounds from its training cells; `notes`
    collects where a handful of cells decided something (shown by `made train`); `lines`, each
    cell's file line, lets an error name where a cell is (else its row)."""
    # `?` (unknown) is neither a value nor absent: encode_table refuses it, naming its line
    absent = sum(c.strip() in MISSING_CELLS for c in cells)
    present = [c.strip() for c in cells if c.strip() not in MISSING_CELLS and c.strip() != UNKNOWN_CELL]
    distinct = sorted(set(present))
    parsed = [_number(c) for c in distinct]
    numbers = [n for n in parsed if n is not None]
    infinite = [c for c, n in zip(distinct, parsed, strict=True) if n is None and _is_infinite(c)]
    if infinite and len(numbers) + len(infinite) == len(distinct):
        raise DataError(
            f"{source}: column '{name}' holds {infinite[0]!r}, not a finite number; a numeric column's cells "
            "are finite numbers (an empty cell, NA or NaN for an absent one)"
        )
    # a number written with a leading zero (02681, 007) is a code: no number formatter writes
    # one, and read as a number it loses its zeros (02681 and 2681 become one value)
    zeros = [c for c in present if _LEADING_ZERO.match(c) and _number(c) is not None]
    # ... where they are a share of the column (LEADING_ZERO_SHARE): one stray '-05' among 300
    # temperatures made a category of 113 levels; it is now read as its number, with a note
    codes = len(zeros) >= LEADING_ZERO_SHARE * max(len(present), 1) and bool(zeros)
    if zeros and not codes and notes is not None:
        at = next(i for i, c in enumerate(cells) if c.strip() == zeros[0])
        where = f"line {lines[at]}" if lines is not None else f"row {at + 1}"
        notes.append(
            f"column {name}: {len(zeros):,} cell{'s' * (len(zeros) != 1)} written with a leading zero "
            f"({zeros[0]!r} on {where}) read as {'numbers' if len(zeros) != 1 else 'a number'}; a column of "
            f"codes has them in {LEADING_ZERO_SHARE:.0%} of its cells or more"
        )
    if distinct and len(numbers) == len(distinct) and not codes:
        values = _number_levels(numbers, distinct)
        if len(distinct) <= 2 and absent == 0:
            levels = [t for _, t in values]
            if len(levels) == 1:
                return Column(name, "categorical", tuple(levels))
            return Column(name, "binary", tuple(levels))
        if _few_integers(numbers):
            levels = [t for _, t in values] + ([ABSENT_LEVEL] if absent else [])
            return Column(name, "categorical", tuple(levels))
        return _numeric_column(name, present, absent > 0, notes, source)
    if not distinct:
        raise DataError(
            f"{source}: column '{name}' is empty in every row; leave it out with --drop-columns {shlex.quote(name)}"
        )
    if not codes:
        _refuse_spoiled_numbers(name, cells, source, lines)
    if len(distinct) > MAX_LEVELS or (len(distinct) > 50 and len(distinct) > len(cells) / 2):
        why = ""
        if codes and len(numbers) >= NUMBER_SHARE * len(distinct):
            zero = next(c for c in distinct if _LEADING_ZERO.match(c))
            why = f"; they are numbers, read as codes since {zero!r} has a leading zero: write numbers without one"
        raise DataError(
            f"{source}: column '{name}' looks like free text ({len(distinct)} distinct values in "
            f"{len(cells)} rows, e.g. {distinct[0]!r}{why}); leave it out with --drop-columns {shlex.quote(name)}, "
            "or, if it is a category, list its levels in a --schema file (made schema writes one to edit)"
        )
    _note_padded_levels(name, cells, notes)
    _note_numbers_as_levels(name, present, notes, codes)
    levels = distinct + ([ABSENT_LEVEL] if absent and ABSENT_LEVEL not in distinct else [])
    if len(levels) == 2 and not absent:
        return Column(name, "binary", tuple(levels))
    return Column(name, "categorical", tuple(levels))


def _number_levels(numbers: list[float], distinct: list[str]) -> list[tuple[float, str]]:
    """(value, level) of a column's distinct cells that are all numbers, in numeric order. Whole
    numbers as pandas writes an integer column that has blanks (2.0, 5.0) are levels '2' and
    '5', which the cells '2.0' still name (Column.level_of matches by value)."""
    values = sorted(zip(numbers, distinct, strict=True))
    if all(_FLOAT_INTEGER.match(t) for t in distinct) and len(set(numbers)) == len(numbers):
        return [(v, _integer_text(t)) for v, t in values]
    return values


def _integer_text(text: str) -> str:
    """A whole number written with a fractional zero ('2.0', '-0.0') as the integer it is ('2',
    '0'), digit for digit: through a float, 12345678901234567891.0 became ...7168."""
    return str(int(Decimal(text)))


def _integer_levels(col: Column) -> bool:
    """Whether a category's levels, but its absent one, are whole numbers written as integers
    (as _number_levels writes those pandas wrote 2.0)."""
    levels = [v for v in col.levels if v != ABSENT_LEVEL]
    return bool(levels) and all(_INTEGER.match(v) for v in levels)


def _note_numbers_as_levels(name: str, present: list[str], notes: list[str] | None, codes: bool) -> None:
    """A note where a column mostly of numbers becomes a category because of its other cells (`n/a`,
    `missing`: too many for _refuse_spoiled_numbers to take them for a few bad cells): each number
    is then a level of its own, with no order between them, and a value between two of them has
    no probability; a temperature column with 20% `n/a` became 100 levels without a word. Nothing
    where the numbers alone would make a category too (a few integers, two values), nor for codes
    (numbers written with a leading zero)."""
    if notes is None or codes:
        return
    read = [(c, _number(c)) for c in present]
    numbers = [v for _, v in read if v is not None]
    values = sorted(set(numbers))
    if len(numbers) < NUMBERS_AS_LEVELS_SHARE * len(present) or len(values) <= 2 or _few_integers(values):
        return
    others = Counter(c for c, v in read if v is None)
    shown = ", ".join(f"{t!r} ({n:,})" for t, n in others.most_common(3)) + (", ..." if len(others) > 3 else "")
    notes.append(
        f"column {name}: {len(numbers):,} of its {len(present):,} cells are numbers, read as levels of a "
        f"category since the others are not ({shown}); where those mean absent, write them as empty cells "
        "(or NA) and the column is read as a number"
    )


def _note_padded_levels(name: str, cells: list[str], notes: list[str] | None) -> None:
    """A note where cells differ from a level only by the spaces around them ('Paris ' read as
    'Paris'): every reader strips a cell, so they are one level, and the note says so rather
    than merge them unseen (a level that should be its own needs another spelling)."""
    if notes is None:
        return
    padded = [c for c in cells if c != c.strip() and c.strip() and c.strip() not in MISSING_CELLS]
    if padded:
        first = padded[0]
        notes.append(
            f"column {name}: {len(padded):,} cells have spaces around them, read as the level without "
            f"({first!r} as {first.strip()!r})"
        )


_LEADING_ZERO = re.compile(r"[+-]?0\d")  # 02681, -007: not 0, 0.5 or 0e3
# a whole number written with a fractional zero, as pandas writes an integer column with blanks
_FLOAT_INTEGER = re.compile(r"^[+-]?\d+\.0+$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")  # 102,88 (a decimal comma), 1,000 (a thousands separator)
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+")  # 1,200 and 12,345,678: groups of three


def _few_integers(numbers: list[float]) -> bool:
    """Whether a column's distinct numbers are a category of counts or codes: integers, at most
    MAX_INT_LEVELS of them."""
    return len(numbers) <= MAX_INT_LEVELS and all(n.is_integer() for n in numbers)


def _refuse_spoiled_numbers(name: str, cells: list[str], source: str, lines: list[int] | None) -> None:
    """Refuse a column that is numeric but for a few cells: where at least NUMBER_SHARE of its
    present cells are numbers (or numbers written with a ',', a decimal comma), and those numbers
    alone would make a numeric column, the rest are not values of a category but cells the reader
    did not take for numbers (`n/a`, `-`, `102,88`); read as text, every value would become a level
    of its own, or the column free text. A column whose numbers infer_column would make a category
    (a few integers: 0..4 and `5+`; two values, never absent) stays one, as without the text."""
    where: dict[str, int] = {}  # each present cell's text -> the index of its first row
    for i, cell in enumerate(cells):
        text = cell.strip()
        if text not in MISSING_CELLS and text != UNKNOWN_CELL:
            where.setdefault(text, i)
    count = {t: 0 for t in where}
    for cell in cells:
        if cell.strip() in count:
            count[cell.strip()] += 1
    numbers = {t: _number(t) for t in where}
    commas = {t: float(t.replace(",", ".")) for t in where if numbers[t] is None and _DECIMAL_COMMA.fullmatch(t)}
    others = [t for t in where if numbers[t] is None and t not in commas]
    present = sum(count.values())
    read = [v for v in (*numbers.values(), *commas.values()) if v is not None]
    values = sorted(set(read))
    binary = len(values) <= 2 and not any(c.strip() in MISSING_CELLS for c in cells)
    if not read or (not others and not commas) or binary or _few_integers(values):
        return  # no text, or numbers that infer_column would make a category anyway
    bad = sum(count[t] for t in others)
    if bad > (1 - NUMBER_SHARE) * present:
        return
    first = sorted(commas or others, key=lambda t: where[t])

    def at(text: str) -> str:
        i = where[text]
        return f"{text!r} on line {lines[i]}" if lines is not None else f"{text!r} in row {i + 1}"

    drop = f"--drop-columns {shlex.quote(name)}"
    if commas:
        n = sum(count[t] for t in commas)
        # 1,200 and 12,345,678 are thousands separated; 102,88 and 1,5 decimal commas
        thousands = all(_THOUSANDS.fullmatch(t) for t in commas)
        how = "thousands=','" if thousands else "decimal=','"
        raise DataError(
            f"{source}: column '{name}' holds numbers written with a ',' ({n:,} of {present:,} cells, e.g. "
            f"{at(first[0])}); a table's numbers have a decimal point and no thousands separator: write the file "
            f"so (pandas: read_csv(..., {how}).to_csv(...)), leave the column out with {drop}, or, if its "
            "cells are codes (1,2 for two labels), list its levels in a --schema file"
        )
    shown = ", ".join(at(t) for t in first[:3]) + (", ..." if len(first) > 3 else "")
    raise DataError(
        f"{source}: column '{name}' holds numbers but {bad:,} of its {present:,} cells are not ({shown}); "
        f"make an absent value's cell empty, NA or NaN (what a table reads as absent) or fix the cells, "
        f"leave the column out with {drop}, or, if it is a category, list its levels in a --schema file"
    )


def numeric_precision(present: list[str]) -> tuple[int | None, str | None]:
    """The decimals a numeric column is recorded at, from the bulk of its cells: the fewest that
    write PRECISION_SHARE of them as they are (None, a density, past MAX_DECIMALS), so that a
    handful of float-formatting artefacts (`9.899999` among values of 1 decimal) does not set
    it; and a note where such a handful exists (None where every cell fits)."""
    places = np.array([_decimals(c) for c in present])
    counts = np.bincount(places)
    covered = np.cumsum(counts) / len(places)
    decimals = int(np.argmax(covered >= PRECISION_SHARE - 1e-12))
    if decimals > MAX_DECIMALS:
        return None, None
    finer = int(counts[decimals + 1 :].sum())
    if not finer:
        return decimals, None
    most = int(places.max())
    note = (
        f"{finer:,} cell{'s' if finer > 1 else ''} of {len(places):,} ha{'ve' if finer > 1 else 's'} up to {most} "
        f"decimals; resolution set to {_resolution_text(decimals)} from the rest (values are read at that precision)"
    )
    return decimals, note


def _resolution_text(decimals: int) -> str:
    return str(np.format_float_positional(10.0**-decimals, trim="-"))


def numeric_bounds(values: np.ndarray, decimals: int | None, log_scale: bool = False) -> tuple[float, float]:
    """A numeric column's bounds from its n training values: [min, max] widened on either side by
    BOUND_MARGIN / sqrt(n) of the range (3/sqrt(n): 10% at 900 rows, 1.4% at 43,152, 27% at 124),
    but not below 0 where no training value is negative (counts, amounts, ages stay non-negative)
    nor above 0 where none is positive, and moved outwards to the column's resolution. A
    continuous column read on a log scale (log_scale) gets its lower margin in log x instead,
    above 0: the density of its log head would grow without limit towards 0.

    Why that margin: how far past the training range a new value plausibly falls. Of n + 1
    exchangeable rows each is the largest with probability 1/(n + 1), so a new row passes the
    training maximum (or minimum) that often, m held-out rows about m/(n + m) of the time; by how
    much is the spacing of the top order statistics, which shrinks as n grows: about range/n where
    the density stays positive up to the end of the support, about range/sqrt(n) where it falls
    linearly to 0 there (a tapering tail), slower (as 1/log n) only for an unbounded exponential or
    Gaussian tail. 3/sqrt(n) of the range is three spacings of the tapering case, at any n: wide
    where a small table's range is a loose guess of its support, a few hundredths on a large table,
    whose range is already close to it (a fixed 10% there lets samples reach far past any value
    the data holds). On the shared tables' held-out splits (10,788, 4,455 and 11,758 rows) one
    value of 52 column ends falls past it (diamonds' table, 43 against 43.2). A held-out value
    beyond the bounds moves them (cover_splits, with a note); a new value beyond them is refused
    naming them (made.core.bounds.check_in_bounds); a --schema file sets a known support by hand."""
    lo, hi = float(values.min()), float(values.max())
    share = BOUND_MARGIN / math.sqrt(max(len(values), 1))
    lower, upper = lo - share * (hi - lo), hi + share * (hi - lo)
    if lo >= 0:
        lower = max(lower, 0.0)
    if hi <= 0:  # the mirror: a column of non-positive values (losses, depths) stays so
        upper = min(upper, 0.0)
    if log_scale and lo > 0:
        # a log-transformed continuous column: the margin in log x, so that the lower bound is
        # above 0 (a density in x grows without limit towards 0 under a log head: log p of 1e-40
        # was +79, the most "normal" of values)
        lower = max(lower, lo * math.exp(-share * math.log(hi / lo)) if hi > lo else lo)
    if decimals is not None:
        r = 10.0**-decimals
        lower = round(math.floor(round(lower / r, 6)) * r, max(decimals, 0))
        upper = round(math.ceil(round(upper / r, 6)) * r, max(decimals, 0))
        if lo >= 0:
            lower = max(lower, 0.0)
        if hi <= 0:
            upper = min(upper, 0.0)
    return lower, upper


def _numeric_column(
    name: str, present: list[str], nullable: bool, notes: list[str] | None = None, source: str = "the table"
) -> Column:
    values = np.array([float(c) for c in present])
    decimals, note = numeric_precision(present)
    if note is not None and notes is not None:
        notes.append(f"column {name}: {note}")
    atoms = numeric_atoms(values, decimals)
    # transform, loc and scale are the logistics': of the values no atom holds (a column of 70%
    # zeros and positive amounts is the amounts' log-scale mixture beside a point mass at 0)
    rest = values[~np.isin(round_to_precision(Column(name, "numeric", decimals=decimals, components=1), values), atoms)]
    rest = rest if len(rest) else values
    transform = "none"
    with np.errstate(over="ignore", invalid="ignore"):  # values near 1e300: refused below
        if rest.min() > 0 and rest.std() > 0 and values.min() >= 0 and (values.min() > 0 or decimals is not None):
            skew = float(np.mean(((rest - rest.mean()) / rest.std()) ** 3))
            transform = "log" if skew > 1.0 else "none"
    col = Column(
        name, "numeric", transform=transform, decimals=decimals, nullable=nullable, components=DEFAULT_COMPONENTS
    )
    loc, scale = _loc_scale(col, rest, source)
    lower, upper = numeric_bounds(values, decimals, log_scale=transform == "log" and decimals is None)
    return Column(
        name,
        "numeric",
        transform=transform,
        loc=loc,
        scale=scale,
        decimals=decimals,
        nullable=nullable,
        components=DEFAULT_COMPONENTS,
        lower=lower,
        upper=upper,
        atoms=atoms,
    )


def numeric_atoms(values: np.ndarray, decimals: int | None) -> tuple[float, ...]:
    """The values of a numeric column (its present training values, read at `decimals`) that get
    a point mass of their own (Column.atoms), most frequent first, at most MAX_ATOMS: each holds
    at least ATOM_SHARE of the cells, and ATOM_RATIO times the share of the busiest value within
    ATOM_REACH steps of the grid on either side (none for a continuous column).

    Why: a mixture of logistics gives a value's rounding bin about what it gives the bins beside
    it, unless a component is as narrow as the bin. At a resolution fine against the column's
    spread (cents of amounts in thousands: a bin 3e-6 of the spread wide) the optimizer never
    places one there: a column of 70% exact zeros got 0.45% zeros in its samples and paid 5.6
    nats a zero (docs/tables.md, "Point masses"). A bin with several times its neighbours'
    share is such a spike; a value among similar neighbours (counts 0, 1, 2 of 30% 25% 15%, a
    peak of a smooth density on a coarse grid) is left to the logistics, which model it as
    well, and ATOM_SHARE keeps a value of a handful of repeats (1% of cells at 1.00 carat) from
    getting an output of its own."""
    if not len(values):
        return ()
    v = values if decimals is None else np.round(values, decimals) + 0.0
    uniq, counts = np.unique(v, return_counts=True)
    share = dict(zip(uniq.tolist(), (counts / len(v)).tolist(), strict=True))
    atoms: list[float] = []
    for i in np.argsort(-counts, kind="stable").tolist():
        value, held = float(uniq[i]), float(counts[i] / len(v))
        if held < ATOM_SHARE or len(atoms) == MAX_ATOMS:
            break
        near = 0.0
        if decimals is not None:
            r = 10.0**-decimals
            steps = [k for k in range(-ATOM_REACH, ATOM_REACH + 1) if k]
            near = max(share.get(round(value + k * r, max(decimals, 0)) + 0.0, 0.0) for k in steps)
        if held >= ATOM_RATIO * near:
            atoms.append(value)
    return tuple(atoms)


def _loc_scale(col: Column, values: np.ndarray, source: str) -> tuple[float, float]:
    """The mean and spread of a numeric column's values under its transform, which standardise
    them to the network's input (made.core.schema.standardise); a log column's zeros read as
    input_value reads them."""
    v = values
    if col.transform == "log":
        v = np.maximum(v, col.resolution / 2 if col.decimals is not None else np.finfo(np.float64).tiny)
    t = transformed(col, v)
    with np.errstate(over="ignore", invalid="ignore"):
        scale, loc = float(t.std()) or 1.0, float(t.mean())
    if not (math.isfinite(scale) and math.isfinite(loc)):
        raise DataError(
            f"{source}: column '{col.name}': values up to {np.abs(values).max():g} spread too far to model (their "
            "mean or spread overflows a float64); divide the column by a power of ten first"
        )
    return loc, scale


def infer_schema(
    header: list[str],
    rows: list[list[str]],
    source: str,
    notes: list[str] | None = None,
    lines: list[int] | None = None,
) -> Schema:
    """The schema of a table's training cells, column by column (infer_column); `lines`, each
    row's file line, for errors that name a cell."""
    return Schema(
        tuple(infer_column(name, [r[j] for r in rows], source, notes, lines) for j, name in enumerate(header))
    )


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
            for spelling in MISSING_CELLS - codes.keys():
                codes[spelling] = codes[ABSENT_LEVEL]
        return np.array([codes[c.strip()] for c in cells])
    values = np.array([ABSENT if c.strip() in MISSING_CELLS else float(c) for c in cells])
    if (values == ABSENT).any() and not col.nullable:
        raise ValueError("absent")
    finite = values[values != ABSENT]
    if not np.isfinite(finite).all() or (col.transform == "log" and (finite < 0).any()):
        raise ValueError("bad number")
    held = round_to_precision(col, finite)  # read at the column's precision (Column.encode_cell)
    if col.bounded:
        lo, hi = value_bounds(col)
        if (held < lo).any() or (held > hi).any():
            raise ValueError("out of bounds")
    values[values != ABSENT] = held
    return values


# --- data sets -------------------------------------------------------------------------------------
# Data lines is_table_file reads to tell a table from a matrix of bits
SNIFF_LINES = 1000


def is_table_file(path: Path) -> bool:
    """A CSV whose first line names its columns (half its cells or more are not numbers: a header
    may name a column 2023) and whose cells are not all 0/1 in its first SNIFF_LINES lines (or
    any Parquet file) is a table; a header-less 0/1 matrix stays bit data. One line of 0/1 cells
    (a table whose first row happens to be 1,0) no longer makes a table bits."""
    if path.suffix == ".parquet":
        return True
    named, bits = _sniff(path)
    return named and not bits


def is_headered_bits(path: Path) -> bool:
    """A CSV whose first line names its columns over cells all 0/1 (in its first SNIFF_LINES
    lines): bit data for `made train` (columns by position, the names not kept), a table of
    binary columns with `--schema`."""
    named, bits = _sniff(path)
    return named and bits


def _sniff(path: Path) -> tuple[bool, bool]:
    """(whether the first line names columns, whether the next SNIFF_LINES lines hold only 0/1)
    of a text file; (False, False) for anything else."""
    if path.suffix not in (".csv", ".tsv", ".txt") or not path.is_file():
        return False, False
    with open(path, encoding="utf-8-sig", newline="") as fh:
        first = fh.readline()
        lines = list(itertools.islice(fh, SNIFF_LINES))
    delimiter = sniff_delimiter(first) or ","
    head = [c.strip() for c in next(csv.reader([first], delimiter=delimiter), [])]
    if not head or 2 * sum(_number(h) is None for h in head) < len(head):
        return False, False
    return True, all(c.strip() in ("0", "1") for row in csv.reader(lines, delimiter=delimiter) for c in row)


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
        base = next((path.stem.removesuffix(f"_{s}") for s in SPLITS if path.stem.endswith(f"_{s}")), path.stem)
        raise DataError(
            f"no '{missing[0]}' file found beside {path} (name them {base}_train{path.suffix}, "
            f"{base}_valid{path.suffix} and {base}_test{path.suffix}; `made split` writes them from one file)"
        )
    read = {s: read_table(files[s]) for s in splits}
    sources = {s: str(f) for s, f in files.items() if s in splits}
    return table_dataset(read, sources, dataset_name(files[splits[0]]), str(path), schema, drop_columns)


def table_dataset(
    read: dict[str, tuple[list[str], list[list[str]], list[int]]],
    sources: dict[str, str],
    name: str,
    source: str,
    schema: Schema | None = None,
    drop_columns: tuple[str, ...] = (),
) -> TableDataset:
    """The TableDataset of tables already read (read_table's header, rows and lines by split;
    `sources` names each split in errors): load_table_dataset's files, or the splits `made
    schema` draws from one file in memory, read the one way. The schema is inferred from the
    training split unless given; a given one's left-out numeric fields are inferred from it
    (complete_schema)."""
    notes: list[str] = []
    first = next(iter(read))
    if schema is None:
        header, rows, lines = read.get("train") or read[first]
        unknown = [c for c in drop_columns if c not in header]
        if unknown:
            raise DataError(
                f"--drop-columns names {unknown[0]!r}, which {source} does not have (it has: {', '.join(header)})"
            )
        keep = [j for j, h in enumerate(header) if h not in drop_columns]
        schema = infer_schema(
            [header[j] for j in keep], [[r[j] for j in keep] for r in rows], sources.get("train", source), notes, lines
        )
        schema = held_out_levels(schema, {s: (h, r) for s, (h, r, _) in read.items() if s != "train"}, notes)
        bare = Schema(tuple(replace(c, lower=None, upper=None) for c in schema.columns))
        arrays = {s: encode_table(bare, h, r, lines, sources[s]) for s, (h, r, lines) in read.items()}
        schema = cover_splits(schema, arrays, notes)
    else:
        header = (read.get("train") or read[first])[0]
        left_out = [h for h in header if h not in schema.names]
        if left_out:  # a --schema file models the columns it lists; say which of the table's it leaves
            names = ", ".join(left_out)
            notes.append(
                f"column {names} of the table is not in the schema: left out, not modelled"
                if len(left_out) == 1
                else f"columns {names} of the table are not in the schema: left out, not modelled"
            )
        if schema.unset:
            header, rows, lines = read.get("train") or read[first]
            schema = complete_schema(schema, header, rows, sources.get("train", source), notes)
        arrays = {s: encode_table(schema, h, r, lines, sources[s]) for s, (h, r, lines) in read.items()}
    return TableDataset(name=name, source=source, schema=schema, splits=arrays, notes=notes)


def complete_schema(
    schema: Schema, header: list[str], rows: list[list[str]], source: str, notes: list[str] | None = None
) -> Schema:
    """A --schema file's schema with the fields its numeric columns leave out (Schema.unset:
    transform, loc, scale, decimals, nullable) inferred from the training split's cells, as an
    inferred schema has them (infer_column), with a note naming them. Inferred, not refused: a
    numeric column written by hand as `{"name": "price", "kind": "numeric"}` otherwise trained
    with loc 0 and scale 1, a column around 1e12 to an NLL of 3e11 without a word. loc and scale
    are those of the column's transform (the file's, or the inferred one). Bounds left out stay
    none (a missing `lower` or `upper` means no bound); a column whose cells are not all numbers
    is left for encode_table to refuse, naming the cell; one with no value to infer from is
    refused naming the column and the field."""
    unset = dict(schema.unset)
    columns = list(schema.columns)
    for j, col in enumerate(columns):
        missing = tuple(f for f in unset.get(col.name, ()) if f != UNSET_ATOMS)
        if col.kind != "numeric" or col.name not in header:
            continue
        if not missing:
            if UNSET_ATOMS in unset.get(col.name, ()):
                columns[j] = _inferred_atoms(col, [r[header.index(col.name)] for r in rows], notes)
            continue
        k = header.index(col.name)
        cells = [r[k].strip() for r in rows]
        present = [c for c in cells if c not in MISSING_CELLS and c != UNKNOWN_CELL]
        values = np.array([_number(c) for c in present], dtype=np.float64)
        if not present:
            raise DataError(
                f"{source}: column '{col.name}' of the --schema file has no {missing[0]!r}, and the training "
                f"split holds no value to infer it from; give {missing[0]!r} in the schema file"
            )
        if np.isnan(values).any():
            continue  # a cell that is not a finite number: encode_table refuses it, naming its line
        inferred = _numeric_column(col.name, present, len(present) < len(cells), None, source)
        if inferred.transform == "log" and col.lower is not None and col.lower < 0:
            inferred = replace(inferred, transform="none")  # the file's bounds hold negative values
        fields = {f: getattr(inferred, f) for f in ("transform", "decimals", "nullable") if f in missing}
        filled = replace(col, **fields)
        if "loc" in missing or "scale" in missing:
            # of the values no atom holds, as inference standardises them (_numeric_column): the
            # file's atoms, or those it leaves to be inferred
            atoms = inferred.atoms if UNSET_ATOMS in unset.get(col.name, ()) else filled.atoms
            rest = values[~np.isin(round_to_precision(filled, values), atoms)] if atoms else values
            loc, scale = _loc_scale(filled, rest if len(rest) else values, source)
            filled = replace(
                filled,
                loc=loc if "loc" in missing else filled.loc,
                scale=scale if "scale" in missing else filled.scale,
            )
        if notes is not None:
            shown = ", ".join(f"{f} {_field_text(getattr(filled, f))}" for f in missing)
            notes.append(f"column {col.name}: the --schema file leaves out {shown}: inferred from the training split")
        if UNSET_ATOMS in unset.get(col.name, ()):
            filled = _inferred_atoms(filled, cells, notes)
        columns[j] = filled
    return Schema(tuple(columns))


def _inferred_atoms(col: Column, cells: list[str], notes: list[str] | None) -> Column:
    """A --schema file's numeric column that leaves out "atoms", with those numeric_atoms finds
    in its training cells (of them, the values the column can hold), and a note where there are
    any; "atoms": [] in the file keeps it without. A cell that is not a number is left for
    encode_table to refuse."""
    present = [c.strip() for c in cells if c.strip() not in MISSING_CELLS and c.strip() != UNKNOWN_CELL]
    values = np.array([_number(c) for c in present], dtype=np.float64)
    if not len(values) or np.isnan(values).any():
        return col
    found = numeric_atoms(values, col.decimals)
    kept: list[float] = []
    for a in found:
        try:
            replace(col, atoms=(*kept, a))
        except DataError:
            continue  # outside the file's bounds, or 0 under a continuous log transform
        kept.append(a)
    if not kept:
        return col
    if notes is not None:
        shown = ", ".join(_field_text(a) for a in kept)
        notes.append(f"column {col.name}: the --schema file leaves out atoms: {shown} inferred from the training split")
    return replace(col, atoms=tuple(kept))


def _field_text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def held_out_levels(schema: Schema, held_out: dict[str, tuple[list[str], list[list[str]]]], notes: list[str]) -> Schema:
    """The inferred schema with each category's levels extended by a value that only a held-out
    split holds (a model must read the rows it is tested on; it learns such a level from no
    training row), with a note naming the column, the split and the value, as cover_splits does
    for bounds. A cell that meets a level by its value (2 for '2.0') adds nothing."""
    columns = list(schema.columns)
    for j, col in enumerate(columns):
        if col.kind == "numeric":
            continue
        added: list[str] = []
        for split, (header, rows) in held_out.items():
            if col.name not in header:
                continue
            k = header.index(col.name)
            for text in sorted({r[k].strip() for r in rows} - set(col.levels) - set(added)):
                if text in MISSING_CELLS or text == UNKNOWN_CELL or col.level_of(text) is not None:
                    continue  # absent, unknown, or a level by its value
                if added and replace(col, kind="categorical", levels=(*col.levels, *added)).level_of(text) is not None:
                    continue  # a level added already, by its value: '7.0' where '7' was met
                # spelt as the training split's levels were: '7.0' beside '2' and '5' is '7'
                level = _integer_text(text) if _FLOAT_INTEGER.match(text) and _integer_levels(col) else text
                added.append(level)
                spelt = "" if level == text else f" (the level {level!r})"
                notes.append(
                    f"column {col.name}: the {split} split holds {text!r}{spelt}, which the training split lacks: "
                    "added to its levels (learned from no training row)"
                )
        if added:
            columns[j] = replace(col, kind="categorical", levels=(*col.levels, *added))
    return Schema(tuple(columns))


def cover_splits(schema: Schema, arrays: dict[str, np.ndarray], notes: list[str]) -> Schema:
    """The inferred schema with each numeric column's bounds widened, where a held-out split
    holds a value beyond those of the training split, to that value (a model must read the rows
    it is tested on), with a note naming the column, the split and the value."""
    columns = list(schema.columns)
    for j, col in enumerate(columns):
        if col.kind != "numeric" or not col.bounded:
            continue
        lower, upper = col.lower, col.upper
        for split, values in arrays.items():
            v = values[:, j]
            v = round_to_precision(col, v[~np.isnan(v) & (v != ABSENT)])
            if not len(v):
                continue
            if lower is not None and v.min() < lower:
                lower = float(v.min())
                notes.append(
                    f"column {col.name}: the {split} split holds {lower:g}, below the training bounds: now its bound"
                )
            if upper is not None and v.max() > upper:
                upper = float(v.max())
                notes.append(
                    f"column {col.name}: the {split} split holds {upper:g}, above the training bounds: now its bound"
                )
        columns[j] = replace(col, lower=lower, upper=upper)
    return Schema(tuple(columns))


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
    _check_group_types(path, data["groups"])
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


def _check_group_types(path: Path, groups: list[dict[str, Any]]) -> None:
    """Refuse a group whose columns are not a non-empty list of integers, or whose "none" is not
    true or false (a string "no" would read as true, 1.5 as bit 1, an empty group vanish)."""
    for g, group in enumerate(groups):
        bits, none = group["columns"], group.get("none", False)
        if not isinstance(bits, list) or not bits or not all(type(b) is int for b in bits):
            raise DataError(
                f"{path}: group {g}'s columns are {json.dumps(bits)}; expected a non-empty list of bit indices"
            )
        if not isinstance(none, bool):
            raise DataError(f"{path}: group {g}'s none is {json.dumps(none)}; expected true or false")


def load_grouped_bits(data: Any, groups: Schema) -> TableDataset:
    """A bit data set (made.io.data.Dataset) read through its groups as categories."""
    arrays = {s: groups.encode_bits(a, f"{data.source}[{s}]") for s, a in data.splits.items()}
    return TableDataset(name=data.name, source=data.source, schema=groups, splits=arrays)
