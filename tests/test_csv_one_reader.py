"""One CSV reader (made.io.csv) for training files, HTTP bodies, `made score` inputs and the
Python client's DataFrames: a ';'-separated body is read over HTTP as a file is, a column named
twice is refused naming it everywhere (a 422, exit 2, a DataError), and an empty cell means the
same wherever the rows go: absent where the column can be absent, else unknown. On the shipped
`diamonds` model and on 'mixed' (a nullable number, trained in conftest)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from helpers import app_fixtures, store_of

from made.cli import main
from made.core.errors import DataError, InvalidInput
from made.io.csv import read_csv_text, value_text
from made.io.tables import load_table_dataset
from made.store.versions import open_model
from service.core.records import check_csv_bounds, parse_records
from service.engine.table_engine import TableEngine
from service.testing import InProcessClient

pytestmark = pytest.mark.anyio

STORE = Path(__file__).resolve().parent.parent / "model_store"
CSV = {"Content-Type": "text/csv"}
DIAMONDS = "carat,cut,color,clarity,depth,table,price,x,y,z\n0.3,Ideal,E,SI1,61.5,55,326,3.95,3.98,2.43\n"
# 'mixed': kind (a category), size and score (numbers), budget (a number that is sometimes NA).
# Row 2: size empty (never absent: unknown), budget empty (absent). Row 3: kind and score
# empty (unknown), budget NA (absent). pandas reads every one of them as NaN.
MIXED = "kind,size,score,budget,id\nx,2.72,0.5,2700,1\ny,,10.2,,2\n,4.1,,NA,3\nz,3.5,20.1,3500,4\n"
MEANT = [  # the same rows as JSON records: a key left out is unknown, "NA" absent
    {"kind": "x", "size": 2.72, "score": 0.5, "budget": 2700},
    {"kind": "y", "score": 10.2, "budget": "NA"},
    {"size": 4.1, "budget": "NA"},
    {"kind": "z", "size": 3.5, "score": 20.1, "budget": 3500},
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, diamonds_store: Path, table_store: Path) -> Path:
    """The shipped 'diamonds' beside 'mixed'."""
    return store_of(tmp_path_factory.mktemp("one-reader") / "store", diamonds_store / "diamonds", table_store / "mixed")


registry, made = app_fixtures("store", "diamonds")


async def test_a_semicolon_separated_body_is_read_like_a_comma_separated_one(made: InProcessClient) -> None:
    commas = await made.http.post("/logprob?model=diamonds", content=DIAMONDS.encode(), headers=CSV)
    assert commas.status_code == 200, commas.text
    semicolons = DIAMONDS.replace(",", ";")  # as a spreadsheet in a locale whose decimal mark is ',' writes
    answer = await made.http.post("/logprob?model=diamonds", content=semicolons.encode(), headers=CSV)
    assert answer.status_code == 200, answer.text  # was a 422: the header was one column 'carat;cut;...'
    assert answer.json()["logprob"] == commas.json()["logprob"]
    tabs = await made.http.post("/logprob?model=diamonds", content=DIAMONDS.replace(",", "\t").encode(), headers=CSV)
    assert tabs.status_code == 200 and tabs.json()["logprob"] == commas.json()["logprob"]


def test_the_width_bound_counts_the_delimiter_the_reader_will_use() -> None:
    check_csv_bounds(b"a;b\n1;2\n", max_rows=10, max_width=2)
    with pytest.raises(InvalidInput, match="CSV line 2 has 3 columns; the limit is 2"):
        check_csv_bounds(b"a;b\n1;2;3\n", max_rows=10, max_width=2)


async def test_a_column_named_twice_is_a_422_naming_it(made: InProcessClient) -> None:
    body = DIAMONDS.replace("depth", "cut", 1)
    r = await made.http.post("/logprob?model=diamonds", content=body.encode(), headers=CSV)
    assert r.status_code == 422, r.text  # was a 200 scoring the first 'cut' and carrying the second
    assert r.json()["detail"] == (
        "CSV: the header row names column 'cut' twice (columns 2 and 5); each column must be named once"
    )


def test_a_column_named_twice_is_refused_by_made_score_and_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "twice.csv"
    path.write_text(DIAMONDS.replace("depth", "cut", 1))
    args = ["score", "--store", str(STORE), "--name", "diamonds", "--no-progress", "--threads", "1"]
    assert main([*args, "--input", str(path), "--output", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("the header row names column 'cut' twice (columns 2 and 5); each column must be named once")
    assert len(err.splitlines()) == 1 and not (tmp_path / "out.csv").exists()
    with pytest.raises(DataError, match="names column 'cut' twice"):
        load_table_dataset(str(path), splits=("test",))


def test_a_first_line_of_numbers_is_refused_as_no_header_not_as_a_column_named_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A header-less file of 0/1 rows read where a header row is needed (a CSV body, `made score`
    of a table model, e.g. one trained with --groups) was refused as naming column '0' twice."""
    with pytest.raises(DataError) as info:
        read_csv_text("0,1,0,1,1\n1,0,0,1,0\n", "CSV")
    assert str(info.value) == (
        "CSV: the first line holds numbers (0,1,0,1,...), not column names; a header row naming the columns "
        "must come first"
    )
    path = tmp_path / "bits.csv"
    path.write_text("0,1,0,1,1,0,0,1,0,1\n1,0,0,1,0,0,1,1,0,0\n")
    args = ["score", "--store", str(STORE), "--name", "diamonds", "--no-progress", "--threads", "1"]
    assert main([*args, "--input", str(path), "--output", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "bits.csv: the first line holds numbers (0,1,0,1,...), not column names; a header row naming "
        "the columns must come first"
    ), err
    assert "twice" not in err
    # numbers that name each column once are names (years of a wide table)
    assert read_csv_text("2019,2020\n1,2\n", "CSV") == (["2019", "2020"], [["1", "2"]])


async def test_a_dataframe_through_the_client_scores_as_its_csv_does(made: InProcessClient, store: Path) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(io.StringIO(MIXED))  # every empty and NA cell a NaN
    by_csv = await made.http.post("/logprob?model=mixed&seed=3", content=MIXED.encode(), headers=CSV)
    assert by_csv.status_code == 200, by_csv.text
    by_client = await made.logprob_records(frame, model="mixed", seed=3)
    assert by_client.logprob == by_csv.json()["logprob"] and by_client.exact == by_csv.json()["exact"]
    # both are the documented meaning: the records above, scored by the engine
    engine = TableEngine(open_model(store, "mixed"), ["CPUExecutionProvider"], threads=1)
    expected = engine.logprob(parse_records(engine.schema, MEANT), seed=3).logprob
    np.testing.assert_allclose(by_client.logprob, expected, atol=1e-9)
    # the old client meaning (every NaN unknown) gives row 2 another probability: the test can fail
    unknown = await made.logprob_records(
        [{k: v for k, v in r.items() if v != "NA"} for r in MEANT], model="mixed", seed=3
    )
    assert abs(unknown.logprob[1] - by_client.logprob[1]) > 1e-3
    # /impute and /conditionals read a DataFrame the same way
    imputed = await made.impute_records(frame, model="mixed", seed=3, n_samples=2)
    assert imputed.records is not None and imputed.records[1]["budget"] == "NA" and imputed.records[1]["size"] != "NA"
    complete = frame.iloc[[0, 3]].drop(columns=["id"])
    cond = await made.conditionals_records(complete, model="mixed", mask=1)
    as_json = await made.conditionals_records([MEANT[0], MEANT[3]], model="mixed", mask=1)
    assert cond.conditionals == as_json.conditionals


async def test_made_score_reads_empty_cells_as_the_service_does(
    made: InProcessClient, store: Path, tmp_path: Path
) -> None:
    rows = "kind;size;score;budget\nx;2.72;0.5;2700\ny;2.1;10.2;\nz;3.5;20.1;NA\n"  # complete, then absent budgets
    source = tmp_path / "in.csv"
    source.write_text(rows)
    args = ["score", "--store", str(store), "--name", "mixed", "--no-progress", "--threads", "1"]
    assert main([*args, "--input", str(source), "--output", str(tmp_path / "out.csv")]) == 0
    with open(tmp_path / "out.csv", newline="") as fh:
        scored = list(csv.reader(fh, delimiter=";"))
    served = await made.http.post("/logprob?model=mixed", content=rows.encode(), headers=CSV)
    assert served.status_code == 200 and all(served.json()["exact"])
    assert [float(r[-1]) for r in scored[1:]] == served.json()["logprob"]


def test_the_reader_quotes_and_the_values_a_dataframe_holds() -> None:
    header, rows = read_csv_text('\ufeffa;b\n"x;y";"2\n3"\n \n', "CSV")
    assert header == ["a", "b"] and rows == [["x;y", "2\n3"]]  # the blank line is no row
    with pytest.raises(DataError, match="CSV line 3 has 1 values, expected 2 like the header row"):
        read_csv_text("a,b\n1,2\n3\n", "CSV")
    with pytest.raises(DataError, match="column 2 of the header row has no name"):
        read_csv_text("a,,c\n1,2,3\n", "CSV")
    assert [value_text(v) for v in (56.0, np.float64(0.1), np.int64(3), True, None, float("nan"), "NA")] == [
        "56",
        "0.1",
        "3",
        "1",
        "",
        "",
        "NA",
    ]


async def test_a_quote_never_closed_is_refused_naming_the_line_where_it_opens(
    made: InProcessClient, tmp_path: Path
) -> None:
    """A `"` that opens a cell and is never closed swallowed the rest of the data: the last cell
    read as `no` (a 200), or a header that named none of the model's columns. Now the HTTP body,
    a file and made score all say where the quote opened."""
    with pytest.raises(DataError, match=r'body line 2: a quoted cell is never closed \(a " opens it'):
        read_csv_text('a,b\nx,"no\n', "body")
    with pytest.raises(DataError, match=r"body line 1: a quoted cell is never closed"):
        read_csv_text('"carat\n0.3\n', "body")
    assert read_csv_text('a,b\n12" pipe,"x ""y"""\n', "body")[1] == [['12" pipe', 'x "y"']]  # quotes that close
    body = DIAMONDS + '0.4,"Ideal,E,SI1,61.5,55,326,3.95,3.98,2.43\n'
    answer = await made.http.post("/logprob?model=diamonds", content=body.encode(), headers=CSV)
    assert answer.status_code == 422 and "line 3: a quoted cell is never closed" in answer.json()["detail"]
    path = tmp_path / "rows.csv"
    path.write_text(body)
    assert (
        main(
            [
                "score",
                "--store",
                str(STORE),
                "--name",
                "diamonds",
                "--input",
                str(path),
                "--output",
                str(tmp_path / "o.csv"),
            ]
        )
        == 2
    )


def test_a_level_question_mark_is_that_level_in_every_reader() -> None:
    """'?' is unknown in a JSON record as in a CSV cell, except in a column with a level '?'
    (a --schema file's): there every reader (a JSON record, a CSV body, made score's column
    reader, a given, a cell with spaces around it) reads the level, and a column without one
    reads unknown."""
    from made.core.schema import Column, Schema
    from made.io.csv import encode_column, table_cell
    from service.core.records import parse_csv, parse_given

    asked = Column("q", "categorical", ("a", "?", "NA"))
    schema = Schema((asked, Column("n", "binary", ("x", "y"))))
    assert asked.encode_cell("?", "r") == asked.encode_cell(" ? ", "r") == table_cell(asked, "?", "r") == 1.0
    assert encode_column(asked, ["?", " ? ", "a"], lambda i: "r").tolist() == [1.0, 1.0, 0.0]
    assert np.array_equal(parse_records(schema, [{"q": "?", "n": "?"}]), [[1.0, np.nan]], equal_nan=True)
    assert np.array_equal(parse_csv(schema, "q,n\n?,?\n")[0], [[1.0, np.nan]], equal_nan=True)
    assert np.array_equal(parse_given(schema, {"q": "?", "n": "?"}), [1.0, np.nan], equal_nan=True)
