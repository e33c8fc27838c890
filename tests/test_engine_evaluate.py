"""`made evaluate`, the real console script in a subprocess, on the tiny store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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


def test_evaluate_prints_the_mixture_nll_as_one_json_object_on_the_last_line(
    runs: dict[str, subprocess.CompletedProcess[str]],
    tiny_store: Path,
    tiny_engines: dict[str, Engine],
) -> None:
    result = last_json(runs["all"])
    assert {"nll", "stderr", "n", "split"} <= set(result)
    test = np.load(tiny_store.parent / "d8.npz")["test"].astype(np.float64)
    nll = -tiny_engines["tiny"].logprob(test).logprob
    assert result["split"] == "test" and result["n"] == len(test)
    assert result["nll"] == pytest.approx(nll.mean(), abs=1e-5)
    assert result["stderr"] == pytest.approx(nll.std(ddof=1) / np.sqrt(len(nll)), rel=1e-4)


def test_evaluate_scores_one_mask_alone_when_asked(
    runs: dict[str, subprocess.CompletedProcess[str]],
    tiny_store: Path,
    tiny_engines: dict[str, Engine],
) -> None:
    result = last_json(runs["mask0"])
    valid = np.load(tiny_store.parent / "d8.npz")["valid"].astype(np.float64)
    nll = -tiny_engines["tiny"].logprob(valid, masks=0).logprob
    assert result["split"] == "valid" and result["n"] == len(valid)
    assert result["nll"] == pytest.approx(nll.mean(), abs=1e-5)
    assert result["nll"] != pytest.approx(-tiny_engines["tiny"].logprob(valid).logprob.mean())


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
