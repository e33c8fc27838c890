"""The load generator of bench/load.py: wrk driven by a Lua script that writes its counts and a
quantile grid as JSON, the requests it sends, the rows of the tables, and readings of a server
process (CPU time, resident memory) from /proc.

wrk rather than a Python client: a Python client on the same machine saturates long before the
server and measures itself. A file starting with "_" is not run by bench/run_all.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


class ServerCpu:
    """The CPU a server has used since this was made, in cores (CPU seconds a wall second)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = time.perf_counter()
        self.cpu = cpu_seconds(pid)

    def used(self) -> float:
        """CPU seconds used so far."""
        return cpu_seconds(self.pid) - self.cpu

    def cores(self, wall_s: float | None = None) -> float:
        """CPU seconds used per second of `wall_s` (default: the wall time so far)."""
        return self.used() / (time.perf_counter() - self.start if wall_s is None else wall_s)


def start_phase(pid: int, message: str) -> ServerCpu:
    """A phase of a bench on the server `pid`: started once it is idle (settle), said on
    stderr, its CPU counted from then."""
    settle(pid)
    print(message, file=sys.stderr)
    return ServerCpu(pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
