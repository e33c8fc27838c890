"""A table model's onnxruntime session on one intra-op thread or two: one large /impute alone, and
two at once (service.engine.registry gives a served table model one thread, so that a row's
float32 sums do not move with the batch).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/table_threads.py [--rows 1000] [--rounds 2]

The engine of the shipped diamonds model (no HTTP), the first --rows test rows with each cell
hidden with probability 0.2 (seed 0), imputed with the defaults (seed 1): alone, then as two
halves in two Python threads at once, as the server's scheduler runs two engine calls on 2
cores; each session alternated, --rounds times; the table gives the median seconds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import data_dir  # noqa: E402
from made.store.versions import open_model  # noqa: E402
from service.core.records import parse_records  # noqa: E402
from service.engine.table_engine import TableEngine  # noqa: E402

CATEGORIES = ("cut", "color", "clarity")


def hidden_rows(rows: int) -> list[dict[str, object]]:
    with (data_dir() / "tables" / "diamonds_test.csv").open(newline="") as f:
        table = list(csv.DictReader(f))[:rows]
    rng = np.random.default_rng(0)
    records = []
    for row in table:
        record: dict[str, object] = {k: v if k in CATEGORIES else float(v) for k, v in row.items()}
        records.append({k: None if rng.random() < 0.2 else v for k, v in record.items()})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    model = open_model(ROOT / "model_store", "diamonds")
    engines = {threads: TableEngine(model, threads=threads) for threads in (1, 2)}
    values = parse_records(engines[1].schema, hidden_rows(args.rows))
    halves = [values[: len(values) // 2], values[len(values) // 2 :]]
    alone: dict[int, list[float]] = {1: [], 2: []}
    paired: dict[int, list[float]] = {1: [], 2: []}
    for engine in engines.values():
        engine.impute(values[:20], seed=1)  # warm
    for _ in range(args.rounds):
        for threads, engine in engines.items():
            start = time.perf_counter()
            engine.impute(values, seed=1)
            alone[threads].append(time.perf_counter() - start)
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda part, e=engine: e.impute(part, seed=1), halves))
            paired[threads].append(time.perf_counter() - start)
    print(f"diamonds /impute engine calls, {args.rows} rows with 20% of cells hidden, median of {args.rounds}:\n")
    print("| intra-op threads | one call of all rows, s | two calls of half at once, s |")
    print("|---|---|---|")
    for threads in (1, 2):
        print(f"| {threads} | {statistics.median(alone[threads]):.2f} | {statistics.median(paired[threads]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
