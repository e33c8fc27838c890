"""`made split` (one table -> the train/valid/test files the table loader finds), `made train` on a
single table (split by itself), and `made sample` (records drawn by the engine into a CSV)."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import mixed_rows

from made.cli import main
from made.io.tables import load_table_dataset, read_table
from made.store.versions import open_model
from service.engine.registry import build_engine

HEADER = ["kind", "size", "score", "budget"]


def write_table(path: Path, n: int = 200, seed: int = 4) -> Path:
    rows = mixed_rows(n, seed)
    path.write_text(",".join(HEADER) + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return path


def rows_of(path: Path) -> list[tuple[str, ...]]:
    header, rows, _ = read_table(path)
    assert header == HEADER
    return [tuple(r) for r in rows]


def last_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_split_writes_the_files_the_loader_finds_by_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_table(tmp_path / "shop.csv")
    assert main(["split", str(source), "--seed", "3"]) == 0
    written = json.loads(capsys.readouterr().out)
    parts = {s: rows_of(Path(p)) for s, p in written.items()}
    assert {s: len(r) for s, r in parts.items()} == {"train": 160, "valid": 20, "test": 20}
    assert Counter(sum(parts.values(), [])) == Counter(rows_of(source))  # every row once, cells as written
    data = load_table_dataset(written["train"])  # found by the loader as NAME_train/_valid/_test
    assert {s: len(a) for s, a in data.splits.items()} == {"train": 160, "valid": 20, "test": 20}
    # the same seed the same split (with --force); another seed another; --out puts them elsewhere
    assert main(["split", str(source), "--seed", "3", "--force"]) == 0
    assert {s: rows_of(Path(p)) for s, p in json.loads(capsys.readouterr().out).items()} == parts
    (tmp_path / "other").mkdir()
    argv = ["split", str(source), "--seed", "4", "--valid", "0.2", "--test", "0.05", "--out", str(tmp_path / "other")]
    assert main(argv) == 0
    other = json.loads(capsys.readouterr().out)
    assert Path(other["test"]) == tmp_path / "other" / "shop_test.csv"
    assert [len(rows_of(Path(other[s]))) for s in ("train", "valid", "test")] == [150, 40, 10]
    assert set(rows_of(Path(other["test"]))) != set(parts["test"][:10])


def test_split_refuses_to_overwrite_and_bad_shares_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_table(tmp_path / "shop.csv")
    assert main(["split", str(source)]) == 0
    before = (tmp_path / "shop_valid.csv").read_bytes()
    capsys.readouterr()
    assert main(["split", str(source), "--seed", "9"]) == 2
    assert "shop_train.csv exists; pass --force" in last_line(capsys.readouterr().err)
    assert (tmp_path / "shop_valid.csv").read_bytes() == before
    assert main(["split", str(source), "--valid", "0.5", "--test", "0.5", "--force"]) == 2
    assert "leave no rows to train on" in last_line(capsys.readouterr().err)
    assert main(["split", str(tmp_path / "shop_train.csv")]) == 2  # its name already holds a split
    assert "already names a split" in last_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "shop.csv",
        "shop_test.csv",
        "shop_train.csv",
        "shop_valid.csv",
    ]


def test_train_on_one_table_splits_it_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_table(tmp_path / "shop.csv", n=120)
    args = ["train", "--dataset", str(source), "--hidden", "8", "--max-epochs", "1", "--no-progress", "--seed", "5"]
    assert main([*args, "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("made train:")]
    assert err == [
        "made train: shop.csv has no split files; split it 80/10/10 by seed 5 into shop_train.csv, "
        "shop_valid.csv, shop_test.csv"
    ]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset"] == str(tmp_path / "shop_train.csv")
    # the same split as `made split --seed 5` writes
    (tmp_path / "again").mkdir()
    assert main(["split", str(source), "--seed", "5", "--out", str(tmp_path / "again")]) == 0
    for split in ("train", "valid", "test"):
        name = f"shop_{split}.csv"
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / name).read_bytes()


def test_evaluate_on_the_one_table_made_train_split_scores_its_split_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """made train --dataset shop.csv trains on the shop_train.csv it writes; made evaluate with the
    same --dataset scored the whole of shop.csv (its training rows among them) as "test", and
    every --split the same rows. It now scores shop_test.csv (or the --split asked), and says so."""
    from training.export import export_run

    source = write_table(tmp_path / "shop.csv", n=120)
    args = ["--hidden", "8", "--max-epochs", "1", "--no-progress", "--threads", "1"]
    assert main(["train", "--dataset", str(source), *args, "--out", str(tmp_path / "run")]) == 0
    export_run(tmp_path / "run", tmp_path / "store", "shop")
    capsys.readouterr()
    scored = {}
    for dataset, split in ((source, "test"), (tmp_path / "shop_test.csv", "test"), (source, "valid")):
        argv = ["evaluate", "--store", str(tmp_path / "store"), "--name", "shop", "--dataset", str(dataset)]
        assert main([*argv, "--split", split]) == 0
        out, err = capsys.readouterr()
        scored[dataset.name, split] = json.loads(out.strip().splitlines()[-1])
        if dataset == source:
            assert f"shop.csv has split files beside it, as made train writes them: scoring its {split} split" in err
    assert scored["shop.csv", "test"] == scored["shop_test.csv", "test"]
    assert scored["shop.csv", "test"]["n"] == 12 and scored["shop.csv", "valid"]["n"] == 12
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert scored["shop.csv", "test"]["nll"] == pytest.approx(metrics["test_nll"], rel=1e-4)


def test_one_csv_of_named_0_1_columns_splits_trains_as_bits_and_says_how_to_keep_the_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """survey.csv, a header over 0/1 cells: made train refused it ('a single file; training needs
    train/valid/test files') where a table was split, and made schema inferred a table of it
    without a word. Now split as a table is, trained as bits with a note; with the schema made
    schema writes, a table of the named binary columns."""
    rng = np.random.default_rng(3)
    cells = rng.integers(0, 2, size=(120, 3))
    source = tmp_path / "survey.csv"
    source.write_text("smoker,married,has_kids\n" + "\n".join(",".join(map(str, r)) for r in cells) + "\n")
    args = ["--hidden", "8", "--max-epochs", "1", "--no-progress", "--threads", "1"]
    assert main(["train", "--dataset", str(source), *args, "--out", str(tmp_path / "bits")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("made train:")]
    assert err[0].startswith("made train: survey.csv has no split files; split it 80/10/10 by seed 0")
    assert err[1] == (
        "made train: survey_train.csv holds only 0/1 cells: trained as a model of bits, its columns read by "
        "position (their names are not kept); to model it as a table of named binary columns, "
        "`made schema survey.csv --out schema.json` and train with --schema schema.json"
    )
    assert "columns" not in json.loads((tmp_path / "bits" / "config.json").read_text())["model"]
    # the advice, followed
    assert main(["schema", str(source), "--out", str(tmp_path / "schema.json")]) == 0
    assert "made train without --schema trains it as a model of bits" in capsys.readouterr().err
    schema = str(tmp_path / "schema.json")
    assert main(["train", "--dataset", str(source), "--schema", schema, *args, "--out", str(tmp_path / "t")]) == 0
    columns = json.loads((tmp_path / "t" / "config.json").read_text())["model"]["columns"]
    assert [(c["name"], c["kind"]) for c in columns] == [(n, "binary") for n in ("smoker", "married", "has_kids")]
    assert not [line for line in capsys.readouterr().err.splitlines() if "only 0/1 cells" in line]
    # survey_train.csv given as it is, with no survey.csv beside it: the advice names a file there is
    source.unlink()
    assert main(["train", "--dataset", str(tmp_path / "survey_train.csv"), *args, "--out", str(tmp_path / "u")]) == 0
    note = next(line for line in capsys.readouterr().err.splitlines() if "only 0/1 cells" in line)
    assert "`made schema survey_train.csv --out schema.json`" in note


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
        return list(rows[0]), rows


def test_sample_writes_the_engines_records_as_csv(
    tmp_path: Path, table_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sample", "--store", str(table_store), "--name", "mixed", "--n", "40", "--seed", "7"]
    assert main([*args, "--out", str(tmp_path / "s.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 40
    header, rows = read_csv(tmp_path / "s.csv")
    engine = build_engine(open_model(table_store, "mixed"), ["CPUExecutionProvider"], 1)
    assert header == engine.schema.names
    want = engine.schema.decode_rows(engine.sample(40, 7))
    assert rows == [{k: str(v) for k, v in r.items()} for r in want]
    assert main([*args, "--out", "-"]) == 0  # stdout: the same CSV, nothing else
    assert capsys.readouterr().out == (tmp_path / "s.csv").read_text()
    # --given: every record meets it, and the others follow the condition (a 'z' is bigger)
    assert main([*args, "--n", "200", "--given", "kind=z", "--out", str(tmp_path / "z.csv")]) == 0
    assert main([*args, "--n", "200", "--given", "kind=x", "--out", str(tmp_path / "x.csv")]) == 0
    z, x = read_csv(tmp_path / "z.csv")[1], read_csv(tmp_path / "x.csv")[1]
    assert {r["kind"] for r in z} == {"z"} and {r["kind"] for r in x} == {"x"}
    assert np.mean([float(r["score"]) for r in z]) > np.mean([float(r["score"]) for r in x]) + 10


def test_sample_of_a_model_of_bits_and_its_refusals(
    tmp_path: Path, tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sample", "--store", str(tiny_store), "--name", "tiny", "--n", "30"]
    assert main([*args, "--given", "x0=1", "x3=0", "--out", str(tmp_path / "b.csv")]) == 0
    header, rows = read_csv(tmp_path / "b.csv")
    assert header == [f"x{d}" for d in range(8)] and len(rows) == 30
    assert all(r["x0"] == "1" and r["x3"] == "0" and set(r.values()) <= {"0", "1"} for r in rows)
    capsys.readouterr()
    assert main([*args, "--given", "x9=1", "--out", str(tmp_path / "c.csv")]) == 2
    assert "--given 'x9=1' is not COLUMN=VALUE" in last_line(capsys.readouterr().err)
    assert main([*args, "--given", "x1=2", "--out", str(tmp_path / "c.csv")]) == 2
    assert "x1" in last_line(capsys.readouterr().err)
    assert not (tmp_path / "c.csv").exists()


def test_sample_given_an_unknown_column_of_a_wide_model_summarises_its_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A column the model lacks named the model's columns one by one: 112 names for mushrooms (784,
    about 5 KB on one line, for binarized-mnist); POST /sample's 422 summarises them."""
    store = Path(__file__).resolve().parent.parent / "model_store"
    args = ["sample", "--store", str(store), "--name", "mushrooms", "--n", "3", "--out", str(tmp_path / "c.csv")]
    for given in ("x500=1", '{"x500": 1}'):
        assert main([*args, "--given", given]) == 2
        err = last_line(capsys.readouterr().err)
        assert err.endswith("is not COLUMN=VALUE of a column of the model (112 columns: x0, x1, x2, ..., x111)"), err
    assert not (tmp_path / "c.csv").exists()


def test_sample_takes_output_as_the_contract_names_it_and_refuses_a_parquet_name(
    tmp_path: Path, tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CONTRACT.md names `made sample ... --output FILE.csv` (refused: only --out was known); and
    --out s.parquet wrote CSV text under a Parquet name, which no Parquet reader opens."""
    args = ["sample", "--store", str(tiny_store), "--name", "tiny", "--n", "5"]
    assert main([*args, "--output", str(tmp_path / "a.csv")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.csv")]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "s.parquet")]) == 2
    assert "made sample writes CSV; name a .csv file" in last_line(capsys.readouterr().err)
    assert not (tmp_path / "s.parquet").exists()


def test_sample_takes_every_given_flag_and_refuses_a_column_given_twice(
    tmp_path: Path, tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--given COLUMN=VALUE repeated as flags: every condition holds (the last flag alone used
    to win); a column given twice is refused, whichever value it would have kept."""
    args = ["sample", "--store", str(tiny_store), "--name", "tiny", "--n", "30"]
    assert main([*args, "--given", "x0=1", "--given", "x3=0", "x5=1", "--out", str(tmp_path / "b.csv")]) == 0
    rows = read_csv(tmp_path / "b.csv")[1]
    assert all((r["x0"], r["x3"], r["x5"]) == ("1", "0", "1") for r in rows)
    # the same records as one flag with the three pairs
    assert main([*args, "--given", "x0=1", "x3=0", "x5=1", "--out", str(tmp_path / "one.csv")]) == 0
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    capsys.readouterr()
    assert main([*args, "--given", "x0=1", "--given", "x0=0", "--out", str(tmp_path / "c.csv")]) == 2
    assert "--given names x0 twice" in last_line(capsys.readouterr().err)
    assert not (tmp_path / "c.csv").exists()


def test_sample_draws_and_writes_a_chunk_at_a_time(
    tmp_path: Path, table_store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past SAMPLE_CHUNK records, made sample draws a chunk at a time, each from its own seed, and
    writes it before drawing the next: memory does not grow with --n. The first chunk is what
    the engine's sample(n, seed) gives; the file has one header; the records are reproducible."""
    from made.cli import commands

    monkeypatch.setattr(commands, "SAMPLE_CHUNK", 16)
    engine = build_engine(open_model(table_store, "mixed"), ["CPUExecutionProvider"], 1)
    drawn: list[int] = []
    sample = engine.sample

    def counted(n: int, seed: int) -> np.ndarray:
        drawn.append(n)
        return sample(n, seed)

    import service.engine.registry as registry

    monkeypatch.setattr(registry, "build_engine", lambda *a: engine)
    monkeypatch.setattr(engine, "sample", counted)
    args = ["sample", "--store", str(table_store), "--name", "mixed", "--n", "40", "--seed", "7"]
    assert main([*args, "--out", str(tmp_path / "s.csv")]) == 0
    assert drawn == [16, 16, 8]
    header, rows = read_csv(tmp_path / "s.csv")
    assert len(rows) == 40 and header == engine.schema.names
    first = engine.schema.decode_rows(sample(16, 7))
    assert rows[:16] == [{k: str(v) for k, v in r.items()} for r in first]
    assert rows[16:32] != rows[:16]  # the next chunk from another seed
    assert main([*args, "--out", str(tmp_path / "again.csv")]) == 0
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "s.csv").read_bytes()
    capsys.readouterr()


def test_samples_written_without_formula_escapes_score_as_drawn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A column named '=cmd' with levels '-a' and '+b': made sample escapes them for a spreadsheet
    ('=cmd, '-a), so made score read the file as lacking the column and scored every row with it
    summed out, without a word. Now it warns, naming the escaped header, and --no-escape-formulas
    writes samples that score as the records drawn."""
    rng = np.random.default_rng(4)
    rows = [f"{int(rng.integers(20, 70))},{'-a' if rng.random() < 0.5 else '+b'}" for _ in range(300)]
    (tmp_path / "hdr.csv").write_text("age,=cmd\n" + "\n".join(rows) + "\n")
    train = ["train", "--dataset", str(tmp_path / "hdr.csv"), "--hidden", "8", "--max-epochs", "2"]
    assert main([*train, "--no-progress", "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    assert main(["export", str(tmp_path / "run"), "--store", str(tmp_path / "store"), "--name", "hdr"]) == 0
    sample = ["sample", "--store", str(tmp_path / "store"), "--name", "hdr", "--n", "30", "--seed", "1"]
    assert main([*sample, "--out", str(tmp_path / "escaped.csv")]) == 0
    assert (tmp_path / "escaped.csv").read_text().splitlines()[0] == "age,'=cmd"
    score = ["score", "--store", str(tmp_path / "store"), "--name", "hdr", "--no-progress"]
    capsys.readouterr()
    assert main([*score, "--input", str(tmp_path / "escaped.csv"), "--output", str(tmp_path / "s1.csv")]) == 0
    warning = capsys.readouterr().err.strip().splitlines()[-1]
    assert warning.startswith("made score: warning: the input lacks 1 of model hdr's columns ('=cmd')")
    assert 'it has "\'=cmd"' in warning and "--no-escape-formulas" in warning
    assert main([*sample, "--no-escape-formulas", "--out", str(tmp_path / "plain.csv")]) == 0
    header, drawn = read_csv(tmp_path / "plain.csv")
    assert header == ["age", "=cmd"] and {r["=cmd"] for r in drawn} <= {"-a", "+b"}
    assert main([*score, "--input", str(tmp_path / "plain.csv"), "--output", str(tmp_path / "s2.csv")]) == 0
    assert "warning" not in capsys.readouterr().err
    engine = build_engine(open_model(tmp_path / "store", "hdr"), ["CPUExecutionProvider"], 1)
    drawn_logp = engine.logprob(engine.sample(30, 1)).logprob  # the records made sample drew (seed 1)
    scored = [float(r["logprob"]) for r in read_csv(tmp_path / "s2.csv")[1]]
    assert scored == pytest.approx(drawn_logp, abs=1e-6)
    summed_out = [float(r["logprob"]) for r in read_csv(tmp_path / "s1.csv")[1]]
    assert not np.allclose(summed_out, drawn_logp)  # what the escaped file was scored as


def test_split_makes_its_out_folder_and_report_help_shows_no_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`made split --out new/dir` was refused as 'not a folder' when the folder did not exist yet;
    a file there still is. `made report --help` showed '(default: None)' for its required --out."""
    source = write_table(tmp_path / "shop.csv", n=50)
    assert main(["split", str(source), "--out", str(tmp_path / "new" / "dir")]) == 0
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == [
        "shop_test.csv",
        "shop_train.csv",
        "shop_valid.csv",
    ]
    (tmp_path / "afile").write_text("")
    assert main(["split", str(source), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "--out DIR" in (shown := capsys.readouterr().out) and "default: None" not in shown


def test_sample_given_draws_the_records_post_sample_gives_for_the_seed(
    tmp_path: Path, table_store: Path, tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`made sample --given` and POST /sample {"given", "seed"} are one question: the same records
    for the same seed (the CLI spent a third of the particles /sample does, so its records were
    other, and poorer, draws), for a table model and a model of bits."""
    import anyio
    from helpers import cpu_registry

    from service.settings import Settings
    from service.testing import in_process

    async def served(store: Path, body: dict[str, object]) -> list[dict[str, str]]:
        async with in_process(Settings(store=store), cpu_registry(store)) as made:
            answer = await made.http.post("/sample", json=body)
            assert answer.status_code == 200, answer.text
            return [{k: str(v) for k, v in r.items()} for r in answer.json()["records"]]

    for store, name, given, flags in (
        (table_store, "mixed", {"kind": "z"}, ["kind=z"]),
        (tiny_store, "tiny", {"x0": 1, "x3": 0}, ["x0=1", "x3=0"]),
    ):
        out = tmp_path / f"{name}.csv"
        argv = ["sample", "--store", str(store), "--name", name, "--n", "12", "--seed", "5", "--given", *flags]
        assert main([*argv, "--out", str(out)]) == 0
        want = anyio.run(served, store, {"model": name, "n": 12, "seed": 5, "given": given})
        assert read_csv(out)[1] == want
        # the contract's form, --given JSON, the request's own object: the same records
        argv[-len(flags) :] = [json.dumps(given)]
        assert main([*argv, "--output", str(tmp_path / "json.csv")]) == 0
        assert read_csv(tmp_path / "json.csv")[1] == want
    base = ["sample", "--store", str(table_store), "--name", "mixed", "--n", "2", "--out", "-", "--given"]
    for given, error in (
        ('{"kind": null}', "--given kind is null; leave it out"),
        ('{"kind": "q"}', "--given kind: 'q' is not a level of this column"),
        ('{"kind": "z"', "is not JSON: Expecting ',' delimiter"),
        ('{"kind": "z"}', "--given names kind twice"),
        # one object naming a column twice: POST /sample refuses it (422), as made sample does now
        # (json.loads kept the last value without a word)
        ('{"kind": "z", "kind": "x"}', "--given names kind twice"),
        ('{"kind": {"a": 1}}', "--given kind: expected"),
    ):
        extra = ["kind=z"] if given == '{"kind": "z"}' else []
        assert main([*base, given, *extra]) == 2
        assert error in last_line(capsys.readouterr().err)
    capsys.readouterr()


def test_a_table_changed_after_its_split_files_is_named_by_the_commands_that_read_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """made train on one table writes its split files, and every later call reads those: a table
    edited since (the column its error said to rename, rows added) went on being read as it was,
    the same error naming a column the file no longer had. Each reader of them now warns."""
    from made.cli.commands import split_file_beside

    source = write_table(tmp_path / "shop.csv", n=120)
    assert main(["split", str(source)]) == 0
    assert main(["schema", str(source), "--out", str(tmp_path / "s.json")]) == 0
    assert "was changed after its split files" not in capsys.readouterr().err  # fresh: no warning
    # touched, or copied after its split files (cp -r writes them in any order): its rows are
    # still theirs, so no warning either
    later = (tmp_path / "shop_train.csv").stat().st_mtime + 10
    os.utime(source, (later, later))
    assert main(["schema", str(source), "--out", str(tmp_path / "s.json")]) == 0
    assert "was changed after its split files" not in capsys.readouterr().err
    with source.open("a") as fh:  # a row added since
        fh.write("x,1.50,2.0,NA\n")
    os.utime(source, (later, later))
    warning = (
        "shop.csv was changed after its split files (shop_train.csv, shop_valid.csv, shop_test.csv) were "
        "written: they hold its rows as they were then; `made split"
    )
    assert main(["schema", str(source), "--out", str(tmp_path / "s.json")]) == 0
    assert f"made schema: warning: {warning}" in capsys.readouterr().err
    assert split_file_beside(str(source), "test", "made evaluate") == str(tmp_path / "shop_test.csv")
    assert f"made evaluate: warning: {warning}" in capsys.readouterr().err
    args = ["train", "--dataset", str(source), "--hidden", "8", "--max-epochs", "1", "--no-progress", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    assert f"made train: warning: {warning}" in capsys.readouterr().err


def test_report_on_the_one_table_made_train_split_compares_with_its_test_split(
    tmp_path: Path, table_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """made report TABLE.csv, where made train split TABLE.csv into the files beside it, compared
    the samples with the whole file, training rows and all (a flattering score), where made
    evaluate scores TABLE_test.csv. It now takes the test split too, and says so."""
    source = write_table(tmp_path / "shop.csv", n=200)
    assert main(["split", str(source)]) == 0
    capsys.readouterr()
    argv = ["report", "mixed", str(source), "--store", str(table_store), "--n", "50", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["rows"] == 20  # shop_test.csv's, not the file's 200
    said = "made report: shop.csv has split files beside it, as made train writes them: comparing samples with its"
    assert f"{said} test split, shop_test.csv" in err


def test_sample_given_an_absent_value_of_a_column_never_absent_says_so(
    table_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--given size=NA, where size is never absent, said "--given size has no value", as if the
    value had been left empty; it names the absent value and why it cannot be given."""
    base = ["sample", "--store", str(table_store), "--name", "mixed", "--n", "2", "--out", "-", "--given"]
    assert main([*base, "size=NA"]) == 2
    assert (
        "--given size=NA: 'NA' is an absent value, but column size is never absent in the training data"
        in last_line(capsys.readouterr().err)
    )
    assert main([*base, "size="]) == 2
    assert "--given size has no value; leave it out" in last_line(capsys.readouterr().err)
    assert main([*base, "budget=NA"]) == 0  # a column that can be absent: a condition like any other


def test_a_table_too_small_to_split_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for n, said in ((1, "1 row is too few"), (2, "2 rows are too few")):
        source = tmp_path / f"t{n}.csv"
        source.write_text("a,b\n" + "x,1\n" * n)
        assert main(["split", str(source)]) == 2
        assert f"{said} to split into train, valid and test: each needs a row" in last_line(capsys.readouterr().err)


def test_sample_given_a_json_question_mark_is_refused_as_its_cell_is(
    table_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'?' in a JSON record is unknown, as a CSV cell's: --given kind=? and {"kind": null} are
    refused as no condition, but {"kind": "?"} left the column free without a word (it was a
    level error before '?' was read as unknown)."""
    base = ["sample", "--store", str(table_store), "--name", "mixed", "--n", "2", "--out", "-", "--given"]
    assert main([*base, "kind=?"]) == 2
    assert "--given kind has no value" in last_line(capsys.readouterr().err)
    for given in ('{"kind": "?"}', '{"kind": "x", "size": " ? "}'):
        assert main([*base, given]) == 2
        err = last_line(capsys.readouterr().err)
        assert "unknown; leave it out to leave the column free" in err, err
