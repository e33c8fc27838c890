"""made vs SDV's GaussianCopula, CTGAN and TVAE, judged by sdmetrics (docs/quality.md).

Each synthesizer draws the same number of rows (--n, 5,000); sdmetrics' QualityReport (overall,
Column Shapes, Column Pair Trends) and LogisticDetection compare them with the table's TEST
split, which no model saw. made samples a stored model (the shipped diamonds and
health-insurance; movies and the unseen table are trained here, bounded, when not yet in
--store). SDV fits on at most --fit-rows training rows, CTGAN and TVAE for --epochs epochs, so
the whole comparison runs in minutes on 2 busy cores. Beside the scores: the share of made's
sampled rows with a numeric cell outside the training split's range (docs/quality.md: why that
decides Column Pair Trends).

Needs the bench extra (`make bench-extra`). Run from the repository root:
    .venv/bin/python bench/quality.py [--tables diamonds,wine] [--synths made,gaussian_copula] [--seeds 5]

With --seeds N each synthesizer draws N times (made: N sampling seeds of one model; SDV: N fits,
each on its own seeded subsample, each sampled with its seed) and the table reports each score's
mean ± sd over the draws: one draw of 5,000 rows is noisy where a score hangs on a sample's
extremes (Column Pair Trends on diamonds: docs/quality.md).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MADE, ROOT, TABLE_MODEL_ARGS, data_dir  # noqa: E402

OUT = ROOT / "runs" / "quality"
SHIPPED = {"diamonds": "diamonds", "health_insurance": "health-insurance"}  # table -> model in model_store
DROP = {"movies": ["title"]}  # free text: made leaves it out, so every synthesizer does
UNSEEN = "wine"  # scikit-learn's wine (ships with scikit-learn: no download)
SYNTHS = ("made", "gaussian_copula", "ctgan", "tvae")
TRAIN_ARGS = [*TABLE_MODEL_ARGS, "--no-progress"]


def read_csv(text_or_path: Any) -> Any:
    """A table as pandas reads made's CSV: `NA` and empty cells are missing."""
    import pandas as pd

    return pd.read_csv(text_or_path, keep_default_na=False, na_values=["", "NA"])


def wine_splits(folder: Path) -> dict[str, Path]:
    """scikit-learn's wine (178 rows, 13 measurements and the cultivar) split 70/15/15 by a seeded
    shuffle into folder/wine_{train,valid,test}.csv (written once)."""
    from sklearn.datasets import load_wine

    paths = {split: folder / f"wine_{split}.csv" for split in ("train", "valid", "test")}
    if all(p.exists() for p in paths.values()):
        return paths
    frame = load_wine(as_frame=True).frame
    frame["target"] = frame["target"].map({0: "class_0", 1: "class_1", 2: "class_2"})
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    n_train, n_valid = int(0.7 * len(frame)), int(0.15 * len(frame))
    folder.mkdir(parents=True, exist_ok=True)
    frame[:n_train].to_csv(paths["train"], index=False)
    frame[n_train : n_train + n_valid].to_csv(paths["valid"], index=False)
    frame[n_train + n_valid :].to_csv(paths["test"], index=False)
    return paths


def table_paths(table: str) -> dict[str, Path]:
    if table == UNSEEN:
        return wine_splits(OUT / "data")
    return {split: data_dir() / "tables" / f"{table}_{split}.csv" for split in ("train", "valid", "test")}


def made_model(table: str, store: Path, epochs: int) -> tuple[Path, str]:
    """(store, name) of made's model of the table: shipped, or trained here (bounded) once."""
    if table in SHIPPED and (store / SHIPPED[table]).exists():
        return store, SHIPPED[table]
    own = OUT / "store"
    name = table.replace("_", "-")
    if (own / name).exists():
        return own, name
    run = OUT / "runs" / name
    extra = ["--drop-columns", ",".join(DROP[table])] if table in DROP else []
    # a small table (wine: 124 rows) trains by made's small-data recipe and inferred bounds (their
    # margin grows as the table shrinks: docs/tables.md), as a new user's would
    size = [] if table == UNSEEN else ["--max-epochs", str(epochs), "--patience", "15"]
    train = [str(MADE), "train", "--dataset", str(table_paths(table)["train"]), *TRAIN_ARGS, *extra, *size]
    print(f"  training made on {table}: {' '.join(train[2:])}", flush=True)
    subprocess.run([*train, "--out", str(run)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(MADE), "export", str(run), "--store", str(own), "--name", name], check=True)
    return own, name


def made_samples(store: Path, name: str, n: int, seed: int, mask: int | None = None) -> Any:
    """n rows drawn by made's engine (the mixture of its masks, or one mask), read back as pandas
    reads the real CSV, so both sides have the same types."""
    from made.io.csv import to_csv
    from made.store.versions import open_model
    from service.engine.registry import build_engine

    engine: Any = build_engine(open_model(store, name), threads=1)
    schema = engine.schema
    values = engine.sample(n, seed) if mask is None else engine.sample(n, seed, mask=mask)
    records = schema.decode_rows(values)
    return read_csv(io.StringIO(to_csv(schema.names, ([r.get(c) for c in schema.names] for r in records))))


def metadata(frame: Any, categorical: set[str]) -> dict[str, Any]:
    """sdmetrics' single-table metadata: each column numerical or categorical."""
    columns = {c: {"sdtype": "categorical" if c in categorical else "numerical"} for c in frame.columns}
    return {"columns": columns}


def categorical_columns(frame: Any) -> set[str]:
    """Text columns and numbers with at most 2 distinct values (flags such as movies' Action)."""
    return {c for c in frame.columns if frame[c].dtype == object or frame[c].nunique(dropna=True) <= 2}


def align(frame: Any, like: Any, categorical: set[str]) -> Any:
    """frame with like's columns, categorical cells as text (missing: 'NA'), numbers as floats."""
    out = frame[list(like.columns)].copy()
    for c in out.columns:
        if c in categorical:
            out[c] = out[c].map(lambda v: "NA" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
        else:
            out[c] = out[c].astype(float)
    return out


def sdv_samples(kind: str, train: Any, meta: dict[str, Any], args: argparse.Namespace, seed: int) -> Any:
    """n rows from an SDV synthesizer fitted on at most --fit-rows training rows (a subsample drawn
    with `seed`), its sampler seeded with `seed` too (SDV otherwise starts every fitted model's
    sampling from one fixed seed)."""
    from sdv.metadata import Metadata
    from sdv.single_table import CTGANSynthesizer, GaussianCopulaSynthesizer, TVAESynthesizer

    sdv_meta = Metadata.load_from_dict({"tables": {"table": meta}})
    fit = train.sample(n=min(args.fit_rows, len(train)), random_state=seed)
    if kind == "gaussian_copula":
        synth: Any = GaussianCopulaSynthesizer(sdv_meta)
    elif kind == "ctgan":
        synth = CTGANSynthesizer(sdv_meta, epochs=args.epochs, enable_gpu=False)
    else:
        synth = TVAESynthesizer(sdv_meta, epochs=args.epochs, enable_gpu=False)
    synth.fit({"table": fit})  # SDV 2: data is a dict of tables, even for one table
    if hasattr(synth, "_set_random_state"):
        synth._set_random_state(seed)
    sample = synth.sample(num_rows=args.n)
    return sample["table"] if isinstance(sample, dict) else sample


def out_of_range(sample: Any, train: Any, categorical: set[str]) -> float:
    """Share of sampled rows with a numeric cell outside the training split's [min, max]."""
    bad = np.zeros(len(sample), dtype=bool)
    for c in sample.columns:
        if c not in categorical:
            v = sample[c].to_numpy(dtype=float)
            lo, hi = np.nanmin(train[c].to_numpy(dtype=float)), np.nanmax(train[c].to_numpy(dtype=float))
            bad |= (v < lo) | (v > hi)
    return float(bad.mean())


def judge(test: Any, sample: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """sdmetrics' QualityReport and LogisticDetection of sample against the test rows."""
    from sdmetrics.reports.single_table import QualityReport
    from sdmetrics.single_table import LogisticDetection

    report = QualityReport()
    report.generate(test, sample, meta, verbose=False)
    props = report.get_properties().set_index("Property")["Score"]
    pairs = report.get_details("Column Pair Trends")
    return {
        "overall": float(report.get_score()),
        "column_shapes": float(props["Column Shapes"]),
        "column_pair_trends": float(props["Column Pair Trends"]),
        "logistic_detection": float(LogisticDetection.compute(test, sample, meta)),
        "pairs": [
            {"a": r["Column 1"], "b": r["Column 2"], "metric": r["Metric"], "score": float(r["Score"])}
            for _, r in pairs.iterrows()
        ],
    }


def pair_summary(pairs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean pair score by metric (CorrelationSimilarity: two numbers; ContingencySimilarity:
    at least one category) — which kind of pair trails."""
    out: dict[str, list[float]] = {}
    for p in pairs:
        if not np.isnan(p["score"]):
            out.setdefault(p["metric"], []).append(p["score"])
    return {k: round(float(np.mean(v)), 3) for k, v in out.items()}


SCORES = ("overall", "column_shapes", "column_pair_trends", "logistic_detection", "out_of_range", "seconds")


def run_table(table: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per synthesizer: each score's mean and sd over the --seeds draws (seeds --seed,
    --seed + 1, ...: made's sampling seed; SDV's fit subsample and sampling seed), and each draw's."""
    paths = table_paths(table)
    train, test = read_csv(paths["train"]), read_csv(paths["test"])
    train = train.drop(columns=DROP.get(table, []))
    test = test.drop(columns=DROP.get(table, []))
    categorical = categorical_columns(train)
    meta = metadata(train, categorical)
    train_a, test_a = align(train, train, categorical), align(test, train, categorical)
    rows = []
    for synth in args.synths:
        draws = []
        for seed in range(args.seed, args.seed + args.seeds):
            started = time.perf_counter()
            if synth == "made":
                store, name = made_model(table, args.store, args.made_epochs)
                sample = made_samples(store, name, args.n, seed)
            else:
                sample = sdv_samples(synth, train_a, meta, args, seed)
            seconds = time.perf_counter() - started
            sample = align(sample, train, categorical)
            scores = judge(test_a, sample, meta)
            scores.update(
                seed=seed,
                seconds=round(seconds, 1),
                out_of_range=out_of_range(sample, train_a, categorical),
                by_metric=pair_summary(scores["pairs"]),
            )
            draws.append(scores)
            print(
                f"  {table:17s} {synth:16s} seed {seed} overall {scores['overall']:.3f} "
                f"shapes {scores['column_shapes']:.3f} pairs {scores['column_pair_trends']:.3f} "
                f"detection {scores['logistic_detection']:.3f} out-of-range {scores['out_of_range']:.3f} "
                f"({seconds:.0f} s) {scores['by_metric']}",
                flush=True,
            )
        row: dict[str, Any] = {"table": table, "synth": synth, "seeds": len(draws), "draws": draws}
        for key in SCORES:
            v = np.array([d[key] for d in draws], dtype=float)
            row[key], row[f"{key}_sd"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The scores as a markdown table: mean ± sd over the draws (the mean alone for one draw)."""

    def cell(r: dict[str, Any], key: str) -> str:
        mean = f"{r[key]:.1f}" if key == "seconds" else f"{r[key]:.3f}"
        return mean if r["seeds"] < 2 or key == "seconds" else f"{mean} ± {r[key + '_sd']:.3f}"

    lines = [
        "| table | synthesizer | draws | overall | Column Shapes | Column Pair Trends | LogisticDetection | "
        "rows out of range | fit + sample s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['table']} | {r['synth']} | {r['seeds']} | " + " | ".join(cell(r, k) for k in SCORES) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", default=f"diamonds,health_insurance,movies,{UNSEEN}")
    p.add_argument("--synths", default=",".join(SYNTHS))
    p.add_argument("--n", type=int, default=5000, help="rows each synthesizer draws")
    p.add_argument("--fit-rows", type=int, default=5000, help="training rows SDV fits on (a seeded subsample)")
    p.add_argument("--epochs", type=int, default=50, help="CTGAN and TVAE epochs")
    p.add_argument("--made-epochs", type=int, default=100, help="max epochs of a made model trained here")
    p.add_argument("--store", type=Path, default=ROOT / "model_store", help="where made's shipped models are")
    p.add_argument("--seed", type=int, default=0, help="the first draw's seed")
    p.add_argument("--seeds", type=int, default=1, help="draws per synthesizer (seeds --seed, --seed + 1, ...)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of CTGAN and TVAE")
    p.add_argument("--out", type=Path, default=OUT / "quality.json")
    args = p.parse_args(argv)
    args.tables = args.tables.split(",")
    args.synths = args.synths.split(",")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for table in args.tables:
        rows += run_table(table, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
