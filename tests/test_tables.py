"""Tables (made/io/tables.py, made/core/schema.py): the schema inferred from a CSV's training split, cells
encoded and refused with line, column and value, schema files, bit groups as categories, and the
real tables of ../shared/data/tables."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from made.core.errors import DataError
from made.core.schema import ABSENT, Schema
from made.io.data import load_dataset
from made.io.tables import infer_column, is_table_file, load_grouped_bits, load_table_dataset, read_groups

MADE_BIN = Path(sys.executable).with_name("made")


def _splits(folder: Path, name: str, header: str, rows: list[str], valid: list[str] | None = None) -> Path:
    (folder / f"{name}_train.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    for split in ("valid", "test"):
        (folder / f"{name}_{split}.csv").write_text(header + "\n" + "\n".join(valid or rows[:5]) + "\n")
    return folder / f"{name}_train.csv"


def _rows(n: int = 200) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        color = ["red", "green", "blue"][i % 3]
        flag = ["yes", "no"][int(rng.random() < 0.3)]
        kids = str(int(rng.integers(0, 4)))
        price = f"{np.exp(rng.normal(5, 1)):.2f}"
        temp = f"{rng.normal(20, 5):.1f}"
        budget = "NA" if rng.random() < 0.4 else str(int(rng.integers(1000, 90000)))
        rating = "" if rng.random() < 0.2 else ["G", "PG", "R"][i % 3]
        out.append(",".join([color, flag, kids, price, temp, budget, rating, f"title number {i}"]))
    return out


HEADER = "color,flag,kids,price,temp,budget,rating,title"


def test_the_schema_is_inferred_from_the_training_split(tmp_path: Path) -> None:
    path = _splits(tmp_path, "t", HEADER, _rows())
    assert is_table_file(path)
    data = load_table_dataset(str(path), drop_columns=("title",))
    cols = {c.name: c for c in data.schema.columns}
    assert data.name == "t" and "title" not in cols
    assert cols["color"].kind == "categorical" and cols["color"].levels == ("blue", "green", "red")
    assert cols["flag"].kind == "binary" and cols["flag"].levels == ("no", "yes")
    assert cols["kids"].kind == "categorical" and cols["kids"].levels == ("0", "1", "2", "3")  # few integers
    assert cols["price"].kind == "numeric" and cols["price"].transform == "log" and cols["price"].decimals == 2
    assert cols["temp"].transform == "none" and cols["temp"].decimals == 1 and not cols["temp"].nullable
    assert cols["budget"].nullable and cols["budget"].decimals == 0  # NA cells are modelled, not dropped
    assert cols["rating"].levels[-1] == "NA"  # so are empty ones
    train = data.split("train")
    assert train.shape == (200, 7)
    assert np.mean(train[:, data.schema.index("budget")] == ABSENT) > 0.2


def test_free_text_is_a_one_line_error_naming_the_column(tmp_path: Path) -> None:
    path = _splits(tmp_path, "t", HEADER, _rows())
    with pytest.raises(DataError, match=r"column 'title' looks like free text .* --drop-columns title"):
        load_table_dataset(str(path))
    with pytest.raises(DataError, match="--drop-columns names 'titel'"):
        load_table_dataset(str(path), drop_columns=("titel",))


def test_a_level_only_a_held_out_split_holds_joins_the_levels_or_is_named_under_a_given_schema(
    tmp_path: Path,
) -> None:
    """An inferred schema takes a held-out split's level the training split lacks (with a note,
    as held-out values beyond the bounds): a near-constant column (5.0 in training, 6.5 in test)
    stopped training. A given schema is the user's: its missing level is named, line and column."""
    rows = _rows()
    bad = rows[:3] + ["purple" + rows[3][rows[3].index(",") :]]
    path = _splits(tmp_path, "t", HEADER, rows, valid=bad)
    data = load_table_dataset(str(path), drop_columns=("title",))
    color = data.schema.columns[data.schema.names.index("color")]
    assert color.levels == ("blue", "green", "red", "purple") and data.split("valid")[3, 0] == 3
    assert any("column color: the valid split holds 'purple'" in note for note in data.notes)
    trained = load_table_dataset(str(path), drop_columns=("title",), splits=("train",)).schema
    given = Schema(
        tuple(c if c.name != "color" else replace(c, levels=("blue", "green", "red")) for c in trained.columns)
    )
    with pytest.raises(DataError) as info:
        load_table_dataset(str(path), schema=given)
    message = str(info.value)
    assert "t_valid.csv line 5, column 'color': 'purple' is not a level" in message and "'red'" in message
    notnum = rows[:3] + [rows[3].replace(rows[3].split(",")[4], "hot", 1)]
    path = _splits(tmp_path, "u", HEADER, rows, valid=notnum)
    with pytest.raises(DataError, match=r"u_valid.csv line 5, column 'temp': 'hot' is not a number"):
        load_table_dataset(str(path), drop_columns=("title",))


def test_a_level_is_named_by_its_value_as_well_as_its_text() -> None:
    """Levels that pandas wrote as 1.0/2.0, or True/False, are met by what a DataFrame or JSON
    sends (2, 2.0, '2', true, 1): a cell matches its level's text first, else the one level of
    the same value; a JSON number that two levels stand for ('1' and '1.0') is refused, naming
    them."""
    from made.core.schema import Column

    sex = Column("sex", "categorical", levels=("1.0", "2.0"))
    for cell in ("2", "2.0", " 2 ", "2e0", 2, 2.0):
        assert sex.encode_cell(cell, "row 0") == 1.0, cell
    with pytest.raises(DataError, match=r"row 0, column 'sex': '3' is not a level"):
        sex.encode_cell("3", "row 0")
    with pytest.raises(DataError, match=r"row 0, column 'sex': 3 is not a level"):
        sex.encode_cell(3, "row 0")
    flag = Column("smoker", "categorical", levels=("False", "True"))
    for cell in (True, "true", "TRUE", "1", 1, 1.0):
        assert flag.encode_cell(cell, "row 0") == 1.0, cell
    assert flag.encode_cell(False, "row 0") == flag.encode_cell("0", "row 0") == 0.0
    bits = Column("smoker", "categorical", levels=("0", "1"))  # a Parquet bool column's levels
    assert bits.encode_cell("True", "row 0") == bits.encode_cell(True, "row 0") == 1.0
    both = Column("code", "categorical", levels=("1", "1.0", "x"))
    assert both.encode_cell("1.0", "row 0") == 1.0 and both.encode_cell("1", "row 0") == 0.0  # text first
    with pytest.raises(DataError, match=r"1 is the value of levels '1', '1.0'; send the level's text"):
        both.encode_cell(1, "row 0")
    with pytest.raises(DataError, match=r"'1_0' is not a level"):
        Column("n", "categorical", levels=("10", "20")).encode_cell("1_0", "row 0")
    with pytest.raises(DataError, match=r"expected one of 2 levels"):
        sex.encode_cell([2], "row 0")


def test_nan_written_as_text_is_an_absent_cell_not_a_level(tmp_path: Path) -> None:
    """A numeric column with `NaN` cells (pandas' to_csv(na_rep='NaN'), numpy's savetxt) is a
    nullable number, as with empty cells, not a category of 40 levels; a categorical column's
    `nan` is its NA level; reading a later file, `NaN` means absent too."""
    rows = _rows(150)
    with_nan = []
    for i, row in enumerate(rows):
        cells = row.split(",")
        if i % 5 == 0:
            cells[4] = "NaN"  # temp
        if i % 7 == 0:
            cells[0] = "nan"  # color
        with_nan.append(",".join(cells))
    path = _splits(tmp_path, "n", HEADER, with_nan, valid=with_nan[:10])
    data = load_table_dataset(str(path), drop_columns=("title",))
    cols = {c.name: c for c in data.schema.columns}
    assert cols["temp"].kind == "numeric" and cols["temp"].nullable
    assert cols["color"].levels == ("blue", "green", "red", "NA")
    train = data.split("train")
    names = data.schema.names
    assert (train[::5, names.index("temp")] == ABSENT).all() and (train[1::5, names.index("temp")] != ABSENT).all()
    assert (train[::7, names.index("color")] == 3).all()


def test_an_empty_cell_is_absent_where_the_column_can_be_and_refused_where_training_cannot_use_it(
    tmp_path: Path,
) -> None:
    rows = _rows()
    absent = rows[:3] + [",".join(c if j != 5 else "" for j, c in enumerate(rows[3].split(",")))]
    data = load_table_dataset(str(_splits(tmp_path, "a", HEADER, rows, valid=absent)), drop_columns=("title",))
    assert data.split("valid")[3, 5] == ABSENT  # budget: empty like NA, a value the column models
    unknown = rows[:3] + [",".join(c if j != 4 else "" for j, c in enumerate(rows[3].split(",")))]
    with pytest.raises(DataError, match=r"a_valid.csv line 5, column 'temp' is empty, and this column is never absent"):
        load_table_dataset(str(_splits(tmp_path, "a", HEADER, rows, valid=unknown)), drop_columns=("title",))
    (tmp_path / "semi_train.csv").write_text("x;y\n1,5;a\n2,5;b\n")  # ';' with decimal commas
    assert load_table_dataset(str(tmp_path / "semi_train.csv"), splits=("train",)).schema.names == ["x", "y"]


def _two_columns(folder: Path, name: str, header: str, cells: list[str], delimiter: str = ",") -> Path:
    """A table of `cells` in its first column beside a binary one, as NAME_train/_valid/_test."""
    rows = [f"{c}{delimiter}{'ab'[i % 2]}" for i, c in enumerate(cells)]
    return _splits(folder, name, header.replace(",", delimiter), rows, valid=rows[:5])


def test_a_code_written_with_leading_zeros_is_a_category_of_its_text(tmp_path: Path) -> None:
    """Zips such as 02681 were read as numbers: `zip numeric [56, 10944]`, and samples of 664. A
    number-like cell with a leading zero makes its column text: a category of the codes as
    written, or free text where nearly every row has its own, as any text column; 0 and 0.5 are
    numbers."""
    rng = np.random.default_rng(3)
    zips = [f"{z:05d}" for z in rng.choice(np.arange(500, 12000), 60, replace=False)]
    cells = [zips[i] for i in rng.integers(0, 60, 1000)]
    data = load_table_dataset(str(_two_columns(tmp_path, "z", "zip,c", cells)))
    zip_ = data.schema.columns[0]
    assert zip_.kind == "categorical" and set(zip_.levels) == set(cells)
    assert zip_.decode(data.split("train")[0, 0]) == cells[0]  # the code as written, zeros kept
    unique = [f"{z:05d}" for z in rng.choice(np.arange(500, 99999), 1000, replace=False)]
    with pytest.raises(DataError, match=r"column 'zip' looks like free text \(1000 distinct values"):
        load_table_dataset(str(_two_columns(tmp_path, "u", "zip,c", unique)))
    numbers = [f"{v:.1f}" if i % 7 else "0" for i, v in enumerate(rng.random(300))]  # 0, 0.5: numbers
    assert load_table_dataset(str(_two_columns(tmp_path, "n", "x,c", numbers))).schema.columns[0].kind == "numeric"


def test_a_numeric_column_with_a_few_cells_that_are_not_numbers_is_refused_naming_them(tmp_path: Path) -> None:
    """A price with `n/a` in 2% of its cells was refused as free text 'e.g. 100.09'; an integer
    column 0..29 with `n/a` became a category of 31 levels without a word; European decimal
    commas were free text. Where 90% of a column's cells are numbers that would make a numeric
    column, the rest are refused: how many, which, on what line, and what the reader takes for
    absent."""
    rng = np.random.default_rng(6)
    prices = [f"{v:.2f}" for v in rng.normal(100, 10, 600)]
    for i in (7, 30, 200, 301, 450, 520, 580):
        prices[i] = "n/a"
    prices[90] = "-"
    path = _two_columns(tmp_path, "p", "price,c", prices)
    with pytest.raises(DataError) as info:
        load_table_dataset(str(path))
    message = str(info.value)
    assert "p_train.csv: column 'price' holds numbers but 8 of its 600 cells are not" in message
    assert "('n/a' on line 9, '-' on line 92)" in message and "empty, NA or NaN" in message
    counts = [str(v) for v in rng.integers(0, 30, 600)]
    counts[11] = counts[40] = "n/a"
    with pytest.raises(DataError, match=r"column 'n' holds numbers but 2 of its 600 cells are not \('n/a' on line 13"):
        load_table_dataset(str(_two_columns(tmp_path, "i", "n,c", counts)))
    euro = [f"{v:.2f}".replace(".", ",") for v in rng.normal(100, 10, 600)]
    with pytest.raises(DataError, match=r"column 'price' holds numbers written with a ',' \(600 of 600 cells, e.g. '"):
        load_table_dataset(str(_two_columns(tmp_path, "e", "price,c", euro, delimiter=";")))
    kids = [["0", "1", "2", "3", "4", "5+"][i] for i in rng.integers(0, 6, 600)]  # a category with a text level
    assert load_table_dataset(str(_two_columns(tmp_path, "k", "kids,c", kids))).schema.columns[0].levels[-1] == "5+"


def test_a_suggested_drop_columns_quotes_a_name_for_the_shell(tmp_path: Path) -> None:
    rows = [f"2024-01-{i % 28 + 1:02d} {i}:00,{'ab'[i % 2]}" for i in range(200)]
    path = _splits(tmp_path, "d", "signup date,c", rows)
    with pytest.raises(DataError, match=r"leave it out with --drop-columns 'signup date', or"):
        load_table_dataset(str(path))
    empty = _splits(tmp_path, "e", "last visit,c", [f",{'ab'[i % 2]}" for i in range(20)])
    with pytest.raises(DataError, match=r"empty in every row; leave it out with --drop-columns 'last visit'$"):
        load_table_dataset(str(empty))


def test_infinite_and_overflowing_numbers_are_refused_naming_the_column(tmp_path: Path) -> None:
    """One -inf among numbers made the column 'free text'; values near 1e300 overflowed its
    scale into an internal message ('scale must be positive and loc finite')."""
    rows = _rows()
    cells = rows[7].split(",")
    cells[4] = "-inf"
    with pytest.raises(DataError, match=r"column 'temp' holds '-inf', not a finite number"):
        load_table_dataset(str(_splits(tmp_path, "i", HEADER, [*rows[:7], ",".join(cells), *rows[8:]])))
    huge = [",".join(c if j != 4 else f"{float(c) * 1e300:g}" for j, c in enumerate(r.split(","))) for r in rows]
    with pytest.raises(DataError, match=r"h_train.csv: column 'temp': values up to .*e\+301 spread too far to model"):
        load_table_dataset(str(_splits(tmp_path, "h", HEADER, huge)), drop_columns=("title",))


def test_a_huge_number_in_a_message_is_written_short() -> None:
    """carat 1e300 was answered with all 301 digits of the float."""
    from made.core.errors import format_value
    from made.core.schema import Column

    assert (format_value(1e300), format_value(-1e20), format_value(2.0), format_value(12345.0)) == (
        "1e+300",
        "-1e+20",
        "2",
        "12345",
    )
    col = Column("carat", "numeric", decimals=2, components=1, lower=0.13, upper=5.08)
    with pytest.raises(DataError, match=r"^records\[0\], column 'carat': 1e\+300 is outside"):
        col.encode_cell(1e300, "records[0]")


def test_a_number_rounded_to_zero_is_zero_not_minus_zero() -> None:
    """/conditionals answered "q05": -0.0 for a quantile just below 0."""
    from made.core.schema import Column, round_to_precision

    col = Column("t", "numeric", decimals=2, components=1)
    assert json.dumps(col.decode(-0.001)) == "0.0"
    rounded = round_to_precision(col, np.array([-0.001, -0.006, 0.004]))
    assert not np.signbit(rounded[0]) and rounded[1] == -0.01 and rounded[2] == 0.0


def test_a_number_off_the_columns_grid_is_read_at_its_precision(tmp_path: Path) -> None:
    """A column recorded to whole numbers reads 100.4 as 100 (its rounding bin, as docs/api.md
    says), not as a bin of its own around 100.4; training files too: a float-formatting artefact
    (9.899999 among values of 1 decimal) is the 9.9 the inference note says it is read as."""
    from made.core.schema import Column

    whole = Column("w", "numeric", decimals=0, components=1, loc=100.0, scale=10.0)
    assert whole.encode_cell("100.4", "row 0") == whole.encode_cell(100.0, "row 0") == 100.0
    assert whole.encode_cell(100.6, "row 0") == 101.0
    rows = _rows(120)
    cells = rows[3].split(",")
    cells[4] = f"{float(cells[4]) - 0.000001:.6f}"  # temp, recorded to 1 decimal
    rows[3] = ",".join(cells)
    data = load_table_dataset(str(_splits(tmp_path, "g", HEADER, rows)), drop_columns=("title",))
    temp = data.split("train")[:, data.schema.names.index("temp")]
    assert data.schema.columns[data.schema.names.index("temp")].decimals == 1
    assert temp[3] == round(float(cells[4]), 1) and np.array_equal(temp, np.round(temp, 1))


def test_bounds_keep_a_log_scale_column_off_zero_and_a_non_positive_column_non_positive(tmp_path: Path) -> None:
    """A continuous column read on a log scale had the lower bound 0, where its density grows
    without limit (log p of 1e-40 was +79, the most normal value of all); a column of negative
    values got a positive upper bound (samples up to +16.5 from values all below -0.86)."""
    from made.io.tables import numeric_bounds

    rng = np.random.default_rng(0)
    spread = 10 ** rng.uniform(-6, 9, 300)
    lower, upper = numeric_bounds(spread, None, log_scale=True)
    assert 0 < lower < spread.min() and upper > spread.max()
    assert np.log10(spread.min() / lower) < 0.2 * np.log10(spread.max() / spread.min())  # a margin in log x
    negative = -rng.gamma(2, 10, 300).round(2)
    lower, upper = numeric_bounds(negative, 2)
    assert lower < negative.min() and upper == 0.0
    rows = [f"{v:.6g},{'xy'[i % 2]}" for i, v in enumerate(spread)]
    data = load_table_dataset(str(_splits(tmp_path, "s", "n,b", rows, valid=rows[:5])))
    col = data.schema.columns[0]
    assert col.transform == "log" and col.decimals is None and 0 < col.lower < spread.min()
    with pytest.raises(DataError, match=r"1e-40 is outside this column's bounds"):
        col.encode_cell(1e-40, "records[0]")


def test_a_float32_parquet_column_keeps_the_precision_it_was_written_at(tmp_path: Path) -> None:
    """float32 0.1 is 0.10000000149011612 as a float64: read so, a column of 2-decimal values
    came out continuous; read as float32 writes it, it keeps resolution 0.01, as its float64
    copy does."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(5, 2, 300), 2)
    kinds = rng.choice(["a", "b"], 300).tolist()
    schemas = {}
    for dtype in (pa.float32(), pa.float64()):
        for split in ("train", "valid", "test"):
            table = pa.table({"v": pa.array(values, type=pa.float64()).cast(dtype), "k": kinds})
            pq.write_table(table, tmp_path / f"p{dtype}_{split}.parquet")
        schemas[str(dtype)] = load_table_dataset(str(tmp_path / f"p{dtype}_train.parquet")).schema.columns[0]
    assert schemas["float"].decimals == schemas["double"].decimals == 2


def test_a_schema_file_overrides_inference(tmp_path: Path) -> None:
    path = _splits(tmp_path, "t", HEADER, _rows())
    inferred = load_table_dataset(str(path), drop_columns=("title",)).schema
    columns = inferred.to_json()
    kids = next(c for c in columns if c["name"] == "kids")
    kids.clear()
    kids.update(name="kids", kind="numeric", transform="none", loc=1.5, scale=1.0, decimals=0, components=2)
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps({"columns": columns}))
    data = load_table_dataset(str(path), schema=Schema.read(schema_file))
    assert data.schema.columns[data.schema.index("kids")].kind == "numeric"
    schema_file.write_text(json.dumps({"columns": [{"name": "x", "kind": "colour"}, {"name": "y"}]}))
    with pytest.raises(DataError, match="unknown kind 'colour'"):
        Schema.read(schema_file)


def test_a_header_less_binary_csv_stays_bit_data(tmp_path: Path) -> None:
    (tmp_path / "b_test.csv").write_text("0,1,1\n1,0,0\n")
    assert not is_table_file(tmp_path / "b_test.csv")
    (tmp_path / "h_test.csv").write_text("a,b,c\n0,1,1\n1,0,0\n")
    assert not is_table_file(tmp_path / "h_test.csv")  # a header over 0/1 cells: still bits


def test_a_table_whose_first_row_is_0_and_1_or_whose_header_names_a_year_is_a_table(tmp_path: Path) -> None:
    """Only the header and the first row were read: age,kids over a first row 1,0 was bit data
    (then 'line 3 holds 62, expected 0 or 1'), and so was a header naming a column 2023."""
    (tmp_path / "first.csv").write_text("age,kids\n1,0\n62,3\n35,1\n")
    assert is_table_file(tmp_path / "first.csv")
    (tmp_path / "year.csv").write_text("region,2023\nnorth,1.5\nsouth,0.2\n")
    assert is_table_file(tmp_path / "year.csv")
    (tmp_path / "late.csv").write_text("a,b\n" + "0,1\n" * 50 + "0,2\n")  # a non-bit cell on line 52
    assert is_table_file(tmp_path / "late.csv")
    (tmp_path / "numbers.csv").write_text("5.1,3.5,setosa\n4.9,3.0,setosa\n")  # no header: not a table
    assert not is_table_file(tmp_path / "numbers.csv")


def test_parquet_tables_load_like_csv(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = _splits(tmp_path, "t", HEADER, _rows())
    for split in ("train", "valid", "test"):
        header, *lines = (tmp_path / f"t_{split}.csv").read_text().splitlines()
        cells = [line.split(",") for line in lines]
        table = pa.table({h: [r[j] for r in cells] for j, h in enumerate(header.split(","))})
        pq.write_table(table, tmp_path / f"p_{split}.parquet")
    from_csv = load_table_dataset(str(path), drop_columns=("title",))
    from_parquet = load_table_dataset(str(tmp_path / "p_train.parquet"), drop_columns=("title",))
    assert from_parquet.schema == from_csv.schema
    np.testing.assert_array_equal(from_parquet.split("test"), from_csv.split("test"))


def test_bit_groups_become_categories(data_dir: Path) -> None:
    bits = load_dataset(str(data_dir / "mushrooms.npz"))
    schema = read_groups(data_dir / "groups" / "mushrooms.json", bits.dims)
    assert len(schema) == 21 and schema.bit_dims == 112
    grouped = load_grouped_bits(bits, schema)
    codes = grouped.split("test")
    # back to bits: every row's one-hot code is the same row
    back = np.zeros_like(bits.split("test"))
    for j, col in enumerate(schema.columns):
        for r, code in enumerate(codes[:, j].astype(int)):
            if code < len(col.bits):
                back[r, col.bits[code]] = 1
    np.testing.assert_array_equal(back, bits.split("test"))
    broken = bits.split("test").copy()
    broken[4, list(schema.columns[0].bits)[:2]] = 1
    with pytest.raises(DataError, match="row 4: bits .* not one-hot"):
        schema.encode_bits(broken, "test")


@pytest.mark.parametrize(
    ("group", "named"),
    [
        ({"columns": [0, 1, 2], "none": "no"}, 'group 1\'s none is "no"; expected true or false'),
        ({"columns": [0, 1, 2], "none": 0}, "group 1's none is 0; expected true or false"),
        ({"columns": [], "none": True}, "group 1's columns are []; expected a non-empty list of bit indices"),
        ({"columns": [0, 1.5]}, "group 1's columns are [0, 1.5]; expected a non-empty list of bit indices"),
        ({"columns": "012"}, 'group 1\'s columns are "012"; expected a non-empty list of bit indices'),
    ],
)
def test_a_groups_file_of_other_types_is_refused_naming_the_group(tmp_path: Path, group: dict, named: str) -> None:
    """A "none" of "no" (a true string) was read as true, an empty group was left out silently, and
    1.5 or "012" were read as bits 1 and 0, 1, 2."""
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({"groups": [{"columns": [3, 4], "none": False}, group]}))
    with pytest.raises(DataError) as info:
        read_groups(path, 6)
    assert str(info.value) == f"{path}: {named}"


def test_real_tables_infer_their_documented_kinds(data_dir: Path) -> None:
    diamonds = load_table_dataset(str(data_dir / "tables" / "diamonds_train.csv"))
    kinds = {c.name: c.kind for c in diamonds.schema.columns}
    assert kinds == {
        "carat": "numeric",
        "cut": "categorical",
        "color": "categorical",
        "clarity": "categorical",
        "depth": "numeric",
        "table": "numeric",
        "price": "numeric",
        "x": "numeric",
        "y": "numeric",
        "z": "numeric",
    }
    assert diamonds.split("train").shape == (43152, 10)
    result = subprocess.run(
        [str(MADE_BIN), "train", "--dataset", str(data_dir / "tables" / "movies_train.csv"), "--out", "unused"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "column 'title' looks like free text" in result.stderr and "--drop-columns title" in result.stderr
    movies = load_table_dataset(str(data_dir / "tables" / "movies_train.csv"), drop_columns=("title",))
    cols = {c.name: c for c in movies.schema.columns}
    assert cols["budget"].nullable and cols["mpaa"].levels[-1] == "NA"


def test_one_stray_leading_zero_does_not_make_a_column_of_codes() -> None:
    """One '-05' among 300 temperatures made a category of 113 levels, unseen; codes are where
    1% of the cells or more carry a leading zero, and a stray one is read as its number, noted."""
    rng = np.random.default_rng(0)
    cells = [f"{x:.1f}" for x in rng.normal(15, 5, 300)] + ["-05"]
    notes: list[str] = []
    col = infer_column("t", cells, "t.csv", notes, lines=list(range(2, 303)))
    assert col.kind == "numeric"
    assert notes == [
        "column t: 1 cell written with a leading zero ('-05' on line 302) read as a number; a column of codes "
        "has them in 1% of its cells or more"
    ]


def test_thousands_separators_get_the_thousands_advice_not_the_decimal_one() -> None:
    """1,200 among whole numbers was told to read the file with decimal=',', which makes it 1.2."""
    cells = ["1,200", "3,450", "12,000"] * 30 + [str(i) for i in range(100, 190)]
    with pytest.raises(DataError, match=r"read_csv\(\.\.\., thousands=','\)"):
        infer_column("price", cells, "t.csv")
    with pytest.raises(DataError, match=r"read_csv\(\.\.\., decimal=','\)") as refused:
        infer_column("price", ["1,5", "2,25", "3"] * 40 + [f"{i}.5" for i in range(60)], "t.csv")
    assert "--schema" in str(refused.value)  # codes written 1,2 have a way through
