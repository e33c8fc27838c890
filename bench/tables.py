"""Tables and categories: train, evaluate and write docs/tables.md.

    .venv/bin/python bench/tables.py [--only NAME,NAME] [--jobs 1] [--fresh] [--threads 1]

Two experiments, each a `made train` run in runs/results/NAME (a finished run is reused unless
--fresh; an unfinished one resumes):
- The four UCI bit sets whose bits are one-hot attributes (../shared/data/groups): trained as
  categories (`--groups`) beside a bit-level MADE of the same size on the same split; both are
  scored on the same test rows of bits (`made evaluate --dataset NAME.npz`), so their NLLs compare
  with each other and with the paper's.
- The three real tables of ../shared/data/tables: test log-likelihood per row beside an
  independent-columns baseline, the product of each column's own marginal fitted here by maximum
  likelihood with the same column heads (frequencies; mixture of logistics at the data's precision).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import (  # noqa: E402
    MADE,
    RUNS,
    data_dir,
    finished_metrics,
    fresh_run,
    made_train,
    train_args,
    write_sections,
)

DATA = data_dir()
DOC = ROOT / "docs" / "tables.md"

SIZE = train_args("500", 1, "--direct", max_epochs=300, patience=30)
# UCI set -> (paper's best published NLL (any model), extra arguments of both runs)
UCI: dict[str, tuple[float | None, list[str]]] = {
    "mushrooms": (
        9.55,
        train_args("500", 16, "--order-agnostic", "--connectivity-agnostic", "--direct", max_epochs=600, patience=40),
    ),
    "adult": (13.12, SIZE),
    "connect4": (None, SIZE),  # ours is not the paper's split: the target is our bit model
    "dna": (
        79.66,
        train_args("500", 32, "--order-agnostic", "--connectivity-agnostic", "--direct", max_epochs=2000, patience=50),
    ),
}
TABLES: dict[str, list[str]] = {
    "diamonds": [],
    "health_insurance": [],
    "movies": ["--drop-columns", "title"],
}
TABLE_ARGS = train_args(
    "256,256",
    8,
    "--order-agnostic",
    "--connectivity-agnostic",
    "--direct",
    weight_decay=None,
    max_epochs=150,
    patience=20,
)


def experiments() -> dict[str, list[str]]:
    """name -> `made train` arguments (without --out)."""
    out: dict[str, list[str]] = {}
    for name, (_, extra) in UCI.items():
        npz = str(DATA / f"{name}.npz")
        tag = f"k{extra[extra.index('--masks') + 1]}"
        out[f"{name}-cat-{tag}"] = ["--dataset", npz, "--groups", str(DATA / "groups" / f"{name}.json"), *extra]
        out[f"{name}-bits-{tag}"] = ["--dataset", npz, *extra]
    for name, extra in TABLES.items():
        out[f"{name}-2x256-k8"] = ["--dataset", str(DATA / "tables" / f"{name}_train.csv"), *extra, *TABLE_ARGS]
    return out


def train(name: str, args: list[str], fresh: bool, threads: int) -> dict:
    run = RUNS / name
    fresh_run(run, fresh)
    if finished_metrics(run) is None:
        made_train(args, run, threads, RUNS / f"{name}.log")
    return json.loads((run / "metrics.json").read_text())


def evaluate_on_bits(name: str, dataset: str) -> dict:
    """Export the run to a scratch store and score the bit rows of the test split."""
    store = RUNS / ".store"
    shutil.rmtree(store / name, ignore_errors=True)
    subprocess.run(
        [str(MADE), "export", str(RUNS / name), "--store", str(store), "--name", name], check=True, capture_output=True
    )
    out = subprocess.run(
        [str(MADE), "evaluate", "--store", str(store), "--name", name, "--dataset", dataset],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def independent_baseline(name: str, fresh: bool = False) -> tuple[float, float]:
    """(test NLL, its standard error) of the product of each column's fitted marginal: every
    column's head with its own trainable parameters and no inputs, fitted by full-batch Adam
    (kept in runs/results/NAME-independent.json)."""
    cache = RUNS / f"{name}-independent.json"
    if cache.exists() and not fresh:
        kept = json.loads(cache.read_text())
        return float(kept["test_nll"]), float(kept["test_nll_stderr"])
    nll, se = _fit_independent(name)
    cache.write_text(json.dumps({"test_nll": nll, "test_nll_stderr": se}))
    return nll, se


def _fit_independent(name: str) -> tuple[float, float]:
    """Each column's marginal by maximum likelihood: a category's smoothed frequencies; a number's
    mixture head (the model's own, made.core.heads) fitted by Adam on the column's distinct training
    values weighted by their counts, started at the data's quantiles. Scored on the test rows."""
    import torch

    from made.core.heads import column_loglik
    from made.core.schema import ABSENT, standardise
    from made.io.tables import load_table_dataset
    from training.table_model import TableMADE, TableMADEConfig

    run_cfg = json.loads((RUNS / f"{name}-2x256-k8" / "config.json").read_text())
    data = load_table_dataset(run_cfg["dataset"], schema=TableMADEConfig.from_dict(run_cfg["model"]).schema)
    schema = data.schema
    train, test = data.split("train"), data.split("test")
    torch.manual_seed(0)
    model = TableMADE(TableMADEConfig(columns=schema.to_json(), hidden=[1], n_masks=1))  # for its torch heads
    total = np.zeros(len(test))
    for j, col in enumerate(schema.columns):
        lo, hi = int(schema.out_offsets[j]), int(schema.out_offsets[j + 1])
        if col.kind != "numeric":
            freq = np.bincount(train[:, j].astype(np.int64), minlength=len(col.levels)) + 0.5
            total += np.log(freq / freq.sum())[test[:, j].astype(np.int64)]
            continue
        values, counts = np.unique(train[:, j], return_counts=True)
        present = values[values != ABSENT]
        y = standardise(col, np.repeat(present, counts[values != ABSENT]))
        init = np.zeros(hi - lo)
        off, m = int(col.nullable), col.components
        if col.nullable:
            frac = float(np.clip(counts[values == ABSENT].sum() / counts.sum(), 1e-3, 1 - 1e-3))
            init[0] = np.log(frac / (1 - frac))
        init[off + m : off + 2 * m] = np.quantile(y, (np.arange(m) + 0.5) / m)
        init[off + 2 * m : off + 3 * m] = np.log(0.3)
        pj = torch.nn.Parameter(torch.from_numpy(init).float())
        v = torch.from_numpy(values)
        w = torch.from_numpy(counts / counts.sum()).float()
        opt = torch.optim.Adam([pj], lr=0.03)
        for _ in range(1500):
            full = torch.cat([torch.zeros(lo), pj, torch.zeros(schema.n_out - hi)]).expand(len(values), -1)
            loss = -(w * model._column_loglik(j, full, v)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        p = np.repeat(pj.detach().numpy()[None, :].astype(np.float64), len(test), axis=0)
        total += column_loglik(col, p, test[:, j])
    nll = -total
    return float(nll.mean()), float(nll.std(ddof=1) / np.sqrt(len(nll)))


def _fmt(m: dict, digits: int = 2) -> str:
    return f"{m['nll']:.{digits}f} ± {m['stderr']:.{digits}f}"


def write_doc(results: dict[str, dict], baselines: dict[str, tuple[float, float]]) -> None:
    lines = [
        "# Tables and categories",
        "",
        "Generated by `.venv/bin/python bench/tables.py` (trains from scratch into `runs/results/`). "
        "NLL in nats per row, lower is better; ± is one standard error over the test rows.",
        "",
    ]
    uci = [
        "## The UCI bit sets as categories",
        "",
        "Each set's one-hot attributes (`../shared/data/groups`) modelled as categories (`made train "
        "--groups`) beside a bit-level MADE of the same size, both scored on the same test rows of "
        "bits (`made evaluate --dataset NAME.npz`).",
        "",
        "| data set | settings | categories | bits | paper's best | target | met | train time (cat / bits) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    uci_rows = len(uci)
    capped: list[str] = []
    for name, (paper, extra) in UCI.items():
        tag = f"k{extra[extra.index('--masks') + 1]}"
        cat, bits = results.get(f"{name}-cat-{tag}"), results.get(f"{name}-bits-{tag}")
        if not cat or not bits:
            continue
        target = paper if paper is not None else bits["eval"]["nll"]
        met = cat["eval"]["nll"] < target
        what = f"below {target:.2f} (paper)" if paper is not None else "below our bit model"
        uci.append(
            f"| {name} | {' '.join(extra)} | {_fmt(cat['eval'], 3)} | {_fmt(bits['eval'], 3)} | "
            f"{paper if paper is not None else '—'} | {what} | {'yes' if met else 'no'} "
            f"({cat['eval']['nll'] - target:+.3f}) | {cat['metrics']['train_seconds'] / 60:.1f} / "
            f"{bits['metrics']['train_seconds'] / 60:.1f} min |"
        )
        for run, r in ((f"{name}-cat-{tag}", cat), (f"{name}-bits-{tag}", bits)):
            cap = int(extra[extra.index("--max-epochs") + 1])
            if r["metrics"]["epochs"] == cap and r["metrics"]["best_epoch"] > cap - 10:
                capped.append(run)
    if capped:
        uci += [
            "",
            "Stopped by --max-epochs while still improving (best epoch among the last 10), so their "
            "figures are upper bounds of what these settings reach: " + ", ".join(capped) + ".",
        ]
    # a section is rewritten only where its runs are here (--only refreshes part of the document;
    # write_sections keeps the sections it is not given)
    if len(uci) > uci_rows:
        lines += uci
    real = [
        "",
        "## Real tables",
        "",
        "Test log-likelihood per row of a table model (`" + " ".join(TABLE_ARGS) + "`) beside the "
        "independent-columns baseline (each column's own marginal, fitted by maximum likelihood with the "
        "same column heads). "
        "Numbers are modelled at the precision the file records them in, so each row's likelihood "
        "is a probability, comparable across models.",
        "",
        "| table | rows (train/test) | columns | model test NLL | independent columns | gain | epochs (best) "
        "| train time, wall | train time, CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    real_rows = len(real)
    for name in TABLES:
        r = results.get(f"{name}-2x256-k8")
        if not r or name not in baselines:
            continue
        m, (b, bse) = r["metrics"], baselines[name]
        cfg = json.loads((RUNS / f"{name}-2x256-k8" / "config.json").read_text())
        real.append(
            f"| {name} | {r['n_train']}/{m['test_n']} | {len(cfg['model']['columns'])} | "
            f"{m['test_nll']:.2f} ± {m['test_nll_stderr']:.2f} | {b:.2f} ± {bse:.2f} | "
            f"{b - m['test_nll']:.2f} nats | {m['epochs']} ({m['best_epoch']}) | {m['train_seconds'] / 60:.1f} min | "
            f"{_cpu_minutes(m)} |"
        )
    table_rows = len(real) - real_rows
    hardware = next((r["metrics"].get("hardware") for r in results.values() if r.get("metrics")), "")
    real += [
        "",
        f"Hardware: {hardware}. Wall times are upper bounds: the runs shared the machine with other "
        "work. The CPU time (the training process's, one torch thread: `--threads 1`) is what the wall "
        "time comes down to on a machine the run has to itself; it moves less with the load than the wall "
        "time, but it moves: the `bounds in training` rows of [Bounds in training and the learning "
        "rate](#bounds-in-training-and-the-learning-rate) are the same trainings run again by "
        "`bench/table_recipe.py` (same seed, so the same NLL and epochs) on a less busy machine, in less CPU time.",
        "",
    ]
    if table_rows:
        lines += real
    write_sections(DOC, lines)  # its own sections; bench/train_cost.py's and hand-written ones stay


def _cpu_minutes(metrics: dict) -> str:
    """A run's CPU minutes (metrics.json's train_cpu_seconds; runs from before it have none)."""
    cpu = metrics.get("train_cpu_seconds")
    return "—" if cpu is None else f"{cpu / 60:.1f} min"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated experiment names")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    todo = experiments()
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    started = time.time()

    def one(item: tuple[str, list[str]]) -> tuple[str, dict]:
        name, targs = item
        metrics = train(name, targs, args.fresh, args.threads)
        out: dict = {"metrics": metrics}
        if "--groups" in targs or name.split("-")[1] == "bits":
            out["eval"] = evaluate_on_bits(name, targs[targs.index("--dataset") + 1])
        else:
            cfg = json.loads((RUNS / name / "config.json").read_text())
            out["n_train"] = _train_rows(cfg)
        print(f"{name}: {json.dumps(out.get('eval') or {'test_nll': metrics['test_nll']})}", flush=True)
        return name, out

    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(pool.map(one, todo.items()))
    done = {**_finished(), **results}
    baselines = {n: independent_baseline(n, args.fresh) for n in TABLES if f"{n}-2x256-k8" in done}
    write_doc(done, baselines)
    print(f"wrote {DOC} in {time.time() - started:.0f} s")
    return 0


def _train_rows(cfg: dict) -> int:
    from made.io.tables import read_table

    return len(read_table(Path(cfg["dataset"]))[1])


def _finished() -> dict[str, dict]:
    """Results of runs finished before (so that --only refreshes part of the document)."""
    out: dict[str, dict] = {}
    for name, targs in experiments().items():
        metrics = RUNS / name / "metrics.json"
        if not metrics.exists():
            continue
        entry: dict = {"metrics": json.loads(metrics.read_text())}
        if "--groups" in targs or name.split("-")[1] == "bits":
            entry["eval"] = evaluate_on_bits(name, targs[targs.index("--dataset") + 1])
        else:
            entry["n_train"] = _train_rows(json.loads((RUNS / name / "config.json").read_text()))
        out[name] = entry
    return out


if __name__ == "__main__":
    sys.exit(main())
