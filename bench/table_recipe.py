"""The table recipe: bounds in training or after it, and a decaying learning rate, on the shared
tables (docs/tables.md, section "Bounds in training and the learning rate").

    .venv/bin/python bench/table_recipe.py [--tables diamonds,health_insurance,movies] [--jobs 2]
        [--fresh] [--write]

Each table is trained three ways with bench/tables.py's settings (TABLE_ARGS: --hidden 256,256
--masks 8, order- and connectivity-agnostic, direct, at most 150 epochs, patience 20; seed 0, one
torch thread):

- `bounds in training`: as `made train` does by default, the bounds inferred and the truncated
  likelihood trained (what docs/tables.md's first table reports);
- `bounds after training`: the same schema with every bound removed (`made schema`, then
  `made train --schema`), so the untruncated mixture is trained; then `made export` and `made
  export --bounds TRAIN.csv` give the stored model the same bounds, and its test NLL is the
  served, truncated model's (`made export --bounds` rescored it);
- `bounds in training, lr halved every 30 epochs`: the default plus `--lr-step 30 --lr-gamma 0.5`.

Runs go to runs/recipe/TABLE-VARIANT (a finished run is reused unless --fresh), --jobs at a time.
Reports test NLL (nats per row, ± its standard error over the test rows), the best epoch and the
epochs run, and the training process's CPU minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import MADE, data_dir, finished_metrics, fresh_run, made_train, publish_sections  # noqa: E402
from bench.tables import TABLE_ARGS, TABLES  # noqa: E402

DOC = ROOT / "docs" / "tables.md"
RUNS = ROOT / "runs" / "recipe"
HEADING = "Bounds in training and the learning rate"
DECAY = ["--lr-step", "30", "--lr-gamma", "0.5"]
VARIANTS = ("bounds in training", "bounds after training", "bounds in training, lr halved every 30 epochs")


def unbounded_schema(table: str, train_csv: Path) -> Path:
    """`made schema` of the training split (the schema `made train` infers) without its bounds."""
    path = RUNS / f"{table}-schema-unbounded.json"
    out = subprocess.run(
        [str(MADE), "schema", str(train_csv), *TABLES[table]], check=True, capture_output=True, text=True
    )
    schema = json.loads(out.stdout)
    for col in schema["columns"]:
        col.pop("lower", None)
        col.pop("upper", None)
    path.write_text(json.dumps(schema, indent=1))
    return path


def bounded_after(run: Path, train_csv: Path) -> dict[str, Any]:
    """The run exported to runs/recipe/store, bounds added by `made export --bounds`: the stored
    model's metrics (test NLL rescored by the serving engine)."""
    store, name = RUNS / "store", run.name
    manifest = store / name / "1" / "manifest.json"
    done = manifest.exists() and any("upper" in c for c in json.loads(manifest.read_text()).get("columns", []))
    if not done:
        shutil.rmtree(store / name, ignore_errors=True)
        subprocess.run([str(MADE), "export", str(run), "--store", str(store), "--name", name], check=True)
        subprocess.run([str(MADE), "export", "--bounds", str(train_csv), str(store / name / "1")], check=True)
    metrics: dict[str, Any] = json.loads(manifest.read_text())["metrics"]
    return metrics


def one(table: str, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    train_csv = data_dir() / "tables" / f"{table}_train.csv"
    run = RUNS / f"{table}-{VARIANTS.index(variant)}"
    fresh_run(run, args.fresh)
    if finished_metrics(run) is None:
        run.parent.mkdir(parents=True, exist_ok=True)
        if variant == "bounds after training":
            flags = ["--schema", str(unbounded_schema(table, train_csv))]
        else:
            flags = TABLES[table]
        extra = DECAY if "lr halved" in variant else []
        made_train(["--dataset", str(train_csv), *flags, *TABLE_ARGS, *extra], run, 1, RUNS / f"{run.name}.log")
    metrics = finished_metrics(run)
    assert metrics is not None
    served = bounded_after(run, train_csv) if variant == "bounds after training" else metrics
    return {
        "table": table,
        "variant": variant,
        "test_nll": served["test_nll"],
        "test_nll_stderr": served["test_nll_stderr"],
        "best_epoch": metrics["best_epoch"],
        "epochs": metrics["epochs"],
        "cpu_min": metrics.get("train_cpu_seconds", float("nan")) / 60,
    }


def conclusions(results: list[dict[str, Any]]) -> list[str]:
    """Per table: each variant's test NLL against the default's (negative: better)."""
    out = []
    for table in dict.fromkeys(r["table"] for r in results):
        rows = {r["variant"]: r for r in results if r["table"] == table}
        base = rows[VARIANTS[0]]
        moves = ", ".join(
            f"{v}: {rows[v]['test_nll'] - base['test_nll']:+.2f} nats"
            + (" (still improving)" if rows[v]["best_epoch"] >= rows[v]["epochs"] - 1 else "")
            for v in VARIANTS[1:]
            if v in rows
        )
        out.append(f"- {table}, against bounds in training: {moves}.")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default=",".join(TABLES))
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once")
    parser.add_argument("--fresh", action="store_true", help="retrain finished runs")
    parser.add_argument("--write", action="store_true", help=f"put the section in {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    tables = [t for t in args.tables.split(",") if t]
    if not (data_dir() / "tables").exists():
        print(f"skipped: {data_dir() / 'tables'} is absent (the shared tables are needed)", file=sys.stderr)
        return 0
    jobs = [(t, v) for t in tables for v in VARIANTS]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: one(job[0], job[1], args), jobs))
    lines = [
        f"## {HEADING}",
        "",
        "Generated by `.venv/bin/python bench/table_recipe.py --write` (bench/table_recipe.py's docstring): "
        "each shared table trained with the first table's settings (`" + " ".join(TABLE_ARGS) + "`, seed 0) "
        "three ways. `bounds after training`: the untruncated mixture trained (the bounds removed from the "
        "inferred schema), then the same bounds added by `made export --bounds`, and the served, truncated "
        "model scored. The last variant adds `" + " ".join(DECAY) + "`. One seed each: a validation curve "
        "that moves by a nat or two between epochs decides where patience stops a run. The CPU times are "
        "these runs' own (`runs/recipe/`): the `bounds in training` rows are the same trainings as those "
        "of [Real tables](#real-tables), whose CPU times differ by the machine's load alone.",
        "",
        "| table | training | test NLL | best epoch (epochs run) | train time, CPU |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['table']} | {r['variant']} | {r['test_nll']:.2f} ± {r['test_nll_stderr']:.2f} "
            f"| {r['best_epoch']} ({r['epochs']}) | {r['cpu_min']:.1f} min |"
        )
    lines += ["", *conclusions(results), ""]
    publish_sections(lines, DOC, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
