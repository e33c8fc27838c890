"""The floor of bench/load.py: POST /logprob with one row on `made serve` against a bare FastAPI
endpoint (bench/_bare_app.py) that parses a body of the same shape and answers a constant, in
alternating rounds with every server up.

Only the ratio of a round means much on a machine whose CPUs are shared: each server of a round
saw the same machine within seconds, so CPU stolen by other work falls on all of them alike; the
absolute requests per second do not carry from one run to the next. --baseline adds `made serve`
from another checkout (a worktree of an earlier commit, say) to every round, so that a change's
cost is measured side by side, in the same run, rather than against figures of another day.
A file starting with "_" is not run by bench/run_all.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _wrk import Row, Wrk, start_phase, summarize, table, targets

from service.testing import free_port, made_serve

ROOT = Path(__file__).resolve().parent.parent
BARE = "bare FastAPI (`bench/_bare_app.py`)"
THIS = "`made serve`"
READY_S = 600.0  # loading every model of the store, on a machine other work keeps busy


@dataclass
class Server:
    label: str
    url: str
    pid: int


@contextmanager
def bare_server() -> Iterator[Server]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "_bare_app.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
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
        yield Server(BARE, f"http://127.0.0.1:{port}", proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def baseline_server(checkout: Path, store: Path) -> Iterator[Server]:
    """`made serve` of another checkout: its packages first on PYTHONPATH (the `made` script's
    own directory comes before it, the working tree's editable install after), its own
    model_store when it has one (an earlier store format), else `store`."""
    own = checkout / "model_store"
    env = {"MADE_LOG_LEVEL": "INFO", "PYTHONPATH": str(checkout.resolve())}
    with made_serve(own if own.is_dir() else store, env=env, ready_timeout=READY_S) as server:
        yield Server(f"`made serve` of {checkout}", server.url, server.proc.pid)


def floor(wrk: Wrk, servers: list[Server], model_name: str, body: dict[str, object], args: Any) -> list[Row]:
    """POST /logprob with one row on each server in turn, for --floor-rounds rounds of
    --compare-seconds each (A, B, C, A, B, C, ...), every server up throughout. Rows in that order."""
    for server in servers:
        wrk.one(server.url + "/logprob", body, args.clients, 2, "warm-up")
    rows = []
    for i in range(args.floor_rounds):
        for server in servers:
            cpu = start_phase(
                server.pid,
                f"floor, round {i + 1} of {args.floor_rounds}: /logprob on {server.label} ({model_name}), "
                f"{args.compare_seconds:g} s",
            )
            run = wrk.one(server.url + "/logprob", body, args.clients, args.compare_seconds, server.label)
            rows.append(
                summarize(f"/logprob, 1 row of '{model_name}', round {i + 1}", server.label, [run], run.seconds)
            )
            rows[-1].server_cpu = cpu.cores()
    return rows


def floor_ratios(compare: list[Row]) -> dict[str, dict[str, list[float]]]:
    """Per model, per comparison ("A / B"), each round's req/s of A over B's in the same round:
    every `made serve` over the bare app, and this checkout's over each baseline's."""
    rounds: dict[str, list[Row]] = {}
    for row in compare:
        rounds.setdefault(row.phase, []).append(row)
    ratios: dict[str, dict[str, list[float]]] = {}
    for phase, rows in rounds.items():
        model = phase.split(" of ")[-1].rsplit(", round", 1)[0]
        rps = {r.endpoint: r.rps for r in rows}
        pairs = [(r.endpoint, BARE) for r in rows if r.endpoint != BARE and BARE in rps]
        pairs += [(THIS, r.endpoint) for r in rows if r.endpoint not in (THIS, BARE) and THIS in rps]
        for a, b in pairs:
            ratios.setdefault(model, {}).setdefault(f"{a} / {b}", []).append(rps[a] / rps[b])
    return ratios


def floor_lines(compare: list[Row], args: Any) -> list[str]:
    n_servers = len({r.endpoint for r in compare})
    lines = [
        f"Single-row /logprob on {n_servers} servers, among them a bare FastAPI endpoint that parses the "
        f"same body and answers a constant ({args.compare_seconds:g} s each, {args.clients} connections, "
        f"the servers in turn for {args.floor_rounds} rounds, all up throughout):",
        "",
        *table(compare),
        "",
        "Requests per second of one server over another's in the same round (median of the rounds; lowest to highest):",
        "",
        "| model | servers | ratio | rounds |",
        "|---|---|---:|---|",
    ]
    for model, pairs in floor_ratios(compare).items():
        for pair, r in pairs.items():
            spread = ", ".join(f"{v:.2f}" for v in r)
            lines.append(f"| {model} | {pair} | **{float(np.median(r)):.2f}** | {spread} |")
    return [*lines, ""]


def floor_only(args: Any) -> int:
    """--floor-only: the floor alone, on --model (default mushrooms, the cheapest model to run),
    this checkout's `made serve`, each --baseline's and the bare app; printed (and --json)."""
    model_name = args.model or "mushrooms"
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        server = stack.enter_context(made_serve(args.store, env={"MADE_LOG_LEVEL": "INFO"}, ready_timeout=READY_S))
        servers = [Server(THIS, server.url, server.proc.pid)]
        servers += [stack.enter_context(baseline_server(b, args.store)) for b in args.baseline or []]
        servers.append(stack.enter_context(bare_server()))
        manifest = httpx.get(f"{server.url}/models/{model_name}", timeout=30).json()
        body = targets(manifest, model_name)[0].body
        for s in servers:
            r = httpx.post(s.url + "/logprob", json=body, timeout=120)
            if r.status_code != 200:
                sys.exit(f"/logprob on {model_name} of {s.label} answered {r.status_code}: {r.text[:300]}")
        compare = floor(Wrk(Path(tmp)), servers, model_name, body, args)
    unexpected = sum(r.unexpected for r in compare)
    shown = " ".join(a for a in sys.argv[1:])
    print(f"\n`bench/load.py {shown}`, {time.strftime('%Y-%m-%d')}:\n")
    print("\n".join(floor_lines(compare, args)))
    print(f"Unexpected errors: {unexpected}.")
    if args.json:
        args.json.write_text(
            json.dumps({"compare": [asdict(r) for r in compare], "ratios": floor_ratios(compare)}, indent=1)
        )
    return 0 if unexpected == 0 else 1
