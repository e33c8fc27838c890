"""A zero-inflated column with and without its point mass (docs/tables.md, "Point masses").

    .venv/bin/python bench/atoms.py [--out /tmp/atoms-bench]

The table of the report: 1,000 rows of a group g (0/1) and an amount `debt`, 70% exact zeros and
the rest exponential with scale 5000, written to two decimals (seed 2). `made schema` infers its
schema (an atom at 0, the amounts on a log scale); `made train --hidden 32 --max-epochs 300`
trains it four ways through `--schema`, each of {no atom, the atom at 0} under each transform
({none: as inferred before atoms, when the zeros kept the amounts off a log scale; log}), and
each model is exported and read by the serving engine: the valid and test NLL (nats a row, as
made train reports them), the share of zeros among 20,000 drawn records, and the mean over the
test rows whose debt is 0 of -log p(debt = 0 | g) (exact: g comes first in the one ordering).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
_RUN = "import sys; from made.cli import main; sys.exit(main(sys.argv[1:]))"


def made(*args: str) -> str:
    """`made ARGS` of this checkout; its stdout."""
    done = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"made {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def write_table(path: Path) -> None:
    rng = np.random.default_rng(2)
    with path.open("w") as f:
        f.write("g,debt\n")
        for _ in range(1000):
            d = 0.0 if rng.random() < 0.7 else round(float(rng.exponential(5000)), 2)
            f.write(f"{int(rng.random() < 0.5)},{d}\n")


def measure(run: Path, store: Path, name: str, test: Path) -> dict[str, float]:
    from made.store.versions import open_model
    from service.engine.table_engine import TableEngine
    from training.export import export_run

    metrics = json.loads((run / "metrics.json").read_text())
    export_run(run, store, name)
    engine = TableEngine(open_model(store, name), threads=1)
    samples = engine.sample(20_000, seed=0)
    rows = np.loadtxt(test, delimiter=",", skiprows=1)
    zeros = rows[rows[:, 1] == 0.0]
    given = zeros.copy()
    given[:, 1] = np.nan
    cost = -(engine.logprob(zeros).logprob - engine.logprob(given).logprob)
    return {
        "valid": metrics["valid_nll"],
        "test": metrics["test_nll"],
        "zeros": float(np.mean(samples[:, 1] == 0.0)),
        "cost": float(cost.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/atoms-bench", help="a folder for the table, runs and store")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "zi.csv"
    write_table(table)
    inferred = json.loads(made("schema", str(table)))
    made("split", str(table), "--force")  # made train's split (seed 0), written once for every run
    share = float(np.mean(np.loadtxt(out / "zi_train.csv", delimiter=",", skiprows=1)[:, 1] == 0.0))
    print(f"zeros in the training split: {share:.1%}; -log of that share: {-np.log(share):.2f} nats\n")
    print("| transform | atoms | valid NLL | test NLL | zeros in samples | -log p(debt = 0 given g) |")
    print("|---|---|---|---|---|---|")
    for transform in ("none", "log"):
        for atoms in ([], [0.0]):
            columns = json.loads(json.dumps(inferred["columns"]))
            debt = columns[1]
            debt.update(transform=transform, atoms=atoms)
            if transform != inferred["columns"][1]["transform"]:
                del debt["loc"], debt["scale"]  # the new transform's, inferred from the training split
            name = f"zi-{transform}-{len(atoms)}"
            schema = out / f"{name}.json"
            schema.write_text(json.dumps({"columns": columns}))
            run = out / "runs" / name
            made(
                "train", "--dataset", str(out / "zi_train.csv"), "--hidden", "32", "--max-epochs", "300",
                "--schema", str(schema), "--out", str(run), "--no-progress",
            )  # fmt: skip
            m = measure(run, out / "store", name, out / "zi_test.csv")
            shown = ", ".join(f"{a:g}" for a in atoms) or "none"
            print(
                f"| {transform} | {shown} | {m['valid']:.2f} | {m['test']:.2f} | {m['zeros']:.1%} | {m['cost']:.2f} |"
            )


if __name__ == "__main__":
    main()
