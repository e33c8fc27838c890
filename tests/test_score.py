"""`made score`: a CSV or Parquet file scored row by row with the shipped models, locally in
blocks of --batch-size rows and on an in-process Ray (`--ray local`, two CPUs), every row
compared with the engine's own scores; bad input ends with one line on stderr, exit 2 and no
output file."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import read_csv_file, write_csv_file

from made.store.versions import open_model
from service.batch.outputs import score_progress
from service.batch.score import score_file
from service.batch.scorer import row_seed
from service.core.records import parse_csv
from service.engine.engine import Engine
from service.engine.table_engine import TableEngine

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "model_store"
MADE_BIN = Path(sys.executable).with_name("made")
# the console script where this Python has one (a virtual environment that installed made)
MADE = [str(MADE_BIN)] if MADE_BIN.exists() else [sys.executable, "-m", "made.cli"]


def _score_argv(source: Path, output: Path) -> list[str]:
    """`made score` of the shipped mushrooms model, source to output (the command's arguments)."""
    return ["score", "--store", str(STORE), "--name", "mushrooms", "--input", str(source), "--output", str(output)]


D = 112  # mushrooms: 112 bits, one mask in the natural order


@pytest.fixture(scope="module")
def bits() -> Engine:
    # one onnxruntime thread, as made score's (more threads split the sums another way)
    return Engine(open_model(STORE, "mushrooms"), threads=1)


@pytest.fixture(scope="module")
def diamonds() -> TableEngine:
    # one onnxruntime thread, as made score's
    return TableEngine(open_model(STORE, "diamonds"), threads=1)


def _bit_rows(engine: Engine, n: int, seed: int) -> list[list[str]]:
    """The model's own samples as CSV cells, with missing values in a few rows: at the end of the
    order (summed out exactly), in the middle (estimated), and spelled as NA."""
    rows = [[str(v) for v in row] for row in engine.sample(n, seed=seed).tolist()]
    for j in range(100, D):
        rows[3][j] = ""  # the last 12 dimensions: exact
    rows[5][7] = ""  # in the middle of the order: an importance-sampling estimate
    rows[min(n - 1, 40)][0] = "NA"
    return rows


def _as_x(rows: list[list[str]]) -> np.ndarray:
    return np.array([[math.nan if c in ("", "NA") else float(c) for c in r] for r in rows])


def _same(got: Any, expected: np.ndarray) -> None:
    """Equal to the bit: an engine answers a row the same whatever the rows in its call, so
    `made score`'s blocks give what one call gives (CSV: repr, which reads back exactly)."""
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float64), expected)


def _engine_scores(engine: Engine | TableEngine, x: np.ndarray) -> np.ndarray:
    """The engine's log p per row: complete rows in one call, each row with missing values on its
    own with the seed `made score` gives it (its values), which only estimated rows use."""
    out = np.empty(len(x))
    complete = ~np.isnan(x).any(axis=1)
    out[complete] = engine.logprob(x[complete]).logprob
    for i in np.flatnonzero(~complete):
        out[i] = engine.logprob(x[i : i + 1], seed=row_seed(x[i])).logprob[0]
    return out


@pytest.fixture(scope="module")
def bit_csv(tmp_path_factory: pytest.TempPathFactory, bits: Engine) -> tuple[Path, list[list[str]]]:
    rows = _bit_rows(bits, 700, seed=3)
    return write_csv_file(tmp_path_factory.mktemp("score") / "mushrooms.csv", rows), rows


# --- local ------------------------------------------------------------------------------------------
def test_csv_rows_come_back_unchanged_with_the_engines_logprob(
    bit_csv: tuple[Path, list[list[str]]], bits: Engine, tmp_path: Path
) -> None:
    path, rows = bit_csv
    out = tmp_path / "scored.csv"
    result = score_file(STORE, "mushrooms", path, out, batch_size=128, progress=False)
    assert (result.rows, result.blocks) == (700, math.ceil(700 / 128))
    table = read_csv_file(out)
    assert table[0] == [f"x{j}" for j in range(D)] + ["logprob"]  # a header-less file gets the API's names
    assert [r[:-1] for r in table[1:]] == rows  # the cells as they were, NA and blanks included
    got = np.array([float(r[-1]) for r in table[1:]])
    x = _as_x(rows)
    _same(got, _engine_scores(bits, x))
    assert got[5] == _engine_scores(bits, x[5:6])[0]  # the estimated row: seeded by its values
    # a row's score does not depend on the rows it is scored with: other blocks, one thread or
    # several, the same bytes
    for batch, threads in ((700, None), (3, 1), (129, 2)):
        again = score_file(
            STORE, "mushrooms", path, tmp_path / "again.csv", batch_size=batch, threads=threads, progress=False
        )
        assert again.blocks == math.ceil(700 / batch)
        assert (tmp_path / "again.csv").read_bytes() == out.read_bytes(), (batch, threads)
    assert not list(tmp_path.glob(".*.tmp"))


def test_parquet_in_and_out_with_conditionals(
    bit_csv: tuple[Path, list[list[str]]], bits: Engine, tmp_path: Path
) -> None:
    _, rows = bit_csv
    x = _as_x(rows)
    source = pa.table({f"b{j}": pa.array(x[:, j], mask=np.isnan(x[:, j])).cast(pa.int8()) for j in range(D)})
    pq.write_table(source, tmp_path / "in.parquet")
    result = score_file(
        STORE,
        "mushrooms",
        tmp_path / "in.parquet",
        tmp_path / "out.parquet",
        batch_size=256,
        conditionals=True,
        progress=False,
    )
    assert result.blocks == 3
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.schema.names == [*source.schema.names, "logprob", *[f"cond_{d}" for d in range(D)]]
    assert out.select(source.schema.names).equals(source)  # the input's columns and types as they were
    _same(out.column("logprob").to_numpy(), _engine_scores(bits, x))
    cond = np.column_stack([out.column(f"cond_{d}").to_numpy(zero_copy_only=False) for d in range(D)])
    complete = ~np.isnan(x).any(axis=1)
    _same(cond[complete], bits.conditionals(x[complete], mask=0))
    assert out.column("cond_0").null_count == (~complete).sum()  # no conditionals for incomplete rows


def test_csv_to_parquet_and_back(bit_csv: tuple[Path, list[list[str]]], tmp_path: Path) -> None:
    path, rows = bit_csv
    score_file(STORE, "mushrooms", path, tmp_path / "a.csv", progress=False)
    score_file(STORE, "mushrooms", path, tmp_path / "b.parquet", progress=False)
    typed = pq.read_table(tmp_path / "b.parquet")
    assert typed.schema.field("x0").type == pa.uint8() and typed.column("x7").null_count == 1
    pq.write_table(typed.drop_columns(["logprob"]), tmp_path / "b.parquet")
    score_file(STORE, "mushrooms", tmp_path / "b.parquet", tmp_path / "c.csv", progress=False)
    first = read_csv_file(tmp_path / "a.csv")
    # the third file went through Parquet (with the scores dropped on the way back in): same scores
    assert [r[-1] for r in first] == [r[-1] for r in read_csv_file(tmp_path / "c.csv")]


def test_header_row_delimiter_and_tsv_output(bits: Engine, tmp_path: Path) -> None:
    rows = [[str(v) for v in r] for r in bits.sample(30, seed=8).tolist()]
    names = [f"gill{j}" for j in range(D)]
    path = tmp_path / "semi.csv"
    path.write_text(";".join(names) + "\n" + "".join(";".join(r) + "\n" for r in rows))
    score_file(STORE, "mushrooms", path, tmp_path / "out.csv", progress=False)
    text = (tmp_path / "out.csv").read_text()
    assert text.splitlines()[0] == ";".join([*names, "logprob"])  # the input's own separator
    score_file(STORE, "mushrooms", path, tmp_path / "out.tsv", progress=False)
    tsv = list(csv.reader(io.StringIO((tmp_path / "out.tsv").read_text()), delimiter="\t"))
    _same([float(r[-1]) for r in tsv[1:]], bits.logprob(_as_x(rows)).logprob)


def test_memory_is_bounded_by_the_batch_not_the_file(
    bits: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five times the rows, about the same peak of Python memory (the whole 10,000-row file in
    one block peaks near 57 MB, its floats alone being 9 MB; in blocks of 250 rows, 3 to 5 MB)."""
    batch = 250
    x = bits.sample(10_000, seed=11)
    seen: list[int] = []
    logprob = Engine.logprob

    def spy(self: Engine, rows: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(rows))
        return logprob(self, rows, *args, **kwargs)

    monkeypatch.setattr(Engine, "logprob", spy)
    peaks = {}
    for n in (2_000, 10_000):
        path = tmp_path / f"rows{n}.csv"
        np.savetxt(path, x[:n], fmt="%d", delimiter=",")
        tracemalloc.start()
        try:
            result = score_file(
                STORE, "mushrooms", path, tmp_path / f"out{n}.csv", batch_size=batch, threads=2, progress=False
            )
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.blocks == n // batch
    assert max(seen) == batch
    # a few blocks in flight (two threads scoring, one being read) whatever the file's length
    assert peaks[10_000] < peaks[2_000] + 3e6, f"peak {peaks} bytes: memory grows with the file"
    assert peaks[10_000] < x.size * 8  # less than the whole file's rows as float64
    monkeypatch.undo()
    _same([float(r[-1]) for r in read_csv_file(tmp_path / "out10000.csv")[1:]], bits.logprob(x).logprob)


def _diamond_rows(engine: TableEngine, n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    """Sampled records as a CSV with an id column the model does not know, columns in another
    order than the model's, and two unknown cells."""
    records = engine.schema.decode_rows(engine.sample(n, seed=seed))
    names = ["id", *reversed(engine.schema.names)]
    rows = [[str(i), *(str(r[c]) for c in reversed(engine.schema.names))] for i, r in enumerate(records)]
    if n > 9:
        rows[2][names.index("carat")] = ""
        rows[9][names.index("cut")] = ""
    return names, rows


def test_table_model_reads_its_columns_by_name(diamonds: TableEngine, tmp_path: Path) -> None:
    names, rows = _diamond_rows(diamonds, 300, seed=5)
    path = write_csv_file(tmp_path / "diamonds.csv", rows, names)
    score_file(STORE, "diamonds", path, tmp_path / "out.csv", batch_size=64, progress=False)
    table = read_csv_file(tmp_path / "out.csv")
    assert table[0] == [*names, "logprob"] and [r[:-1] for r in table[1:]] == rows
    # the reference: the rows as the HTTP API reads a CSV body, then the engine
    values, _, _ = parse_csv(diamonds.schema, path.read_text())
    assert np.isnan(values[2]).sum() == 1 and np.isnan(values[9]).sum() == 1
    got = [float(r[-1]) for r in table[1:]]
    _same(got, _engine_scores(diamonds, values))
    # the two estimated rows, scored in one call with the block's others: each what it gets alone
    assert not diamonds.logprob(values[[2, 9]]).exact.any()
    assert [got[2], got[9]] == [_engine_scores(diamonds, values[i : i + 1])[0] for i in (2, 9)]
    again = score_file(STORE, "diamonds", path, tmp_path / "again.csv", batch_size=7, threads=2, progress=False)
    assert again.blocks == math.ceil(300 / 7)
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "out.csv").read_bytes()
    # Parquet of typed values (numbers as numbers, empty cells null) gives the same scores
    numeric = {c.name for c in diamonds.schema.columns if c.kind == "numeric"}
    typed = pa.table(
        {
            name: [None if r[j] == "" else float(r[j]) if name in numeric else r[j] for r in rows]
            for j, name in enumerate(names)
        }
    )
    assert typed.schema.field("carat").type == pa.float64() and typed.column("carat").null_count == 1
    pq.write_table(typed, tmp_path / "diamonds.parquet")
    score_file(STORE, "diamonds", tmp_path / "diamonds.parquet", tmp_path / "out2.csv", progress=False)
    assert [r[-1] for r in read_csv_file(tmp_path / "out2.csv")] == [r[-1] for r in table]


def test_blocks_scored_at_once_get_one_blas_thread_each(
    diamonds: TableEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows with unknown cells go through the particle filters' numpy matrix products: with two
    blocks scored at once, each on OpenBLAS's thread per core, the cores were oversubscribed.
    While blocks are scored in threads BLAS has one thread, as Settings.blas_threads gives the
    server; afterwards the process's own setting is back."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from service.batch.scorer import Scorer

    def blas_threads() -> list[int]:
        return [int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas"]

    seen: list[list[int]] = []
    score = Scorer.score

    def watched(self: Scorer, x: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(blas_threads())
        return score(self, x)

    monkeypatch.setattr(Scorer, "score", watched)
    names, rows = _diamond_rows(diamonds, 40, seed=5)
    path = write_csv_file(tmp_path / "diamonds.csv", rows, names)
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        score_file(STORE, "diamonds", path, tmp_path / "out.csv", batch_size=10, threads=2, progress=False)
        assert blas_threads() == before == [2] * len(before)
        assert len(seen) == 4 and all(t == [1] * len(before) for t in seen)
        seen.clear()
        score_file(STORE, "diamonds", path, tmp_path / "one.csv", batch_size=10, threads=1, progress=False)
        assert all(t == before for t in seen)  # one block at a time: BLAS keeps its threads
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()


def test_a_csv_scored_into_parquet_keeps_the_numbers_of_a_table_model_as_numbers(
    diamonds: TableEngine, tmp_path: Path
) -> None:
    names, rows = _diamond_rows(diamonds, 50, seed=7)
    path = write_csv_file(tmp_path / "diamonds.csv", rows, names)
    score_file(STORE, "diamonds", path, tmp_path / "out.parquet", progress=False)
    table = pq.read_table(tmp_path / "out.parquet")
    numeric = [c.name for c in diamonds.schema.columns if c.kind == "numeric"]
    assert numeric and all(table.schema.field(name).type == pa.float64() for name in numeric)
    carat = names.index("carat")
    assert table.column("carat").to_pylist() == [None if r[carat] == "" else float(r[carat]) for r in rows]
    assert table.schema.field("cut").type == pa.string()
    # read back, the typed file scores as the CSV did
    pq.write_table(table.drop_columns(["logprob"]), tmp_path / "typed.parquet")
    score_file(STORE, "diamonds", tmp_path / "typed.parquet", tmp_path / "again.parquet", progress=False)
    assert pq.read_table(tmp_path / "again.parquet").column("logprob").equals(table.column("logprob"))


def test_a_model_column_the_file_lacks_is_unknown(diamonds: TableEngine, tmp_path: Path) -> None:
    names, rows = _diamond_rows(diamonds, 3, seed=6)
    keep = [j for j, name in enumerate(names) if name != "depth"]
    path = write_csv_file(tmp_path / "partial.csv", [[r[j] for j in keep] for r in rows], [names[j] for j in keep])
    score_file(STORE, "diamonds", path, tmp_path / "out.csv", progress=False)
    values, _, _ = parse_csv(diamonds.schema, path.read_text())
    assert np.isnan(values[:, diamonds.schema.index("depth")]).all()
    got = [float(r[-1]) for r in read_csv_file(tmp_path / "out.csv")[1:]]
    _same(got, _engine_scores(diamonds, values))


def _impossible_rows(diamonds: TableEngine, tmp_path: Path) -> tuple[list[str], list[list[str]], Path]:
    """40 sampled rows, four of them holding a cell the model gives no probability (a carat above
    its bounds, an unknown cut, a negative price, a depth below its bounds); row 2 holds an
    unknown cell (an estimate), and row 17 a second impossible cell."""
    names, rows = _diamond_rows(diamonds, 40, seed=8)
    rows[3][names.index("carat")] = "9.9"
    rows[9][names.index("cut")] = "Superb"
    rows[17][names.index("price")] = "-5"
    rows[17][names.index("color")] = "Q"
    rows[31][names.index("depth")] = "1.5"
    return names, rows, write_csv_file(tmp_path / "impossible.csv", rows, names)


def test_impossible_cells_stop_the_run_or_score_minus_inf(diamonds: TableEngine, tmp_path: Path) -> None:
    """made score's --impossible: `error` (the default) stops at the first cell the model gives no
    probability, naming it; `inf` scores those rows -inf (p = 0), every other row as without
    them, counts them and names the first."""
    from made.core.errors import DataError

    names, rows, path = _impossible_rows(diamonds, tmp_path)
    with pytest.raises(DataError, match=r"line 5, column 'carat': 9.9 is outside this column's bounds"):
        score_file(STORE, "diamonds", path, tmp_path / "refused.csv", progress=False)
    assert not (tmp_path / "refused.csv").exists()
    told: list[str] = []
    result = score_file(
        STORE, "diamonds", path, tmp_path / "out.csv", batch_size=16, progress=False, impossible="inf", warn=told.append
    )
    assert result.impossible_rows == 4 and result.to_json()["impossible_rows"] == 4
    assert told == [
        "4 rows hold a value model diamonds gives no probability (the first: "
        f"{path} line 5, column 'carat': 9.9 is outside this column's bounds [0.13, 5.08]; "
        "the model gives no probability there): logprob -inf"
    ]
    table = read_csv_file(tmp_path / "out.csv")
    assert [r[:-1] for r in table[1:]] == rows  # every cell written back as it was
    got = np.array([float(r[-1]) for r in table[1:]])
    bad = [3, 9, 17, 31]
    assert np.isneginf(got[bad]).all() and np.isfinite(np.delete(got, bad)).all()
    # the others score as the file without the four rows does, to the bit
    kept = write_csv_file(tmp_path / "kept.csv", [r for i, r in enumerate(rows) if i not in bad], names)
    score_file(STORE, "diamonds", kept, tmp_path / "kept-out.csv", progress=False)
    assert [r[-1] for r in read_csv_file(tmp_path / "kept-out.csv")[1:]] == [
        r[-1] for i, r in enumerate(table[1:]) if i not in bad
    ]
    # a malformed cell is still an error: it is not a value the model could weigh
    rows[20][names.index("price")] = "12,5"
    malformed = write_csv_file(tmp_path / "malformed.csv", rows, names)
    with pytest.raises(DataError, match="line 22, column 'price': '12,5' is not a number"):
        score_file(STORE, "diamonds", malformed, tmp_path / "m.csv", progress=False, impossible="inf")
    # without --impossible inf the result says nothing of it
    assert "impossible_rows" not in score_file(STORE, "diamonds", kept, tmp_path / "k2.csv", progress=False).to_json()


def test_impossible_rows_into_parquet_keep_their_numbers(diamonds: TableEngine, tmp_path: Path) -> None:
    names, rows, path = _impossible_rows(diamonds, tmp_path)
    score_file(STORE, "diamonds", path, tmp_path / "out.parquet", progress=False, impossible="inf")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("carat")[3].as_py() == 9.9 and table.column("depth")[31].as_py() == 1.5
    assert table.column("price")[17].as_py() == -5 and table.column("cut")[9].as_py() == "Superb"
    assert np.isneginf(table.column("logprob").to_numpy()[[3, 9, 17, 31]]).all()
    # the typed file read back scores the same, the out-of-bounds numbers included
    pq.write_table(table.drop_columns(["logprob"]), tmp_path / "typed.parquet")
    score_file(
        STORE, "diamonds", tmp_path / "typed.parquet", tmp_path / "again.parquet", progress=False, impossible="inf"
    )
    assert pq.read_table(tmp_path / "again.parquet").column("logprob").equals(table.column("logprob"))


def test_made_score_impossible_inf_from_the_command_line(diamonds: TableEngine, tmp_path: Path) -> None:
    _, _, path = _impossible_rows(diamonds, tmp_path)
    argv = ["score", "--store", str(STORE), "--name", "diamonds", "--input", str(path), "--no-progress"]
    refused = subprocess.run([*MADE, *argv, "--output", str(tmp_path / "a.csv")], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "9.9 is outside" in refused.stderr
    done = subprocess.run(
        [*MADE, *argv, "--output", str(tmp_path / "b.csv"), "--impossible", "inf"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["impossible_rows"] == 4
    assert done.stderr.startswith("made score: warning: 4 rows hold a value model diamonds gives no probability")


def test_scoring_imports_neither_torch_nor_ray(bit_csv: tuple[Path, list[list[str]]], tmp_path: Path) -> None:
    path, _ = bit_csv
    code = (
        "import sys; from made.cli import main; rc = main(sys.argv[1:]); "
        "assert rc == 0, rc; bad = {'torch', 'ray'} & set(sys.modules); assert not bad, bad"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            *_score_argv(path, tmp_path / "o.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert '"rows": 700' in result.stdout.splitlines()[-1]
    assert result.stderr == ""  # no progress lines off a terminal for a short run, no engine log line


def test_progress_off_a_terminal_is_plain_lines() -> None:
    stream = io.StringIO()  # not a terminal: no bar, whose carriage returns would garble a log
    bar = score_progress(1000, "B", True, stream, every_s=0.0)
    bar.update(40, 500)
    bar.update(40, 1000)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("made score: 40 rows (50%), ") and lines[1].startswith("made score: 80 rows (100%)")
    assert "\r" not in stream.getvalue()
    quiet = io.StringIO()
    score_progress(1000, "B", False, quiet, every_s=0.0).update(40, 500)
    assert quiet.getvalue() == ""


# --- bad input ----------------------------------------------------------------------------------------
_HIDE_RAY = "import sys; sys.modules['ray'] = None; from made.cli import main; sys.exit(main(sys.argv[1:]))"


# each bad call: what its one error line must say
EXPECTED = {
    "missing-input": "input file not found",
    "input-extension": "extension '.json'",
    "output-extension": "extension '.xlsx'",
    "output-folder": "does not exist",
    "unknown-model": "no model named 'no-such-model'",
    "wrong-width": "has 111 columns, model mushrooms has 112",
    "not-0-1-late": "line 601, column 7 (x6) holds 2, expected 0 or 1",
    "text-cell": "line 5, column 10 holds 'yes'",
    "ragged-row": "line 13 has 111 values, expected 112",
    "empty-file": "is empty",
    "not-parquet": "cannot read",
    "batch-size": "--batch-size must be a positive integer",
    "table-conditionals": "--conditionals is for models of bits",
    "table-no-columns": "none of model diamonds's columns",
    "table-header-only": "holds a header row but no rows",
    "table-bad-level": "'Superb' is not a level",
    "no-ray": "pip install made[ray]",
}


def _bad_calls(base: Path, bit_rows: list[list[str]]) -> dict[str, list[str]]:
    """name -> the arguments of one `made score` call that must fail cleanly."""
    good = write_csv_file(base / "good.csv", bit_rows[:50])
    late = [list(r) for r in bit_rows]
    late[600][6] = "2"  # found in the 5th block of 128 rows, after 4 went to the temporary file
    (base / "json.json").write_text("{}")
    (base / "empty.csv").write_text("")
    (base / "broken.parquet").write_bytes(b"PAR1 not really")
    header_only = write_csv_file(base / "header.csv", [], ["carat", "cut"])
    no_columns = write_csv_file(base / "nc.csv", [["1", "2"]], ["a", "b"])
    bad_level = write_csv_file(base / "lvl.csv", [["0.3", "Superb"]], ["carat", "cut"])
    ragged = [list(r) for r in bit_rows[:20]]
    ragged[12] = ragged[12][:-1]
    text_cell = [list(r) for r in bit_rows[:20]]
    text_cell[4][9] = "yes"
    return {
        "missing-input": ["--input", str(base / "absent.csv")],
        "input-extension": ["--input", str(base / "json.json")],
        "output-extension": ["--input", str(good), "--output", str(base / "out.xlsx")],
        "output-folder": ["--input", str(good), "--output", str(base / "nowhere" / "o.csv")],
        "unknown-model": ["--input", str(good), "--name", "no-such-model"],
        "wrong-width": ["--input", str(write_csv_file(base / "w.csv", [r[:-1] for r in bit_rows[:5]]))],
        "not-0-1-late": ["--input", str(write_csv_file(base / "late.csv", late)), "--batch-size", "128"],
        "text-cell": ["--input", str(write_csv_file(base / "t.csv", text_cell))],
        "ragged-row": ["--input", str(write_csv_file(base / "r.csv", ragged))],
        "empty-file": ["--input", str(base / "empty.csv")],
        "not-parquet": ["--input", str(base / "broken.parquet")],
        "batch-size": ["--input", str(good), "--batch-size", "0"],
        "table-conditionals": ["--input", str(header_only), "--name", "diamonds", "--conditionals"],
        "table-no-columns": ["--input", str(no_columns), "--name", "diamonds"],
        "table-header-only": ["--input", str(header_only), "--name", "diamonds"],
        "table-bad-level": ["--input", str(bad_level), "--name", "diamonds"],
        "no-ray": ["--input", str(good), "--ray", "local"],
    }


@pytest.fixture(scope="module")
def failures(
    tmp_path_factory: pytest.TempPathFactory, bit_csv: tuple[Path, list[list[str]]]
) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    """Every bad call at once, through the real console script (and `made score` with Ray hidden)."""
    base = tmp_path_factory.mktemp("bad")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, args in _bad_calls(base, bit_csv[1]).items():
        full = ["score", "--store", str(STORE), "--name", "mushrooms", "--output", str(base / f"{name}.csv"), *args]
        if name == "not-0-1-late":
            (base / f"{name}.csv").write_text("the previous output\n")  # must survive the failure
        cmd = [sys.executable, "-c", _HIDE_RAY, *full] if name == "no-ray" else [*MADE, *full]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return base, results


@pytest.mark.parametrize("case", list(EXPECTED))
def test_bad_input_is_one_line_exit_2_and_no_output(
    failures: tuple[Path, dict[str, subprocess.CompletedProcess[str]]], case: str
) -> None:
    base, results = failures
    result = results[case]
    expected = EXPECTED[case]
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("made score: error: ") and expected in lines[0], lines[0]
    assert result.stdout == ""
    output = base / f"{case}.csv"
    if case == "not-0-1-late":
        assert output.read_text() == "the previous output\n"  # the old file, untouched
    elif case not in ("output-extension", "output-folder"):
        assert not output.exists()
    assert not list(base.glob(".*.tmp")), "a temporary output was left behind"


# --- Ray ----------------------------------------------------------------------------------------------
# Ray Data's DataContext warns of its own deprecated settings whenever it is read (DeprecationWarning
# raised in ray.*): that alone is let through the suite's filterwarnings = error.
ray_warnings = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """One in-process Ray with two CPUs for the module's Ray tests (what `--ray local` starts);
    `made score --ray local` reuses a Ray that is already running."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install made[ray])")
    pytest.importorskip("ray.data", reason="ray[data] is not installed (pip install made[ray])")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()


@ray_warnings
def test_ray_csv_output_is_the_local_output(
    ray_local: Any, bit_csv: tuple[Path, list[list[str]]], bits: Engine, tmp_path: Path
) -> None:
    path, rows = bit_csv
    local = score_file(STORE, "mushrooms", path, tmp_path / "local.csv", progress=False)  # one block of 700
    on_ray = score_file(STORE, "mushrooms", path, tmp_path / "ray.csv", batch_size=128, ray="local", progress=False)
    assert on_ray.rows == local.rows == 700 and on_ray.ray == "local"
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    got = np.array([float(r[-1]) for r in read_csv_file(tmp_path / "ray.csv")[1:]])
    _same(got, _engine_scores(bits, _as_x(rows)))  # every row, in order


@ray_warnings
def test_ray_parquet_with_conditionals_is_the_local_output(
    ray_local: Any, bit_csv: tuple[Path, list[list[str]]], tmp_path: Path
) -> None:
    path, _ = bit_csv
    score_file(STORE, "mushrooms", path, tmp_path / "in.parquet", progress=False)
    source = pq.read_table(tmp_path / "in.parquet").drop_columns(["logprob"])
    pq.write_table(source, tmp_path / "in.parquet")
    for where, ray in (("local", None), ("ray", "local")):
        score_file(
            STORE,
            "mushrooms",
            tmp_path / "in.parquet",
            tmp_path / f"{where}.parquet",
            batch_size=200,
            conditionals=True,
            ray=ray,
            progress=False,
        )
    assert pq.read_table(tmp_path / "ray.parquet").equals(pq.read_table(tmp_path / "local.parquet"))


@ray_warnings
def test_ray_table_model_and_a_bad_cell(ray_local: Any, diamonds: TableEngine, tmp_path: Path) -> None:
    names, rows = _diamond_rows(diamonds, 200, seed=7)
    path = write_csv_file(tmp_path / "d.csv", rows, names)
    score_file(STORE, "diamonds", path, tmp_path / "local.csv", batch_size=50, progress=False)
    score_file(STORE, "diamonds", path, tmp_path / "ray.csv", batch_size=50, ray="local", progress=False)
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    rows[150][names.index("cut")] = "Superb"
    bad = write_csv_file(tmp_path / "bad.csv", rows, names)
    from made.core.errors import DataError

    with pytest.raises(DataError, match="'Superb' is not a level"):
        score_file(STORE, "diamonds", bad, tmp_path / "bad-out.csv", batch_size=50, ray="local", progress=False)
    assert not (tmp_path / "bad-out.csv").exists() and not list(tmp_path.glob(".*.tmp"))
    # --impossible inf: the row scores -inf on Ray as locally, and is counted
    told: list[str] = []
    local = score_file(
        STORE, "diamonds", bad, tmp_path / "inf-local.csv", batch_size=50, progress=False, impossible="inf"
    )
    on_ray = score_file(
        STORE,
        "diamonds",
        bad,
        tmp_path / "inf-ray.csv",
        batch_size=50,
        ray="local",
        progress=False,
        impossible="inf",
        warn=told.append,
    )
    assert local.impossible_rows == on_ray.impossible_rows == 1 and len(told) == 1
    assert (tmp_path / "inf-ray.csv").read_bytes() == (tmp_path / "inf-local.csv").read_bytes()


@ray_warnings
def test_ray_stderr_columns_are_the_local_ones(
    ray_local: Any, bit_csv: tuple[Path, list[list[str]]], diamonds: TableEngine, tmp_path: Path
) -> None:
    """--stderr on Ray: the same exact and stderr as locally (the estimated rows seeded by their
    values), CSV and Parquet, a table model and a model of bits."""
    names, rows = _diamond_rows(diamonds, 200, seed=7)
    table_path = write_csv_file(tmp_path / "d.csv", rows, names)
    for model, source in (("diamonds", table_path), ("mushrooms", bit_csv[0])):
        for kind in ("csv", "parquet"):
            local, on_ray = tmp_path / f"{model}-local.{kind}", tmp_path / f"{model}-ray.{kind}"
            score_file(STORE, model, source, local, batch_size=50, progress=False, stderr=True)
            score_file(STORE, model, source, on_ray, batch_size=64, ray="local", progress=False, stderr=True)
            if kind == "csv":
                scored = read_csv_file(on_ray)
                assert scored[0][-3:] == ["logprob", "exact", "stderr"]
                assert "false" in [r[-2] for r in scored[1:]]  # estimated rows among them
                assert on_ray.read_bytes() == local.read_bytes(), model
            else:
                table = pq.read_table(on_ray)
                assert table.schema.field("exact").type == pa.bool_()
                assert table.equals(pq.read_table(local)), model


def test_made_score_ray_local_from_the_command_line(bit_csv: tuple[Path, list[list[str]]], tmp_path: Path) -> None:
    """The real `--ray local`: the console script starts its own Ray with two CPUs, and stops it."""
    pytest.importorskip("ray.data", reason="ray[data] is not installed (pip install made[ray])")
    path, _ = bit_csv
    score_file(STORE, "mushrooms", path, tmp_path / "local.csv", progress=False)
    result = subprocess.run(
        [
            *MADE,
            *_score_argv(path, tmp_path / "ray.csv"),
            "--ray",
            "local",
            "--batch-size",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"ray": "local"' in result.stdout.splitlines()[-1]
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()


def test_a_float32_parquet_column_is_written_to_csv_as_float32_writes_it(diamonds: TableEngine, tmp_path: Path) -> None:
    """A float32 column's cells went to a CSV output as their float64 copies (-4.099999904632568
    for -4.1): the cells of the input, as made's table reader reads them, are float32's."""
    names, rows = _diamond_rows(diamonds, 20, seed=3)
    numeric = {c.name for c in diamonds.schema.columns if c.kind == "numeric"}
    typed = pa.table(
        {
            name: pa.array(
                [None if r[j] == "" else float(r[j]) if name in numeric else r[j] for r in rows],
                type=pa.float32() if name in numeric else pa.string(),
            )
            for j, name in enumerate(names)
        }
    )
    pq.write_table(typed, tmp_path / "f32.parquet")
    score_file(STORE, "diamonds", tmp_path / "f32.parquet", tmp_path / "out.csv", progress=False)
    table = read_csv_file(tmp_path / "out.csv")
    carat = table[0].index("carat")
    assert [r[carat] for r in table[1:]] == [r[carat] for r in rows]  # 0.3, not 0.30000001192092896


@pytest.mark.parametrize("impossible", ["error", "inf"])
def test_a_number_recorded_as_absent_scores_as_the_engine_scores_it(
    table_store: Path, tmp_path: Path, impossible: str
) -> None:
    """A nullable number's NA cell is a value the model scores (ABSENT, +inf in the encoding), not
    a cell the model gives no probability (--impossible inf's code): made score gives the row the
    engine's log p, as POST /logprob does, with or without --impossible inf, to CSV or Parquet."""
    text = "kind,size,score,budget\nx,2.5,1.0,NA\ny,3.1,11.0,\nz,4.2,20.5,4100\nx,2.5,1.0,?\n"
    path = tmp_path / "in.csv"
    path.write_text(text)
    engine = TableEngine(open_model(table_store, "mixed"), threads=1)
    values, _, _ = parse_csv(engine.schema, text)
    exact = ~np.isnan(values).any(axis=1)
    want = engine.logprob(values[exact]).logprob
    for out in (tmp_path / "out.csv", tmp_path / "out.parquet"):
        result = score_file(table_store, "mixed", path, out, progress=False, impossible=impossible)
        table = pq.read_table(out) if out.suffix == ".parquet" else None
        got = table.column("logprob").to_numpy() if table is not None else _scores(out)
        np.testing.assert_array_equal(got[:3], want)
        assert np.isfinite(got).all()
        if impossible == "inf":
            assert result.impossible_rows == 0


def _scores(path: Path) -> np.ndarray:
    with path.open() as f:
        return np.array([float(r["logprob"]) for r in csv.DictReader(f)])


def test_a_scored_parquet_keeps_each_cells_number_and_meaning(table_store: Path, tmp_path: Path) -> None:
    """CSV in, Parquet out: a number comes back as the file writes it (2.5149, not the 2.51 the
    model reads at its resolution), and a nullable number's cells stay text, so that an unknown
    `?` reads back unknown and NA absent (as nulls both read back absent); scored again, the
    Parquet gives the CSV's scores."""
    text = "kind,size,score,budget\nx,2.5149,1.0,NA\ny,3.1,11.04,?\nz,4.2,20.5,4100\nx,?,1.0,\n"
    path = tmp_path / "in.csv"
    path.write_text(text)
    score_file(table_store, "mixed", path, tmp_path / "out.csv", progress=False)
    score_file(table_store, "mixed", path, tmp_path / "out.parquet", progress=False)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("size").to_pylist() == [2.5149, 3.1, 4.2, None]
    assert table.column("score").to_pylist() == [1.0, 11.04, 20.5, 1.0]
    assert table.schema.field("budget").type == pa.string()
    assert table.column("budget").to_pylist() == ["NA", "?", "4100", ""]
    pq.write_table(table.drop_columns(["logprob"]), tmp_path / "typed.parquet")
    score_file(table_store, "mixed", tmp_path / "typed.parquet", tmp_path / "again.csv", progress=False)
    np.testing.assert_array_equal(_scores(tmp_path / "again.csv"), _scores(tmp_path / "out.csv"))
