"""bench/gpu_check.py, the one-run GPU measurement of issue 16: its CPU dry run runs every step
(parity, roofline, log p(x), sampling, imputation, latency, and HTTP throughput of two `made serve`
under hey) on the CPU provider through the same code paths as on a GPU (IOBinding included), and
without CUDA the real check refuses with status 2."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from conftest import write_random_model

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
HEY = shutil.which("hey")


def load_gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def load_gpu_http() -> ModuleType:
    """bench/gpu_http.py, the HTTP step, as gpu_check imports it (the repository on sys.path)."""
    load_gpu_check()
    return importlib.import_module("bench.gpu_http")


def gpu_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=240, cwd=ROOT)


@pytest.mark.slow
def test_the_cpu_dry_run_measures_every_step_and_writes_its_report(tmp_path: Path) -> None:
    store = write_random_model(tmp_path, "t", 10, [16, 16], 3, order_agnostic=True, direct=True)
    out = tmp_path / "report.md"
    done = gpu_check(
        "--cpu-dry-run", "--store", str(store), "--model", "t", "--write", "--out", str(out), "--http-seconds", "0.2"
    )
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
    # HTTP: two real `made serve` in turn (both on the CPU provider here), hey on each request
    assert "## HTTP throughput, 64 clients: `made serve` on device (CPU) against the CPU provider" in report
    if HEY is None:  # CI machines may lack hey: the step says why and the run still passes
        assert "Skipped: the load generator `hey` is not on PATH" in report
        return
    assert (
        report.count("MADE_PROVIDERS=cpu: GET /models says t runs on CPUExecutionProvider; its log: `loaded model t")
        == 2
    )
    assert "`hey -c 64 -z 0.2s`" in report
    for request in ("/logprob, 1 row", "/logprob, 64 rows", "/sample, n=64"):
        row = re.search(rf"^\| {re.escape(request)} \| (.*) \|$", report, re.M)
        assert row is not None, report
        dev_rps, _, cpu_rps, _, errors, ratio = row.group(1).split(" | ")
        assert float(dev_rps.replace(",", "")) > 0 and float(cpu_rps.replace(",", "")) > 0
        assert errors == "0 / 0" and float(ratio) > 0
    assert "at >= 5x the CPU provider's req/s with 64 clients: met by" in report


def dry_run_args(tmp_path: Path, out: Path) -> list[str]:
    store = write_random_model(tmp_path, "t", 10, [16, 16], 3, order_agnostic=True, direct=True)
    return ["--cpu-dry-run", "--store", str(store), "--model", "t", "--write", "--out", str(out), "--http-seconds", "0"]


def test_a_step_that_fails_is_reported_in_its_section_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gpu_check_module = load_gpu_check()
    steps = gpu_check_module.gpu_steps  # where the steps look their timing helpers up
    report_module = importlib.import_module("bench.gpu_report")
    real_latencies = steps.latencies
    calls = []

    def broken(*args: object) -> float:
        raise RuntimeError("CUDA failure 700: an illegal memory access\nwas encountered")

    def third_breaks(*args: Any) -> tuple[float, float]:
        calls.append(args)
        if len(calls) == 3:
            raise MemoryError("out of device memory")
        return real_latencies(*args)

    monkeypatch.setattr(steps, "roofline", broken)
    monkeypatch.setattr(steps, "latencies", third_breaks)
    out = tmp_path / "report.md"
    assert gpu_check_module.main(dry_run_args(tmp_path, out)) == 1
    report = out.read_text()
    assert report == capsys.readouterr().out  # every step printed once, as it ended
    assert (
        "## Roofline\n\n**This step failed**: RuntimeError: CUDA failure 700: an illegal memory access was "
        "encountered (traceback on stderr).\n" in report
    )
    # the steps after it measured all the same; without a roofline their fractions are n/a
    logprob = report.split("## log p(x), rows/s", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^\| 64 \| mixture of 3 \| [\d,]+ \(n/a\) \|", logprob, re.M), logprob
    for section in ("## Sampling, samples/s", "## Imputation, rows/s"):
        assert section in report
    # a step that breaks off keeps the rows it measured before
    latency = report.split("## Single-row latency, ms", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (logprob, [^|]+) \| [\d.]+ \| [\d.]+ \|$", latency, re.M)
    assert rows == ["logprob, mixture, device engine", "logprob, one mask, device engine"], latency
    assert "**This step failed**: MemoryError: out of device memory (traceback on stderr)." in latency
    assert "calls each" not in latency
    assert "Skipped: --http-seconds 0." in report
    assert "Parity with the CPU, tolerance 0.0001 nats: passed" in report
    assert report_module.UNFINISHED not in report and report.endswith(report_module.HOW_TO)


def test_a_run_stopped_midway_leaves_the_steps_it_finished_marked_unfinished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu_check_module = load_gpu_check()
    steps_seen = []

    def stopped(*args: object) -> tuple[float, float]:
        steps_seen.append(Path(out).read_text())  # what was on disk while the latency step ran
        raise KeyboardInterrupt  # as a kill would: no step catches it

    monkeypatch.setattr(gpu_check_module.gpu_steps, "latencies", stopped)
    out = tmp_path / "report.md"
    with pytest.raises(KeyboardInterrupt):
        gpu_check_module.main(dry_run_args(tmp_path, out))
    report = out.read_text()
    assert report == steps_seen[0]
    assert report.endswith(f"\n{importlib.import_module('bench.gpu_report').UNFINISHED}\n")
    for section in ("Parity with the CPU", "## Roofline", "## log p(x), rows/s", "## Sampling", "## Imputation"):
        assert section in report
    assert "## Single-row latency" not in report and "## How to re-measure" not in report
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_dry_run_does_not_overwrite_the_measured_document() -> None:
    done = gpu_check("--cpu-dry-run", "--write")
    assert done.returncode == 2 and "needs --out" in done.stderr


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is here")
def test_without_cuda_the_check_refuses_with_status_2() -> None:
    done = gpu_check()
    assert done.returncode == 2
    assert "no CUDA provider" in done.stderr


def test_the_http_step_without_hey_says_why_and_is_skipped() -> None:
    lines = load_gpu_http().http_throughput(None, np.zeros((1, 4)), True, 0.1, 64, hey="")
    assert lines[0].startswith("## HTTP throughput, 64 clients")
    assert "Skipped: the load generator `hey` is not on PATH" in "\n".join(lines)


HEY_OUTPUT = """
Summary:
  Total:\t10.0123 secs
  Requests/sec:\t100.3767

Latency distribution:
  10% in 0.0053 secs
  50% in 0.0075 secs
  99% in 0.0412 secs

Status code distribution:
  [200]\t1000 responses
  [503]\t3 responses

Error distribution:
  [2]\tPost "http://127.0.0.1:8000/logprob": EOF
"""


def test_hey_summaries_are_read_with_only_200_answers_counted() -> None:
    run = load_gpu_http().parse_hey(HEY_OUTPUT)
    assert (run.ok, run.other, run.seconds) == (1000, 5, 10.0123)
    assert run.rps == pytest.approx(1000 / 10.0123)
    assert (run.p50_ms, run.p99_ms) == pytest.approx((7.5, 41.2))
    # under 100 answers hey prints no 99% line ("0% in 0.0000 secs" in its place)
    few = load_gpu_http().parse_hey(HEY_OUTPUT.replace("99% in 0.0412", "0% in 0.0000"))
    assert np.isnan(few.p99_ms)
