"""The column schema of a table model: each column's name, kind, levels or scaling, in one place.

A table model is a MADE whose unit of autoregression is a column: one degree per column, so that
all the input units of a column share its degree, and all the output units that parametrise its
conditional share it too. Binary data is the special case of D binary columns.

Kinds and their units (inputs -> outputs):
- binary: levels (l0, l1) coded 0/1; one input (the code), one output (the logit of level 1).
- categorical: L levels coded 0..L-1; one-hot inputs, L outputs (the logits of a softmax).
- numeric: a number, optionally log-transformed, standardised to y = (t(v) - loc) / scale; one
  input (y), plus an "absent" indicator input when the column is nullable. Outputs: the logit of
  "absent" when nullable, then a mixture of `components` logistics over y (weight logits, means,
  log scales). A number recorded to `decimals` places gets the probability of its rounding bin
  [v - r/2, v + r/2] (r = 10^-decimals), so repeated values (counts, x = 0) have bounded
  likelihoods; `decimals` None is a density. Optional bounds `lower`/`upper` (in the column's
  own units, before any transform) truncate the mixture: its mass inside them is renormalised to
  1, so the model gives no probability outside them (see made.core.heads; docs/tables.md,
  "Bounds, precision and the schema"). A schema without them keeps the unbounded mixture.
  Optional `atoms`: values that each get a point mass beside the logistics (a weight in their
  softmax; an exact 0 in 70% of rows), docs/tables.md "Point masses".

Cells a training table leaves empty or `NA` are data, not gaps: a categorical column gets a level
"NA", a numeric column is nullable. Encoded tables are float64 (N, C) arrays: the level code of a
categorical or binary cell, the value of a numeric one, ABSENT for a numeric cell recorded as NA,
and NaN for a cell that is unknown (summed out or imputed by the engine).

This module (numpy only) owns the schema's JSON form, which the manifest's "columns" holds and
`made train --schema FILE` reads, and the encoding of cells to arrays and back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from made.core.bounds import bounds_text, check_bounds, check_in_bounds, value_bounds
from made.core.errors import DataError, ImpossibleValue

KINDS = ("binary", "categorical", "numeric")
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the network's inputs are float32
ABSENT = np.inf  # an encoded numeric cell recorded as NA (modelled as data)
ABSENT_LEVEL = "NA"  # the level of a categorical cell recorded as empty or NA
# the columns a scored CSV adds to its rows (made score's logprob; /logprob's CSV answer's three):
# a table model's own columns may not have these names, or its scores could not be told from them
ANSWER_COLUMNS = ("logprob", "exact", "stderr")
# how a table file spells an absent cell: empty, R's NA, and NaN as pandas and numpy write a
# missing float (a level of the same text, in a model trained before NaN was read so, stays a level)
MISSING_CELLS = frozenset({"", "NA", "NaN", "nan"})
# The cell that says "unknown" in a table column, whether or not the column can be absent (in a
# CSV, and as a JSON string beside null); a column with a level "?" reads it as that level.
UNKNOWN_CELL = "?"
DEFAULT_COMPONENTS = 5
MAX_ATOMS = 3  # a numeric column's point masses (Column.atoms), at most
MAX_DECIMALS = 6
# the fields of a numeric column that a --schema file may leave out, to be inferred from the
# training split as an inferred schema has them (Schema.read); `decimals: null` is given (a
# density), and a left-out bound is no bound
UNSET_FIELDS = ("transform", "loc", "scale", "decimals", "nullable")
# left out of a --schema file's numeric column, its atoms are inferred too ("atoms": [] is none);
# apart from UNSET_FIELDS, since a schema without atoms is the usual case (made.io.tables.complete_schema)
UNSET_ATOMS = "atoms"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    levels: tuple[str, ...] = ()  # binary and categorical
    # numeric only
    transform: str = "none"  # "none" or "log" (values > 0)
    loc: float = 0.0
    scale: float = 1.0
    decimals: int | None = None  # the precision values are recorded at; None: continuous
    nullable: bool = False
    components: int = 0
    bits: tuple[int, ...] = ()  # grouped bit data: the one-hot bit columns this column stands for
    none_level: bool = False  # grouped bit data: the last level is "no bit set"
    lower: float | None = None  # numeric only: the smallest value the column can hold (None: no bound)
    upper: float | None = None  # numeric only: the largest
    # numeric only: values that so many cells hold (an exact 0 in 70% of rows) that each gets a
    # point mass of its own, a weight in the logistics' softmax (the optimizer cannot place a
    # logistic on a bin 3e-6 of the spread wide); made.core.heads, docs/tables.md "Point masses"
    atoms: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        where = f"column '{self.name}'"
        if self.kind not in KINDS:
            raise DataError(f"{where}: unknown kind '{self.kind}', expected one of {', '.join(KINDS)}")
        if self.kind == "binary" and len(self.levels) != 2:
            raise DataError(f"{where}: a binary column has exactly 2 levels, got {list(self.levels)}")
        if self.kind == "categorical" and not self.levels:
            raise DataError(f"{where}: a categorical column needs its levels")
        if len(set(self.levels)) != len(self.levels):
            raise DataError(f"{where}: its levels repeat: {list(self.levels)}")
        if self.kind == "numeric":
            if self.transform not in ("none", "log"):
                raise DataError(f"{where}: transform must be 'none' or 'log', got '{self.transform}'")
            if not (self.scale > 0 and math.isfinite(self.scale) and math.isfinite(self.loc)):
                raise DataError(f"{where}: scale must be positive and loc finite")
            if self.components < 1:
                raise DataError(f"{where}: a numeric column needs at least 1 mixture component")
            if self.decimals is not None and not -12 <= self.decimals <= 12:
                raise DataError(f"{where}: decimals must be an integer in -12..12 or null")
            check_bounds(self, where)
            self._check_atoms(where)
        elif self.lower is not None or self.upper is not None:
            raise DataError(f"{where}: only a numeric column has bounds (lower, upper)")
        elif self.atoms:
            raise DataError(f"{where}: only a numeric column has atoms (point masses)")

    def _check_atoms(self, where: str) -> None:
        """A DataError naming the column and the atom unless its atoms are at most MAX_ATOMS
        distinct values it can hold: finite, on its grid (`decimals`), within its bounds and
        what the network reads (value_range), > 0 for a continuous log-transformed column."""
        if len(self.atoms) > MAX_ATOMS:
            raise DataError(f"{where}: at most {MAX_ATOMS} atoms, got {len(self.atoms)}")
        if len(set(self.atoms)) != len(self.atoms):
            raise DataError(f"{where}: its atoms repeat: {list(self.atoms)}")
        lo, hi = value_range(self)
        for a in self.atoms:
            if not math.isfinite(a):
                raise DataError(f"{where}: atom {a} is not a finite number")
            if self.decimals is not None and float(np.round(a, self.decimals)) != a:
                raise DataError(f"{where}: atom {a:g} is not a value recorded to {self.decimals} decimals")
            if not lo <= a <= hi or (self.transform == "log" and self.decimals is None and a <= 0):
                raise DataError(
                    f"{where}: atom {a:g} is not a value this column can hold "
                    f"(bounds {bounds_text(self)}{', transform log' if self.transform == 'log' else ''})"
                )

    @property
    def bounded(self) -> bool:
        """Whether the column's mixture is truncated (a numeric column with a lower or upper bound)."""
        return self.lower is not None or self.upper is not None

    @property
    def n_in(self) -> int:
        if self.kind == "categorical":
            return len(self.levels)
        return 1 + int(self.kind == "numeric" and self.nullable)

    @property
    def n_out(self) -> int:
        if self.kind == "categorical":
            return len(self.levels)
        if self.kind == "binary":
            return 1
        return int(self.nullable) + 3 * self.components + len(self.atoms)

    @property
    def resolution(self) -> float:
        return 0.0 if self.decimals is None else 10.0 ** (-self.decimals)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind != "numeric":
            out["levels"] = list(self.levels)
        else:
            out.update(
                transform=self.transform,
                loc=self.loc,
                scale=self.scale,
                decimals=self.decimals,
                nullable=self.nullable,
                components=self.components,
            )
            # only where set: a schema without bounds reads and writes as before them
            out.update({k: v for k, v in (("lower", self.lower), ("upper", self.upper)) if v is not None})
            if self.atoms:  # only where set: a schema without atoms reads and writes as before them
                out["atoms"] = list(self.atoms)
        if self.bits:
            out.update(bits=list(self.bits), none_level=self.none_level)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "schema") -> Column:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data.get("name"):
            raise DataError(f"{where}: each column must be an object with a non-empty 'name'")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise DataError(f"{where}: column '{data['name']}' has unknown fields {extra}")
        try:
            return cls(
                name=data["name"],
                kind=str(data.get("kind", "")),
                levels=tuple(str(v) for v in data.get("levels", ())),
                transform=str(data.get("transform", "none")),
                loc=float(data.get("loc", 0.0)),
                scale=float(data.get("scale", 1.0)),
                decimals=None if data.get("decimals") is None else int(data["decimals"]),
                nullable=bool(data.get("nullable", False)),
                components=int(data.get("components", DEFAULT_COMPONENTS if data.get("kind") == "numeric" else 0)),
                bits=tuple(int(b) for b in data.get("bits", ())),
                none_level=bool(data.get("none_level", False)),
                atoms=_atoms_field(data.get("atoms")),
                lower=None if data.get("lower") is None else float(data["lower"]),
                upper=None if data.get("upper") is None else float(data["upper"]),
            )
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an integer of 400 digits
            raise DataError(f"{where}: column '{data['name']}' is malformed: {exc}") from None

    # --- cells ----------------------------------------------------------------------------------
    def encode_cell(self, value: Any, where: str, *, label: str | None = None) -> float:
        """A cell (a string from a file, or a JSON value) -> its code or value; None or '?' -> NaN
        (unknown).
        `where` names the row for errors ("row 3"), which then name the cell "row 3, column 'x'";
        `label` names the cell itself instead ("given.x")."""
        if value is None:
            return math.nan
        if isinstance(value, str) and value.strip() == UNKNOWN_CELL and UNKNOWN_CELL not in self.levels:
            return math.nan  # '?' means unknown, as in a CSV cell (made.io.csv.table_cell)
        at = label or f"{where}, column '{self.name}'"
        if self.kind == "numeric":
            return self._encode_number(value, at)
        if not isinstance(value, str):
            return float(self._level_of_value(value, at))
        text = value.strip()
        if text in MISSING_CELLS and ABSENT_LEVEL in self.levels and text not in self._level_index:
            text = ABSENT_LEVEL
        index = self.level_of(text)
        if index is None:
            raise ImpossibleValue(f"{at}: {text!r} is not a level of this column; it has {_shown_levels(self.levels)}")
        return float(index)

    def level_of(self, text: str) -> int | None:
        """The level a cell's text names: the level of that text, else the one level of the same
        value ('2' for '2.0', 'true' for 'True'); None where none (or several) do."""
        index = self._level_index.get(text)
        if index is None:
            number = _level_value(text)
            index = None if number is None else self._level_by_value.get(number)
        return index

    def _level_of_value(self, value: Any, at: str) -> int:
        """The level a JSON number or boolean names: the one level of that value (3 names '3' or
        '3.0'; true names 'True', 'true' or '1'); refused where none or several have it."""
        if isinstance(value, bool) or (isinstance(value, int | float) and math.isfinite(value)):
            number = float(value)
            index = self._level_by_value.get(number)
            if index is not None:
                return index
            if number in self._level_by_value:  # several levels of that value: '1' and '1.0'
                same = [v for v in self.levels if _level_value(v) == number]
                raise DataError(
                    f"{at}: {json.dumps(value)} is the value of levels {', '.join(map(repr, same))}; "
                    "send the level's text as a string"
                )
            raise ImpossibleValue(
                f"{at}: {json.dumps(value)} is not a level of this column; it has {_shown_levels(self.levels)}"
            )
        raise DataError(f"{at}: expected one of {_shown_levels(self.levels)}, got {json.dumps(value)}")

    @cached_property
    def _level_index(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.levels)}

    @cached_property
    def _level_by_value(self) -> dict[float, int | None]:
        """Each value some level's text stands for (_level_value) -> that level, or None where
        several levels stand for it."""
        out: dict[float, int | None] = {}
        for i, level in enumerate(self.levels):
            number = _level_value(level)
            if number is not None:
                out[number] = None if number in out else i
        return out

    def _encode_number(self, value: Any, at: str) -> float:
        """A numeric column's cell -> its value, or ABSENT for a cell that spells NA; `at` names
        the cell in errors."""
        if isinstance(value, str):
            text = value.strip()
            if text in MISSING_CELLS:
                if not self.nullable:
                    raise ImpossibleValue(
                        f"{at}: the value is absent ({value!r}) but this column never is in the training data"
                    )
                return ABSENT
            try:
                number = float(text)
            except ValueError:
                raise DataError(f"{at}: {value!r} is not a number") from None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise DataError(f"{at}: expected a number, got {json.dumps(value)}")
        else:
            number = float(value)
        if not math.isfinite(number):
            raise DataError(f"{at}: {number} is not a finite number")
        if self.bounded:
            check_in_bounds(self, number, at)
        if self.decimals is not None:  # read at the column's precision: 100.4 is 100's bin, not one around 100.4
            number = float(np.round(number, self.decimals)) + 0.0
        if self.transform == "log" and (number < 0 or (number == 0 and self.decimals is None)):
            raise ImpossibleValue(f"{at}: {number:g} is not positive; this column holds positive numbers")
        if self.transform == "none" and abs((number - self.loc) / self.scale) > FLOAT32_MAX:
            raise DataError(
                f"{at}: {number:g} is too far from this column's values for the "
                f"model to read (the network reads (value - {self.loc:g}) / {self.scale:g} as a float32)"
            )
        return number

    def decode(self, code: float) -> Any:
        """An encoded cell -> its JSON value (a level name, a number, "NA", or None if unknown)."""
        if math.isnan(code):
            return None
        if self.kind != "numeric":
            return self.levels[int(code)]
        if code == ABSENT:
            return ABSENT_LEVEL
        if self.decimals is None:
            return float(code)
        rounded = round(float(code), self.decimals) + 0.0  # + 0.0: -0.0 is 0.0
        # a whole number as an int, where it is one exactly (past 2^53 a float's digits are
        # noise: 1e300 stays 1e+300, not 301 digits that JSON readers refuse)
        return int(rounded) if self.decimals <= 0 and abs(rounded) < 2.0**53 else rounded


def _atoms_field(value: Any) -> tuple[float, ...]:
    """A column's JSON "atoms": a list of numbers (null or left out: none)."""
    if value is None:
        return ()
    if not isinstance(value, list) or any(isinstance(a, bool) or not isinstance(a, int | float) for a in value):
        raise ValueError(f"atoms must be a list of numbers, got {json.dumps(value)}")
    return tuple(float(a) for a in value)


def _level_value(text: str) -> float | None:
    """The value a level's (or a cell's) text stands for, to match levels by value: a finite
    number ('2', '2.0' and '2e0' are 2), true/false in any case as 1/0; None for other text."""
    lowered = text.strip().lower()
    if "_" in lowered:  # float() reads '1_0' as 10
        return None
    if lowered in ("true", "false"):
        return 1.0 if lowered == "true" else 0.0
    try:
        number = float(lowered)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _shown_levels(levels: tuple[str, ...], limit: int = 12) -> str:
    shown = ", ".join(repr(v) for v in levels[:limit])
    return f"{len(levels)} levels: {shown}{', ...' if len(levels) > limit else ''}"


@dataclass(frozen=True)
class Schema:
    columns: tuple[Column, ...]
    # (column name, fields) of a --schema file's numeric columns that leave out fields an inferred
    # schema fills in (UNSET_FIELDS): the table loader infers them from the training split
    # (made.io.tables.complete_schema); empty for every schema inferred or stored
    unset: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(self.columns) < 2:
            raise DataError(f"a table model needs at least 2 columns, got {len(self.columns)}")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"column names repeat: {dup}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def __len__(self) -> int:
        return len(self.columns)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise DataError(f"unknown column '{name}'; the columns are {', '.join(self.names)}") from None

    # --- units ----------------------------------------------------------------------------------
    @cached_property
    def in_offsets(self) -> np.ndarray:
        """(C + 1,) where each column's input units start (and the total at the end)."""
        return np.concatenate([[0], np.cumsum([c.n_in for c in self.columns])]).astype(np.int64)

    @cached_property
    def out_offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([c.n_out for c in self.columns])]).astype(np.int64)

    @property
    def n_in(self) -> int:
        return int(self.in_offsets[-1])

    @property
    def n_out(self) -> int:
        return int(self.out_offsets[-1])

    @cached_property
    def in_columns(self) -> np.ndarray:
        """(U_in,) the column of each input unit."""
        return np.repeat(np.arange(len(self.columns)), [c.n_in for c in self.columns]).astype(np.int64)

    @cached_property
    def out_columns(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.columns)), [c.n_out for c in self.columns]).astype(np.int64)

    @property
    def all_binary(self) -> bool:
        return all(c.kind == "binary" for c in self.columns)

    # --- arrays ---------------------------------------------------------------------------------
    def network_inputs(self, values: np.ndarray) -> np.ndarray:
        """(N, C) encoded cells -> (N, U_in) float32 network inputs. Unknown (NaN) cells give zero
        inputs: they must be cells the outputs in use cannot see."""
        values = np.asarray(values, dtype=np.float64)
        out = np.zeros((values.shape[0], self.n_in), dtype=np.float32)
        for j, col in enumerate(self.columns):
            v = values[:, j]
            known = ~np.isnan(v)
            start = int(self.in_offsets[j])
            if col.kind == "binary":
                out[known, start] = v[known]
            elif col.kind == "categorical":
                rows = np.flatnonzero(known)
                out[rows, start + v[rows].astype(np.int64)] = 1.0
            else:
                present = known & (v != ABSENT)
                out[present, start] = input_value(col, v[present])
                if col.nullable:
                    out[known & (v == ABSENT), start + 1] = 1.0
        return out

    def encode_rows(self, rows: list[list[Any]], first_row: int = 0, what: str = "row") -> np.ndarray:
        """Rows of cells in column order -> (N, C) float64; errors name row and column."""
        out = np.empty((len(rows), len(self.columns)), dtype=np.float64)
        for i, row in enumerate(rows):
            for j, col in enumerate(self.columns):
                out[i, j] = col.encode_cell(row[j], f"{what} {first_row + i}")
        return out

    def decode_rows(self, values: np.ndarray) -> list[dict[str, Any]]:
        return [{c.name: c.decode(v) for c, v in zip(self.columns, row, strict=True)} for row in values]

    # --- grouped bit data -----------------------------------------------------------------------
    @property
    def bit_dims(self) -> int:
        """The width of the bit rows a grouped-bits schema reads (0 if it is not one)."""
        if not all(c.bits for c in self.columns):
            return 0
        return 1 + max(b for c in self.columns for b in c.bits)

    def encode_bits(self, bits: np.ndarray, where: str) -> np.ndarray:
        """(N, D) 0/1 rows -> (N, C) codes, for a schema of bit groups (--groups)."""
        bits = np.asarray(bits)
        if bits.ndim != 2 or bits.shape[1] != self.bit_dims:
            raise DataError(f"{where} has {bits.shape[-1]} columns; the model reads rows of {self.bit_dims} bits")
        out = np.empty((len(bits), len(self.columns)), dtype=np.float64)
        for j, col in enumerate(self.columns):
            block = bits[:, list(col.bits)]
            if col.kind == "binary" and len(col.bits) == 1:
                out[:, j] = block[:, 0]
                continue
            on = block.sum(axis=1)
            bad = np.flatnonzero((on > 1) | ((on == 0) & ~col.none_level))
            if len(bad):
                r = int(bad[0])
                raise DataError(
                    f"{where} row {r}: bits {list(col.bits)} of column '{col.name}' hold "
                    f"{block[r].tolist()}, not one-hot"
                )
            out[:, j] = np.where(on == 0, len(col.bits), np.argmax(block, axis=1))
        return out

    # --- bit vectors ----------------------------------------------------------------------------
    @classmethod
    def bits(cls, dims: int) -> Schema:
        """The schema of a model of D-bit rows: D binary columns x0..x{D-1}, levels "0" and "1".
        A bit row is already its own encoding (codes 0/1, NaN unknown) and its own network input,
        one unit per column in and out: a bit model's graph and engine are this schema's,
        specialised."""
        return _bit_schema(int(dims))

    # --- JSON -----------------------------------------------------------------------------------
    def to_json(self) -> list[dict[str, Any]]:
        return [c.to_json() for c in self.columns]

    @classmethod
    def from_json(cls, data: Any, where: str = "schema") -> Schema:
        if isinstance(data, dict) and "columns" in data:  # a manifest, or {"columns": [...]}
            data = data["columns"]
        if not isinstance(data, list):
            raise DataError(f"{where}: expected a list of columns (or an object with 'columns')")
        return cls(tuple(Column.from_json(c, where) for c in data))

    @classmethod
    def read(cls, path: str | Path) -> Schema:
        """A --schema file, written by hand or by `made schema`: where a numeric column leaves out
        a field of UNSET_FIELDS, `unset` says so, and the table loader infers it from the training
        split rather than train with from_json's placeholder (loc 0, scale 1: a column around 1e12
        trained to an NLL of 3e11). A stored model's columns (from_json) are complete."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"schema file not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path} as a JSON schema: {exc}") from None
        schema = cls.from_json(data, str(path))
        raw = data["columns"] if isinstance(data, dict) else data
        unset = tuple(
            (
                c["name"],
                tuple(f for f in UNSET_FIELDS if c.get(f) is None and not (f == "decimals" and f in c))
                + ((UNSET_ATOMS,) if UNSET_ATOMS not in c else ()),
            )
            for c in raw
            if c.get("kind") == "numeric"
        )
        return replace(schema, unset=tuple((name, f) for name, f in unset if f))


BIT_LEVELS = ("0", "1")


@lru_cache(maxsize=16)
def _bit_schema(dims: int) -> Schema:
    return Schema(tuple(Column(f"x{d}", "binary", BIT_LEVELS) for d in range(dims)))


def transformed(col: Column, values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if col.transform == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(v)
    return v


def standardise(col: Column, values: np.ndarray) -> np.ndarray:
    """Values in the column's units -> y, the network's input and the mixture's variable."""
    return (transformed(col, values) - col.loc) / col.scale


def input_value(col: Column, values: np.ndarray) -> np.ndarray:
    """The network's input for present numeric values: y, with a log column's zeros (a value that
    rounds to 0) read as half the resolution, so that the input stays finite."""
    v = np.asarray(values, dtype=np.float64)
    if col.transform == "log":
        v = np.maximum(v, col.resolution / 2 if col.decimals is not None else np.finfo(np.float64).tiny)
    return standardise(col, v)


def unstandardise(col: Column, y: np.ndarray) -> np.ndarray:
    t = np.asarray(y, dtype=np.float64) * col.scale + col.loc
    return np.exp(t) if col.transform == "log" else t


def bin_edges(col: Column, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The standardised edges of each value's rounding bin [v - r/2, v + r/2] (a bin that reaches
    zero or below under a log transform starts at -inf: the sampler rounds such draws to it)."""
    r = col.resolution
    v = np.asarray(values, dtype=np.float64)
    lo, hi = v - r / 2, v + r / 2
    if col.transform == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            lo_y = np.where(lo > 0, (np.log(np.maximum(lo, 1e-300)) - col.loc) / col.scale, -np.inf)
            hi_y = np.where(hi > 0, (np.log(np.maximum(hi, 1e-300)) - col.loc) / col.scale, -np.inf)
        return lo_y, hi_y
    return (lo - col.loc) / col.scale, (hi - col.loc) / col.scale


def bin_width(col: Column, values: np.ndarray) -> np.ndarray:
    """hi - lo of bin_edges, computed so that it stays exact where the edges are too close for
    float64 to tell apart (the bin of a huge value, whose probability is then tiny, not zero):
    log(hi / lo) = log1p(r / lo) under a log transform, r otherwise, standardised; inf for a bin
    that starts at -inf."""
    r = col.resolution
    v = np.asarray(values, dtype=np.float64)
    if col.transform == "log":
        lo = v - r / 2
        return np.where(lo > 0, np.log1p(r / np.where(lo > 0, lo, 1.0)) / col.scale, np.inf)
    return np.full(v.shape, r / col.scale)


FLOAT64_MAX = float(np.finfo(np.float64).max)


def value_range(col: Column) -> tuple[float, float]:
    """The smallest and largest present value of a numeric column that encode_cell takes back and
    the network reads: a log-transformed column's values in [0, float64's largest]; a plain
    column's within FLOAT32_MAX of loc in units of its scale (a hair inside it, so that the
    bound survives rounding); and within the column's bounds where it has them."""
    if col.transform == "log":
        lo, hi = 0.0, FLOAT64_MAX
    else:
        reach = col.scale * FLOAT32_MAX * (1.0 - 1e-6)
        lo, hi = max(col.loc - reach, -FLOAT64_MAX), min(col.loc + reach, FLOAT64_MAX)
    if col.bounded:  # within the column's bounds too (a bounded column's draws are already)
        b_lo, b_hi = value_bounds(col)
        lo, hi = max(lo, b_lo), min(hi, b_hi)
    return lo, hi


def drawn_in_range(col: Column, values: np.ndarray) -> np.ndarray:
    """Present numeric values drawn from the model, clipped to value_range: a draw past float64
    (overflowed to inf, which would read as ABSENT) or past what the network reads becomes the
    nearest value the column can hold. NaN stays NaN."""
    lo, hi = value_range(col)
    return np.clip(np.asarray(values, dtype=np.float64), lo, hi)


def round_to_precision(col: Column, values: np.ndarray) -> np.ndarray:
    if col.decimals is None:
        return np.asarray(values, dtype=np.float64)
    return np.round(np.asarray(values, dtype=np.float64), col.decimals) + 0.0  # + 0.0: -0.0 is 0.0
