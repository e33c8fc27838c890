"""Two figures of docs/operations.md, measured against a real `made serve` on the shipped store.

    .venv/bin/python bench/ops_checks.py [--store model_store] [--clients 8] [--seconds 10]
        [--rows 10000] [--port 0]

1. Clients that give up: --clients clients each loop `curl --max-time 0.2` on POST /denoise (2
   binarized-mnist test digits, each bit flipped with probability 0.1, seeded; eps 0.1; the
   default model) for --seconds s. Counted: the answers by status (200, 503, others) and the
   client-side timeouts (curl exit 28), and from /metrics the requests the server saw
   disconnected and the engine calls it abandoned. Then the seconds from the clients' end until
   the server process is idle: /proc/PID/stat's utime + stime read every 0.2 s, idle being a
   window with under 5% of a core (the start of the first such window is reported, with the CPU
   seconds the server used from the clients' end to it). Where /denoise takes longer than the
   clients' timeout, every request is given up: what is measured is the work the server goes on
   doing for requests nobody waits for. curl rather than a Python client, so that the clients'
   own CPU is not a Python interpreter's; with httpx threads where curl is missing.
2. A large valid JSON body: one POST /logprob of --rows rows of 784 values (the binarized-mnist
   test set, repeated as needed), compact JSON, sent once while another thread GETs /healthz
   every 20 ms. Reported: the body's size, the request's status and seconds, and /healthz's
   worst latency among the probes that overlapped the request (the event loop's stall while it
   parses and validates the body), when it began, and /healthz's median before the request.

Default settings otherwise; --port 0 picks a free port. Prints a markdown table with the command
line, the machine's CPU count and load average, and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.settings import data_directory  # noqa: E402
from service.testing import made_serve  # noqa: E402

DATA = data_directory(ROOT) / "binarized_mnist.npz"
CLIENT_TIMEOUT_S = 0.2
IDLE_WINDOW_S, IDLE_SHARE, IDLE_LIMIT_S = 0.2, 0.05, 120.0
PROBE_EVERY_S = 0.02
JSON = {"Content-Type": "application/json"}
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process so far, in clock ticks (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_idle(pid: int, limit_s: float) -> tuple[float | None, float]:
    """(seconds until the first IDLE_WINDOW_S window with under IDLE_SHARE of a core begins, or
    None if none within limit_s; CPU seconds used until then)."""
    start = last = time.monotonic()
    first = ticks = cpu_ticks(pid)
    while last - start < limit_s:
        time.sleep(IDLE_WINDOW_S)
        now, now_ticks = time.monotonic(), cpu_ticks(pid)
        if (now_ticks - ticks) * TICK_S < IDLE_SHARE * (now - last):
            return last - start, (ticks - first) * TICK_S
        last, ticks = now, now_ticks
    return None, (ticks - first) * TICK_S


def metric(text: str, name: str, endpoint: str) -> float:
    """A counter's value for one endpoint in /metrics' text (0 where absent)."""
    for line in text.splitlines():
        if line.startswith(f'{name}{{endpoint="{endpoint}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def noisy_digits(n: int = 2, eps: float = 0.1, seed: int = 0) -> list[list[int]]:
    clean = np.load(DATA)["test"][:n].astype(np.uint8)
    flips = np.random.default_rng(seed).random(clean.shape) < eps
    return (clean ^ flips).tolist()


def give_up_clients(url: str, body: bytes, clients: int, seconds: float) -> Counter[str]:
    """`clients` threads each sending `body` to /denoise in a loop for `seconds`, each request
    given up after CLIENT_TIMEOUT_S: the outcomes counted ("200", "503", "timeout", ...)."""
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    end = time.monotonic() + seconds
    curl = shutil.which("curl")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "body.json"
        path.write_bytes(body)
        cmd = [
            *[str(curl), "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(CLIENT_TIMEOUT_S)],
            *["-H", "Content-Type: application/json", "--data-binary", f"@{path}", f"{url}/denoise"],
        ]

        def one_curl(_: httpx.Client | None) -> str:
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode == 28:
                return "timeout"
            return p.stdout.strip() if p.returncode == 0 else f"curl exit {p.returncode}"

        def one_httpx(c: httpx.Client | None) -> str:
            assert c is not None
            try:
                return str(c.post("/denoise", content=body, headers=JSON).status_code)
            except httpx.TimeoutException:
                return "timeout"
            except httpx.TransportError as exc:
                return type(exc).__name__

        def loop() -> None:
            with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as c:
                while time.monotonic() < end:
                    outcome = (one_curl if curl else one_httpx)(c)
                    with lock:
                        counts[outcome] += 1

        threads = [threading.Thread(target=loop) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return counts


def clients_that_give_up(url: str, pid: int, clients: int, seconds: float) -> dict[str, object]:
    body = json.dumps({"x": noisy_digits(), "eps": 0.1}).encode()
    warm = httpx.post(f"{url}/denoise", content=body, headers=JSON, timeout=60)
    if warm.status_code != 200:
        raise SystemExit(f"/denoise answered {warm.status_code}: {warm.text[:500]}")
    wait_idle(pid, IDLE_LIMIT_S)
    counts = give_up_clients(url, body, clients, seconds)
    idle_after, cpu_after = wait_idle(pid, IDLE_LIMIT_S)
    text = httpx.get(f"{url}/metrics").text
    return {
        "counts": counts,
        "idle_after": idle_after,
        "cpu_after": cpu_after,
        "disconnected": metric(text, "made_disconnected_total", "/denoise"),
        "abandoned": metric(text, "made_abandoned_total", "/denoise"),
        "client": "curl" if shutil.which("curl") else "httpx",
    }


def large_body(url: str, pid: int, rows: int) -> dict[str, object]:
    test = np.load(DATA)["test"]
    x = np.resize(test, (rows, test.shape[1])).tolist()
    body = json.dumps({"x": x}, separators=(",", ":")).encode()
    del x
    wait_idle(pid, IDLE_LIMIT_S)
    probes: list[tuple[float, float]] = []  # (start, seconds)
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while not done.is_set():
                start = time.perf_counter()
                c.get("/healthz")
                probes.append((start, time.perf_counter() - start))
                time.sleep(max(0.0, start + PROBE_EVERY_S - time.perf_counter()))

    t = threading.Thread(target=probe)
    t.start()
    time.sleep(1.0)  # /healthz at rest first
    with httpx.Client(base_url=url, timeout=300) as c:
        start = time.perf_counter()
        r = c.post("/logprob", content=body, headers=JSON)
        end = time.perf_counter()
    time.sleep(0.2)
    done.set()
    t.join()
    before = [s for p, s in probes if p + s < start]
    during = [(s, p - start) for p, s in probes if p < end and p + s > start]
    worst, worst_at = max(during, default=(float("nan"), float("nan")))
    return {
        "mb": len(body) / 1e6,
        "status": r.status_code,
        "seconds": end - start,
        "before_p50": statistics.median(before) if before else float("nan"),
        "worst": worst,
        "worst_at": worst_at,
        "probes": len(during),
    }


def table(args: argparse.Namespace, a: dict[str, object], b: dict[str, object], load: tuple[float, ...]) -> str:
    counts: Counter[str] = a["counts"]  # type: ignore[assignment]
    others = {k: v for k, v in counts.items() if k not in ("200", "503", "timeout")}
    idle = a["idle_after"]
    idle_text = f"over {IDLE_LIMIT_S:g} s" if idle is None else f"{idle:.1f} s"
    command = " ".join([".venv/bin/python bench/ops_checks.py", *sys.argv[1:]])
    return "\n".join(
        [
            f"`{command}`: {os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
            f"(1 / 5 / 15 min) at the start; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            "",
            "| check | measured |",
            "|---|---|",
            f"| `/denoise` (2 digits, eps 0.1), {args.clients} clients looping `{a['client']}` with a "
            f"{CLIENT_TIMEOUT_S:g} s timeout for {args.seconds:g} s | 200: {counts['200']}, 503: {counts['503']}, "
            f"others: {sum(others.values())}{' ' + str(others) if others else ''}, "
            f"client timeouts: {counts['timeout']} |",
            f"| server's count of them (`made_disconnected_total` / `made_abandoned_total`) | "
            f"{a['disconnected']:.0f} / {a['abandoned']:.0f} |",
            f"| server CPU idle (< {IDLE_SHARE:.0%} of a core over {IDLE_WINDOW_S:g} s) after the clients left | "
            f"{idle_text} ({a['cpu_after']:.2f} CPU s in between) |",
            f"| `/logprob` JSON body of {args.rows} rows x 784 values | {b['mb']:.1f} MB |",
            f"| its request | {b['status']} in {b['seconds']:.2f} s |",
            f"| `/healthz` every {PROBE_EVERY_S * 1000:.0f} ms: worst during the request ({b['probes']} probes; "
            f"it began {b['worst_at']:.1f} s in) / median before | {b['worst'] * 1000:.0f} ms / "
            f"{b['before_p50'] * 1000:.1f} ms |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--port", type=int, default=0, help="the server's port (0: a free one)")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"{DATA} is missing: skipped", file=sys.stderr)
        return
    load = os.getloadavg()
    env = {"MADE_PORT": str(args.port)} if args.port else None
    with made_serve(args.store, env=env) as s:
        print(f"{args.clients} clients giving up on /denoise for {args.seconds:g} s...", file=sys.stderr)
        a = clients_that_give_up(s.url, s.proc.pid, args.clients, args.seconds)
        print(f"one /logprob of {args.rows} rows...", file=sys.stderr)
        b = large_body(s.url, s.proc.pid, args.rows)
    print(table(args, a, b, load))


if __name__ == "__main__":
    main()
