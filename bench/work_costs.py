"""What a unit of MADE_MAX_WORK costs in seconds on each path that charges it, side by side.

The budget (service/core/budget.py) charges a request in units, a value a network pass computes,
before any array is made; the limit is meant as time. This measures seconds per charged unit of:
a pass of bits (binarized-mnist `mask_logliks`), the stepping sampler of bits (`/sample`: a
drawn value's seconds over a passed one's, which STEP_COST prices), the bit particle filter
(`/denoise`, charged PARTICLE_COST a particle value) and the table particle filter (diamonds
`/impute` of records with 20% of cells unknown, charged by the model's `weighted_work`),
alternated --rounds times, and prints each path's seconds per unit over the bit pass's.

--charges prints instead what the server charges the requests docs/operations.md names, read
from the 422 of an app whose MADE_MAX_WORK is 1 (the charge is computed from the request alone),
and, with --time, how long each takes at the default limit (in process, one run).

    .venv/bin/python bench/work_costs.py [--rounds 3] [--table-rows 100]
    .venv/bin/python bench/work_costs.py --charges [--time]
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
from service.engine.bit_model import STEP_COST  # noqa: E402
from service.engine.registry import build_engine  # noqa: E402
from service.engine.smc import PARTICLE_COST  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--table-rows", type=int, default=100)
    p.add_argument("--store", type=Path, default=ROOT / "model_store")
    p.add_argument("--charges", action="store_true", help="the units the server charges docs/operations.md's requests")
    p.add_argument("--time", action="store_true", help="with --charges: time each request at the default limit")
    args = p.parse_args(argv)
    if args.charges:
        return charges(args.store, args.time)
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
    n_drawn = 200
    rows = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        eng.mask_logliks(x, ks)
        unit = (time.perf_counter() - t) / (len(x) * len(ks) * eng.dims)
        t = time.perf_counter()
        eng.sample(n_drawn, seed=0)
        step = (time.perf_counter() - t) / (n_drawn * eng.dims)
        t = time.perf_counter()
        eng.denoise(noisy, 0.1, n_samples=0, seed=0, n_importance=48)
        particle = (time.perf_counter() - t) / particle_units
        t = time.perf_counter()
        table.impute(values, n_samples=10, seed=0, n_importance=1000)
        tab = (time.perf_counter() - t) / table_units
        rows.append((unit, step / unit, particle / unit, tab / unit))
    print(
        f"| round | bit pass s/unit | bit drawn value / passed value (STEP_COST {STEP_COST}) "
        f"| bit particle filter / bit pass | table SMC / bit pass |"
    )
    print("|---|---|---|---|---|")
    for i, (u, sr, pr, tr) in enumerate(rows):
        print(f"| {i + 1} | {u:.2e} | {sr:.2f} | {pr:.2f} | {tr:.2f} |")
    return 0


def charges(store: Path, timed: bool) -> int:
    """The units docs/operations.md quotes, as the server computes them: each request sent to an
    in-process app whose MADE_MAX_WORK is 1, its 422 read for "costs N units"; with `timed`, each
    sent again at the default limit and timed (one run, in process)."""
    import re
    from contextlib import ExitStack

    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.settings import Settings

    header, cells = read_csv_text((DATA / "tables" / "diamonds_test.csv").read_text(), "diamonds_test.csv")
    rng = np.random.default_rng(0)
    records = [
        {h: (None if rng.random() < 0.2 else c) for h, c in zip(header, row, strict=True)} for row in cells[:1000]
    ]
    x = np.load(DATA / "binarized_mnist.npz")["test"].astype(float)
    half = [[*[None] * 392, *row[392:]] for row in x.tolist()]  # no ordering answers these exactly
    noisy = np.where(rng.random(x.shape) < 0.1, 1 - x, x).astype(int).tolist()
    diamonds, mnist = {"model": "diamonds", "seed": 0}, {"model": "binarized-mnist", "seed": 0}
    requests = [
        (
            "/impute of 1,000 diamonds records, 20% of cells unknown, defaults",
            "/impute",
            {**diamonds, "records": records},
        ),
        (
            "/impute of 20 of those records at n_importance 100,000",
            "/impute",
            {**diamonds, "records": records[:20], "n_importance": 100_000},
        ),
        (
            "/logprob of 105 binarized-mnist rows, the first half of each unknown",
            "/logprob",
            {**mnist, "x": half[:105]},
        ),
        ("/logprob of 106 of them", "/logprob", {**mnist, "x": half[:106]}),
        ("/denoise of 137 binarized-mnist rows at eps 0.1", "/denoise", {**mnist, "x": noisy[:137], "eps": 0.1}),
        ("/denoise of 138 of them", "/denoise", {**mnist, "x": noisy[:138], "eps": 0.1}),
    ]
    limit = Settings().max_work
    print(f"| request | units charged | within MADE_MAX_WORK {limit:,} |" + (" seconds |" if timed else ""))
    print("|---|---|---|" + ("---|" if timed else ""))
    with ExitStack() as stack:

        def ready(settings: Settings) -> TestClient:
            client = stack.enter_context(TestClient(create_app(settings)))
            while client.get("/readyz").status_code != 200:
                time.sleep(0.1)
            return client

        pricing = ready(Settings(store=store, max_work=1))  # every request a 422 naming its cost
        serving = ready(Settings(store=store)) if timed else None
        for what, path, body in requests:
            detail = pricing.post(path, json=body).json()["detail"]
            units = int(re.search(r"costs ([\d,]+) units", detail).group(1).replace(",", ""))
            line = f"| {what} | {units:,} | {'yes' if units <= limit else 'no'} |"
            if serving is not None:
                if units <= limit:
                    t = time.perf_counter()
                    status = serving.post(path, json=body).status_code
                    line += f" {time.perf_counter() - t:.1f} ({status}) |"
                else:
                    line += " |"
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
