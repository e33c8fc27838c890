"""Table /impute and `given` side by side against another checkout (issues 26 and 29).

    .venv/bin/python bench/table_impute_bench.py [--store model_store] [--name diamonds]
        [--table diamonds] [--rows 1000] [--baseline /work/today] [--baseline-rows 200]
        [--rounds 2] [--given cut=Fair,color=J] [--given-n 2000] [--given-importance N] [--http]
        [--only impute|given] [--write]

Each figure is one engine call (TableEngine.impute, as /impute and /sample's `given` make it,
with their defaults: n_samples 10 and n_importance 1000; given: n samples and n_importance
as the checkout's /sample sets it, given_importance) in a fresh process per call
(PYTHONPATH = the checkout, cwd there, the model store shared), the two checkouts alternated
round by round (round r with seed r); seconds the median, scores the mean over the rounds.
- impute: the first --rows rows of the table's test split with 20% of their cells hidden at
  random (seed 0); the baseline (slow) on the first --baseline-rows of them, and this tree on
  those too, for the side-by-side ratio. Accuracy on the rows that no ordering answers
  exactly: NRMSE of the median (RMSE / the column's sd over the test split) and accuracy of the
  most likely level of the hidden cells.
- given: --given-n samples under --given; mean KS over the numeric columns against the
  training split's rows meeting the condition (and its standard deviation over the rounds'
  seeds). --given-importance N: this tree's calls at n_importance N instead (the ESS a KS needs).
- --http: one POST /impute of the --rows rows with the defaults to a `made serve` of this tree.
Prints a markdown table; --write appends it to docs/impute-bench.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT.parent / "shared" / "data" / "tables"
DOC = ROOT / "docs" / "impute-bench.md"
HIDE, HIDE_SEED = 0.2, 0


def read_rows(table: str, split: str, names: list[str], n: int | None = None) -> list[list[str]]:
    import csv

    with open(TABLES / f"{table}_{split}.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        at = [header.index(name) for name in names]
        rows = [[r[j] for j in at] for r in reader]
    return rows[:n] if n else rows


def encode(schema: Any, rows: list[list[str]]) -> np.ndarray:
    """Cells as strings, the empty cell as the schema reads it (NA where a column has it)."""
    return schema.encode_rows([[None if cell == "" else cell for cell in row] for row in rows])


def hidden(shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(HIDE_SEED).random(shape) < HIDE


# --- the worker: one engine call in this process, JSON to stdout ------------------------------------
def worker(args: argparse.Namespace) -> None:
    from made.core.masks import exact_orders
    from made.store.versions import open_model
    from service.engine.table_engine import TableEngine

    engine = TableEngine(open_model(Path(args.store), args.name))
    schema = engine.schema
    if args.worker == "impute":
        full = encode(schema, read_rows(args.table, "test", schema.names, args.rows))
        values = np.where(hidden(full.shape), np.nan, full)
        engine.impute(values[:2], seed=0)  # warm-up: onnxruntime's first run
        start = time.perf_counter()
        r = engine.impute(values, seed=args.seed)
        seconds = time.perf_counter() - start
        filled = values.copy()
        for i, dist in enumerate(r.distributions):
            for name, d in dist.items():
                c = schema.index(name)
                col = schema.columns[c]
                if col.kind != "numeric":
                    filled[i, c] = col.levels.index(max(d, key=lambda level: float(d[level])))
                else:
                    q50 = d.get("q50")
                    filled[i, c] = np.nan if q50 is None or isinstance(q50, str) else float(q50)
        inexact = ~exact_orders(engine.orderings, ~np.isnan(values)).all(axis=0)
        out = {
            "seconds": seconds,
            "filled": [[None if v != v else v for v in row] for row in filled.tolist()],  # NaN: null
            "inexact": inexact.tolist(),
            "ess": float(np.median(r.ess[inexact])),
        }
    else:
        given = dict(item.split("=", 1) for item in args.given.split(","))
        row = np.full((1, len(schema)), np.nan)
        for name, value in given.items():
            row[0, schema.index(name)] = schema.columns[schema.index(name)].encode_cell(value, "given")
        engine.impute(row, n_samples=2, seed=0, n_importance=20)  # warm-up
        start = time.perf_counter()
        n_importance = args.given_importance or given_importance(args.given_n)
        r = engine.impute(row, n_samples=args.given_n, seed=args.seed, n_importance=n_importance)
        out = {
            "seconds": time.perf_counter() - start,
            "samples": r.samples[0].tolist(),
            "exact": bool(r.exact[0]),
            "ess": float(r.ess[0]),
        }
    json.dump(out, sys.stdout)


def given_importance(n: int) -> int:
    """n_importance as the checkout's /sample `given` sets it: max(n, 1000) draws per mask, or,
    where the table engine runs sequential Monte Carlo, that many particles."""
    try:
        from service.engine.table_smc import given_importance as checkout_given_importance

        return int(checkout_given_importance(n))
    except ImportError:  # a checkout before it
        pass
    try:
        from service.engine.table_smc import DRAWS_PER_PARTICLE
    except ImportError:  # a checkout before it
        return max(n, 1000)
    return max(n, 1000) * DRAWS_PER_PARTICLE


def call(checkout: Path, args: argparse.Namespace, task: str, rows: int, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", task, "--rows", str(rows), "--seed", str(seed)]
    cmd += ["--store", str(args.store.resolve()), "--name", args.name, "--table", args.table]
    cmd += ["--given", args.given, "--given-n", str(args.given_n)]
    if args.given_importance and checkout == ROOT:
        cmd += ["--given-importance", str(args.given_importance)]
    env = {**os.environ, "PYTHONPATH": str(checkout), "MADE_LOG_LEVEL": "WARNING"}
    done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{checkout} {task}: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout))


# --- the comparison -------------------------------------------------------------------------------
def accuracy(
    schema: Any, full: np.ndarray, values: np.ndarray, filled: np.ndarray, rows: np.ndarray
) -> tuple[float, float]:
    """(mean NRMSE over numeric columns, accuracy over categorical cells) of the hidden cells of `rows`."""
    nrmse, right, total = [], 0, 0
    for c, col in enumerate(schema.columns):
        hid = np.isnan(values[rows, c])
        truth, guess = full[rows, c][hid], filled[rows, c][hid]
        if col.kind != "numeric":
            right += int((truth == guess).sum())
            total += len(truth)
            continue
        ok = (truth != col_absent()) & ~np.isnan(guess) & (guess != col_absent())
        if ok.any():
            sd = np.std(full[:, c][full[:, c] != col_absent()])
            nrmse.append(float(np.sqrt(np.mean((truth[ok] - guess[ok]) ** 2)) / sd))
    return float(np.mean(nrmse)) if nrmse else float("nan"), right / max(total, 1)


def col_absent() -> float:
    from made.core.schema import ABSENT

    return float(ABSENT)


def ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(
        np.max(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)))
    )


def given_ks(schema: Any, args: argparse.Namespace, samples: np.ndarray) -> tuple[float, int]:
    given = dict(item.split("=", 1) for item in args.given.split(","))
    real = encode(schema, read_rows(args.table, "train", schema.names))
    meet = np.ones(len(real), bool)
    for name, value in given.items():
        c = schema.index(name)
        meet &= real[:, c] == schema.columns[c].encode_cell(value, "given")
    cols = [c for c, col in enumerate(schema.columns) if col.kind == "numeric" and col.name not in given]
    return float(np.mean([ks(samples[:, c], real[meet, c]) for c in cols])), int(meet.sum())


def http_once(args: argparse.Namespace, schema: Any) -> float:
    import httpx

    from service.testing import made_serve

    rows = read_rows(args.table, "test", schema.names, args.rows)
    hide = hidden((len(rows), len(schema)))
    records = [
        {n: cell for n, cell, h in zip(schema.names, row, hide[i], strict=True) if not h} for i, row in enumerate(rows)
    ]
    env = {"MADE_LOG_LEVEL": "WARNING", "MADE_API_KEY": "", "MADE_ADMIN_KEY": ""}
    with made_serve(args.store, env=env) as server, httpx.Client(base_url=server.url, timeout=600) as http:
        start = time.perf_counter()
        r = http.post("/impute", json={"model": args.name, "records": records, "seed": 1})
        seconds = time.perf_counter() - start
        if r.status_code != 200:
            raise SystemExit(f"/impute: {r.status_code} {r.text[:300]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=ROOT / "model_store")
    p.add_argument("--name", default="diamonds")
    p.add_argument("--table", default="diamonds")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--baseline", type=Path, default=None)
    p.add_argument("--baseline-rows", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--given", default="cut=Fair,color=J")
    p.add_argument("--given-n", type=int, default=2000)
    p.add_argument(
        "--given-importance", type=int, default=0, help="this tree's `given` n_importance (default: its own)"
    )
    p.add_argument("--http", action="store_true")
    p.add_argument("--only", choices=["impute", "given"], default=None, help="measure one kind of call only")
    p.add_argument("--write", action="store_true")
    p.add_argument("--worker", choices=["impute", "given"], help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    sys.path.insert(0, str(ROOT))
    from made.store.versions import open_model

    schema = open_model(args.store, args.name).schema
    full = encode(schema, read_rows(args.table, "test", schema.names, args.rows))
    values = np.where(hidden(full.shape), np.nan, full)
    runs: dict[str, list[dict[str, Any]]] = {}
    sides = [("this tree", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    for rnd in range(args.rounds):
        for side, checkout in sides if rnd % 2 == 0 else sides[::-1]:
            jobs = [("impute", args.baseline_rows), ("given", 0)]
            if side == "this tree" and args.rows != args.baseline_rows:
                jobs.append(("impute", args.rows))
            jobs = [job for job in jobs if args.only in (None, job[0])]
            for task, rows in jobs:
                res = call(checkout, args, task, rows, seed=rnd + 1)
                runs.setdefault(f"{side}|{task}|{rows}", []).append(res)
                print(f"round {rnd + 1} {side} {task} {rows}: {res['seconds']:.2f} s", file=sys.stderr)
    print(render(args, schema, full, values, runs, None), file=sys.stderr)  # before the HTTP call, which may fail
    table = render(args, schema, full, values, runs, http_once(args, schema) if args.http else None)
    print(table)
    if args.write:
        DOC.write_text(DOC.read_text() + "\n" + table)
    return 0


def render(
    args: argparse.Namespace,
    schema: Any,
    full: np.ndarray,
    values: np.ndarray,
    runs: dict[str, list[dict[str, Any]]],
    http_seconds: float | None,
) -> str:
    lines = [
        f"## Table /impute and `given`: {args.name}, side by side",
        "",
        f"{os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f} at the end; "
        f"baseline: {args.baseline}; {args.rounds} rounds (round r: seed r), seconds the median, "
        "NRMSE, accuracy and KS the mean over the rounds' seeds (KS's sd over them in brackets), ESS the median; "
        "one engine call a process.",
        "",
        f"Regenerate: `.venv/bin/python bench/table_impute_bench.py --store {args.store} --name {args.name} "
        f"--table {args.table} "
        f"--rows {args.rows} --baseline-rows {args.baseline_rows} --rounds {args.rounds}"
        + (f" --baseline {args.baseline}" if args.baseline else "")
        + (" --http" if http_seconds is not None else "")
        + (f" --only {args.only} --given {args.given} --given-n {args.given_n}" if args.only else "")
        + (f" --given-importance {args.given_importance}" if args.given_importance else "")
        + "`",
        "",
        "| code | call | rows | seconds (median) | inexact rows | median ESS | NRMSE | accuracy | KS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, res in runs.items():
        side, task, rows = key.split("|")
        secs = float(np.median([r["seconds"] for r in res]))
        if task == "impute":
            n = int(rows)
            inexact = np.flatnonzero(res[0]["inexact"])
            scores = [
                accuracy(schema, full[:n], values[:n], np.array(r["filled"], dtype=np.float64), inexact) for r in res
            ]
            nrmse, acc = np.mean(scores, axis=0)
            label = "impute, defaults"
            lines.append(
                f"| {side} | {label} | {n} | {secs:.2f} | {len(inexact)} | {res[0]['ess']:.1f} | "
                f"{nrmse:.3f} | {acc:.3f} | |"
            )
        else:
            stats = [given_ks(schema, args, np.array(r["samples"]))[0] for r in res]
            spread = f" (sd {np.std(stats, ddof=1):.3f})" if len(stats) > 1 else ""
            real = given_ks(schema, args, np.array(res[0]["samples"]))[1]
            ess = float(np.median([r["ess"] for r in res]))
            lines.append(
                f"| {side} | given {args.given}, n {args.given_n} (exact {str(res[0]['exact']).lower()}; "
                f"{real} real training rows) | 1 | {secs:.2f} | | {ess:.1f} | | | {np.mean(stats):.3f}{spread} |"
            )
    if http_seconds is not None:
        lines.append(
            f"| this tree | POST /impute, defaults, `made serve` | {args.rows} | {http_seconds:.2f} | | | | | |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
