"""Imputation accuracy of made /impute against scikit-learn's KNNImputer and IterativeImputer and
miceforest, on the shared tables (issue 26, item 4).

    .venv/bin/python bench/impute_accuracy.py [--store model_store] [--tables diamonds,...]
        [--rows 1000] [--train-rows 10000] [--seeds 0] [--boot 1000] [--write]

Each table: the first --rows rows of its test split (0: all of them) with 20% of their cells
hidden at random, once per hiding seed of --seeds (e.g. 0,1,2), the same cells for every method.
made: the model `--store/NAME` (NAME: the table's name with `_` as `-`, or --model TABLE=NAME)
through TableEngine.impute with /impute's defaults; a hidden category is filled with its most
likely level under the posterior marginal /impute returns (`distributions`: level probabilities,
Rao-Blackwellised from the conditionals the draws were made from; the level /impute's records
carry), a hidden number with its posterior mean (`distributions[...]["mean"]`, of the values
where the column can be NA: the mean minimises the expected squared error, so it is the
estimate NRMSE scores; /impute's records carry the median, `q50`, scored too on a row of its
own). The others see the same rows plus --train-rows rows of the training split (complete) to
learn from: numbers standardised, categories one-hot (KNN, k=5; IterativeImputer's
BayesianRidge, 10 rounds; a category's imputed level the largest of its one-hot block), and
miceforest 6 on the raw frame (categories as pandas categoricals, 2 iterations; its LightGBM
models' predictions, mean_match_candidates=0, as mean matching fails on lightgbm >= 4.6). A
table cell "NA" of a nullable number counts as missing for them and is left out of the scores.

Scores over the hidden cells (all seeds pooled): NRMSE (RMSE / the column's sd over the scored
cells' true values), averaged over the numeric columns, and accuracy over the categorical (and
binary) cells. Standard errors: a bootstrap over the test rows (--boot resamples; a row carries
its hidden cells of every seed; each column's sd kept at its value over all the rows), the same
resampled rows for every method, so the difference
between two methods has its own, paired, standard error: made - the best other method per
score is reported with it. Needs the bench extra (scikit-learn, miceforest). Prints markdown;
--write puts it in docs/impute-bench.md in place of its section "### Accuracy against
scikit-learn and miceforest".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.table_impute_bench import HIDE, encode, read_rows  # noqa: E402

DOC = ROOT / "docs" / "impute-bench.md"
HEADING = "### Accuracy against scikit-learn and miceforest"
MADE, MADE_MEDIAN = "made /impute (defaults)", "made /impute, numbers at their median"
OTHERS = ["KNNImputer (k=5)", "IterativeImputer", "miceforest (2 iterations)"]


def hide(shape: tuple[int, int], seed: int) -> np.ndarray:
    """The cells hidden under a seed (seed 0: bench/table_impute_bench.py's cells)."""
    return np.random.default_rng(seed).random(shape) < HIDE


def made_fill(engine: Any, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """values with each hidden cell at its most likely level or its number's posterior mean; and
    with the numbers at their posterior median instead (what /impute's records carry)."""
    r = engine.impute(values, seed=1)
    filled, median = values.copy(), values.copy()
    for i, dist in enumerate(r.distributions):
        for name, d in dist.items():
            c = engine.schema.index(name)
            col = engine.schema.columns[c]
            if col.kind != "numeric":
                filled[i, c] = median[i, c] = col.levels.index(max(d, key=lambda level: float(d[level])))
                continue
            mean, q50 = d.get("mean"), d.get("q50")
            filled[i, c] = np.nan if mean is None else float(mean)
            median[i, c] = np.nan if q50 is None or isinstance(q50, str) else float(q50)
    return filled, median


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

    if label.startswith("KNN"):
        return sklearn_fill(engine.schema, values, train, KNNImputer(n_neighbors=5))
    if label.startswith("Iterative"):
        return sklearn_fill(engine.schema, values, train, IterativeImputer(max_iter=10, random_state=0))
    return miceforest_fill(engine.schema, values, train)


@dataclass
class Cells:
    """One method's scored cells, summed per test row (over the hiding seeds): per numeric column
    the count, squared error and true values' sum and sum of squares; the categorical cells'
    count and right guesses."""

    num: np.ndarray  # (4, numeric columns, rows)
    right: np.ndarray  # (rows,)
    total: np.ndarray  # (rows,)


def cells(schema: Any, full: np.ndarray, values: np.ndarray, filled: np.ndarray) -> Cells:
    """values, filled: (seeds, rows, columns); full: (rows, columns), the truth."""
    from made.core.schema import ABSENT

    hid = np.isnan(values)
    truth = np.broadcast_to(full, values.shape)
    numeric = [c for c, col in enumerate(schema.columns) if col.kind == "numeric"]
    categorical = [c for c, col in enumerate(schema.columns) if col.kind != "numeric"]
    num = np.zeros((4, len(numeric), full.shape[0]))
    for j, c in enumerate(numeric):
        ok = hid[..., c] & (truth[..., c] != ABSENT)
        t = np.where(ok, truth[..., c], 0.0)
        g = filled[..., c]
        fallback = np.nanmedian(np.where(full[:, c] == ABSENT, np.nan, full[:, c]))
        g = np.where(np.isnan(g) | (g == ABSENT), fallback, g)
        num[:, j] = [ok.sum(0), np.where(ok, (t - g) ** 2, 0.0).sum(0), t.sum(0), (t**2).sum(0)]
    cat = hid[..., categorical]
    right = (cat & (truth[..., categorical] == filled[..., categorical])).sum(axis=(0, 2))
    return Cells(num, right.astype(float), cat.sum(axis=(0, 2)).astype(float))


def true_sd(x: Cells) -> np.ndarray:
    """Each numeric column's sd over its scored cells' true values (all rows once): NRMSE's divisor."""
    n, _, st, st2 = x.num.sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n >= 2, np.sqrt(np.maximum(st2 / n - (st / n) ** 2, 0.0)), np.nan)


def scores(x: Cells, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NRMSE and accuracy under row weights (B, rows): one of each per row of weights. NRMSE's
    divisors stay those of all rows (true_sd): a resample of a few cells of a column can have sd
    0, and the divisor only scales the column."""
    n, sse = (weights @ x.num[k].T for k in range(2))  # (B, numeric columns)
    with np.errstate(divide="ignore", invalid="ignore"):
        col = np.sqrt(sse / n) / (true_sd(x) + 1e-12)
        nrmse = np.nanmean(col, axis=1) if col.shape[1] else np.full(len(weights), np.nan)
        acc = (weights @ x.right) / (weights @ x.total)
    return nrmse, acc


def compare(results: dict[str, Cells], n_rows: int, boot: int) -> dict[str, Any]:
    """Each method's scores with their bootstrap standard errors, and made - the best other."""
    rng = np.random.default_rng(12345)
    weights = np.stack([np.bincount(rng.integers(0, n_rows, n_rows), minlength=n_rows) for _ in range(boot)])
    point = {m: scores(x, np.ones((1, n_rows))) for m, x in results.items()}
    reps = {m: scores(x, weights.astype(float)) for m, x in results.items()}
    out: dict[str, Any] = {"methods": {}, "diff": {}}
    for m in results:
        out["methods"][m] = [(float(point[m][k][0]), float(np.nanstd(reps[m][k]))) for k in range(2)]
    for k, better in ((0, min), (1, max)):
        others = [m for m in OTHERS if m in results and np.isfinite(point[m][k][0])]
        if not others or not np.isfinite(point[MADE][k][0]):
            continue
        best = better(others, key=lambda m: float(point[m][k][0]))
        d = reps[MADE][k] - reps[best][k]
        out["diff"][k] = (best, float(point[MADE][k][0] - point[best][k][0]), float(np.nanstd(d)))
    return out


def run_table(args: argparse.Namespace, table: str, name: str, seeds: list[int]) -> tuple[dict[str, Any], list[str]]:
    from made.store.versions import open_model
    from service.engine.table_engine import TableEngine

    engine = TableEngine(open_model(args.store, name))
    schema = engine.schema
    full = encode(schema, read_rows(table, "test", schema.names, args.rows or None))
    train = encode(schema, read_rows(table, "train", schema.names, args.train_rows))
    values = np.stack([np.where(hide(full.shape, s), np.nan, full) for s in seeds])
    filled: dict[str, list[np.ndarray]] = {m: [] for m in [MADE, MADE_MEDIAN, *OTHERS]}
    seconds = dict.fromkeys(filled, 0.0)
    for v in values:
        start = time.perf_counter()
        mean, median = made_fill(engine, v)
        seconds[MADE] += time.perf_counter() - start
        filled[MADE].append(mean)
        filled[MADE_MEDIAN].append(median)
        for label in OTHERS:
            start = time.perf_counter()
            filled[label].append(fill(label, engine, v, train))
            seconds[label] += time.perf_counter() - start
            print(f"{table} seed: {label} {seconds[label]:.0f} s", file=sys.stderr)
    results = {m: cells(schema, full, values, np.stack(f)) for m, f in filled.items()}
    out = compare(results, len(full), args.boot)
    out["seconds"], out["rows"] = seconds, len(full)
    out["hidden"] = (int(results[MADE].num[0].sum()), int(results[MADE].total.sum()))
    return out, schema.names


def pm(x: tuple[float, float]) -> str:
    return f"{x[0]:.3f} ± {x[1]:.3f}" if np.isfinite(x[0]) else "–"


def diff_text(d: tuple[str, float, float] | None) -> str:
    return "–" if d is None else f"{d[1]:+.3f} ± {d[2]:.3f} ({d[0].split(' ')[0]})"


def sentence(table: str, r: dict[str, Any]) -> str:
    parts = []
    for k, what, sign in ((0, "NRMSE", -1), (1, "accuracy", 1)):
        d = r["diff"].get(k)
        if d is None:
            continue
        best, delta, se = d
        z = sign * delta / se if se > 0 else float("inf") * np.sign(sign * delta)
        where = "better than" if z >= 2 else "worse than" if z <= -2 else "within two standard errors of"
        parts.append(f"{what} {where} {best.split(' ')[0]} (made − it: {delta:+.3f} ± {se:.3f})")
    return f"{table}: made's " + "; its ".join(parts) + "."


def report(args: argparse.Namespace, seeds: list[int], runs: dict[str, dict[str, Any]]) -> str:
    lines = [
        HEADING,
        "",
        f"Test rows per table: {f'the first {args.rows}' if args.rows else 'all'}, 20% of their cells hidden at "
        f"random, hiding seeds "
        f"{','.join(map(str, seeds))} (the same cells for every method); the others learn from {args.train_rows} "
        f"training rows too. ± : standard errors from {args.boot} bootstrap resamples of the test rows, the "
        f"same rows for every method (paired). {os.cpu_count()} logical CPUs.",
        "",
        f"Command: `.venv/bin/python bench/impute_accuracy.py --store {args.store} --tables {args.tables} "
        + "".join(f"--model {m} " for m in args.model)
        + f"--rows {args.rows} --train-rows {args.train_rows} --seeds {args.seeds} --boot {args.boot}`",
        "",
        "| table | rows | hidden cells (numbers / categories) | method | NRMSE (lower is better) "
        "| accuracy (categories) | seconds |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for table, r in runs.items():
        cells_text = f"{r['hidden'][0]} / {r['hidden'][1]}"
        for m, (nrmse, acc) in r["methods"].items():
            secs = "(same call)" if m == MADE_MEDIAN else f"{r['seconds'][m]:.0f}"
            lines.append(f"| {table} | {r['rows']} | {cells_text} | {m} | {pm(nrmse)} | {pm(acc)} | {secs} |")
    lines += [
        "",
        "Paired differences, made (posterior means) − the best other method on each score (± its bootstrap "
        "standard error): negative NRMSE and positive accuracy favour made.",
        "",
        "| table | NRMSE: made − best other | accuracy: made − best other |",
        "|---|---:|---:|",
    ]
    for table, r in runs.items():
        lines.append(f"| {table} | {diff_text(r['diff'].get(0))} | {diff_text(r['diff'].get(1))} |")
    lines += ["", *(sentence(t, r) for t, r in runs.items()), ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    """The doc's section HEADING (to the next heading of level 2 or 3) replaced by text."""
    doc = DOC.read_text()
    start = doc.index(HEADING)
    ends = [at for at in (doc.find("\n## ", start), doc.find("\n### ", start + 1)) if at >= 0]
    end = min(ends) + 1 if ends else len(doc)
    DOC.write_text(doc[:start] + text + "\n" + doc[end:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=ROOT / "model_store")
    p.add_argument("--tables", default="diamonds,health_insurance,movies")
    p.add_argument("--model", action="append", default=[], help="TABLE=NAME in the store")
    p.add_argument("--rows", type=int, default=1000, help="test rows per table (0: all)")
    p.add_argument("--train-rows", type=int, default=10000)
    p.add_argument("--seeds", default="0", help="hiding seeds, comma-separated")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the test rows")
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    names = dict(item.split("=", 1) for item in args.model)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {}
    for table in args.tables.split(","):
        runs[table], _ = run_table(args, table, names.get(table, table.replace("_", "-")), seeds)
        print(report(args, seeds, {table: runs[table]}), file=sys.stderr)
    text = report(args, seeds, runs)
    print(text)
    if args.write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
