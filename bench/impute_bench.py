"""/impute of an exact row against /sample n=64, on a real `made serve`.

    .venv/bin/python bench/impute_bench.py [--store model_store] [--name binarized-mnist]
        [--data PATH.npz] [--repeats 20] [--slow-repeats 5] [--baseline DIR
        [--baseline-label TEXT]] [--write]

The row: the first binarized-MNIST test image (from --data, default
$MADE_DATA_DIR/binarized_mnist.npz or ../shared/data/binarized_mnist.npz) with its second half,
pixels 392..783, missing, sent with /impute's defaults (n_samples 10, n_importance 1000, a seed
the server draws). Every ordering of the shipped model puts that half last, so the row is exact.
Without the data set a sample of the model stands in, and the output says so.

Side by side in one run, each figure the median of single requests sent one at a time, the
kinds interleaved round by round so that other work on the machine moves them together:
- POST /sample {"n": 64} and POST /impute of the exact row, against `made serve` of this tree:
  their ratio is the target (<= 3x);
- POST /impute of the same row with its first half missing instead (--slow-repeats requests):
  no ordering puts that half last, so it is likelihood weighting, n_importance x K draws,
  which is what every row with missing values cost before exact rows drew only their n_samples
  completions;
- with --baseline DIR, a checkout of another revision (e.g. `git archive REV | tar -x -C DIR`):
  the same requests against a second `made serve` running DIR's code (PYTHONPATH=DIR), started
  beside the first, its requests interleaved with the first's (--slow-repeats of each).
Prints a markdown table; --write saves it to docs/impute-bench.md's section of bits. Exit status 1 if a request
failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import model_options  # noqa: E402
from service.settings import data_directory  # noqa: E402
from service.testing import made_serve  # noqa: E402

DOC = ROOT / "docs" / "impute-bench.md"
BITS = "## Models of bits: "
DATA = data_directory(ROOT) / "binarized_mnist.npz"


@dataclass
class Kind:
    server: str  # "this tree" or "baseline"
    label: str
    path: str
    body: dict[str, Any]
    repeats: int
    seconds: list[float] = field(default_factory=list)
    exact: bool | None = None
    ess: float | None = None

    @property
    def median_ms(self) -> float:
        return float(np.median(self.seconds) * 1e3)


def mnist_row(data: Path, http: httpx.Client, name: str) -> tuple[list[int], str]:
    if data.exists():
        return np.load(data)["test"][0].astype(int).tolist(), f"the first test image of {data.name}"
    r = http.post("/sample", json={"n": 1, "seed": 0, "model": name})
    r.raise_for_status()
    return r.json()["samples"][0], f"**stand-in**: a sample of the model ({data} not found)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_options(parser, DATA)
    parser.add_argument("--repeats", type=int, default=20, help="requests of the fast kinds")
    parser.add_argument(
        "--slow-repeats", type=int, default=5, help="requests of the importance-sampled row, and of each baseline kind"
    )
    parser.add_argument(
        "--baseline", type=Path, default=None, help="a checkout of another revision, served beside this tree's"
    )
    parser.add_argument(
        "--baseline-label", default=None, help="what the baseline is, for the table (default: its path)"
    )
    parser.add_argument("--write", action="store_true", help=f"write the table to {DOC}")
    args = parser.parse_args(argv)
    if not (args.store / args.name).is_dir():
        print(f"impute_bench: no model {args.name} in {args.store}", file=sys.stderr)
        return 1
    if args.baseline is not None and not (args.baseline / "service").is_dir():
        print(f"impute_bench: {args.baseline} is not a checkout of this project", file=sys.stderr)
        return 1

    env = {"MADE_LOG_LEVEL": "WARNING", "MADE_API_KEY": "", "MADE_ADMIN_KEY": ""}
    with ExitStack() as stack:
        servers = {"this tree": stack.enter_context(made_serve(args.store, env=env))}
        if args.baseline is not None:
            base_env = {**env, "PYTHONPATH": str(args.baseline.resolve())}
            servers["baseline"] = stack.enter_context(made_serve(args.store, env=base_env))
        clients = {s: stack.enter_context(httpx.Client(base_url=p.url, timeout=600)) for s, p in servers.items()}
        row, source = mnist_row(args.data, clients["this tree"], args.name)
        kinds = _kinds(list(servers), args, row)
        for kind in kinds:  # warm-up: the sampler builds its plans on first use
            clients[kind.server].post(kind.path, json=kind.body).raise_for_status()
        failed = _measure(kinds, clients)

    table = render(kinds, source, args)
    print(table)
    if args.write:  # the page's section of bits; the tables' sections above it stay
        text = DOC.read_text() if DOC.exists() else ""
        head = text[: text.index(BITS)] if BITS in text else text
        DOC.write_text(head + BITS + table.removeprefix("# "))
        print(f"wrote {DOC}", file=sys.stderr)
    return 1 if failed else 0


def _kinds(servers: list[str], args: argparse.Namespace, row: list[int]) -> list[Kind]:
    """The requests each server answers: /sample n=64 and /impute of the exact row (this tree:
    --repeats of each), and on this tree the likelihood-weighted row too."""
    half = len(row) // 2
    exact_row = row[:half] + [None] * (len(row) - half)
    weighted_row = [None] * half + row[half:]
    kinds: list[Kind] = []
    for server in servers:
        fast = args.repeats if server == "this tree" else args.slow_repeats
        kinds += [
            Kind(server, "/sample n=64", "/sample", {"n": 64, "model": args.name}, fast),
            Kind(
                server,
                "/impute, exact row (second half missing), defaults",
                "/impute",
                {"x": [exact_row], "model": args.name},
                fast,
            ),
        ]
        if server == "this tree":
            kinds.append(
                Kind(
                    server,
                    "/impute, same row, first half missing (not exact: likelihood weighting), defaults",
                    "/impute",
                    {"x": [weighted_row], "model": args.name},
                    args.slow_repeats,
                )
            )
    return kinds


def _measure(kinds: list[Kind], clients: dict[str, httpx.Client]) -> int:
    """Each kind's requests, one at a time, the kinds interleaved round by round; the number
    that failed."""
    failed = 0
    for round_ in range(max(k.repeats for k in kinds)):
        for kind in kinds:
            if round_ >= kind.repeats:
                continue
            start = time.perf_counter()
            r = clients[kind.server].post(kind.path, json=kind.body)
            kind.seconds.append(time.perf_counter() - start)
            if r.status_code != 200:
                failed += 1
                print(f"{kind.server} {kind.path}: {r.status_code} {r.text[:200]}", file=sys.stderr)
            elif kind.path == "/impute":
                kind.exact, kind.ess = r.json()["exact"][0], r.json()["ess"][0]
        print(f"round {round_ + 1} done", file=sys.stderr)
    return failed


def render(kinds: list[Kind], source: str, args: argparse.Namespace) -> str:
    sample = {k.server: k.median_ms for k in kinds if k.path == "/sample"}
    lines = [
        "# /impute of an exact row against /sample n=64",
        "",
        f"Model `{args.name}` from {args.store}; row: {source}. One `made serve` per code tree, "
        "settings at their defaults; requests sent one at a time over one connection, the kinds "
        f"interleaved; medians. {os.cpu_count()} logical CPUs, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()[0]:.1f} at the "
        "end." + (f" Baseline: {args.baseline_label or args.baseline}." if args.baseline else ""),
        "",
        "Regenerate: `.venv/bin/python bench/impute_bench.py [--baseline DIR] --write`.",
        "",
        "| code | request | requests | median ms | / (/sample n=64) | exact | ess |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for k in kinds:
        exact = "" if k.exact is None else str(k.exact).lower()
        ess = "" if k.ess is None else f"{k.ess:.1f}"
        lines.append(
            f"| {k.server} | {k.label} | {len(k.seconds)} | {k.median_ms:.1f} | "
            f"{k.median_ms / sample[k.server]:.2f}x | {exact} | {ess} |"
        )
    exact_kind = {k.server: k for k in kinds if k.label.startswith("/impute, exact")}
    ratios = {s: k.median_ms / sample[s] for s, k in exact_kind.items()}
    summary = f"Exact-row /impute with its defaults / /sample n=64: **{ratios['this tree']:.2f}x** (target <= 3x)"
    if "baseline" in ratios:
        summary += f"; baseline {ratios['baseline']:.1f}x"
    lines += ["", summary + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
