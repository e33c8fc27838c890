"""Bad output paths, optimizer settings and model names: `made CMD: error: ...`, one line on
stderr and exit status 2, never a traceback, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHIPPED, categorical_rows, train_tiny, write_npz, write_splits

from made.cli import main
from made.core.errors import ModelStoreError
from made.store.versions import check_name, list_names, write_version


def made(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, err: str, command: str, expected: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"made {command}: error: "), err
    assert expected in err, err


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """Paths no file can be written to: in a missing folder, a folder, under a file."""
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("")
    return {
        "the folder {} does not exist": tmp_path / "missing" / "x.csv",
        "{} is a folder": tmp_path / "a_dir",
        "the folder {} is a file": tmp_path / "a_file" / "x.csv",
    }


def test_sample_to_a_path_it_cannot_write_is_one_line(
    places: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for expected, out in places.items():
        code, _, err = made(capsys, "sample", "--store", str(SHIPPED), "--name", "diamonds", "--n", "2",
                            "--out", str(out))  # fmt: skip
        folder = out if out.name == "a_dir" else out.parent
        assert_one_line(code, err, "sample", expected.format(folder))
    assert list((places["{} is a folder"]).iterdir()) == []


def test_schema_to_a_path_it_cannot_write_is_one_line(
    places: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "t.csv"
    table.write_text("a,b\nx,1\ny,2\nx,3\n")
    for expected, out in places.items():
        code, _, err = made(capsys, "schema", str(table), "--out", str(out))
        folder = out if out.name == "a_dir" else out.parent
        assert_one_line(code, err, "schema", expected.format(folder))


@pytest.fixture(scope="module")
def table_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_splits(tmp_path_factory.mktemp("cats"), "cats", ["a", "b", "c", "d"], categorical_rows(200, 0))


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--lr=-1"], "--lr is -1"),
        (["--lr", "0"], "--lr is 0"),
        (["--lr", "nan"], "--lr is nan"),
        (["--lr", "inf"], "--lr is inf"),
        (["--weight-decay", "-1"], "--weight-decay is -1"),
        (["--weight-decay", "nan"], "--weight-decay is nan"),
        (["--eps=-1e-8"], "--eps is -1e-08"),
        (["--optimizer", "adadelta", "--rho", "1.5"], "--rho is 1.5"),
        (["--lr-step", "-1"], "--lr-step is -1"),
        (["--lr-step", "2", "--lr-gamma", "-0.5"], "--lr-gamma is -0.5"),
    ],
)
def test_train_refuses_bad_optimizer_settings_before_its_run_directory(
    option: list[str], expected: str, table_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code, _, err = made(capsys, "train", "--dataset", str(table_csv), "--out", str(run), "--hidden", "8",
                        "--max-epochs", "1", "--no-progress", *option)  # fmt: skip
    # a table's inferred schema is shown first (stderr), then the one line of the error
    schema, _, error = err.rpartition("made train: error:")
    assert code == 2 and error.count("\n") == 1 and expected in error, err
    assert schema.startswith("schema (inferred") and "Traceback" not in err
    assert not run.exists()  # no config.json of settings that cannot train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tiny")
    return train_tiny(base / "run", write_npz(base / "d.npz", 5, n=120), epochs=1, hidden=[8])


@pytest.mark.parametrize("name", ["a" * 300, "a" * 65, "my model", "x.y", "ünï", "a/b", ".hidden"])
def test_export_refuses_a_name_that_breaks_the_one_rule(
    name: str, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    code, _, err = made(capsys, "export", str(tiny_run), "--store", str(store), "--name", name)
    assert_one_line(code, err, "export", "invalid model name")
    assert "use letters, digits, '-' or '_'" in err
    assert list_names(store) == []


def test_export_takes_a_name_of_64_letters_digits_dashes_and_underscores(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "Model-1_" + "x" * 56
    code, out, err = made(capsys, "export", str(tiny_run), "--store", str(tmp_path / "s"), "--name", name)
    assert code == 0, err
    assert Path(out.strip()) == tmp_path / "s" / name / "1"


def test_export_refuses_a_version_of_a_number_the_store_has_and_says_which_one_is_served(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--version 08 beside 8 made two folders of one number; --version abc or 3 below 8 was
    written without a word, though a server serves the highest version only."""
    store = str(tmp_path / "s")
    base = ["export", str(tiny_run), "--store", store, "--name", "m"]
    assert made(capsys, *base, "--version", "8")[0] == 0
    code, _, err = made(capsys, *base, "--version", "08")
    assert_one_line(code, err, "export", "version 08 is version 8, which")
    for version in ("3", "abc"):
        code, out, err = made(capsys, *base, "--version", version)
        assert code == 0 and Path(out.strip()).name == version
        assert f"version {version} is not the one served: a server serves the highest version, 8" in err
    code, _, err = made(capsys, *base)  # the next number: served, nothing said
    assert code == 0 and err == ""


def test_the_store_itself_holds_to_the_rule(tmp_path: Path) -> None:
    """write_version is where every name enters the store (export, random models, copies)."""
    assert check_name("ok_name-2") == "ok_name-2"
    for name, version in (("my model", "1"), ("x.y", "1"), ("m", "v1.0"), ("m", "1" * 65)):
        with pytest.raises(ModelStoreError, match="use letters, digits"):
            write_version(tmp_path, name, {}, {}, version)
    assert list(tmp_path.iterdir()) == []


def test_a_model_name_too_long_to_be_a_folder_is_not_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long = "a" * 300
    code, _, err = made(capsys, "sample", "--store", str(SHIPPED), "--name", long, "--n", "2", "--out", "-")
    assert_one_line(code, err, "sample", "no model named")
    table = tmp_path / "t.csv"
    table.write_text("carat\n1\n")
    code, _, err = made(capsys, "report", long, str(table), "--store", str(SHIPPED), "--out", str(tmp_path / "r"))
    assert_one_line(code, err, "report", "no model named")


def test_train_refuses_a_column_named_like_a_score_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A table with a column `logprob` (or exact, stderr) trained, and then could never be scored:
    made score refuses an input that has a logprob column, and a CSV answer named it twice."""
    rows = ["a,logprob,b"] + [f"{'xyz'[i % 3]},{i % 7}.5,{'uv'[i % 2]}" for i in range(60)]
    for split in ("train", "valid", "test"):
        (tmp_path / f"t_{split}.csv").write_text("\n".join(rows) + "\n")
    args = ["train", "--dataset", str(tmp_path / "t_train.csv"), "--hidden", "8", "--max-epochs", "1", "--no-progress"]
    code, _, err = made(capsys, *args, "--out", str(tmp_path / "run"))
    assert_one_line(
        code, err.splitlines()[-1] + "\n", "train", "column 'logprob' has the name of a column that scoring adds"
    )
    assert not (tmp_path / "run").exists()
    code, _, _ = made(capsys, *args, "--drop-columns", "logprob", "--out", str(tmp_path / "run2"))
    assert code == 0
    # made schema refuses it alike (it wrote a schema that made train then refused)
    code, out, err = made(capsys, "schema", str(tmp_path / "t_train.csv"))
    assert_one_line(code, err, "schema", "column 'logprob' has the name of a column that scoring adds")
    assert out == ""
    code, out, _ = made(capsys, "schema", str(tmp_path / "t_train.csv"), "--drop-columns", "logprob")
    assert code == 0 and '"name": "logprob"' not in out


def test_serve_and_evaluate_say_the_store_is_missing_or_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_npz(tmp_path / "d8.npz", 8)
    (tmp_path / "afile").write_text("")
    for store, problem in (("nostore", "does not exist"), ("afile", "is a file, not a folder")):
        path = str(tmp_path / store)
        code, _, err = made(capsys, "serve", "--store", path)
        assert_one_line(code, err, "serve", f"model store {path} {problem} (pass --store or set MADE_STORE)")
        code, _, err = made(capsys, "evaluate", "--store", path, "--name", "tiny", "--dataset", str(data))
        assert_one_line(code, err, "evaluate", f"model store {path} {problem}")
        assert "no model named" not in err


def usage(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """made(...) of a command line the parser refuses (it exits, status 2)."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_a_negative_or_huge_seed_and_negative_threads_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--seed -1 (or past 2**64) ended in a numpy traceback in made train, sample, split and
    report; --threads -1 in torch's. Refused by the parser, before any file is written."""
    data = write_npz(tmp_path / "d.npz", dims=6)
    table = tmp_path / "t.csv"
    table.write_text("a,b\nx,1\ny,2\nx,3\ny,4\nx,5\n")
    run = str(tmp_path / "run")
    for seed in ("-1", str(2**64)):
        for command, argv in {
            "train": ["--dataset", str(data), "--out", run],
            "sample": ["--store", str(SHIPPED), "--name", "diamonds", "--n", "2", "--out", "-"],
            "split": [str(table)],
            "schema": [str(table)],
            "report": ["diamonds", str(table), "--store", str(SHIPPED), "--out", str(tmp_path / "r")],
        }.items():
            code, out, err = usage(capsys, command, *argv, "--seed", seed)
            assert_one_line(code, err, command, f"argument --seed: expected an integer from 0 to {2**53 - 1}")
            assert out == ""
    for threads in ("-1", str(2**31)):  # 2**31: torch.set_num_threads' ValueError traceback
        code, _, err = usage(capsys, "train", "--dataset", str(data), "--out", run, "--threads", threads)
        assert_one_line(code, err, "train", f"argument --threads: expected an integer from 0 to 1024, got '{threads}'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "t.csv"]


def test_a_bad_setting_in_the_environment_is_one_line_for_every_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """made sample, evaluate and export --reference read Settings (MADE_PROVIDERS, MADE_THREADS):
    an unknown provider, or a key no header can carry, was pydantic's traceback (the key's value
    in it); now one line naming the variable, exit 2, the key not repeated."""
    sample = ["sample", "--store", str(SHIPPED), "--name", "diamonds", "--n", "2", "--out", "-"]
    evaluate = ["evaluate", "--store", str(SHIPPED), "--name", "diamonds", "--dataset", str(SHIPPED / "x.csv")]
    for variable, value, expected in (
        ("MADE_PROVIDERS", "gpu", "MADE_PROVIDERS: unknown provider 'gpu'"),
        ("MADE_API_KEY", "s\u00e9cret-key", "MADE_API_KEY: must be printable ASCII"),
    ):
        monkeypatch.setenv(variable, value)
        for argv in (sample, evaluate):
            assert main(argv) == 2
            out, err = capsys.readouterr()
            assert_one_line(2, err, argv[0], expected)
            assert "cret-key" not in err and out == ""
        monkeypatch.delenv(variable)


def test_a_reader_that_closes_the_pipe_ends_made_sample_without_a_traceback(tmp_path: Path) -> None:
    """`made sample --out - | head -2`: BrokenPipeError's traceback on stderr; now status 141
    (128 + SIGPIPE, as `cat` ends) and nothing on stderr."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "made.cli", "sample", "--store", str(SHIPPED), "--name", "mushrooms"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "cwd": SHIPPED.parent}  # this tree's made
    with subprocess.Popen([*argv, "--n", "200000", "--out", "-"], **pipes) as proc:  # type: ignore[call-overload]
        assert proc.stdout.readline().startswith(b"x0,x1,")
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and err == "", err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--dataset", "x.npz", "--out", "r", "--max-epochs", "0"],
            "argument --max-epochs: expected an integer of 1 or more",
        ),
        (
            ["train", "--dataset", "x.npz", "--out", "r", "--patience", "-3"],
            "argument --patience: expected an integer of 1 or more",
        ),
        (
            ["serve", "--port", "127.0.0.1:"],
            "argument --port: expected a port number from 1 to 65535, got '127.0.0.1:'",
        ),
        (["serve", "--port", "70000"], "argument --port: expected a port number from 1 to 65535"),
        # --hidden '' trained no hidden layer, and 500,,500 one layer, without a word; 0 and
        # -3 were refused only after the table was split into files beside it
        (
            ["train", "--dataset", "x.npz", "--out", "r", "--hidden", ""],
            "argument --hidden: expected comma-separated positive integers, got ''",
        ),
        (
            ["train", "--dataset", "x.npz", "--out", "r", "--hidden", "500,,500"],
            "argument --hidden: expected comma-separated positive integers, got '500,,500'",
        ),
        (
            ["train", "--dataset", "x.npz", "--out", "r", "--hidden", "0,5"],
            "argument --hidden: every hidden layer width must be 1 or more, got '0,5'",
        ),
    ],
)
def test_epochs_patience_and_port_out_of_range_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # --max-epochs 0 and --patience 0 silently meant "the default" (9,966 epochs on 2 rows); a
    # compose MADE_PORT of HOST:PORT reached `make serve` as argparse's "invalid int value"
    with pytest.raises(SystemExit) as info:  # argparse's own exit
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
