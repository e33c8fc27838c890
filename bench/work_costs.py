"""What a unit of MADE_MAX_WORK costs in seconds on each path that charges it, side by side.

The budget (service/core/budget.py) charges a request in units, a value a network pass computes,
before any array is made; the limit is meant as time. This measures seconds per charged unit of:
a pass of bits (binarized-mnist `mask_logliks`), the bit particle filter (`/denoise`, charged
PARTICLE_COST a particle value) and the table particle filter (diamonds `/impute` of records with
20% of cells unknown, charged by the model's `weighted_work`), alternated --rounds times, and
prints each path's seconds per unit over the bit pass's.

    .venv/bin/python bench/work_costs.py [--rounds 3] [--table-rows 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from made.core.masks import exact_orders  # noqa: E402
from made.io.csv import read_csv_text  # noqa: E402
from made.store.versions import open_model  # noqa: E402
from service.engine.registry import build_engine  # noqa: E402
from service.engine.smc import PARTICLE_COST  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--table-rows", type=int, default=100)
    p.add_argument("--store", type=Path, default=ROOT / "model_store")
    args = p.parse_args(argv)
    bits = build_engine(open_model(args.store, "binarized-mnist"), ["CPUExecutionProvider"], 1)
    table = build_engine(open_model(args.store, "diamonds"), ["CPUExecutionProvider"], 1)
    eng = bits.bits("/logprob")
    x = np.load(DATA / "binarized_mnist.npz")["test"][:200].astype(np.float64)
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(x[:5].shape) < 0.1, 1 - x[:5], x[:5])
    header, cells = read_csv_text((DATA / "tables" / "diamonds_test.csv").read_text(), "diamonds_test.csv")
    at = [header.index(name) for name in table.schema.names]
    values = table.schema.encode_rows([[row[i] for i in at] for row in cells[: args.table_rows]])
    values[rng.random(values.shape) < 0.2] = np.nan
    ks = list(range(eng.n_masks))
    masks = list(range(table.n_masks))
    unknown = np.isnan(values)
    exact = exact_orders(table.orderings, ~unknown).all(axis=0) | ~unknown.any(axis=1)
    weighted = unknown[~exact]
    _, table_units = table.weighted_work(weighted, masks, 1000, table.exact_draws(10))
    particle_units = len(noisy) * 48 * len(ks) * eng.dims * PARTICLE_COST
    rows = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        eng.mask_logliks(x, ks)
        unit = (time.perf_counter() - t) / (len(x) * len(ks) * eng.dims)
        t = time.perf_counter()
        eng.denoise(noisy, 0.1, n_samples=0, seed=0, n_importance=48)
        particle = (time.perf_counter() - t) / particle_units
        t = time.perf_counter()
        table.impute(values, n_samples=10, seed=0, n_importance=1000)
        tab = (time.perf_counter() - t) / table_units
        rows.append((unit, particle / unit, tab / unit))
    print("| round | bit pass s/unit | bit particle filter / bit pass | table SMC / bit pass |")
    print("|---|---|---|---|")
    for i, (u, pr, tr) in enumerate(rows):
        print(f"| {i + 1} | {u:.2e} | {pr:.2f} | {tr:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
