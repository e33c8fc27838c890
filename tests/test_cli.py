"""The real `made` console script on bad input: exit status 2 and exactly one line on stderr,
`made <command>: error: ...`, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_npz

from training.model import MADEConfig
from training.train import TrainConfig, Trainer

MADE_BIN = Path(sys.executable).with_name("made")


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
    return {
        "missing-data": [*run, "--dataset", str(base / "absent.npz"), "--out", str(base / "r1")],
        "unknown-name": [*run, "--dataset", "no_such_set_anywhere", "--out", str(base / "r2")],
        "non-binary": [*run, "--dataset", str(bad), "--out", str(base / "r3")],
        "hidden-not-integers": [*run, "--dataset", str(good), "--hidden", "500,abc",
                                "--out", str(base / "r4")],
        "hidden-zero-width": [*run, "--dataset", str(good), "--hidden", "16,0",
                              "--out", str(base / "r5")],
        "unwritable-out": [*run, "--dataset", str(good), "--hidden", "8",
                           "--out", str(regular_file / "run")],
        "other-config": [*run, "--dataset", str(good), "--hidden", "16", "--out", str(other)],
        "masks-zero": [*run, "--dataset", str(good), "--masks", "0", "--out", str(base / "r6")],
        "export-no-run": ["export", str(base / "no-run"), "--store", str(base / "store"),
                          "--name", "m"],
        "no-command": [],
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def failures(base: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run every bad call at once (each pays for starting Python, some for importing torch)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MADE_DATA_DIR", None)
    calls = _bad_calls(base)
    procs = {
        name: subprocess.Popen([str(MADE_BIN), *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=base)
        for name, args in calls.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


CASES = {
    "missing-data": ("made train: error", "absent.npz"),
    "unknown-name": ("made train: error", "no_such_set_anywhere"),
    "non-binary": ("made train: error", "row 4 column 2"),
    "hidden-not-integers": ("made train: error", "--hidden"),
    "hidden-zero-width": ("made train: error", "[16, 0]"),
    "unwritable-out": ("made train: error", "plain-file"),
    "other-config": ("made train: error", "another --out"),
    "masks-zero": ("made train: error", "masks"),
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
    for name in ("r1", "r2", "r3", "r4", "r5", "r6"):
        assert not (base / name).exists(), name
    # the other run's configuration was not overwritten by the refused call
    assert '"hidden": [\n      8\n    ]' in (base / "other-run" / "config.json").read_text()
