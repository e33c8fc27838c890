"""`made evaluate`, the real console script in a subprocess, on the tiny store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from helpers import made_env, run_made_calls

from service.engine.engine import Engine


@pytest.fixture(scope="module")
def runs(tiny_store: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every call at once: each pays for starting Python and onnxruntime."""
    d8, d10 = tiny_store.parent / "d8.npz", tiny_store.parent / "d10.npz"
    base = ["evaluate", "--store", str(tiny_store)]
    calls = {
        "all": [*base, "--name", "tiny", "--dataset", str(d8)],
        "mask0": [*base, "--name", "tiny", "--dataset", str(d8), "--masks", "0", "--split", "valid"],
        "unknown-model": [*base, "--name", "no-such-model", "--dataset", str(d8)],
        "wrong-dims": [*base, "--name", "tiny", "--dataset", str(d10)],
        "mask-out-of-range": [*base, "--name", "tiny", "--dataset", str(d8), "--masks", "9"],
    }
    return run_made_calls(calls, made_env(MADE_PROVIDERS="cpu", MADE_THREADS="1"))


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("case", "split", "masks"), [("all", "test", "all"), ("mask0", "valid", 0)])
def test_evaluate_prints_the_nll_of_the_split_under_the_masks_asked_as_one_json_object_on_the_last_line(
    runs: dict[str, subprocess.CompletedProcess[str]],
    tiny_store: Path,
    tiny_engines: dict[str, Engine],
    case: str,
    split: str,
    masks: Literal["all"] | int,
) -> None:
    """The mixture of every mask by default; one mask alone when asked, which scores otherwise."""
    result = last_json(runs[case])
    assert {"nll", "stderr", "n", "split"} <= set(result)
    x = np.load(tiny_store.parent / "d8.npz")[split].astype(np.float64)
    nll = -tiny_engines["tiny"].logprob(x, masks=masks).logprob
    assert result["split"] == split and result["n"] == len(x)
    assert result["nll"] == pytest.approx(nll.mean(), abs=1e-5)
    assert result["stderr"] == pytest.approx(nll.std(ddof=1) / np.sqrt(len(nll)), rel=1e-4)
    mixture = -tiny_engines["tiny"].logprob(x).logprob.mean()
    scored_as_the_mixture = result["nll"] == pytest.approx(mixture, abs=1e-5)
    assert scored_as_the_mixture == (masks == "all"), (result["nll"], mixture)


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("unknown-model", "no-such-model"),
        ("wrong-dims", "10 dimensions, model tiny has 8"),
        ("mask-out-of-range", "mask 9"),
    ],
)
def test_evaluate_errors_exit_2_with_one_line(
    runs: dict[str, subprocess.CompletedProcess[str]], case: str, words: str
) -> None:
    proc = runs[case]
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("made evaluate: error: ") and words in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
