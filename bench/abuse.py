"""The abuse table of docs/operations.md: each request that once took the server down, sent to a
real `made serve` on the shipped store under an address-space limit, at its size and 10x.

    .venv/bin/python bench/abuse.py [--store model_store] [--as-bytes 4000000000] [--write]

For every request: the status, the seconds to answer, the server's RSS growth over its idle
state (the peak of VmRSS read every 10 ms while the request runs), and /healthz's latency while
it runs (polled every 10 ms from another client: median, p99 and worst). Then SIGTERM with 16
queued /impute requests (MADE_THREADS=1, MADE_SHUTDOWN_TIMEOUT=5): their statuses and the
seconds until the process is gone. Targets: no 5xx or crash, RSS growth <= 300 MB,
an answer within MADE_REQUEST_TIMEOUT, /healthz p99 <= 250 ms; every one exited within
MADE_SHUTDOWN_TIMEOUT + 5 s. --write puts the tables into docs/operations.md between its
abuse markers.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.testing import made_serve  # noqa: E402

DOC = ROOT / "docs" / "operations.md"
BEGIN, END = "<!-- abuse:begin (bench/abuse.py --write) -->", "<!-- abuse:end -->"
JSON = {"Content-Type": "application/json"}
CSV = {"Content-Type": "text/csv"}
MNIST_ROW = [None] * 392 + [0] * 392

Request = tuple[str, str, bytes, dict[str, str]]  # (name, path, body, headers)


def attacks(scale: int) -> list[Request]:
    """The requests of the issue's table; `scale` multiplies what grows (keys, rows, cells)."""

    def js(obj: object) -> bytes:
        return json.dumps(obj).encode()

    s = scale
    return [
        (
            f"{250_000 * s:,} unknown keys",
            "/logprob",
            ("{" + ",".join(f'"k{i}":0' for i in range(250_000 * s)) + "}").encode(),
            JSON,
        ),
        (
            f"/logprob 1 row, 392 missing, n_importance {10_000 * s:,}",
            "/logprob",
            js({"x": [MNIST_ROW], "n_importance": min(100_000, 10_000 * s)}),
            JSON,
        ),
        (
            f"/logprob {25 * s} rows x n_importance 800",
            "/logprob",
            js({"x": [MNIST_ROW] * (25 * s), "n_importance": 800}),
            JSON,
        ),
        (
            "diamonds 2 records, n_importance 100,000",
            "/logprob",
            js({"model": "diamonds", "records": [{"price": 500}, {"carat": 1.0}], "n_importance": 100_000}),
            JSON,
        ),
        (f"CSV of {100_000 * s:,} rows", "/logprob?model=diamonds", b"carat\n" + b"0.3\n" * (100_000 * s), CSV),
        (f"CSV of {1_600_000 * s:,} empty columns", "/logprob?model=diamonds", b"," * (1_600_000 * s) + b"\n", CSV),
        (f"CSV cell of {131_073 * s:,} characters", "/logprob?model=diamonds", b"carat\n" + b"9" * 131_073 * s, CSV),
        (
            f"records of {40_000 * s:,} numbers",
            "/logprob",
            b'{"model":"diamonds","records":[' + b",".join([b"1"] * (40_000 * s)) + b"]}",
            JSON,
        ),
        (
            f"/v2 inputs of {40_000 * s:,} numbers",
            "/v2/models/binarized-mnist/infer",
            b'{"inputs":[' + b",".join([b"1"] * (40_000 * s)) + b"]}",
            JSON,
        ),
        (
            f"x_b64 of shape [1, {19_200_000 * s:,}]",
            "/logprob",
            js({"x_b64": base64.b64encode(bytes(2_400_000 * s)).decode(), "shape": [1, 19_200_000 * s]}),
            JSON,
        ),
        (
            f"x of {100_000 * s:,} rows of one value",
            "/logprob",
            b'{"x":[' + b",".join([b"[0]"] * (100_000 * s)) + b"]}",
            JSON,
        ),
        (f"/sample n of {500 * s:,} digits", "/sample", b'{"n": ' + b"9" * (500 * s) + b"}", JSON),
        (
            f"/impute {20 * s} rows x 1000 draws",
            "/impute",
            js({"x": [MNIST_ROW] * (20 * s), "n_importance": 1000}),
            JSON,
        ),
        (f"/denoise {100 * s} rows", "/denoise", js({"x": [[0] * 784] * (100 * s), "eps": 0.1}), JSON),
        (f"/sample n={1000 * s:,}", "/sample", js({"n": 1000 * s}), JSON),
        (
            "diamonds given carat 1e10",
            "/sample",
            js({"model": "diamonds", "n": 10 * s, "given": {"carat": 1e10}}),
            JSON,
        ),
    ]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(url: str, pid: int, send: Callable[[httpx.Client], httpx.Response]) -> dict[str, object]:
    idle = rss_mb(pid)
    probes: list[float] = []
    peak = [idle]
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while not done.is_set():
                start = time.perf_counter()
                c.get("/healthz")
                probes.append(time.perf_counter() - start)
                peak[0] = max(peak[0], rss_mb(pid))
                time.sleep(0.01)

    t = threading.Thread(target=probe)
    t.start()
    with httpx.Client(base_url=url, timeout=300) as c:
        start = time.perf_counter()
        try:
            r = send(c)
            status = r.status_code
        except httpx.TransportError as exc:
            status = f"no answer ({type(exc).__name__})"
        seconds = time.perf_counter() - start
    done.set()
    t.join()
    probes.sort()
    return {
        "status": status,
        "seconds": seconds,
        "growth": max(peak[0], rss_mb(pid)) - idle,
        "p50": statistics.median(probes) if probes else 0.0,
        "p99": probes[min(len(probes) - 1, int(0.99 * len(probes)))] if probes else 0.0,
        "worst": probes[-1] if probes else 0.0,
    }


def sigterm(store: Path, as_bytes: int) -> dict[str, object]:
    env = {"MADE_SHUTDOWN_TIMEOUT": "5", "MADE_THREADS": "1", "OMP_NUM_THREADS": "1"}
    statuses: list[object] = []
    with made_serve(store, env=env, address_space=as_bytes) as s:

        def send(i: int) -> None:
            try:
                r = httpx.post(f"{s.url}/impute", json={"x": [MNIST_ROW], "seed": i}, timeout=120)
                statuses.append(r.status_code)
            except httpx.TransportError as exc:
                statuses.append(type(exc).__name__)

        clients = [threading.Thread(target=send, args=(i,)) for i in range(16)]
        for c in clients:
            c.start()
        while "made_requests_in_flight 17.0" not in httpx.get(f"{s.url}/metrics").text:
            time.sleep(0.05)
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(timeout=60)
        gone = time.monotonic() - start
        for c in clients:
            c.join()
    return {"statuses": statuses, "gone": gone}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--as-bytes", type=int, default=4_000_000_000)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows = []
    with made_serve(args.store, env={"OMP_NUM_THREADS": "1"}, address_space=args.as_bytes) as s:
        idle = rss_mb(s.proc.pid)
        for scale in (1, 10):
            for name, path, body, headers in attacks(scale):
                m = measure(s.url, s.proc.pid, lambda c, p=path, b=body, h=headers: c.post(p, content=b, headers=h))
                alive = s.proc.poll() is None
                rows.append((scale, name, m, alive))
                print(
                    f"x{scale:<3} {name:45s} {m['status']!s:>4} {m['seconds']:7.2f} s  +{m['growth']:6.1f} MB  "
                    f"/healthz p50 {m['p50'] * 1000:5.1f} p99 {m['p99'] * 1000:6.1f} worst {m['worst'] * 1000:6.1f} ms"
                    + ("" if alive else "  SERVER DIED"),
                    flush=True,
                )
                if not alive:
                    raise SystemExit("the server died")
    term = sigterm(args.store, args.as_bytes)
    print(f"SIGTERM with 16 queued /impute: {term['statuses']}, process gone after {term['gone']:.1f} s")
    table = [
        f"Idle server: {idle:.0f} MB RSS. Default settings, shipped store, address space limited to "
        f"{args.as_bytes / 1e9:g} GB.",
        "",
        "| size | request | status | seconds | RSS growth (MB) | /healthz p50 / p99 / worst (ms) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for scale, name, m, _ in rows:
        table.append(
            f"| x{scale} | {name} | {m['status']} | {m['seconds']:.2f} | {m['growth']:.1f} | "
            f"{m['p50'] * 1000:.1f} / {m['p99'] * 1000:.1f} / {m['worst'] * 1000:.1f} |"
        )
    counts = dict(sorted(Counter(map(str, term["statuses"])).items()))  # type: ignore[call-overload]
    table += [
        "",
        f"SIGTERM with 16 queued `/impute` requests (MADE_THREADS=1, MADE_SHUTDOWN_TIMEOUT=5): statuses "
        f"{counts}; the process was gone {term['gone']:.1f} s after the signal.",
    ]
    text = "\n".join(table)
    print(text)
    if args.write:
        doc = DOC.read_text()
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
