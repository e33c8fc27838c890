"""bench/gpu_check.py's HTTP step: `made serve` on the device's provider against the CPU
provider, each driven in turn by the load generator `hey`; the target ratio and its origin are in
docs/gpu-check.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ROOT
from bench.gpu_device import CPU, CUDA, CheckFailed

HTTP_TARGET = 5.0  # the target: req/s on CUDA over req/s on the CPU provider, 64 clients


@dataclass(frozen=True)
class HeyRun:
    """One `hey` run: answers that were 200, everything else (other statuses, errors), time."""

    ok: int
    other: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


def parse_hey(out: str) -> HeyRun:
    """hey's text summary: Total, the latency distribution (its "50%% in"; hey prints no 99% line
    under 100 answers: nan), status codes, errors."""

    def number(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")

    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors = out.split("Error distribution:", 1)[1] if "Error distribution:" in out else ""
    failed = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]\s", errors, re.M))
    return HeyRun(
        ok=statuses.get(200, 0),
        other=sum(n for code, n in statuses.items() if code != 200) + failed,
        seconds=number(r"Total:\s+([\d.]+) secs"),
        p50_ms=1e3 * number(r"50%+ in ([\d.]+) secs"),
        p99_ms=1e3 * number(r"99%+ in ([\d.]+) secs"),
    )


def run_hey(hey: str, url: str, body: Path, clients: int, seconds: float) -> HeyRun:
    """POST the JSON in `body` to url from `clients` connections for `seconds` (hey -z: requests
    in flight at the end are answered and counted)."""
    cmd = [hey, "-c", str(clients), "-z", f"{seconds:g}s", "-t", "60", "-m", "POST", "-T", "application/json"]
    done = subprocess.run([*cmd, "-D", str(body), url], capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise CheckFailed(f"hey failed (status {done.returncode}): {done.stderr.strip()[-500:]}", 1)
    return parse_hey(done.stdout)


def http_bodies(name: str, x: np.ndarray) -> list[tuple[str, str, dict[str, object]]]:
    """(path, label, JSON body) of each request measured: rows of the parity set."""
    rows = np.resize(x, (64, x.shape[1])).astype(np.int8).tolist()
    return [
        ("/logprob", "/logprob, 1 row", {"model": name, "x": rows[:1]}),
        ("/logprob", "/logprob, 64 rows", {"model": name, "x": rows}),
        ("/sample", "/sample, n=64", {"model": name, "n": 64}),
    ]


# a model of bits' line and a table model's (service/engine/engine.py, table_engine.py)
LOADED_LINE = re.compile(r"loaded (?:table )?model (\S+) version (\S+) \((?:D=\d+|\d+ columns), K=\d+\) on ([\w,]+)")


def serve_and_measure(
    hey: str,
    store: Path,
    spec: str,
    expected: str,
    model: Any,
    bodies: list[tuple[str, str, dict[str, object]]],
    seconds: float,
    clients: int,
    workdir: Path,
    warm_up: float,
) -> tuple[str, list[HeyRun] | None]:
    """`made serve` with MADE_PROVIDERS=spec, checked to run the model on `expected`, each body
    under hey in turn. (what GET /models and the log say, the runs; None if it ran elsewhere)."""
    import httpx

    from service.testing import made_serve

    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        "MADE_PROVIDERS": spec,
        "MADE_DEFAULT_MODEL": model.name,
        "MADE_API_KEY": "",  # unset
        "MADE_LOG_LEVEL": "INFO",  # as deployed: an access line a request, to the log file
        "PYTHONPATH": pythonpath,  # `python -m made.cli` from this checkout, no install needed
    }
    log = workdir / f"serve-{spec}.log"
    try:
        with made_serve(store, env=env, log_path=log, ready_timeout=300) as server:
            listed = httpx.get(f"{server.url}/models", timeout=30).json()["models"]
            providers: list[str] = next((m["providers"] for m in listed if m["name"] == model.name), [])
            found = [m.group(0) for m in map(LOADED_LINE.search, server.logs().splitlines()) if m]
            seen = (
                f"MADE_PROVIDERS={spec}: GET /models says {model.name} runs on {', '.join(providers) or 'nothing'}; "
                f"its log: {f'`{found[-1]}`' if found else '(no loaded-model line)'}"
            )
            if not providers or providers[0] != expected:
                return f"{seen}. NOT on {expected}: not measured.", None
            runs = []
            for i, (path, _, body) in enumerate(bodies):
                body_file = workdir / f"body{i}.json"
                body_file.write_text(json.dumps(body))
                run_hey(hey, server.url + path, body_file, clients, warm_up)
                runs.append(run_hey(hey, server.url + path, body_file, clients, seconds))
            return seen + ".", runs
    except RuntimeError as exc:  # made serve exited or was not ready
        return f"MADE_PROVIDERS={spec}: `made serve` did not start: {str(exc).splitlines()[0]}", None
    except (CheckFailed, OSError, subprocess.SubprocessError, httpx.HTTPError, ValueError, KeyError) as exc:
        return f"MADE_PROVIDERS={spec}: the measurement broke off: {exc}", None


def http_throughput(
    model: Any, x: np.ndarray, dry: bool, seconds: float, clients: int, hey: str | None = None
) -> list[str]:
    """Step 8's markdown: `made serve` on the device's provider against the CPU provider, each in
    turn under `clients` hey clients; a line saying why where hey or the service's dependencies
    are missing."""
    hey = (shutil.which("hey") or "") if hey is None else hey
    device, label = ("cpu", "device (CPU)") if dry else ("cuda", "CUDA")
    lines = [f"## HTTP throughput, {clients} clients: `made serve` on {label} against the CPU provider", ""]
    missing = None
    if seconds <= 0:
        missing = "--http-seconds 0"
    elif not hey:
        missing = "the load generator `hey` is not on PATH (apt-get install hey; scripts/gpu_bundle.sh carries it)"
    else:
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401

            import service.testing  # noqa: F401
        except ImportError as exc:
            missing = f"the service's dependencies are missing ({exc}; scripts/gpu_bundle.sh carries them)"
    if missing:
        print(f"gpu_check: HTTP step skipped: {missing}", file=sys.stderr)
        return [*lines, f"Skipped: {missing}.", ""]
    bodies = http_bodies(model.name, x)
    warm_up = min(1.0, seconds / 2)
    sides = [(label, device, CPU if dry else CUDA), ("CPU", "cpu", CPU)]
    runs: list[list[HeyRun] | None] = []
    notes = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-http-") as tmp:
        work = Path(tmp)
        store = work / "store"
        shutil.copytree(model.path, store / model.name / model.version)  # this model alone: one to load
        for i, (side, spec, expected) in enumerate(sides):
            (work / f"server{i}").mkdir()
            print(f"gpu_check: HTTP step, {side}: made serve with MADE_PROVIDERS={spec}", file=sys.stderr)
            note, got = serve_and_measure(
                hey, store, spec, expected, model, bodies, seconds, clients, work / f"server{i}", warm_up
            )
            notes.append(f"- {note}")
            runs.append(got)
            if got is None:
                print(f"gpu_check: HTTP step, {side}: {note}", file=sys.stderr)

    def cells(run: HeyRun | None) -> list[str]:
        if run is None:
            return ["n/a", "n/a"]
        p99 = "n/a" if np.isnan(run.p99_ms) else f"{run.p99_ms:.1f}"
        return [f"{run.rps:,.0f}", f"{run.p50_ms:.1f} / {p99}"]

    lines += [
        f"`made serve` on a store holding {model.name} version {model.version} alone, started in turn with "
        f"MADE_PROVIDERS={device} and MADE_PROVIDERS=cpu, every other setting at its default (INFO logs, to a "
        f"file). Each request in turn: `hey -c {clients} -z {seconds:g}s` on the same machine, after {warm_up:g} s "
        "of the same not counted. /logprob rows are rows of the parity set (above); /sample answers JSON lists; "
        "p99 is n/a under 100 answers.",
        "",
        *notes,
        "",
        f"| request | {label} req/s | p50 / p99 ms | CPU req/s | p50 / p99 ms | not 200, {label} / CPU "
        f"| {label} / CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    met = 0
    for i, (_, name, _) in enumerate(bodies):
        dev, cpu = (r[i] if r else None for r in runs)
        other = " / ".join("n/a" if r is None else str(r.other) for r in (dev, cpu))
        ratio = dev.rps / cpu.rps if dev and cpu and cpu.rps > 0 else None
        met += ratio is not None and ratio >= HTTP_TARGET
        shown = "n/a" if ratio is None else f"{ratio:.2f}"
        lines.append(f"| {name} | {' | '.join(cells(dev) + cells(cpu))} | {other} | {shown} |")
    lines += [
        "",
        f"Target (issue 16): /logprob and /sample over HTTP at >= {HTTP_TARGET:g}x the CPU provider's req/s with "
        f"64 clients{'' if clients == 64 else f' (measured with {clients})'}: met by {met} of {len(bodies)}"
        + ("; a dry run serves both on the CPU provider: the ratio says nothing about a GPU." if dry else ".")
        + f" This step took {time.perf_counter() - started:.0f} s.",
        "",
    ]
    return lines
