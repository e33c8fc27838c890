"""The real `made` console script on bad input: exit status 2 and exactly one line on stderr,
`made <command>: error: ...`, never a traceback."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios
from pathlib import Path

import numpy as np
import pytest
from conftest import write_npz
from helpers import MADE_BIN, made_env, made_train_args, run_made, run_made_calls

from training.model import MADEConfig
from training.train import TrainConfig, Trainer


def _bad_calls(base: Path) -> dict[str, list[str]]:
    """Each case: the arguments of one `made` call that must fail cleanly."""
    good = write_npz(base / "good.npz", 6, seed=0, n=120)
    bad = base / "bad.npz"
    train = np.load(good)["train"].copy()
    train[4, 2] = 3
    np.savez(bad, train=train, valid=np.load(good)["valid"], test=np.load(good)["test"])
    regular_file = base / "plain-file"
    regular_file.write_text("not a directory")
    # a run directory holding a run of another configuration (hidden [8], not [16])
    other = base / "other-run"
    cfg = TrainConfig(dataset=str(good), model=MADEConfig(dims=6, hidden=[8]))
    Trainer(cfg, other).prepare_run_dir()
    run = ["train", "--no-progress", "--max-epochs", "1", "--threads", "1"]
    # table models are ReLU-only: tanh units, orthogonal initialisation and fresh masks per
    # update are refused for a table, for --groups and for --schema
    table = base / "colours_train.csv"
    table.write_text("colour,size\n" + "".join(f"{c},{s}\n" for c, s in [("red", "1"), ("blue", "0")] * 30))
    for split in ("valid", "test"):
        (base / f"colours_{split}.csv").write_text(table.read_text())
    groups = base / "groups.json"
    groups.write_text('{"groups": [{"columns": [0], "none": true}]}')
    return {
        "missing-data": [*run, "--dataset", str(base / "absent.npz"), "--out", str(base / "r1")],
        "unknown-name": [*run, "--dataset", "no_such_set_anywhere", "--out", str(base / "r2")],
        "non-binary": [*run, "--dataset", str(bad), "--out", str(base / "r3")],
        "hidden-not-integers": [*run, "--dataset", str(good), "--hidden", "500,abc", "--out", str(base / "r4")],
        "hidden-zero-width": [*run, "--dataset", str(good), "--hidden", "16,0", "--out", str(base / "r5")],
        "unwritable-out": [*run, "--dataset", str(good), "--hidden", "8", "--out", str(regular_file / "run")],
        "other-config": [*run, "--dataset", str(good), "--hidden", "16", "--out", str(other)],
        "masks-zero": [*run, "--dataset", str(good), "--masks", "0", "--out", str(base / "r6")],
        "tanh-table": [*run, "--dataset", str(table), "--activation", "tanh", "--out", str(base / "r7")],
        "tanh-groups": [
            *run,
            "--dataset",
            str(good),
            "--groups",
            str(groups),
            "--activation",
            "tanh",
            "--out",
            str(base / "r8"),
        ],
        "orthogonal-table": [*run, "--dataset", str(table), "--init", "orthogonal", "--out", str(base / "r9")],
        "resample-groups": [
            *run,
            "--dataset",
            str(good),
            "--groups",
            str(groups),
            "--resample-masks",
            "--out",
            str(base / "r10"),
        ],
        "activation-unknown": [*run, "--dataset", str(good), "--activation", "sigmoid", "--out", str(base / "r11")],
        "export-no-run": ["export", str(base / "no-run"), "--store", str(base / "store"), "--name", "m"],
        "no-command": [],
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def failures(base: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run every bad call at once (each pays for starting Python, some for importing torch)."""
    env = made_env()
    env.pop("MADE_DATA_DIR", None)
    return run_made_calls(_bad_calls(base), env, cwd=base)


CASES = {
    "missing-data": ("made train: error", "absent.npz"),
    "unknown-name": ("made train: error", "no_such_set_anywhere"),
    "non-binary": ("made train: error", "row 4 column 2"),
    "hidden-not-integers": ("made train: error", "--hidden"),
    "hidden-zero-width": ("made train: error", "width must be 1 or more, got '16,0'"),
    "unwritable-out": ("made train: error", "plain-file"),
    "other-config": ("made train: error", "another --out"),
    "masks-zero": ("made train: error", "masks"),
    "tanh-table": ("made train: error", "--activation is for bit data"),
    "tanh-groups": ("made train: error", "--activation is for bit data"),
    "orthogonal-table": ("made train: error", "--init is for bit data"),
    "resample-groups": ("made train: error", "--resample-masks is for bit data"),
    "activation-unknown": ("made train: error", "'sigmoid'"),
    "export-no-run": ("made export: error", "no-run"),
    "no-command": ("made: error", "command"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_on_stderr(
    failures: dict[str, subprocess.CompletedProcess[str]], case: str
) -> None:
    result = failures[case]
    prefix, detail = CASES[case]
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(prefix) and "error" in lines[0]
    assert detail in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_failed_runs_leave_no_run_directory_behind(
    failures: dict[str, subprocess.CompletedProcess[str]], base: Path
) -> None:
    assert all(result.returncode == 2 for result in failures.values())
    for name in ("r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11"):
        assert not (base / name).exists(), name
    # the other run's configuration was not overwritten by the refused call
    assert '"hidden": [\n      8\n    ]' in (base / "other-run" / "config.json").read_text()


# --- what a new user meets first (issue 15) -------------------------------------------------------


def _csv_splits(folder: Path, name: str, dims: int) -> Path:
    data = np.load(write_npz(folder / f"{name}.npz", dims, seed=1, n=240))
    for split in ("train", "valid", "test"):
        np.savetxt(folder / f"{name}_{split}.csv", data[split], fmt="%d", delimiter=",")
    return folder / f"{name}_train.csv"


def test_help_shows_the_defaults(tmp_path: Path) -> None:
    out = run_made("train", "--help", cwd=tmp_path).stdout
    flat = " ".join(out.split())
    assert "(default: 200)" in flat and "(default: 0.001; 1.0 with adadelta)" in flat and "(default: 20)" in flat
    assert "(default: None)" not in flat and "(default: False)" not in flat
    serve = " ".join(run_made("serve", "--help", cwd=tmp_path).stdout.split())
    assert "$MADE_PORT or 8000" in serve and "$MADE_HOST or 127.0.0.1" in serve


def test_progress_to_a_file_is_one_plain_line_per_epoch_with_the_time_left(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "d.npz", 6, n=240)
    result = run_made(
        *made_train_args(data, tmp_path / "run", hidden=8, max_epochs=3, threads=1),
        cwd=tmp_path,
    )  # stderr is a pipe, not a terminal
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "it/s" not in result.stderr and "%|" not in result.stderr
    epochs = [line for line in result.stderr.splitlines() if " epoch " in line and "s/epoch" in line]
    assert len(epochs) == 3, result.stderr
    for i, line in enumerate(epochs, start=1):
        assert re.search(
            rf"epoch {i}/3 train \d+\.\d+ valid \d+\.\d+ \(best .*\), \d+\.\d s/epoch, "
            r"at most \d+s left$",
            line,
        ), line
    assert epochs[-1].endswith("at most 0s left")


def test_progress_on_a_terminal_is_a_bar_with_the_remaining_time(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "d.npz", 6, n=240)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    proc = subprocess.Popen(
        [str(MADE_BIN), *made_train_args(data, tmp_path / "run", hidden=8, max_epochs=2, threads=1)],
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=made_env(),
        cwd=tmp_path,
    )
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    assert proc.wait(timeout=120) == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    bar = r"epoch [12]/2 +\d+%\|.*\| \d\d:\d\d elapsed, at most \d\d:\d\d left, (train|valid) \d"
    assert re.search(bar, text), text
    assert "epoch 2/2 train" in text  # the per-epoch line is printed above the bar, not into it


def test_image_shape_for_images_other_than_mnist(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "letters.npz", 6, n=240)
    refused = run_made(
        *made_train_args(data, tmp_path / "bad", no_progress=True, hidden=8, max_epochs=1, image_shape="4,4"),
        cwd=tmp_path,
    )
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "image shape 4,4 has 16 pixels but the data have 6 dimensions" in refused.stderr
    assert not (tmp_path / "bad").exists()
    malformed = run_made(
        "export", str(tmp_path / "bad"), "--store", "s", "--name", "m", "--image-shape", "4", cwd=tmp_path
    )
    assert malformed.returncode == 2 and "expected two positive integers" in malformed.stderr
    run = tmp_path / "run"
    trained = run_made(
        *made_train_args(data, run, no_progress=True, hidden=8, max_epochs=1, image_shape="2,3"), cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr
    store = tmp_path / "store"
    assert run_made("export", str(run), "--store", str(store), "--name", "a", cwd=tmp_path).returncode == 0
    assert (
        run_made(
            "export", str(run), "--store", str(store), "--name", "b", "--image-shape", "3,2", cwd=tmp_path
        ).returncode
        == 0
    )
    assert json.loads((store / "a" / "1" / "manifest.json").read_text())["image_shape"] == [2, 3]
    assert json.loads((store / "b" / "1" / "manifest.json").read_text())["image_shape"] == [3, 2]


def test_a_csv_data_set_is_named_without_its_split(tmp_path: Path) -> None:
    train_csv = _csv_splits(tmp_path, "ocr_letters", 6)
    run, store = tmp_path / "run", tmp_path / "store"
    trained = run_made(*made_train_args(train_csv, run, no_progress=True, hidden=8, max_epochs=1), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert run_made("export", str(run), "--store", str(store), "--name", "m", cwd=tmp_path).returncode == 0
    manifest = json.loads((store / "m" / "1" / "manifest.json").read_text())
    assert manifest["dataset"]["name"] == "ocr_letters"
