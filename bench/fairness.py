"""Fair turns within one endpoint: a one-row /logprob beside 300-row ones, against another checkout.

    .venv/bin/python bench/fairness.py [--baseline /work/fairbase] [--heavy-clients 1,2]
        [--seconds 15] [--rounds 2] [--write]

One `made serve` (this checkout's model store, every setting at its default) per checkout, round
and number of heavy clients, alternated. Heavy clients each send POST /logprob of the first --rows
(300) diamonds test rows with carat and x unknown (rows that need the particle filter: seconds of
engine time each) back to back; one probe sends a one-row exact /logprob (milliseconds) every
--period seconds (0.1) and times it. The probe's latency alone (20 calls before the heavy clients
start) and beside them (for --seconds, one sent every --period whether or not the last has been
answered, as independent clients would) is the table: before service.core.scheduling's long lanes, the one-row call
queued behind the 300-row ones in /logprob's single lane. The baseline runs with PYTHONPATH on
it (same Python, same store). Every answer must be 200. --write puts the tables in
docs/fairness.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import math
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import data_dir, publish  # noqa: E402
from service.testing import made_serve  # noqa: E402

DOC = ROOT / "docs" / "fairness.md"
CATEGORIES = ("cut", "color", "clarity")


@dataclass
class Run:
    checkout: str
    heavy_clients: int
    alone: list[float] = field(default_factory=list)
    beside: list[float] = field(default_factory=list)
    heavy: list[float] = field(default_factory=list)
    refused: int = 0  # one-row calls answered 503 (MADE_MAX_QUEUE)


def bodies(rows: int) -> tuple[bytes, bytes]:
    """(heavy, cheap) JSON bodies: `rows` test rows with carat and x unknown; one complete row."""
    with (data_dir() / "tables" / "diamonds_test.csv").open(newline="") as f:
        table = list(csv.DictReader(f))

    def record(row: dict[str, str], unknown: tuple[str, ...] = ()) -> dict[str, object]:
        return {k: None if k in unknown else v if k in CATEGORIES else float(v) for k, v in row.items()}

    heavy = {"model": "diamonds", "records": [record(r, ("carat", "x")) for r in table[:rows]]}
    cheap = {"model": "diamonds", "records": [record(table[rows + 100])]}
    return json.dumps(heavy).encode(), json.dumps(cheap).encode()


def post(url: str, body: bytes) -> float:
    """Seconds to the answer; NaN for a 503 (the endpoint's MADE_MAX_QUEUE places all taken)."""
    request = urllib.request.Request(url + "/logprob", body, {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            answer.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return math.nan
        raise
    return time.perf_counter() - start


def measure(
    checkout: Path, label: str, heavy_clients: int, seconds: float, period: float, heavy: bytes, cheap: bytes
) -> Run:
    run = Run(label, heavy_clients)
    env = {"MADE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(checkout)}
    with made_serve(ROOT / "model_store", env=env) as server:
        post(server.url, cheap)  # the model's first call
        run.alone = [post(server.url, cheap) for _ in range(20)]
        stop = threading.Event()
        errors: list[BaseException] = []

        def heavy_client() -> None:
            try:
                while not stop.is_set():
                    run.heavy.append(post(server.url, heavy))
            except BaseException as exc:  # reported after the run
                errors.append(exc)

        threads = [threading.Thread(target=heavy_client) for _ in range(heavy_clients)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # the heavy calls are running
        with concurrent.futures.ThreadPoolExecutor(256) as pool:  # open loop: one every `period` s
            start, sent = time.monotonic(), []
            for k in range(int(seconds / period)):
                time.sleep(max(0.0, start + period * k - time.monotonic()))
                sent.append(pool.submit(post, server.url, cheap))
            answered = [f.result() for f in sent]
            run.beside = [x for x in answered if not math.isnan(x)]
            run.refused = len(answered) - len(run.beside)
        stop.set()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"a heavy client failed: {errors[0]}")
    return run


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=Path("/work/fairbase"), help="checkout to compare with")
    parser.add_argument("--heavy-clients", default="1,2", help="comma-separated numbers of heavy clients")
    parser.add_argument("--rows", type=int, default=300, help="rows of each heavy request")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds the probe runs beside the heavy clients")
    parser.add_argument("--period", type=float, default=0.1, help="seconds between one-row calls")
    parser.add_argument("--rounds", type=int, default=2, help="alternated runs of each checkout")
    parser.add_argument("--write", action="store_true", help=f"save the document to {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    heavy, cheap = bodies(args.rows)
    checkouts = [("this checkout", ROOT), (f"baseline ({args.baseline})", args.baseline)]
    if not (args.baseline / "service").is_dir():  # a fresh clone: this checkout alone, no ratio
        print(f"no baseline checkout at {args.baseline}: measuring this checkout alone", file=sys.stderr)
        checkouts = checkouts[:1]
    counts = [int(c) for c in args.heavy_clients.split(",")]
    runs: list[Run] = []
    for _ in range(args.rounds):
        for clients in counts:
            for label, checkout in checkouts:
                runs.append(measure(checkout, label, clients, args.seconds, args.period, heavy, cheap))
                print(f"{label}, {clients} heavy: p90 {1e3 * quantile(runs[-1].beside, 0.9):.0f} ms", file=sys.stderr)
    lines = [
        "# Fair turns within one endpoint",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} by `bench/fairness.py --heavy-clients {args.heavy_clients} "
        f"--seconds {args.seconds:g} --period {args.period:g} --rounds {args.rounds}` on {os.cpu_count()} cores:",
        f"a one-row exact POST /logprob (diamonds) sent every {1e3 * args.period:.0f} ms (open loop) beside",
        f"clients sending {args.rows}-row /logprob requests with two cells of each row unknown (the",
        "particle filter), back to back; the baseline is",
        "the same server before an endpoint's long calls took turns in a lane of their own",
        "(service.core.scheduling). Latencies of the one-row call in ms, pooled over the rounds, of",
        "those answered 200 (a call past the endpoint's MADE_MAX_QUEUE places is refused at once",
        "with 503 and counted apart);",
        "heavy: the 300-row calls answered and their median seconds.",
        "",
        "| server | heavy clients | one row alone p50 | beside: p50 | p90 | p99 | max | refused (503) | heavy calls "
        "| heavy median s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[tuple[str, int], float] = {}
    answered: dict[tuple[str, int], int] = {}
    for clients in counts:
        for label, _ in checkouts:
            mine = [r for r in runs if r.checkout == label and r.heavy_clients == clients]
            alone = [x for r in mine for x in r.alone]
            beside = [x for r in mine for x in r.beside]
            done = [x for r in mine for x in r.heavy]
            summary[(label, clients)] = quantile(beside, 0.9)
            answered[(label, clients)] = len(done)
            lines.append(
                f"| {label} | {clients} | {1e3 * statistics.median(alone):.0f} | "
                f"{1e3 * quantile(beside, 0.5):.0f} | {1e3 * quantile(beside, 0.9):.0f} | "
                f"{1e3 * quantile(beside, 0.99):.0f} | {1e3 * max(beside):.0f} | "
                f"{sum(r.refused for r in mine)} of {sum(r.refused for r in mine) + len(beside)} | {len(done)} | "
                f"{statistics.median(done):.2f} |"
            )
    lines.append("")
    for clients in counts if len(checkouts) > 1 else ():
        ours, theirs = (checkouts[0][0], clients), (checkouts[1][0], clients)
        this, base = summary[ours], summary[theirs]
        lines.append(
            f"With {clients} heavy client{'s' * (clients != 1)}: the one-row call's 90th percentile "
            f"{1e3 * this:.0f} ms against {1e3 * base:.0f} ms, {base / this:.0f}x lower. The cost: 300-row calls "
            f"answered {answered[ours]} against {answered[theirs]}: the one-row calls now run beside them on the "
            "other core instead of waiting, and long lanes hold at most all threads but one (here one of two), "
            "where the baseline's single lane ran two long calls at once whenever the one-row calls had "
            "brought its mean cost below LONG_CALL_S."
        )
        lines.append("")
    publish("\n".join(lines), DOC, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
