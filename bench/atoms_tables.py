"""The shared tables trained with and without the point masses (atoms) `made train` infers
(docs/tables.md, "Point masses"), with the shipped models' settings (the Makefile's TABLE_ARGS).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/atoms_tables.py [--tables diamonds,health_insurance]

For each table: `made schema TABLE_train.csv` (what `made train` infers, atoms included), the same
schema with every column's atoms removed, and `made train --schema` of each with `--hidden 256,256
--masks 8 --order-agnostic --connectivity-agnostic --direct --max-epochs 150 --patience 20 --seed 0
--threads 1`, the two trainings at once (one core each). Prints a markdown table: the columns that
got atoms, valid and test NLL (nats a row, as made train reports them), epochs (best) and the
training's wall time. Runs go to --out (default /tmp/atoms-tables, each started afresh); nothing
in the repo is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import TABLE_MODEL_ARGS  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tables"
_RUN = "import sys; from made.cli import main; sys.exit(main(sys.argv[1:]))"
TABLE_ARGS = [*TABLE_MODEL_ARGS, "--max-epochs", "150", "--patience", "20"]


def made_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", _RUN, *args]


def schemas(table: str, out: Path) -> tuple[Path, Path, list[str]]:
    """The inferred schema (with atoms) and a copy without them (atoms null); the columns that
    have atoms."""
    done = subprocess.run(
        made_argv("schema", str(DATA / f"{table}_train.csv")), capture_output=True, text=True, check=True
    )
    text = done.stdout[done.stdout.index("{") :]
    schema = json.loads(text)
    with_atoms = out / f"{table}-atoms.json"
    with_atoms.write_text(json.dumps(schema, indent=1))
    columns = [f"{c['name']} ({', '.join(f'{a:g}' for a in c['atoms'])})" for c in schema["columns"] if c.get("atoms")]
    for c in schema["columns"]:
        if c["kind"] == "numeric":
            c["atoms"] = None  # null: none (a numeric column that leaves atoms out gets them inferred)
    without = out / f"{table}-no-atoms.json"
    without.write_text(json.dumps(schema, indent=1))
    return with_atoms, without, columns


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="diamonds,health_insurance")
    parser.add_argument("--out", default="/tmp/atoms-tables")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"atoms_tables: {DATA} not found (../shared/data)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for table in args.tables.split(","):
        with_atoms, without, columns = schemas(table, out)
        procs, started = {}, time.perf_counter()
        for label, schema in (("inferred atoms", with_atoms), ("no atoms", without)):
            run = out / f"{table}-{label.replace(' ', '-')}"
            argv = made_argv(
                "train",
                "--dataset",
                str(DATA / f"{table}_train.csv"),
                "--schema",
                str(schema),
                *TABLE_ARGS,
                "--out",
                str(run),
            )
            shutil.rmtree(run, ignore_errors=True)  # a fresh run, not a resumed one
            log = (out / f"{run.name}.log").open("w")
            procs[label] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), run, log)
        for label, (proc, run, log) in procs.items():
            if proc.wait():
                print(f"atoms_tables: training {run} failed; see {log.name}", file=sys.stderr)
                return 1
            log.close()
            m = json.loads((run / "metrics.json").read_text())
            rows.append(
                f"| {table} | {label} | {', '.join(columns) if label == 'inferred atoms' else '—'} "
                f"| {m['valid_nll']:.2f} | {m['test_nll']:.2f} ± {m['test_nll_stderr']:.2f} "
                f"| {m['epochs']} ({m['best_epoch']}) | {m['train_seconds'] / 60:.1f} min |"
            )
        print(f"{table}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print("| table | schema | atoms | valid NLL | test NLL | epochs (best) | training |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
