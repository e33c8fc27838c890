"""`made score --stderr`: `exact` and `stderr` after `logprob`, POST /logprob's. Every row of a
scored file is compared, cell for cell, with the CSV answer of POST /logprob for that row alone
with the seed `made score` gives it (its values: service.batch.scorer.row_seed), on the shipped
table model (diamonds) and model of bits (mushrooms); Parquet gets a bool and a nullable float64
column; without the flag the output is the one logprob column it was; an input that already has
an `exact` or `stderr` column is refused with one line, exit 2. The Ray path's output is
test_score.py's test_ray_stderr_columns_are_the_local_ones."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import app_fixtures, read_csv_file, store_of, write_csv_file

from made.cli import main
from made.store.versions import open_model
from service.batch.score import score_file
from service.batch.scorer import row_seed
from service.core.records import parse_csv
from service.engine.table_engine import TableEngine
from service.testing import InProcessClient

pytestmark = pytest.mark.anyio

SHIPPED = Path(__file__).resolve().parent.parent / "model_store"
CSV_BODY = {"Content-Type": "text/csv", "Accept": "text/csv"}
D = 112  # mushrooms: 112 bits, one mask in the natural order


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped 'diamonds' and 'mushrooms'."""
    return store_of(tmp_path_factory.mktemp("score-stderr") / "store", SHIPPED / "diamonds", SHIPPED / "mushrooms")


registry, made = app_fixtures("store", "diamonds")


def _diamond_rows(store: Path) -> tuple[list[str], list[list[str]]]:
    """40 of the model's samples with an id column it does not know, and unknown cells in six
    rows (one to three cells each: estimates)."""
    engine = TableEngine(open_model(store, "diamonds"), threads=1)
    records = engine.schema.decode_rows(engine.sample(40, seed=4))
    names = ["id", *engine.schema.names]
    rows = [[str(i), *(str(r[c]) for c in engine.schema.names)] for i, r in enumerate(records)]
    for i, emptied in ((1, ["carat"]), (4, ["cut", "price"]), (9, ["z"]), (17, ["color", "x", "y"]), (30, ["depth"])):
        for c in emptied:
            rows[i][names.index(c)] = ""
    rows[33][names.index("clarity")] = "?"
    return names, rows


def _bit_rows(store: Path) -> list[list[str]]:
    """30 of mushrooms' samples as a header-less CSV: the last 12 bits missing in row 3 (summed
    out exactly), a bit in the middle of the order in row 5 and the first in row 20 (estimates)."""
    from service.engine.engine import Engine

    engine = Engine(open_model(store, "mushrooms"), threads=1)
    rows = [[str(v) for v in row] for row in engine.sample(30, seed=2).tolist()]
    for j in range(100, D):
        rows[3][j] = ""
    rows[5][7] = ""
    rows[20][0] = "NA"
    return rows


async def _served_cells(made: InProcessClient, model: str, header: list[str], row: list[str], seed: int) -> list[str]:
    """The logprob, exact and stderr cells of POST /logprob's CSV answer for this row alone."""
    body = io.StringIO()
    csv.writer(body, lineterminator="\n").writerows([header, row])
    answer = await made.http.post(f"/logprob?model={model}&seed={seed}", content=body.getvalue(), headers=CSV_BODY)
    assert answer.status_code == 200, answer.text
    served = list(csv.reader(io.StringIO(answer.text)))
    assert served[0][-3:] == ["logprob", "exact", "stderr"] and len(served) == 2
    return served[1][-3:]


async def _same_as_served(
    made: InProcessClient, store: Path, model: str, source: Path, scored: list[list[str]]
) -> tuple[int, int]:
    """Every scored row's last three cells are POST /logprob's for the row alone, seeded by its
    values as made score seeds it (a complete row's seed is unused); (rows estimated, rows exact
    with unknown cells)."""
    engine_schema = open_model(store, model).schema
    values, _, _ = parse_csv(engine_schema, source.read_text())  # the rows as made score encodes them
    header, rows = scored[0][:-3], scored[1:]
    estimated = exact_unknown = 0
    for i, row in enumerate(rows):
        served = await _served_cells(made, model, header, row[:-3], row_seed(values[i]))
        assert row[-3:] == served, (i, row[-3:], served)
        unknown = bool(np.isnan(values[i]).any())
        estimated += row[-2] == "false"
        exact_unknown += unknown and row[-2] == "true"
        assert (row[-2] == "false") <= unknown  # only a row with unknown cells is an estimate
    return estimated, exact_unknown


async def test_a_table_models_exact_and_stderr_are_post_logprobs(
    made: InProcessClient, store: Path, tmp_path: Path
) -> None:
    names, rows = _diamond_rows(store)
    source = write_csv_file(tmp_path / "diamonds.csv", rows, names)
    out = tmp_path / "out.csv"
    score_file(store, "diamonds", source, out, batch_size=7, threads=2, progress=False, stderr=True)
    scored = read_csv_file(out)
    assert scored[0] == [*names, "logprob", "exact", "stderr"]
    assert [r[:-3] for r in scored[1:]] == rows  # the cells as they were
    estimated, _ = await _same_as_served(made, store, "diamonds", source, scored)
    assert estimated == 6
    # the same bytes whatever the blocks and threads (the rows are seeded by their values)
    for batch, threads in ((40, 1), (3, 1)):
        again = tmp_path / f"again-{batch}.csv"
        score_file(store, "diamonds", source, again, batch_size=batch, threads=threads, progress=False, stderr=True)
        assert again.read_bytes() == out.read_bytes(), (batch, threads)


async def test_a_bit_models_exact_and_stderr_are_post_logprobs(
    made: InProcessClient, store: Path, tmp_path: Path
) -> None:
    rows = _bit_rows(store)
    source = write_csv_file(tmp_path / "mushrooms.csv", rows)
    out = tmp_path / "out.csv"
    score_file(store, "mushrooms", source, out, batch_size=8, threads=2, progress=False, stderr=True)
    scored = read_csv_file(out)
    assert scored[0] == [f"x{j}" for j in range(D)] + ["logprob", "exact", "stderr"]
    # parse_csv reads a model of bits' rows by the x0.. names the output gave them
    named = write_csv_file(tmp_path / "named.csv", rows, scored[0][:-3])
    estimated, exact_unknown = await _same_as_served(made, store, "mushrooms", named, scored)
    assert (estimated, exact_unknown) == (2, 1)  # rows 5 and 20; row 3's missing bits come last
    assert scored[4][-2:] == ["true", ""] and scored[6][-2] == "false" and float(scored[6][-1]) > 0
    again = tmp_path / "again.csv"
    score_file(store, "mushrooms", source, again, batch_size=30, threads=1, progress=False, stderr=True)
    assert again.read_bytes() == out.read_bytes()


def test_parquet_gets_a_bool_and_a_nullable_float64_column(store: Path, tmp_path: Path) -> None:
    names, rows = _diamond_rows(store)
    source = write_csv_file(tmp_path / "diamonds.csv", rows, names)
    score_file(store, "diamonds", source, tmp_path / "out.csv", progress=False, stderr=True)
    score_file(store, "diamonds", source, tmp_path / "out.parquet", batch_size=16, progress=False, stderr=True)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.names[-3:] == ["logprob", "exact", "stderr"]
    assert [table.schema.field(n).type for n in ("logprob", "exact", "stderr")] == [
        pa.float64(),
        pa.bool_(),
        pa.float64(),
    ]
    as_csv = read_csv_file(tmp_path / "out.csv")[1:]
    assert table.column("exact").to_pylist() == [r[-2] == "true" for r in as_csv]
    assert table.column("stderr").to_pylist() == [None if r[-1] == "" else float(r[-1]) for r in as_csv]
    assert table.column("exact").null_count == 0 and table.column("stderr").null_count == 34
    # a Parquet input written to CSV spells them as a CSV input does
    pq.write_table(table.drop_columns(["logprob", "exact", "stderr"]), tmp_path / "typed.parquet")
    score_file(store, "diamonds", tmp_path / "typed.parquet", tmp_path / "back.csv", progress=False, stderr=True)
    assert [r[-3:] for r in read_csv_file(tmp_path / "back.csv")[1:]] == [r[-3:] for r in as_csv]


def test_a_bit_model_with_conditionals_puts_them_after_stderr(store: Path, tmp_path: Path) -> None:
    rows = _bit_rows(store)
    source = write_csv_file(tmp_path / "mushrooms.csv", rows)
    out = tmp_path / "out.parquet"
    score_file(store, "mushrooms", source, out, conditionals=True, progress=False, stderr=True)
    table = pq.read_table(out)
    assert table.schema.names[D:] == ["logprob", "exact", "stderr", *[f"cond_{d}" for d in range(D)]]
    assert table.schema.field("x0").type == pa.uint8() and table.schema.field("exact").type == pa.bool_()
    assert table.column("exact").to_pylist() == [i not in (5, 20) for i in range(30)]
    plain = tmp_path / "plain.parquet"
    score_file(store, "mushrooms", source, plain, conditionals=True, progress=False)
    assert table.drop_columns(["exact", "stderr"]).equals(pq.read_table(plain))


@pytest.mark.parametrize("model", ["diamonds", "mushrooms"])
def test_without_stderr_the_output_is_one_logprob_column(store: Path, tmp_path: Path, model: str) -> None:
    """The default is unchanged: one logprob column, the --stderr output's, and the same bytes
    as the --stderr output with its two columns taken out."""
    if model == "diamonds":
        names, rows = _diamond_rows(store)
        source = write_csv_file(tmp_path / "in.csv", rows, names)
    else:
        source = write_csv_file(tmp_path / "in.csv", _bit_rows(store))
    score_file(store, model, source, tmp_path / "plain.csv", progress=False)
    score_file(store, model, source, tmp_path / "both.csv", progress=False, stderr=True)
    plain, both = read_csv_file(tmp_path / "plain.csv"), read_csv_file(tmp_path / "both.csv")
    assert plain[0][-1] == "logprob" and "exact" not in plain[0] and "stderr" not in plain[0]
    assert plain == [r[:-2] for r in both]
    expected = io.StringIO()
    csv.writer(expected, lineterminator="\n").writerows(r[:-2] for r in both)
    assert (tmp_path / "plain.csv").read_text() == expected.getvalue()
    score_file(store, model, source, tmp_path / "plain.parquet", progress=False)
    typed = pq.read_table(tmp_path / "plain.parquet")
    assert typed.schema.names[-1] == "logprob" and "exact" not in typed.schema.names


@pytest.mark.parametrize("column", ["exact", "stderr"])
def test_an_input_with_an_exact_or_stderr_column_is_refused_with_stderr(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str
) -> None:
    names, rows = _diamond_rows(store)
    source = write_csv_file(tmp_path / "in.csv", [[*r, "1"] for r in rows], [*names, column])
    args = ["score", "--store", str(store), "--name", "diamonds", "--no-progress", "--input", str(source)]
    assert main([*args, "--output", str(tmp_path / "out.csv"), "--stderr"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not (tmp_path / "out.csv").exists()
    assert captured.err == (
        f"made score: error: {source} already has a column '{column}', which --stderr adds (a scored file?); "
        "rename or drop it first\n"
    )
    # without --stderr the column is the input's own, carried through
    assert main([*args, "--output", str(tmp_path / "kept.csv")]) == 0
    assert read_csv_file(tmp_path / "kept.csv")[0] == [*names, column, "logprob"]


def test_a_row_scored_minus_inf_is_exact(store: Path, tmp_path: Path) -> None:
    """--impossible inf: p = 0 is no estimate, whatever the row's unknown cells: exact, no stderr."""
    names, rows = _diamond_rows(store)
    rows[4][names.index("carat")] = "9.9"  # row 4 has two unknown cells too
    rows[6][names.index("cut")] = "Superb"
    source = write_csv_file(tmp_path / "in.csv", rows, names)
    score_file(store, "diamonds", source, tmp_path / "out.csv", progress=False, impossible="inf", stderr=True)
    scored = read_csv_file(tmp_path / "out.csv")[1:]
    assert [scored[i][-3:] for i in (4, 6)] == [["-inf", "true", ""]] * 2
    score_file(store, "diamonds", source, tmp_path / "out.parquet", progress=False, impossible="inf", stderr=True)
    table = pq.read_table(tmp_path / "out.parquet")
    assert [table.column("exact")[4].as_py(), table.column("stderr")[4].as_py()] == [True, None]
