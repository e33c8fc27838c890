"""Dynamic batching against a real `made serve`: /sample throughput, one at a time vs concurrent.

    .venv/bin/python bench/batching.py [--store model_store] [--model NAME] [--clients 64]

Starts `made serve` on a free loopback port and sends POST /sample {"n": 1} requests:
  1. sequentially (one client, each request waits for the previous answer);
  2. from --clients concurrent clients, batching on (MADE_BATCH_DELAY_MS, default 2);
  3. the same, batching off (MADE_MAX_BATCH=1: every request is its own engine call),
     which separates the gain of batching from that of mere concurrency.
The load generator is `hey` when installed (apt-get install hey), else an asyncio httpx one.
Prints a table and the ratio of (2) to (1); exits 1 if it is under --target (default 10).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from service.testing import made_serve

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    mode: str
    clients: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


@contextmanager
def server(store: Path, env: dict[str, str]) -> Iterator[str]:
    try:
        with made_serve(store, env={"MADE_LOG_LEVEL": "WARNING", **env}) as proc:
            yield proc.url
    except RuntimeError as exc:
        sys.exit(str(exc))


def run_hey(url: str, body: str, clients: int, requests: int, mode: str) -> Result:
    requests -= requests % clients  # hey sends requests // clients per client
    out = subprocess.run(
        [
            "hey",
            "-n",
            str(requests),
            "-c",
            str(clients),
            "-m",
            "POST",
            "-T",
            "application/json",
            "-d",
            body,
            "-t",
            "60",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def grab(pattern: str, default: float = float("nan")) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else default

    ok = int(grab(r"\[200\]\s+(\d+) responses", 0))
    return Result(
        mode,
        clients,
        requests,
        grab(r"Total:\s+([\d.]+) secs"),
        grab(r"Requests/sec:\s+([\d.]+)"),
        1000 * grab(r"50%+ in ([\d.]+) secs"),
        1000 * grab(r"99%+ in ([\d.]+) secs"),
        requests - ok,
    )


async def _run_httpx(url: str, body: str, clients: int, requests: int, mode: str) -> Result:
    latencies: list[float] = []
    errors = 0
    remaining = requests
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                t = time.perf_counter()
                r = await http.post(url, content=body, headers={"Content-Type": "application/json"})
                latencies.append(time.perf_counter() - t)
                errors += r.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - start
    latencies.sort()
    return Result(
        mode,
        clients,
        requests,
        seconds,
        requests / seconds,
        1000 * latencies[len(latencies) // 2],
        1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        errors,
    )


def load(tool: str, url: str, body: str, clients: int, requests: int, mode: str) -> Result:
    if tool == "hey":
        return run_hey(url, body, clients, requests, mode)
    return asyncio.run(_run_httpx(url, body, clients, requests, mode))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default=None, help="default: the server's default model")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000, help="concurrent runs' requests")
    parser.add_argument("--sequential", type=int, default=150, help="sequential run's requests")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="MADE_BATCH_DELAY_MS")
    parser.add_argument("--tool", choices=["auto", "hey", "httpx"], default="auto")
    parser.add_argument("--target", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--write", action="store_true", help="write docs/batching-bench.md")
    args = parser.parse_args()
    if not args.store.is_dir():
        sys.exit(f"model store {args.store} does not exist (make models, or pass --store)")
    tool = ("hey" if shutil.which("hey") else "httpx") if args.tool == "auto" else args.tool
    body = json.dumps({"n": 1, **({"model": args.model} if args.model else {})})

    results: list[Result] = []
    on = {"MADE_BATCH_DELAY_MS": str(args.delay_ms)}
    with server(args.store, on) as base:
        url = f"{base}/sample"
        model = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=60).json()["model"]
        load(tool, url, body, 8, 200, "warm-up")
        results.append(load(tool, url, body, 1, args.sequential, "sequential"))
        results.append(load(tool, url, body, args.clients, args.requests, "concurrent, batching"))
    with server(args.store, {**on, "MADE_MAX_BATCH": "1"}) as base:
        url = f"{base}/sample"
        load(tool, url, body, 8, 100, "warm-up")
        results.append(load(tool, url, body, args.clients, args.requests // 4, "concurrent, batching off"))

    ratio = results[1].rps / results[0].rps
    verdict = "PASS" if ratio >= args.target else "FAIL"
    lines = [
        f"POST /sample {{\"n\": 1}} on model '{model}' from {args.store.name} (load generator: "
        f"{tool}, MADE_BATCH_DELAY_MS={args.delay_ms:g}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d')})",
        "",
        "| mode | clients | requests | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r.mode} | {r.clients} | {r.requests} | {r.rps:.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} |"
            for r in results
        ),
        "",
        f"Throughput of {args.clients} concurrent clients with batching / sequential: "
        f"**{ratio:.1f}x** (target >= {args.target:g}x: {verdict}); batching on / off at "
        f"{args.clients} clients: {results[1].rps / results[2].rps:.1f}x.",
    ]
    print("\n" + "\n".join(lines))
    if args.write:
        out = ROOT / "docs" / "batching-bench.md"
        out.write_text(
            "# Dynamic batching benchmark\n\nWritten by `bench/batching.py --write`.\n\n" + "\n".join(lines) + "\n"
        )
        print(f"wrote {out}", file=sys.stderr)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"model": model, "tool": tool, "ratio": ratio, "results": [asdict(r) for r in results]}, indent=1
            )
        )
    return 0 if ratio >= args.target and not any(r.errors for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
