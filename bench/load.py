"""Load, latency, errors and memory of a real `made serve` under concurrent clients.

    .venv/bin/python bench/load.py [--store model_store] [--model NAME] [--clients 64]
        [--duration 60] [--paced-load 0.5] [--leak-requests 100000 [--leak-model NAME]]
        [--compare-seconds 15] [--floor-rounds 3] [--floor-only]
        [--write] [--json FILE]

One `made serve` process on a free loopback port, logging as deployed (MADE_LOG_LEVEL=INFO: one
JSON access line per request, to a file), every other setting at its default. The load
generator is wrk (apt-get install wrk), one process per endpoint, on the same machine:

1. warm-up: --warmup seconds of the mix below, not counted (its errors are);
2. mixed load: --clients connections for --duration seconds, a quarter on each of POST /logprob
   (1 row), /conditionals (1 row), /sample (n=4) and /impute (1 row missing the second half of
   mask 0's ordering, default settings). Every answer must be 200: another status, a timeout or
   a broken connection is an unexpected error. Before it, each endpoint alone with the same
   --clients / 4 connections for --alone-seconds: the table compares each endpoint's p99 in the
   mix with its p99 alone (fair scheduling's target: at most 3x), and the share of its alone
   throughput each endpoint keeps in the mix (with closed-loop clients, Little's law ties the
   two: see the table's note). Then, with --paced-load L (default 0.5), the same at a load the
   server can carry: each connection waits between requests so that each endpoint uses L / 4 of
   the server CPU the saturated mix used (its CPU per request measured paced alone for
   --calibrate-seconds first); each endpoint paced alone for --duration, then the four paced
   together;
3. leak check, with --leak-requests N (not run by default, so that `make bench` takes about two
   minutes): more rounds of the mix, on --leak-model's (default: the same model), until N
   requests have been answered since the warm-up. The server's resident memory (VmRSS in
   /proc/PID/status) right after the warm-up and at the end must differ by less than
   --max-growth-mb (50). On a 2-core machine the 784-dimensional model's mix answers tens of
   requests per second, so 100000 take hours; `--leak-model mushrooms` reaches them in minutes
   through the same code paths;
4. floor: POST /logprob with one row from --clients connections for --compare-seconds, against
   `made serve` and against bench/_bare_app.py (a bare FastAPI endpoint that parses the same
   body into a pydantic model of the same shape and returns a constant, under uvicorn the same
   way), in turn for --floor-rounds rounds with both servers up, for the model and for the leak
   check's if it is another and for each --floor-model. The ratio is what the model and the
   service cost above FastAPI itself; on a machine whose CPUs are shared, only the ratio of a round means much, and the
   rounds give its spread. --floor-only runs this phase alone (on --model, default mushrooms)
   and prints it.

Prints markdown tables; --write saves them to docs/load.md. Exit status 1 on any unexpected
error or memory growth at or over the bound. Without wrk it prints that it skipped, exit 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.testing import free_port, made_serve

ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20
QUANTILES = 2000  # wrk reports this many evenly spaced quantiles per run, merged across runs

# wrk: POST a body read from a file; at the end, write counts and a quantile grid as JSON.
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
local think = tonumber(os.getenv("THINK_MS") or "0")
if think > 0 then
  delay = function() return think end  -- ms a connection waits before each request
end

done = function(summary, latency, requests)
  local out = assert(io.open(os.getenv("WRK_OUT"), "w"))
  local e = summary.errors
  local q = {}
  for i = 1, NQ do q[i] = string.format("%d", latency:percentile((i - 0.5) * 100 / NQ)) end
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "quantiles_us": [%s]}',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(q, ",")))
  out:close()
end
""".replace("NQ", str(QUANTILES))


@dataclass
class Run:
    """One wrk process's results on one endpoint."""

    endpoint: str
    requests: int
    seconds: float
    errors: dict[str, int]
    quantiles_us: list[int] = field(repr=False)

    @property
    def unexpected(self) -> int:
        return sum(self.errors.values())


@dataclass
class Row:
    phase: str
    endpoint: str
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    unexpected: int
    server_cpu: float | None = None  # cores the server process used on average (its CPU time / wall)
    think_ms: float = 0.0  # what each connection waited before each request (paced phases)
    connections: int = 0  # (paced phases)


def summarize(phase: str, endpoint: str, runs: list[Run], seconds: float) -> Row:
    """Merge runs: each run's quantile grid stands for its requests in equal shares."""
    values = np.concatenate([np.asarray(r.quantiles_us, dtype=np.float64) for r in runs])
    weights = np.concatenate([np.full(len(r.quantiles_us), r.requests / len(r.quantiles_us)) for r in runs])
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order]) / max(weights.sum(), 1e-12)

    def quantile(q: float) -> float:
        i = min(int(np.searchsorted(cumulative, q)), len(values) - 1)
        return float(values[order][i]) / 1000

    requests = sum(r.requests for r in runs)
    return Row(
        phase, endpoint, requests, requests / seconds, quantile(0.50), quantile(0.99), sum(r.unexpected for r in runs)
    )


@dataclass
class Target:
    path: str
    label: str
    body: dict[str, object]


def targets(manifest: dict[str, Any], model: str | None) -> list[Target]:
    """The four requests of the mix. /impute misses the second half of mask 0's ordering (the
    bottom half of an image), with its default settings: exact where every mask shares that
    ordering, as the shipped models do."""
    dims = int(manifest["dims"])
    rng = np.random.default_rng(0)
    row = rng.integers(0, 2, dims).tolist()
    holes: list[int | None] = list(row)
    for d in manifest["orderings"][0][-(dims // 2) :]:
        holes[d] = None
    named = {"model": model} if model else {}
    return [
        Target("/logprob", "/logprob (1 row)", {**named, "x": [row]}),
        Target("/conditionals", "/conditionals (1 row)", {**named, "x": [row], "mask": 0}),
        Target("/sample", "/sample (n=4)", {**named, "n": 4}),
        Target("/impute", f"/impute (1 row, last {dims // 2} of {dims} missing, defaults)", {**named, "x": [holes]}),
    ]


class Wrk:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.script = workdir / "post.lua"
        self.script.write_text(LUA)
        self._count = 0

    def start(
        self,
        url: str,
        body: dict[str, object],
        connections: int,
        seconds: float,
        threads: int = 1,
        think_ms: float = 0.0,
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """wrk on url; think_ms > 0: each connection waits that long before each request."""
        self._count += 1
        body_file = self.workdir / f"body{self._count}.json"
        out = self.workdir / f"out{self._count}.json"
        body_file.write_text(json.dumps(body))
        proc = subprocess.Popen(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "30s",
                "-s",
                str(self.script),
                url,
            ],
            env={**os.environ, "BODY_FILE": str(body_file), "WRK_OUT": str(out), "THINK_MS": str(round(think_ms))},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return proc, out

    def finish(self, endpoint: str, proc: subprocess.Popen[bytes], out: Path) -> Run:
        _, err = proc.communicate()
        if proc.returncode != 0 or not out.exists():
            sys.exit(f"wrk failed on {endpoint} (exit {proc.returncode}): {err.decode()[-500:]}")
        data = json.loads(out.read_text())
        errors = {k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout")}
        return Run(
            endpoint, int(data["requests"]), data["duration_us"] / 1e6, errors, [int(v) for v in data["quantiles_us"]]
        )

    def mix(
        self,
        base: str,
        mix: list[Target],
        clients: int,
        seconds: float,
        think_ms: dict[str, float] | None = None,
        connections: dict[str, int] | None = None,
    ) -> list[Run]:
        """Every target at once, clients // len(mix) connections each (or `connections`, and
        think_ms, per label)."""
        think, conns = think_ms or {}, connections or {}
        started = [
            (
                t,
                *self.start(
                    base + t.path,
                    t.body,
                    conns.get(t.label, clients // len(mix)),
                    seconds,
                    think_ms=think.get(t.label, 0.0),
                ),
            )
            for t in mix
        ]
        return [self.finish(t.label, proc, out) for t, proc, out in started]

    def one(self, url: str, body: dict[str, object], clients: int, seconds: float, label: str) -> Run:
        return self.finish(label, *self.start(url, body, clients, seconds, threads=2))


def fairness(alone: dict[str, Row], mixed: list[Row]) -> list[str]:
    """Each endpoint's p99 in the mix against its p99 alone at the same connections, with its
    share of its alone throughput kept in the mix."""
    pairs = [(alone[r.endpoint], r) for r in mixed if r.endpoint in alone]
    if not pairs:
        return []
    lines = [
        "Each endpoint in the mix against the same endpoint alone (same connections; target: "
        "p99 in the mix at most 3x its p99 alone):",
        "",
        "| endpoint | p99 alone (ms) | p99 in the mix (ms) | ratio | within 3x | req/s in the mix / alone |",
        "|---|---:|---:|---:|---|---:|",
    ]
    shares = []
    for a, m in pairs:
        ratio = m.p99_ms / a.p99_ms if a.p99_ms else float("inf")
        share = m.rps / a.rps if a.rps else float("nan")
        shares.append(share)
        lines.append(
            f"| {m.endpoint} | {a.p99_ms:.1f} | {m.p99_ms:.1f} | {ratio:.1f}x | {'yes' if ratio <= 3 else 'no'} "
            f"| {share:.2f} |"
        )
    total = float(np.nansum(shares))
    lines += [
        "",
        f"The shares sum to {total:.2f}. Every connection here sends its next request when its "
        "answer comes (a closed loop), so by Little's law an endpoint's mean latency is its "
        "connections over its throughput, and its mean latency in the mix is 1 / share times "
        "its mean alone. When each endpoint alone already keeps the server busy, the shares "
        f"can sum to at most about 1, so some endpoint of the {len(pairs)} keeps at most "
        f"1/{len(pairs)} of its throughput and waits at least {len(pairs)}x longer on average, "
        "whatever the scheduler does: at saturation, 3x for every endpoint cannot be met. The "
        "paced phase below asks the question that remains: at a load the server can carry, do "
        "the expensive endpoints make the cheap ones wait?",
    ]
    return [*lines, ""]


def paced(
    alone: dict[str, Row], mixed: list[Row], load: float, closed: dict[str, Row] | None = None, capacity: float = 0.0
) -> list[str]:
    """Each endpoint's p99 in the paced mix against its p99 paced alone (same pacing); `closed`:
    each endpoint alone with closed-loop clients (the rates the pacing is a share of)."""
    pairs = [(alone[r.endpoint], r) for r in mixed if r.endpoint in alone]
    if not pairs:
        return []
    lines = [
        f"Paced: each connection waits between requests so that each endpoint asks for "
        f"{load / len(pairs):.3g} of the server's CPU under the saturated mix ({capacity:.2f} cores, the "
        f"most it used here), from its CPU per request measured paced alone: the four together {load:.0%} "
        "of what the server can do here. Each endpoint paced alone, then the four paced together "
        "(target: p99 in the mix at most 3x its p99 alone):",
        "",
        "| endpoint | connections | think time (ms) | req/s alone / in the mix | p99 paced alone (ms) "
        "| p99 in the paced mix (ms) | ratio | within 3x |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for a, m in pairs:
        ratio = m.p99_ms / a.p99_ms if a.p99_ms else float("inf")
        lines.append(
            f"| {m.endpoint} | {a.connections} | {a.think_ms:.0f} | {a.rps:.1f} / {m.rps:.1f} | {a.p99_ms:.1f} "
            f"| {m.p99_ms:.1f} | {ratio:.1f}x | {'yes' if ratio <= 3 else 'no'} |"
        )
    lines.append("")
    used = [a.server_cpu for a, _ in pairs if a.server_cpu is not None]
    full = [r.server_cpu for r in (closed or {}).values() if r.server_cpu is not None]
    mix_cpu = next((r.server_cpu for r in mixed if r.endpoint == "**all**" and r.server_cpu is not None), None)
    if used:
        lines.append(
            "What the paced load really asks of the server, in its CPU (cores, its CPU time over the wall "
            "time): each endpoint paced alone "
            + ", ".join(f"{a.endpoint} {a.server_cpu:.2f}" for a, _ in pairs if a.server_cpu is not None)
            + f", {sum(used):.2f} together"
            + (f"; the paced mix {mix_cpu:.2f}" if mix_cpu is not None else "")
            + (
                f"; at what a request cost with the closed-loop clients alone (those used "
                f"{', '.join(f'{c:.2f}' for c in full)}), the same requests would use "
                f"{load / len(pairs) * sum(full):.2f} together."
                if len(full) == len(pairs)
                else "."
            )
        )
        lines.append("")
    return lines


def rss_bytes(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} in /proc/{pid}/status")


class RssSampler:
    """The server's VmRSS once a second, in a thread, for the peak and the trend."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append((time.monotonic(), rss_bytes(self.pid)))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def bare_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "_bare_app.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                sys.exit(f"bench/_bare_app.py exited: {proc.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                sys.exit("bench/_bare_app.py did not start")
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def floor(
    wrk: Wrk, made: tuple[str, int], bare: tuple[str, int], model_name: str, body: dict[str, object], args: Any
) -> list[Row]:
    """POST /logprob with one row on `made serve` and on the bare app, in --floor-rounds
    alternating rounds (made, bare, made, bare, ...) of --compare-seconds each, both servers up:
    each pair saw the same machine, so the ratio of a round holds where CPU time is shared and
    stolen (the absolute req/s do not). Rows: made, bare, made, bare, ..."""
    servers = [("`made serve`", *made), ("bare FastAPI (`bench/_bare_app.py`)", *bare)]
    for _, url, _ in servers:
        wrk.one(url + "/logprob", body, args.clients, 2, "warm-up")
    rows = []
    for i in range(args.floor_rounds):
        for label, url, pid in servers:
            settle(pid)
            print(
                f"floor, round {i + 1} of {args.floor_rounds}: /logprob on {label} ({model_name}), "
                f"{args.compare_seconds:g} s",
                file=sys.stderr,
            )
            start, cpu = time.perf_counter(), cpu_seconds(pid)
            run = wrk.one(url + "/logprob", body, args.clients, args.compare_seconds, label)
            rows.append(summarize(f"/logprob, 1 row of '{model_name}', round {i + 1}", label, [run], run.seconds))
            rows[-1].server_cpu = (cpu_seconds(pid) - cpu) / (time.perf_counter() - start)
    return rows


def floor_ratios(compare: list[Row]) -> dict[str, list[float]]:
    """Per model, each round's req/s of `made serve` over the bare app's."""
    ratios: dict[str, list[float]] = {}
    for made, bare in zip(compare[::2], compare[1::2], strict=True):
        model = made.phase.split(" of ")[-1].rsplit(", round", 1)[0]
        ratios.setdefault(model, []).append(made.rps / bare.rps)
    return ratios


def floor_lines(compare: list[Row], args: Any) -> list[str]:
    shares = "; ".join(
        f"{model}: **{float(np.median(r)):.0%}** (median of {len(r)} rounds; {min(r):.0%} to {max(r):.0%})"
        for model, r in floor_ratios(compare).items()
    )
    return [
        "Single-row /logprob against a bare FastAPI endpoint that parses the same body "
        f"and answers a constant ({args.compare_seconds:g} s each, {args.clients} "
        f"connections, the two in turn for {args.floor_rounds} rounds, both servers up):",
        "",
        *table(compare),
        "",
        f"`made serve` answers this share of the bare endpoint's requests per second: {shares}.",
        "",
    ]


def floor_only(args: Any) -> int:
    """--floor-only: the floor alone, on --model (default mushrooms, the cheapest model to run),
    printed (and --json); docs/load.md is left as it is."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        made_serve(args.store, env={"MADE_LOG_LEVEL": "INFO"}) as server,
        bare_server() as bare,
    ):
        wrk = Wrk(Path(tmp))
        model_name = args.model or "mushrooms"
        manifest = httpx.get(f"{server.url}/models/{model_name}", timeout=30).json()
        body = targets(manifest, model_name)[0].body
        r = httpx.post(server.url + "/logprob", json=body, timeout=120)
        if r.status_code != 200:
            sys.exit(f"/logprob on {model_name} answered {r.status_code}: {r.text[:300]}")
        compare = floor(wrk, (server.url, server.proc.pid), bare, model_name, body, args)
    unexpected = sum(r.unexpected for r in compare)
    print("\n" + "\n".join(floor_lines(compare, args)))
    print(f"Unexpected errors: {unexpected}.")
    if args.json:
        args.json.write_text(
            json.dumps({"compare": [asdict(r) for r in compare], "ratios": floor_ratios(compare)}, indent=1)
        )
    return 0 if unexpected == 0 else 1


def table(rows: list[Row]) -> list[str]:
    def cpu(r: Row) -> str:
        return "" if r.server_cpu is None else f"{r.server_cpu:.2f}"

    return [
        "| phase | endpoint | requests | req/s | p50 ms | p99 ms | unexpected errors | server CPU (cores) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r.phase} | {r.endpoint} | {r.requests} | {r.rps:.0f} | {r.p50_ms:.1f} | "
            f"{r.p99_ms:.1f} | {r.unexpected} | {cpu(r)} |"
            for r in rows
        ),
    ]


def settle(pid: int, limit_s: float = 120.0) -> None:
    """Wait until the server is idle (under 5% of a core over half a second): requests whose
    clients left at the end of a phase still finish their engine work, and the next phase must
    not measure it."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            return


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _mix_rows(phase: str, mix: list[Target], runs: list[Run], seconds: float) -> list[Row]:
    rows = [summarize(phase, t.label, [run], seconds) for t, run in zip(mix, runs, strict=True)]
    return [*rows, summarize(phase, "**all**", runs, seconds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default=None, help="default: the server's default model")
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections")
    parser.add_argument("--duration", type=float, default=60.0, help="mixed load, seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds, not counted")
    parser.add_argument(
        "--alone-seconds", type=float, default=10.0, help="seconds of each endpoint alone before the mix (0: skip)"
    )
    parser.add_argument(
        "--leak-requests",
        type=int,
        default=0,
        help="run the leak check: requests answered after the warm-up before "
        "memory is compared, e.g. 100000 (default 0: not run)",
    )
    parser.add_argument("--leak-model", default=None, help="the model of the leak check's mix (default: --model)")
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    parser.add_argument(
        "--compare-seconds",
        type=float,
        default=15.0,
        help="seconds of /logprob against made serve and the bare app (0: skip)",
    )
    parser.add_argument(
        "--floor-rounds", type=int, default=3, help="rounds of the floor, made serve and the bare app in turn"
    )
    parser.add_argument(
        "--floor-model",
        action="append",
        help="also run the floor on this model (repeatable), e.g. mushrooms, the cheapest model to run",
    )
    parser.add_argument(
        "--floor-only",
        action="store_true",
        help="only the floor (default model: mushrooms), --floor-rounds of --compare-seconds each; prints, no --write",
    )
    parser.add_argument(
        "--paced-load",
        type=float,
        default=0.5,
        help="the paced phases' load, as a share of the server CPU under the saturated mix: each endpoint "
        "is paced to use this / 4 of it (0: skip)",
    )
    parser.add_argument(
        "--calibrate-seconds",
        type=float,
        default=5.0,
        help="seconds each endpoint runs paced alone to measure its server CPU per request",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--write", action="store_true", help="write docs/load.md")
    args = parser.parse_args()
    if not args.store.is_dir():
        sys.exit(f"model store {args.store} does not exist (make models, or pass --store)")
    if shutil.which("wrk") is None:
        print("bench/load.py skipped: the load generator wrk is not installed (apt-get install wrk)")
        return 0
    if args.floor_only:
        return floor_only(args)
    if args.clients % 4:
        sys.exit("--clients must be a multiple of 4 (a quarter per endpoint)")
    version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()
    tool = f"wrk {version[1].split('/')[-1].split('-')[0]}" if len(version) > 1 else "wrk"
    load_before = os.getloadavg()[0]

    rows: list[Row] = []
    compare: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, made_serve(args.store, env={"MADE_LOG_LEVEL": "INFO"}) as server:
        wrk = Wrk(Path(tmp))
        pid = server.proc.pid
        info = httpx.get(f"{server.url}/models", timeout=30).json()
        name = args.model or info["default"]
        model = next(m for m in info["models"] if m["name"] == name)

        def mix_of(model_name: str) -> list[Target]:
            manifest = httpx.get(f"{server.url}/models/{model_name}", timeout=30).json()
            mix = targets(manifest, model_name if model_name != info["default"] else None)
            for t in mix:  # every body is one the server answers
                r = httpx.post(server.url + t.path, json=t.body, timeout=120)
                if r.status_code != 200:
                    sys.exit(f"{t.path} on {model_name} answered {r.status_code}: {r.text[:300]}")
            return mix

        memory = {"after start (models loaded, before any request)": rss_bytes(pid) / MB}
        mix = mix_of(name)
        leak_name = args.leak_model or name
        leak_mix = mix_of(leak_name) if args.leak_requests > 0 else mix
        print(f"warm-up: {args.warmup:g} s", file=sys.stderr)
        warm = wrk.mix(server.url, mix, args.clients, args.warmup)
        if leak_mix is not mix:
            warm += wrk.mix(server.url, leak_mix, args.clients, args.warmup)
        rss_start = rss_bytes(pid)
        memory["after the warm-up (every endpoint)"] = rss_start / MB
        alone: dict[str, Row] = {}
        if args.alone_seconds > 0:
            for t in mix:
                settle(pid)
                print(f"alone: {t.path}, {args.clients // 4} clients, {args.alone_seconds:g} s", file=sys.stderr)
                cpu = cpu_seconds(pid)
                run = wrk.finish(
                    t.label, *wrk.start(server.url + t.path, t.body, args.clients // 4, args.alone_seconds)
                )
                alone[t.label] = summarize(f"alone, {args.alone_seconds:g} s", t.label, [run], run.seconds)
                alone[t.label].server_cpu = (cpu_seconds(pid) - cpu) / run.seconds
            rows += alone.values()

        settle(pid)
        print(f"mixed load: {args.clients} clients, {args.duration:g} s", file=sys.stderr)
        with RssSampler(pid) as sampler:
            start, cpu = time.perf_counter(), cpu_seconds(pid)
            runs = wrk.mix(server.url, mix, args.clients, args.duration)
            rows += _mix_rows(f"mixed, {args.duration:g} s", mix, runs, time.perf_counter() - start)
            rows[-1].server_cpu = (cpu_seconds(pid) - cpu) / (time.perf_counter() - start)
            served = rows[-1].requests
            memory[f"after the mixed load ({served} requests)"] = rss_bytes(pid) / MB

            if args.leak_requests > 0:
                leak_runs: list[Run] = []
                rate = rows[-1].rps if leak_mix is mix else 0.0  # 0: not measured yet
                start, cpu = time.perf_counter(), cpu_seconds(pid)
                while served < args.leak_requests:
                    left = (args.leak_requests - served) / rate if rate else 0.0
                    print(
                        f"leak check: {served} of {args.leak_requests} requests answered"
                        + (f", about {left:.0f} s to go" if rate else ""),
                        file=sys.stderr,
                    )
                    # rounds of at most 30 s, the last sized to end near the count
                    batch = wrk.mix(server.url, leak_mix, args.clients, min(max(left + 1, 5), 30))
                    if not sum(r.requests for r in batch):
                        sys.exit("the server answered no request in a round of the leak check")
                    leak_runs += batch
                    served += sum(r.requests for r in batch)
                    rate = sum(r.requests for r in leak_runs) / (time.perf_counter() - start)
                seconds = time.perf_counter() - start
                # the leak check's own rounds, merged per endpoint
                per_target = [[r for r in leak_runs if r.endpoint == t.label] for t in leak_mix]
                phase = f"leak check on '{leak_name}', {seconds:.0f} s"
                rows += [summarize(phase, t.label, rs, seconds) for t, rs in zip(leak_mix, per_target, strict=True)]
                rows.append(summarize(phase, "**all**", leak_runs, seconds))
                rows[-1].server_cpu = (cpu_seconds(pid) - cpu) / seconds
                memory[f"after the leak check ({served} requests)"] = rss_bytes(pid) / MB
        paced_alone: dict[str, Row] = {}
        paced_rows: list[Row] = []
        capacity = 0.0  # cores the server used under the saturated mix: what it can use here
        if args.paced_load > 0 and alone:
            capacity = next(
                r.server_cpu or 0.0 for r in rows if r.phase.startswith("mixed") and r.endpoint == "**all**"
            )

            def pacing(label: str, rate: float) -> tuple[int, float]:
                """Connections and think time (ms) that offer `rate` req/s: connections x 1 /
                (think + latency). A think time stays under uvicorn's 5 s keep-alive (an idle
                connection is closed after it), so a slow endpoint gets fewer connections; latency
                at this load is taken as its service time, about connections alone / req/s alone
                / 4 (a guess: the table shows the req/s each endpoint really offered)."""
                service_ms = 1000 * (args.clients // 4) / alone[label].rps / 4
                n = max(1, min(args.clients // 4, math.floor(rate * (4.0 + service_ms / 1000))))
                return n, max(0.0, 1000 * n / rate - service_ms)

            # What a paced request costs the server: paced requests come one or two at a time and
            # share engine calls less than closed-loop ones, so each endpoint's CPU per request
            # is measured paced alone (at paced_load / 4 of its alone req/s, --calibrate-seconds),
            # and its rate set to use paced_load / 4 of the capacity.
            cost: dict[str, float] = {}
            for t in mix:
                settle(pid)
                n, think_ms = pacing(t.label, args.paced_load / 4 * alone[t.label].rps)
                print(f"paced, calibrating: {t.path}, {args.calibrate_seconds:g} s", file=sys.stderr)
                cpu = cpu_seconds(pid)
                run = wrk.finish(
                    t.label, *wrk.start(server.url + t.path, t.body, n, args.calibrate_seconds, think_ms=think_ms)
                )
                cost[t.label] = (cpu_seconds(pid) - cpu) / max(1, run.requests)
            think: dict[str, float] = {}
            conns: dict[str, int] = {}
            for t in mix:
                rate = args.paced_load / 4 * capacity / cost[t.label]  # req/s wanted
                conns[t.label], think[t.label] = pacing(t.label, rate)
            for t in mix:
                settle(pid)
                print(
                    f"paced alone: {t.path}, {conns[t.label]} connections, think {think[t.label]:.0f} ms, "
                    f"{args.duration:g} s",
                    file=sys.stderr,
                )
                cpu = cpu_seconds(pid)
                run = wrk.finish(
                    t.label,
                    *wrk.start(server.url + t.path, t.body, conns[t.label], args.duration, think_ms=think[t.label]),
                )
                paced_alone[t.label] = summarize("paced alone", t.label, [run], run.seconds)
                paced_alone[t.label].server_cpu = (cpu_seconds(pid) - cpu) / run.seconds
                paced_alone[t.label].think_ms = think[t.label]
                paced_alone[t.label].connections = conns[t.label]
            settle(pid)
            print(f"paced mix: {args.duration:g} s", file=sys.stderr)
            start, cpu = time.perf_counter(), cpu_seconds(pid)
            runs = wrk.mix(server.url, mix, args.clients, args.duration, think_ms=think, connections=conns)
            paced_rows = _mix_rows("paced mix", mix, runs, time.perf_counter() - start)
            paced_rows[-1].server_cpu = (cpu_seconds(pid) - cpu) / (time.perf_counter() - start)
            rows += [*paced_alone.values(), *paced_rows]
        growth = (rss_bytes(pid) - rss_start) / MB
        memory["highest sample (once a second)"] = (
            max(s for _, s in sampler.samples) / MB if (sampler.samples) else float("nan")
        )
        memory["peak (VmHWM)"] = rss_bytes(pid, "VmHWM") / MB

        # The floor, on each model of the run: the main one, and the leak check's if another.
        floors = [(name, mix[0].body)] + (
            [(leak_name, leak_mix[0].body)] if leak_name != name and args.leak_requests > 0 else []
        )
        for extra in args.floor_model or []:
            if extra not in {n for n, _ in floors}:
                floors.append((extra, mix_of(extra)[0].body))
        if args.compare_seconds > 0:
            settle(pid)
            with bare_server() as bare:
                for model_name, body in floors:
                    compare += floor(wrk, (server.url, pid), bare, model_name, body, args)

    unexpected = sum(r.unexpected for r in rows + compare) + sum(r.unexpected for r in warm)
    shown_args = [
        a for i, a in enumerate(sys.argv[1:]) if a != "--json" and (i == 0 or sys.argv[i] != "--json")
    ]  # the command as rerun, less where the JSON went
    leak_ran = args.leak_requests > 0
    growth_ok = not leak_ran or growth < args.max_growth_mb
    lines = [
        f"`bench/load.py {' '.join(shown_args)}`: model '{name}' (D={model['dims']}, "
        f"K={model['n_masks']}) from `{args.store.name}`, one `made serve` process "
        "(MADE_LOG_LEVEL=INFO, every other setting at its default), "
        f"{args.clients} concurrent connections ({args.clients // 4} per endpoint in the mix); "
        f"load generator {tool} on the same machine ({os.cpu_count()} CPUs shared with other "
        f"work: load average {load_before:.1f} before the run), {time.strftime('%Y-%m-%d')}.",
        "",
        *table(rows),
        "",
        f"Unexpected errors (any status but 200, timeouts, broken connections), warm-up included: **{unexpected}**.",
        "",
        *fairness(alone, [r for r in rows if r.phase.startswith("mixed")]),
        *paced(paced_alone, paced_rows, args.paced_load, alone, capacity),
        "Resident memory of the server process (VmRSS from /proc/PID/status):",
        "",
        "| reading | MB |",
        "|---|---:|",
        *(f"| {k} | {v:.1f} |" for k, v in memory.items()),
        "",
    ]
    if leak_ran:
        verdict = "PASS" if growth_ok else "FAIL"
        lines += [
            f"Growth from the warm-up to the end: {growth:+.1f} MB over {served} requests "
            f"(bound {args.max_growth_mb:g} MB over {args.leak_requests}): **{verdict}**.",
            "",
        ]
    else:
        lines += [
            f"Growth over the mixed load: {growth:+.1f} MB over {served} requests. The leak "
            "check (100000 requests) did not run: `--leak-requests 100000` runs it, "
            "`--leak-model` picks a cheaper model's mix to reach the count sooner.",
            "",
        ]
    if compare:
        lines += floor_lines(compare, args)
    print("\n" + "\n".join(lines))
    if args.write:
        out = ROOT / "docs" / "load.md"
        out.write_text(
            "# Load, errors and memory under concurrent clients\n\nWritten by "
            "`bench/load.py --write` (its docstring describes the phases).\n\n" + "\n".join(lines)
        )
        print(f"wrote {out}", file=sys.stderr)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": name,
                    "tool": tool,
                    "rows": [asdict(r) for r in rows],
                    "compare": [asdict(r) for r in compare],
                    "memory_mb": memory,
                    "growth_mb": growth,
                    "unexpected": unexpected,
                },
                indent=1,
            )
        )
    return 0 if unexpected == 0 and growth_ok else 1


if __name__ == "__main__":
    sys.exit(main())
