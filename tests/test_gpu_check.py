"""bench/gpu_check.py, the one-run GPU measurement of issue 16: its CPU dry run runs every step
(parity, roofline, log p(x), sampling, imputation, latency) on the CPU provider through the same
code paths as on a GPU (IOBinding included), and without CUDA the real check refuses with status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
from conftest import write_random_model

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"


def gpu_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=240, cwd=ROOT)


@pytest.mark.slow
def test_the_cpu_dry_run_measures_every_step_and_writes_its_report(tmp_path: Path) -> None:
    store = write_random_model(tmp_path, "t", 10, [16, 16], 3, order_agnostic=True, direct=True)
    out = tmp_path / "report.md"
    done = gpu_check("--cpu-dry-run", "--store", str(store), "--model", "t", "--write", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = out.read_text()
    assert report == done.stdout.rstrip("\n") + "\n"
    assert "CPU DRY RUN" in report
    assert "Parity with the CPU, tolerance 0.0001 nats: passed" in report
    # Jacobi through IOBinding on the CPU against the stepping sampler: every sample the same
    assert "16 samples over all 3 masks: 16 identical, 0 differ" in report
    for section in (
        "## Roofline",
        "## log p(x), rows/s",
        "## Sampling, samples/s",
        "## Imputation, rows/s",
        "## Single-row latency, ms",
        "## How to re-measure",
    ):
        assert section in report
    assert "| 64 | mixture of 3 |" in report and "| 16 |" in report
    assert "IOBinding: scores graph True, Jacobi sampler True" in report


def test_a_dry_run_does_not_overwrite_the_measured_document() -> None:
    done = gpu_check("--cpu-dry-run", "--write")
    assert done.returncode == 2 and "needs --out" in done.stderr


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is here")
def test_without_cuda_the_check_refuses_with_status_2() -> None:
    done = gpu_check()
    assert done.returncode == 2
    assert "no CUDA provider" in done.stderr
