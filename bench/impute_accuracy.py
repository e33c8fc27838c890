"""Imputation accuracy of made /impute against scikit-learn's KNNImputer and IterativeImputer and
miceforest, on the shared tables (issue 26, item 4).

    .venv/bin/python bench/impute_accuracy.py [--store model_store] [--tables diamonds,...]
        [--rows 1000] [--train-rows 10000] [--write]

Each table: the first --rows rows of its test split with 20% of their cells hidden at random
(seed 0), the same cells for every method. made: the model `--store/NAME` (NAME: the table's
name with `_` as `-`, or --model TABLE=NAME) through TableEngine.impute with /impute's
defaults, each hidden cell filled with its distribution's median (a number) or most likely
level. The others see the same rows plus --train-rows rows of the training split (complete) to
learn from: numbers standardised, categories one-hot (KNN, k=5; IterativeImputer's
BayesianRidge, 10 rounds; a category's imputed level the largest of its one-hot block), and
miceforest 6 on the raw frame (categories as pandas categoricals, 2 iterations; its
LightGBM models' predictions, mean_match_candidates=0, as mean matching fails on lightgbm >= 4.6). A table
cell "NA" of a nullable number counts as missing for them and is left out of the scores.

Scores over the hidden cells: NRMSE (RMSE / the column's sd over the scored rows' true values),
averaged over the numeric columns, and accuracy over the categorical (and binary) cells.
Needs the bench extra (scikit-learn, miceforest). Prints a markdown table; --write appends it
to docs/impute-bench.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.table_impute_bench import encode, hidden, read_rows  # noqa: E402

DOC = ROOT / "docs" / "impute-bench.md"


def made_fill(engine: Any, values: np.ndarray) -> np.ndarray:
    r = engine.impute(values, seed=1)
    filled = values.copy()
    for i, dist in enumerate(r.distributions):
        for name, d in dist.items():
            c = engine.schema.index(name)
            col = engine.schema.columns[c]
            if col.kind != "numeric":
                filled[i, c] = col.levels.index(max(d, key=lambda level: float(d[level])))
            else:
                q50 = d.get("q50")
                filled[i, c] = np.nan if q50 is None or isinstance(q50, str) else float(q50)
    return filled


def design(schema: Any, values: np.ndarray) -> tuple[np.ndarray, list[tuple[int, slice]]]:
    """Numbers standardised (ABSENT as missing), categories one-hot (NaN rows where unknown)."""
    from made.core.schema import ABSENT

    parts, blocks, at = [], [], 0
    for c, col in enumerate(schema.columns):
        v = values[:, c]
        if col.kind == "numeric":
            x = np.where(v == ABSENT, np.nan, v)
            parts.append(x[:, None])
            blocks.append((c, slice(at, at + 1)))
            at += 1
        else:
            n = len(col.levels)
            oh = np.zeros((len(v), n))
            known = ~np.isnan(v)
            oh[known, v[known].astype(int)] = 1.0
            oh[~known] = np.nan
            parts.append(oh)
            blocks.append((c, slice(at, at + n)))
            at += n
    x = np.concatenate(parts, axis=1)
    mu, sd = np.nanmean(x, axis=0), np.nanstd(x, axis=0) + 1e-9
    return (x - mu) / sd, blocks


def sklearn_fill(schema: Any, values: np.ndarray, train: np.ndarray, imputer: Any) -> np.ndarray:
    both = np.concatenate([values, train])
    x, blocks = design(schema, both)
    done = imputer.fit_transform(x)[: len(values)]
    filled = values.copy()
    raw = design_inverse(schema, both)
    for c, sl in blocks:
        col = schema.columns[c]
        if col.kind == "numeric":
            filled[:, c] = done[:, sl][:, 0] * raw[c][1] + raw[c][0]
        else:
            filled[:, c] = np.argmax(done[:, sl], axis=1)
    return np.where(np.isnan(values), filled, values)


def design_inverse(schema: Any, values: np.ndarray) -> dict[int, tuple[float, float]]:
    """Each numeric column's (mean, sd) as design() standardised it."""
    from made.core.schema import ABSENT

    out = {}
    for c, col in enumerate(schema.columns):
        if col.kind == "numeric":
            v = values[:, c]
            v = v[~np.isnan(v) & (v != ABSENT)]
            out[c] = (float(v.mean()), float(v.std()) + 1e-9)
    return out


def miceforest_fill(schema: Any, values: np.ndarray, train: np.ndarray) -> np.ndarray:
    import miceforest as mf
    import pandas as pd

    from made.core.schema import ABSENT

    both = np.concatenate([values, train])
    frame = {}
    for c, col in enumerate(schema.columns):
        v = both[:, c]
        if col.kind == "numeric":
            frame[f"c{c}"] = np.where(v == ABSENT, np.nan, v)
        else:
            codes = np.where(np.isnan(v), -1, v).astype(int)  # -1: pandas' code of a missing category
            frame[f"c{c}"] = pd.Categorical.from_codes(codes, categories=list(range(len(col.levels))))
    df = pd.DataFrame(frame)
    # mean matching calls a private lightgbm method whose signature lightgbm 4.6 changed: the
    # models' predictions are the imputations (mean_match_candidates=0)
    kernel = mf.ImputationKernel(df, random_state=0, mean_match_candidates=0)
    kernel.mice(2)
    done = kernel.complete_data()
    filled = values.copy()
    for c in range(len(schema.columns)):
        filled[:, c] = np.asarray(done[f"c{c}"].astype(float))[: len(values)]
    return np.where(np.isnan(values), filled, values)


def fill(label: str, engine: Any, values: np.ndarray, train: np.ndarray) -> np.ndarray:
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer

    if label.startswith("made"):
        return made_fill(engine, values)
    if label.startswith("KNN"):
        return sklearn_fill(engine.schema, values, train, KNNImputer(n_neighbors=5))
    if label.startswith("Iterative"):
        return sklearn_fill(engine.schema, values, train, IterativeImputer(max_iter=10, random_state=0))
    return miceforest_fill(engine.schema, values, train)


def score(schema: Any, full: np.ndarray, values: np.ndarray, filled: np.ndarray) -> tuple[float, float]:
    from made.core.schema import ABSENT

    nrmse, right, total = [], 0, 0
    for c, col in enumerate(schema.columns):
        hid = np.isnan(values[:, c])
        truth, guess = full[hid, c], filled[hid, c]
        if col.kind != "numeric":
            right += int((truth == guess).sum())
            total += len(truth)
            continue
        ok = truth != ABSENT
        if ok.sum() < 2:
            continue
        guess = np.where(np.isnan(guess[ok]) | (guess[ok] == ABSENT), np.nanmedian(full[:, c]), guess[ok])
        nrmse.append(float(np.sqrt(np.mean((truth[ok] - guess) ** 2)) / (np.std(truth[ok]) + 1e-12)))
    return float(np.mean(nrmse)) if nrmse else float("nan"), right / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=ROOT / "model_store")
    p.add_argument("--tables", default="diamonds,health_insurance,movies")
    p.add_argument("--model", action="append", default=[], help="TABLE=NAME in the store")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--train-rows", type=int, default=10000)
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    from made.store.versions import open_model
    from service.engine.table_engine import TableEngine

    names = dict(item.split("=", 1) for item in args.model)
    lines = [
        "## Imputation accuracy against scikit-learn and miceforest",
        "",
        f"First {args.rows} test rows per table, 20% of cells hidden (seed 0); the others learn from "
        f"{args.train_rows} training rows too. {os.cpu_count()} logical CPUs.",
        "",
        f"Regenerate: `.venv/bin/python bench/impute_accuracy.py --store {args.store} --tables {args.tables} "
        + "".join(f"--model {m} " for m in args.model)
        + f"--rows {args.rows} --train-rows {args.train_rows}`",
        "",
        "| table | method | NRMSE (numbers, lower is better) | accuracy (categories) | seconds |",
        "|---|---|---:|---:|---:|",
    ]
    for table in args.tables.split(","):
        engine = TableEngine(open_model(args.store, names.get(table, table.replace("_", "-"))))
        schema = engine.schema
        full = encode(schema, read_rows(table, "test", schema.names, args.rows))
        train = encode(schema, read_rows(table, "train", schema.names, args.train_rows))
        values = np.where(hidden(full.shape), np.nan, full)
        methods = ["made /impute (defaults)", "KNNImputer (k=5)", "IterativeImputer", "miceforest (2 iterations)"]
        for label in methods:
            start = time.perf_counter()
            filled = fill(label, engine, values, train)
            seconds = time.perf_counter() - start
            nrmse, acc = score(schema, full, values, filled)
            lines.append(f"| {table} | {label} | {nrmse:.3f} | {acc:.3f} | {seconds:.1f} |")
            print(lines[-1], file=sys.stderr)
    lines.append("")
    table_md = "\n".join(lines)
    print(table_md)
    if args.write:
        DOC.write_text(DOC.read_text() + "\n" + table_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
