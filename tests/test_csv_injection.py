"""CSV injection: every CSV the project writes (the service's CSV answers, `made score`'s CSV
output from a CSV or a Parquet input) writes a text cell that a spreadsheet would run as a
formula with a leading ' (OWASP), numbers as they are; MADE_CSV_ESCAPE_FORMULAS=false and
`made score --no-escape-formulas` write them verbatim. On the shipped `diamonds` table model."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cpu_registry

from made.cli import main
from made.io.csv import escape_formula, to_csv
from service.batch.score import score_file
from service.engine import ModelRegistry
from service.settings import Settings
from service.testing import in_process

STORE = Path(__file__).resolve().parent.parent / "model_store"
ATTACKS = [
    "=cmd|' /C calc'!A0",
    '+HYPERLINK("http://x","y")',
    "@SUM(A1:A2)",
    "-2+3+cmd|' /C calc'!A0",
    "\t=1+1",
]
HARMLESS = ["-3.5", "+1e3", "-inf", "7", "", "a=b", "plain", "'=already"]
NOTES = ATTACKS + HARMLESS
HEAD = ["carat", "cut", "color", "clarity", "depth", "table", "price", "x", "y", "z", "note"]
ROW = ["0.3", "Ideal", "E", "SI1", "61.5", "55", "326", "3.95", "3.98", "2.43"]


def _escaped(cell: str) -> str:
    return "'" + cell if cell in ATTACKS else cell


def test_escape_formula_marks_text_that_a_spreadsheet_would_run() -> None:
    assert [escape_formula(c) for c in ATTACKS] == ["'" + c for c in ATTACKS]
    assert escape_formula("\r=1") == "'\r=1"  # (not in ATTACKS: Python 3.11's csv writer leaves a lone CR unquoted)
    assert [escape_formula(c) for c in HARMLESS] == HARMLESS
    assert escape_formula(-3.5) == -3.5 and escape_formula(None) is None
    text = to_csv(["=h", "n"], [["=1+1", -2.0], ["-1", None]])
    assert text == "'=h,n\n'=1+1,-2.0\n-1,\n"
    assert to_csv(["=h"], [["=1+1"]], escape=False) == "=h\n=1+1\n"


def _csv_body() -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([HEAD, *([*ROW, note] for note in NOTES)])
    return out.getvalue()


@pytest.fixture(scope="module")
def registry(diamonds_store: Path) -> ModelRegistry:
    return cpu_registry(diamonds_store, "diamonds")


@pytest.mark.anyio
@pytest.mark.parametrize("escape", [True, False])
async def test_the_services_csv_answer_escapes_formulas(
    diamonds_store: Path, registry: ModelRegistry, escape: bool
) -> None:
    settings = Settings(store=diamonds_store, default_model="diamonds", csv_escape_formulas=escape)
    async with in_process(settings, registry) as client:
        r = await client.http.post(
            "/logprob", content=_csv_body().encode(), headers={"Content-Type": "text/csv", "Accept": "text/csv"}
        )
    assert r.status_code == 200, r.text
    table = list(csv.reader(io.StringIO(r.text)))
    assert table[0] == [*HEAD, "logprob", "exact", "stderr"]
    assert [row[10] for row in table[1:]] == ([_escaped(n) for n in NOTES] if escape else NOTES)
    assert all(float(row[11]) < 0 for row in table[1:])  # the scores stay numbers


@pytest.mark.parametrize("escape", [True, False])
def test_made_score_escapes_formulas_in_csv_from_csv_and_parquet(tmp_path: Path, escape: bool) -> None:
    source = tmp_path / "in.csv"
    source.write_text(_csv_body())
    flag = [] if escape else ["--no-escape-formulas"]
    args = ["score", "--store", str(STORE), "--name", "diamonds", "--no-progress", "--threads", "1"]
    assert main([*args, "--input", str(source), "--output", str(tmp_path / "out.csv"), *flag]) == 0
    parquet = tmp_path / "in.parquet"
    pq.write_table(
        pa.table({name: [*([cell] * len(NOTES))] for name, cell in zip(HEAD, ROW, strict=False)} | {"note": NOTES}),
        parquet,
    )
    score_file(STORE, "diamonds", parquet, tmp_path / "out2.csv", progress=False, escape_formulas=escape)
    expected = [_escaped(n) for n in NOTES] if escape else NOTES
    for out in ("out.csv", "out2.csv"):
        with open(tmp_path / out, newline="") as fh:
            table = list(csv.reader(fh))
        assert table[0] == [*HEAD, "logprob"], out
        assert [row[10] for row in table[1:]] == expected, out
        assert all(float(row[-1]) < 0 for row in table[1:]), out
    # Parquet output is no spreadsheet: written as it is
    score_file(STORE, "diamonds", source, tmp_path / "out.parquet", progress=False)
    assert pq.read_table(tmp_path / "out.parquet").column("note").to_pylist() == NOTES
