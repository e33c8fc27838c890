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
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from _floor import THIS, Server, bare_server, floor, floor_lines, floor_only
from _load_report import fairness, paced
from _wrk import (
    MB,
    Row,
    RssSampler,
    Run,
    ServerCpu,
    Target,
    Wrk,
    rss_bytes,
    settle,
    start_phase,
    summarize,
    table,
    targets,
)

from service.testing import made_serve

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Results:
    """What the phases measured, in the order the report shows it."""

    rows: list[Row] = field(default_factory=list)
    compare: list[Row] = field(default_factory=list)
    warm: list[Run] = field(default_factory=list)
    alone: dict[str, Row] = field(default_factory=dict)
    paced_alone: dict[str, Row] = field(default_factory=dict)
    paced_rows: list[Row] = field(default_factory=list)
    capacity: float = 0.0  # cores the server used under the saturated mix: what it can use here
    memory: dict[str, float] = field(default_factory=dict)
    served: int = 0  # requests answered since the warm-up
    growth: float = 0.0  # MB of VmRSS from the warm-up to the end


def _mix_rows(phase: str, mix: list[Target], runs: list[Run], seconds: float) -> list[Row]:
    rows = [summarize(phase, t.label, [run], seconds) for t, run in zip(mix, runs, strict=True)]
    return [*rows, summarize(phase, "**all**", runs, seconds)]


class Bench:
    """The phases of a full run against one `made serve` (see the module's docstring)."""

    def __init__(self, wrk: Wrk, url: str, pid: int, default_model: str, args: argparse.Namespace) -> None:
        self.wrk = wrk
        self.url = url
        self.pid = pid
        self.default_model = default_model
        self.args = args
        self.out = Results()

    def mix_of(self, model_name: str) -> list[Target]:
        """The mix of requests on model_name, each checked to be answered 200."""
        manifest = httpx.get(f"{self.url}/models/{model_name}", timeout=30).json()
        mix = targets(manifest, model_name if model_name != self.default_model else None)
        for t in mix:
            r = httpx.post(self.url + t.path, json=t.body, timeout=120)
            if r.status_code != 200:
                sys.exit(f"{t.path} on {model_name} answered {r.status_code}: {r.text[:300]}")
        return mix

    def warm_up(self, mixes: list[list[Target]]) -> None:
        print(f"warm-up: {self.args.warmup:g} s", file=sys.stderr)
        for mix in mixes:
            self.out.warm += self.wrk.mix(self.url, mix, self.args.clients, self.args.warmup)

    def alone(self, mix: list[Target]) -> None:
        """Each endpoint alone with a quarter of the connections, for the fairness table."""
        args, out = self.args, self.out
        for t in mix:
            cpu = start_phase(self.pid, f"alone: {t.path}, {args.clients // 4} clients, {args.alone_seconds:g} s")
            run = self.wrk.finish(
                t.label, *self.wrk.start(self.url + t.path, t.body, args.clients // 4, args.alone_seconds)
            )
            out.alone[t.label] = summarize(f"alone, {args.alone_seconds:g} s", t.label, [run], run.seconds)
            out.alone[t.label].server_cpu = cpu.cores(run.seconds)
        out.rows += out.alone.values()

    def mixed(self, mix: list[Target]) -> None:
        args, out = self.args, self.out
        cpu = start_phase(self.pid, f"mixed load: {args.clients} clients, {args.duration:g} s")
        runs = self.wrk.mix(self.url, mix, args.clients, args.duration)
        out.rows += _mix_rows(f"mixed, {args.duration:g} s", mix, runs, time.perf_counter() - cpu.start)
        out.rows[-1].server_cpu = cpu.cores()
        out.capacity = out.rows[-1].server_cpu or 0.0
        out.served = out.rows[-1].requests
        out.memory[f"after the mixed load ({out.served} requests)"] = rss_bytes(self.pid) / MB

    def leak(self, leak_mix: list[Target], leak_name: str, rate: float) -> None:
        """Rounds of the mix until --leak-requests have been answered since the warm-up; `rate`:
        its req/s if measured already (0: not yet)."""
        args, out = self.args, self.out
        leak_runs: list[Run] = []
        cpu = ServerCpu(self.pid)
        while out.served < args.leak_requests:
            left = (args.leak_requests - out.served) / rate if rate else 0.0
            print(
                f"leak check: {out.served} of {args.leak_requests} requests answered"
                + (f", about {left:.0f} s to go" if rate else ""),
                file=sys.stderr,
            )
            # rounds of at most 30 s, the last sized to end near the count
            batch = self.wrk.mix(self.url, leak_mix, args.clients, min(max(left + 1, 5), 30))
            if not sum(r.requests for r in batch):
                sys.exit("the server answered no request in a round of the leak check")
            leak_runs += batch
            out.served += sum(r.requests for r in batch)
            rate = sum(r.requests for r in leak_runs) / (time.perf_counter() - cpu.start)
        seconds = time.perf_counter() - cpu.start
        out.memory[f"after the leak check ({out.served} requests)"] = rss_bytes(self.pid) / MB
        if not leak_runs:  # the mixed load alone answered the count
            return
        # the leak check's own rounds, merged per endpoint
        per_target = [[r for r in leak_runs if r.endpoint == t.label] for t in leak_mix]
        phase = f"leak check on '{leak_name}', {seconds:.0f} s"
        out.rows += [summarize(phase, t.label, rs, seconds) for t, rs in zip(leak_mix, per_target, strict=True)]
        out.rows.append(summarize(phase, "**all**", leak_runs, seconds))
        out.rows[-1].server_cpu = cpu.cores(seconds)

    def pacing(self, label: str, rate: float) -> tuple[int, float]:
        """Connections and think time (ms) that offer `rate` req/s: connections x 1 / (think +
        latency). A think time stays under uvicorn's 5 s keep-alive (an idle connection is closed
        after it), so a slow endpoint gets fewer connections; latency at this load is taken as
        its service time, about connections alone / req/s alone / 4 (a guess: the table shows
        the req/s each endpoint really offered)."""
        quarter = self.args.clients // 4
        service_ms = 1000 * quarter / self.out.alone[label].rps / 4
        n = max(1, min(quarter, math.floor(rate * (4.0 + service_ms / 1000))))
        return n, max(0.0, 1000 * n / rate - service_ms)

    def paced_run(self, t: Target, connections: int, seconds: float, think_ms: float) -> tuple[Run, float]:
        """One endpoint paced alone: its run and the server's CPU time during it."""
        cpu = ServerCpu(self.pid)
        run = self.wrk.finish(
            t.label, *self.wrk.start(self.url + t.path, t.body, connections, seconds, think_ms=think_ms)
        )
        return run, cpu.used()

    def paced(self, mix: list[Target]) -> None:
        """Each endpoint paced alone, then the four paced together. What a paced request costs
        the server is measured first: paced requests come one or two at a time and share engine
        calls less than closed-loop ones, so each endpoint's CPU per request is measured paced
        alone (at paced_load / 4 of its alone req/s, --calibrate-seconds), and its rate set to
        use paced_load / 4 of the capacity."""
        args, out = self.args, self.out
        cost: dict[str, float] = {}
        for t in mix:
            settle(self.pid)
            n, think_ms = self.pacing(t.label, args.paced_load / 4 * out.alone[t.label].rps)
            print(f"paced, calibrating: {t.path}, {args.calibrate_seconds:g} s", file=sys.stderr)
            run, cpu = self.paced_run(t, n, args.calibrate_seconds, think_ms)
            cost[t.label] = cpu / max(1, run.requests)
        think: dict[str, float] = {}
        conns: dict[str, int] = {}
        for t in mix:
            conns[t.label], think[t.label] = self.pacing(t.label, args.paced_load / 4 * out.capacity / cost[t.label])
        for t in mix:
            start_phase(
                self.pid,
                f"paced alone: {t.path}, {conns[t.label]} connections, think {think[t.label]:.0f} ms, "
                f"{args.duration:g} s",
            )
            run, cpu = self.paced_run(t, conns[t.label], args.duration, think[t.label])
            row = out.paced_alone[t.label] = summarize("paced alone", t.label, [run], run.seconds)
            row.server_cpu, row.think_ms, row.connections = cpu / run.seconds, think[t.label], conns[t.label]
        cpu = start_phase(self.pid, f"paced mix: {args.duration:g} s")
        runs = self.wrk.mix(self.url, mix, args.clients, args.duration, think_ms=think, connections=conns)
        out.paced_rows = _mix_rows("paced mix", mix, runs, time.perf_counter() - cpu.start)
        out.paced_rows[-1].server_cpu = cpu.cores()
        out.rows += [*out.paced_alone.values(), *out.paced_rows]

    def floors(self, models: list[tuple[str, dict[str, object]]]) -> None:
        settle(self.pid)
        with bare_server() as bare:
            for model_name, body in models:
                self.out.compare += floor(
                    self.wrk, [Server(THIS, self.url, self.pid), bare], model_name, body, self.args
                )


def run_phases(bench: Bench, name: str) -> None:
    """Every phase the arguments ask for, on model `name`, into bench.out."""
    args, out, pid = bench.args, bench.out, bench.pid
    out.memory["after start (models loaded, before any request)"] = rss_bytes(pid) / MB
    mix = bench.mix_of(name)
    leak_name = args.leak_model or name
    leak_mix = bench.mix_of(leak_name) if args.leak_requests > 0 else mix
    bench.warm_up([mix] if leak_mix is mix else [mix, leak_mix])
    rss_start = rss_bytes(pid)
    out.memory["after the warm-up (every endpoint)"] = rss_start / MB
    if args.alone_seconds > 0:
        bench.alone(mix)
    with RssSampler(pid) as sampler:
        bench.mixed(mix)
        if args.leak_requests > 0:
            bench.leak(leak_mix, leak_name, out.rows[-1].rps if leak_mix is mix else 0.0)
        if args.paced_load > 0 and out.alone:
            bench.paced(mix)
    out.growth = (rss_bytes(pid) - rss_start) / MB
    out.memory["highest sample (once a second)"] = (
        max(s for _, s in sampler.samples) / MB if sampler.samples else float("nan")
    )
    out.memory["peak (VmHWM)"] = rss_bytes(pid, "VmHWM") / MB
    # The floor, on each model of the run: the main one, and the leak check's if another.
    floors = [(name, mix[0].body)]
    if leak_name != name and args.leak_requests > 0:
        floors.append((leak_name, leak_mix[0].body))
    for extra in args.floor_model or []:
        if extra not in {n for n, _ in floors}:
            floors.append((extra, bench.mix_of(extra)[0].body))
    if args.compare_seconds > 0:
        bench.floors(floors)


def report(out: Results, args: argparse.Namespace, header: str) -> list[str]:
    unexpected = sum(r.unexpected for r in out.rows + out.compare) + sum(r.unexpected for r in out.warm)
    lines = [
        header,
        "",
        *table(out.rows),
        "",
        f"Unexpected errors (any status but 200, timeouts, broken connections), warm-up included: **{unexpected}**.",
        "",
        *fairness(out.alone, [r for r in out.rows if r.phase.startswith("mixed")]),
        *paced(out.paced_alone, out.paced_rows, args.paced_load, out.alone, out.capacity),
        "Resident memory of the server process (VmRSS from /proc/PID/status):",
        "",
        "| reading | MB |",
        "|---|---:|",
        *(f"| {k} | {v:.1f} |" for k, v in out.memory.items()),
        "",
    ]
    if args.leak_requests > 0:
        verdict = "PASS" if out.growth < args.max_growth_mb else "FAIL"
        lines.append(
            f"Growth from the warm-up to the end: {out.growth:+.1f} MB over {out.served} requests "
            f"(bound {args.max_growth_mb:g} MB over {args.leak_requests}): **{verdict}**."
        )
    else:
        lines.append(
            f"Growth over the mixed load: {out.growth:+.1f} MB over {out.served} requests. The leak "
            "check (100000 requests) did not run: `--leak-requests 100000` runs it, "
            "`--leak-model` picks a cheaper model's mix to reach the count sooner."
        )
    lines.append("")
    return lines + (floor_lines(out.compare, args) if out.compare else [])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
        "--baseline",
        type=Path,
        action="append",
        help="with --floor-only: also run `made serve` of this checkout (e.g. a worktree of main) in every round "
        "(repeatable); its own model_store if it has one",
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.store.is_dir():
        sys.exit(f"model store {args.store} does not exist (make models, or pass --store)")
    if shutil.which("wrk") is None:
        print("bench/load.py skipped: the load generator wrk is not installed (apt-get install wrk)")
        return 0
    if args.floor_only:
        return floor_only(args)
    if args.baseline:
        sys.exit("--baseline runs with --floor-only")
    if args.clients % 4:
        sys.exit("--clients must be a multiple of 4 (a quarter per endpoint)")
    version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()
    tool = f"wrk {version[1].split('/')[-1].split('-')[0]}" if len(version) > 1 else "wrk"
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, made_serve(args.store, env={"MADE_LOG_LEVEL": "INFO"}) as server:
        info = httpx.get(f"{server.url}/models", timeout=30).json()
        name = args.model or info["default"]
        model = next(m for m in info["models"] if m["name"] == name)
        bench = Bench(Wrk(Path(tmp)), server.url, server.proc.pid, info["default"], args)
        run_phases(bench, name)
    out = bench.out
    shown_args = [
        a for i, a in enumerate(sys.argv[1:]) if a != "--json" and (i == 0 or sys.argv[i] != "--json")
    ]  # the command as rerun, less where the JSON went
    header = (
        f"`bench/load.py {' '.join(shown_args)}`: model '{name}' (D={model['dims']}, "
        f"K={model['n_masks']}) from `{args.store.name}`, one `made serve` process "
        "(MADE_LOG_LEVEL=INFO, every other setting at its default), "
        f"{args.clients} concurrent connections ({args.clients // 4} per endpoint in the mix); "
        f"load generator {tool} on the same machine ({os.cpu_count()} CPUs shared with other "
        f"work: load average {load_before:.1f} before the run), {time.strftime('%Y-%m-%d')}."
    )
    lines = report(out, args, header)
    print("\n" + "\n".join(lines))
    if args.write:
        path = ROOT / "docs" / "load.md"
        path.write_text(
            "# Load, errors and memory under concurrent clients\n\nWritten by "
            "`bench/load.py --write` (its docstring describes the phases).\n\n" + "\n".join(lines)
        )
        print(f"wrote {path}", file=sys.stderr)
    unexpected = sum(r.unexpected for r in out.rows + out.compare) + sum(r.unexpected for r in out.warm)
    if args.json:
        results = {"model": name, "tool": tool, "rows": [asdict(r) for r in out.rows]}
        results |= {"compare": [asdict(r) for r in out.compare], "memory_mb": out.memory}
        results |= {"growth_mb": out.growth, "unexpected": unexpected}
        args.json.write_text(json.dumps(results, indent=1))
    growth_ok = args.leak_requests <= 0 or out.growth < args.max_growth_mb
    return 0 if unexpected == 0 and growth_ok else 1


if __name__ == "__main__":
    sys.exit(main())
