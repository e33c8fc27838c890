"""Precision and the schema (issue 26 item 2): a numeric column's resolution comes from the bulk
of its cells, not a handful of float-formatting artefacts; `made train` prints the inferred schema
and warns where a few cells decided it; `made schema CSV` writes it for editing and
`made train --schema` reads it back, bounds included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_splits

from made.cli import main
from made.core.bounds import bounds_text
from made.core.schema import Column, Schema
from made.io.tables import infer_column, infer_schema, load_table_dataset, numeric_precision, read_table


def _one_decimal(n: int, seed: int) -> list[str]:
    return [f"{v:.1f}" for v in np.random.default_rng(seed).normal(5.0, 2.0, n)]


def test_a_few_long_cells_do_not_set_the_resolution_and_are_noted() -> None:
    cells = _one_decimal(5000, 0)
    cells[10:13] = ["9.899999"] * 3
    notes: list[str] = []
    col = infer_column("x", cells, "t.csv", notes)
    assert col.decimals == 1
    assert notes == [
        "column x: 3 cells of 5,000 have up to 6 decimals; resolution set to 0.1 from the rest "
        "(values are read at that precision)"
    ]
    assert infer_column("x", _one_decimal(5000, 1), "t.csv", notes).decimals == 1 and len(notes) == 1


def test_whole_numbers_written_as_floats_stay_whole() -> None:
    rng = np.random.default_rng(2)
    cells = [f"{v}.0" for v in rng.integers(100, 400, 3000)]  # pandas' 118.0 for a column with NaN
    col = infer_column("n", cells, "t.csv")
    assert col.kind == "numeric" and col.decimals == 0
    assert col.decode(118.0) == 118 and isinstance(col.decode(118.0), int)
    assert numeric_precision(["5.10", "5.20", "6.35"] * 10)[0] == 2  # trailing zeros do not count
    assert numeric_precision(["1.5e-05", "2e-05"] * 10)[0] == 6  # exponents do


def test_a_schema_without_bounds_reads_and_writes_as_before() -> None:
    old = {"name": "x", "kind": "numeric", "transform": "none", "loc": 1.0, "scale": 2.0, "decimals": 1}
    col = Column.from_json({**old, "nullable": False, "components": 5})
    assert not col.bounded and "lower" not in col.to_json() and "upper" not in col.to_json()
    bounded = Column.from_json({**old, "lower": -1.0, "upper": None})
    assert bounded.to_json()["lower"] == -1.0 and "upper" not in bounded.to_json()
    with pytest.raises(Exception, match="hold no value at its resolution"):
        Column.from_json({**old, "lower": 3.0, "upper": 2.0})


def _table(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    rows = [
        [f"{a:.1f}", f"{b}.0", ["u", "v"][int(c)]]
        for a, b, c in zip(rng.normal(5, 1, 300), rng.integers(50, 90, 300), rng.random(300) < 0.4, strict=True)
    ]
    rows[7][0] = "9.899999"
    return write_splits(tmp_path, "shop", ["a", "b", "c"], rows)


def test_made_train_prints_the_schema_and_warns_where_a_few_cells_decide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _table(tmp_path)
    args = ["train", "--dataset", str(source), "--hidden", "8", "--max-epochs", "1", "--no-progress"]
    assert main([*args, "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "column  kind     levels  bounds" in err
    lines = {line.split()[0]: line.split() for line in err.splitlines() if line.startswith(("a ", "b ", "c "))}
    schema = load_table_dataset(str(source)).schema
    a, b = (bounds_text(schema.columns[j]).split() for j in (0, 1))
    assert lines["a"][1:] == ["numeric", *a, "0.1", "none", "no"]
    assert lines["b"][1:] == ["numeric", *b, "1", "none", "no"]  # 52.0 ... 88.0: whole numbers
    assert lines["c"][1:] == ["binary", "2"]
    assert "made train: warning: column a: 1 cell of 210 has up to 6 decimals; resolution set to 0.1" in err


def test_made_schema_round_trips_through_train_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _table(tmp_path)
    out = tmp_path / "schema.json"
    assert main(["schema", str(source), "--out", str(out)]) == 0
    written = Schema.read(out)
    from made.io.tables import read_table

    header, rows, _ = read_table(source)
    assert written == infer_schema(header, rows, str(source))  # no held-out value beyond the training range
    assert written == load_table_dataset(str(source)).schema  # what `made train --dataset` infers
    data = json.loads(out.read_text())
    data["columns"][0].update(lower=2.0, upper=8.5)  # tighter than inferred: edited by hand
    data["columns"][1].pop("lower")  # no lower bound
    out.write_text(json.dumps(data))
    capsys.readouterr()
    args = ["train", "--dataset", str(source), "--schema", str(out), "--hidden", "8", "--max-epochs", "1"]
    rc = main([*args, "--no-progress", "--threads", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    if rc == 2:  # the tightened bounds refuse a training cell, naming it
        assert "column 'a'" in err and "outside this column's bounds [2, 8.5]" in err and len(err.splitlines()) <= 6
        return
    columns = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["columns"]
    assert columns[0]["lower"] == 2.0 and columns[0]["upper"] == 8.5 and "lower" not in columns[1]


def test_made_schema_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("made schema: error: ")
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [
                {"name": "a", "kind": "numeric", "lower": 5, "upper": 1},
                {"name": "c", "kind": "binary", "levels": ["u", "v"]},
            ]
        )
    )
    source = _table(tmp_path)
    args = ["train", "--dataset", str(source), "--schema", str(bad), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "column 'a'" in err[0] and "bounds [5, 1]" in err[0]


def test_made_schema_of_a_training_split_covers_its_held_out_splits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A held-out value beyond the training range widens the bound to it, as `made train` infers
    it, so that `made train --schema` reads every split back (it refuses a value outside)."""
    rng = np.random.default_rng(4)
    values, flags = rng.normal(50, 3, 400), rng.random(400) < 0.5
    rows = [[f"{v:.1f}", ["u", "v"][int(c)]] for v, c in zip(values, flags, strict=True)]
    rows[-1][0] = "1.0"  # in the test split (the last 15%), far below every training value
    source = write_splits(tmp_path, "far", ["x", "c"], rows)
    out = tmp_path / "schema.json"
    assert main(["schema", str(source), "--out", str(out)]) == 0
    assert "the test split holds 1, below the training bounds" in capsys.readouterr().err
    written = Schema.read(out)
    assert written.columns[0].lower == 1.0 and written == load_table_dataset(str(source)).schema
    args = ["train", "--dataset", str(source), "--schema", str(out), "--hidden", "8", "--max-epochs", "1"]
    assert main([*args, "--no-progress", "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    alone = tmp_path / "alone.csv"  # the same training rows without splits beside: training rows only
    alone.write_text(source.read_text())
    assert main(["schema", str(alone), "--out", str(out)]) == 0
    assert Schema.read(out).columns[0].lower > 30


def test_a_schema_file_that_leaves_out_loc_and_scale_gets_them_from_the_training_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A numeric column written by hand without loc and scale trained with loc 0 and scale 1: a
    column around 1e12 to an NLL of 3e11, without a word. The fields a --schema file leaves out
    are inferred from the training split, as an inferred schema has them; those it gives stay."""
    rng = np.random.default_rng(8)
    big = [f"{v:.0f}" for v in rng.normal(1e12, 1e9, 400)]
    rows = [
        [b, "" if i % 9 == 0 else f"{v:.1f}", "uv"[i % 2]]
        for i, (b, v) in enumerate(zip(big, rng.random(400), strict=True))
    ]
    source = write_splits(tmp_path, "big", ["big", "share", "c"], rows)
    inferred = load_table_dataset(str(source)).schema
    schema_file = tmp_path / "schema.json"
    bare = [{"name": "big", "kind": "numeric"}, {"name": "share", "kind": "numeric", "loc": 7.0, "decimals": None}]
    schema_file.write_text(json.dumps([*bare, {"name": "c", "kind": "binary", "levels": ["u", "v"]}]))
    data = load_table_dataset(str(source), schema=Schema.read(schema_file))
    big_col, share = data.schema.columns[0], data.schema.columns[1]
    want = inferred.columns[0]
    assert (big_col.loc, big_col.scale, big_col.decimals, big_col.transform) == (
        want.loc,
        want.scale,
        want.decimals,
        want.transform,
    )
    assert big_col.loc == pytest.approx(1e12, rel=1e-3) and not big_col.bounded  # a bound left out is none
    assert share.loc == 7.0 and share.decimals is None and share.nullable  # given as given; empty cells seen
    assert share.scale == pytest.approx(inferred.columns[1].scale)
    assert data.notes[0].startswith("column big: the --schema file leaves out transform none, loc 9.99992e+11, scale")
    args = ["train", "--dataset", str(source), "--schema", str(schema_file), "--hidden", "8", "--max-epochs", "1"]
    assert main([*args, "--no-progress", "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    assert json.loads(capsys.readouterr().out)["valid_nll"] < 100  # 3e11 with loc 0, scale 1
    columns = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["columns"]
    assert columns[0]["loc"] == want.loc and columns[0]["scale"] == want.scale


def test_made_schema_of_one_file_infers_from_the_rows_made_train_trains_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`made schema ONE.csv` inferred from every row while `made train --dataset ONE.csv` splits
    it 80/10/10 by --seed (0) and infers from the training part: other bounds, loc and scale
    than README's "the schema made train would infer". It now draws the same split (without
    writing it), and reads the split files an earlier made train wrote where they are."""
    rng = np.random.default_rng(9)
    rows = [[f"{v:.2f}", "uv"[int(c)]] for v, c in zip(rng.gamma(2.0, 10.0, 300), rng.random(300) < 0.3, strict=True)]
    one = tmp_path / "one.csv"
    one.write_text("x,c\n" + "\n".join(",".join(r) for r in rows) + "\n")
    assert main(["schema", str(one), "--out", str(tmp_path / "s.json")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "s.json"]  # no split files written
    assert "split 80/10/10 by seed 0 as made train does" in capsys.readouterr().err
    assert main(["schema", str(one), "--seed", "3", "--out", str(tmp_path / "s3.json")]) == 0
    assert "split 80/10/10 by seed 3" in capsys.readouterr().err
    assert Schema.read(tmp_path / "s3.json") != Schema.read(tmp_path / "s.json")  # another seed's training rows
    (tmp_path / "s3.json").unlink()
    args = ["train", "--dataset", str(one), "--hidden", "8", "--max-epochs", "1", "--no-progress", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    trained = Schema.from_json(json.loads((tmp_path / "run" / "config.json").read_text())["model"]["columns"])
    written = Schema.read(tmp_path / "s.json")
    assert written == trained
    header, all_rows, _ = read_table(one)
    assert written != infer_schema(header, all_rows, str(one))  # what it wrote before
    (tmp_path / "one_train.csv").write_text("x,c\n" + "\n".join(",".join(r) for r in rows[:100]) + "\n")
    assert main(["schema", str(one), "--out", str(tmp_path / "s.json")]) == 0
    assert "inferred from one_train.csv, the training split of one.csv" in capsys.readouterr().err
    assert Schema.read(tmp_path / "s.json") == load_table_dataset(str(tmp_path / "one_train.csv")).schema


def test_levels_that_differ_only_by_spaces_around_them_are_one_level_with_a_note() -> None:
    """'Paris ' and 'Paris' were merged into one level without a word; they still are (every
    reader strips a cell), and made train's notes now say so."""
    notes: list[str] = []
    col = infer_column("city", ["Paris", "Paris ", " Lyon", "Lyon", "Nice"] * 3, "t.csv", notes)
    assert col.levels == ("Lyon", "Nice", "Paris")
    assert notes == ["column city: 6 cells have spaces around them, read as the level without ('Paris ' as 'Paris')"]
    quiet: list[str] = []
    infer_column("city", ["Paris", "Lyon", "Nice"] * 3, "t.csv", quiet)
    assert quiet == []


def test_a_schema_file_that_leaves_out_a_column_of_the_table_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --schema file models the columns it lists: a column of the table it leaves out (an edit
    that dropped it, a column added to the CSV since) was left out of the model without a word."""
    source = _table(tmp_path)
    out = tmp_path / "schema.json"
    assert main(["schema", str(source), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    data["columns"] = [c for c in data["columns"] if c["name"] != "b"]
    out.write_text(json.dumps(data))
    capsys.readouterr()
    args = ["train", "--dataset", str(source), "--schema", str(out), "--hidden", "8", "--max-epochs", "1"]
    assert main([*args, "--no-progress", "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "made train: warning: column b of the table is not in the schema: left out, not modelled" in err
    # a schema of every column: no such warning
    assert main(["schema", str(source), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([*args, "--no-progress", "--threads", "1", "--out", str(tmp_path / "run2")]) == 0
    assert "not in the schema" not in capsys.readouterr().err


def test_a_column_of_numbers_read_as_levels_because_of_its_other_cells_is_noted() -> None:
    """A temperature column with 20% 'n/a' cells (too many for the few-bad-cells refusal) became a
    category of 100 levels without a word: each number a level, a value between two of them with
    no probability. It stays a category (the cells say so) with a note naming the other cells."""
    rng = np.random.default_rng(0)
    cells = ["n/a" if rng.random() < 0.2 else f"{v:.1f}" for v in rng.normal(20, 3, 400)]
    notes: list[str] = []
    col = infer_column("temp", cells, "t.csv", notes)
    assert col.kind == "categorical"
    others = cells.count("n/a")
    assert notes == [
        f"column temp: {400 - others} of its 400 cells are numbers, read as levels of a category since the others "
        f"are not ('n/a' ({others})); where those mean absent, write them as empty cells (or NA) and the column "
        "is read as a number"
    ]
    # numbers that alone make a category (a few integers), and text with a few numbers: no note
    quiet: list[str] = []
    infer_column("kids", ["n/a" if i % 5 == 0 else str(i % 4) for i in range(400)], "t.csv", quiet)
    infer_column("city", [f"city{i % 30}" if i % 3 else str(i % 7) for i in range(400)], "t.csv", quiet)
    assert quiet == []


def test_whole_numbers_written_with_a_fractional_zero_are_levels_as_integers() -> None:
    """pandas writes an integer column that has blanks as floats (2.0, 5.0): its levels were
    '2.0' and '5.0', and every answer wrote them so. They are '2' and '5' now, and a cell '2.0'
    (or '2') still names level '2'."""
    cells = ["" if i % 7 == 0 else f"{i % 6}.0" for i in range(300)]
    col = infer_column("kids", cells, "t.csv")
    assert col.kind == "categorical" and col.levels == ("0", "1", "2", "3", "4", "5", "NA")
    assert col.level_of("2.0") == col.level_of("2") == 2
    flags = infer_column("member", ["1.0", "0.0"] * 50, "t.csv")
    assert flags.kind == "binary" and flags.levels == ("0", "1")
    # written as integers, or among text, the cells stay the levels as written
    assert infer_column("kids", [str(i % 6) for i in range(300)], "t.csv").levels == ("0", "1", "2", "3", "4", "5")
    assert infer_column("grade", ["A", "2.0", "B"] * 40, "t.csv").levels == ("2.0", "A", "B")


def test_a_held_out_whole_number_is_spelt_as_the_training_levels_are(tmp_path: Path) -> None:
    """A value only a held-out split holds was added as written: '7.0' beside the levels '2' and
    '5' that the training split's '2.0' and '5.0' became, so answers wrote '7.0' for one level
    and '2' for another. It is '7', met as '7.0' or '7' in any split; and a whole number's
    level keeps every digit (through a float, 12345678901234567891.0 was ...7168)."""
    rows = [[k, f"{i % 10}"] for i, k in enumerate(["2.0", "5.0", ""] * 70)]
    rows += [["7.0", "1"], ["2.0", "2"], ["7", "3"]] * 5 + [["9.0", "1"], ["9.00", "2"]] * 5
    data = load_table_dataset(str(write_splits(tmp_path, "kids", ["kids", "n"], rows)))
    kids = data.schema.columns[0]
    assert kids.levels == ("2", "5", "NA", "7", "9")
    assert "split holds '9.0' (the level '9'), which the training split lacks" in " ".join(data.notes)
    assert infer_column("id", ["12345678901234567891.0", "-0.0"] * 50, "t.csv").levels == (
        "0",
        "12345678901234567891",
    )
    # levels written as text stay as written: '2.0' is a level of its own there
    rows = [[k, "1"] for k in ["a", "b"] * 100] + [["2.0", "1"]] * 60
    assert load_table_dataset(str(write_splits(tmp_path, "text", ["t", "n"], rows))).schema.columns[0].levels == (
        "a",
        "b",
        "2.0",
    )


def test_a_held_out_value_written_two_ways_is_one_level(tmp_path: Path) -> None:
    """A value only the held-out splits hold, written '7' in one row and '7.0' in another, became
    two levels of one value (a JSON 7 then named neither)."""
    rows = [[k, "1"] for k in ["2.5", "3.5"] * 100] + [["7", "1"], ["7.0", "2"]] * 30
    col = load_table_dataset(str(write_splits(tmp_path, "t", ["v", "n"], rows))).schema.columns[0]
    assert col.levels == ("2.5", "3.5", "7") and col.level_of("7.0") == 2
