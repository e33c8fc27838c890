"""Why made's Column Pair Trends trails (docs/quality.md): the same 5,000 rows of made's model of a
table changed one way at a time, each judged by sdmetrics against the test split as
bench/quality.py judges them.

Variants: `as stored` (the engine's sample of the model as its manifest has it, the mixture of
its masks); `no bounds` (a copy of the model without lower/upper in its manifest: untruncated
heads, as before bounds); `no bounds then clipped` (those cells clipped to the training split's range
after the fact, a proxy only); `bounds = train range` (the same network with the training
split's exact [min, max] as bounds: made.core.heads' truncated head); `bounds inferred` (the
bounds `made train` infers now); `margin M` (--margins: the training range widened by M of it on
either side, not below 0 where no value is negative, each column's held-out values kept inside as
`made train` keeps them); `mask-K` (one mask of the
ensemble instead of the mixture); `gaussian_copula` (SDV's, for reference: one fit, drawn
again for each seed); `gaussian_copula refit` (a fit per seed on its own seeded subsample, as
bench/quality.py fits it); `training rows`
(real rows of the training split: what the judge gives the data's own distribution); and, for every
variant, Column Pair Trends
re-scored with the TEST split's bin edges for both sides (`pairs@real-bins`), which separates
what the model gets wrong about pairs from what the judge's per-dataset binning adds (sdmetrics
0.32 bins each dataset's numeric columns into 10 equal-width bins between ITS OWN min and max).

--first-seed S draws seeds S..S+N-1 instead of 0..N-1 (fresh draws of the same variants);
--paired "A,B" then prints the per-draw difference of Column Pair Trends, B minus A, over the
same seeds (mean and its standard error, and in how many draws B is higher): the made variants
share one network and one seed a draw, so their difference is measured far more finely than
either mean.

    .venv/bin/python bench/quality_why.py --table diamonds [--masks 8] [--n 5000] [--margins 0.1,0.0144]
        [--seeds 3] [--first-seed 0] [--paired "margin 0.1,as stored"]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import quality  # noqa: E402


def margin_bounds(values: np.ndarray, held: np.ndarray, margin: float, decimals: int | None) -> tuple[float, float]:
    """The training values' [min, max] widened by `margin` of the range on either side (not below
    0 where no value is negative), moved outwards to the resolution, then out to any held-out value
    beyond it (made.io.tables.cover_splits)."""
    lo, hi = float(values.min()), float(values.max())
    lower, upper = lo - margin * (hi - lo), hi + margin * (hi - lo)
    if lo >= 0:
        lower = max(lower, 0.0)
    if decimals is not None:
        r = 10.0**-decimals
        lower = round(float(np.floor(round(lower / r, 6))) * r, max(decimals, 0))
        upper = round(float(np.ceil(round(upper / r, 6))) * r, max(decimals, 0))
    if len(held):
        lower, upper = min(lower, float(held.min())), max(upper, float(held.max()))
    return lower, upper


def bounds_copy(
    store: Path, name: str, train: Any, categorical: set[str], bounds: str, held: Any = None
) -> tuple[Path, str]:
    """A copy of the stored model with other bounds in its manifest, the same weights:
        bounds="none" drops them (the untruncated heads of a model without bounds), "range" sets
        each numeric column's to the training split's exact [min, max], "inferred" to what `made
        train` infers from the training split (made.io.tables.numeric_bounds: the range widened by
        10%, not below 0 where no value is negative), "margin:M" to margin_bounds (held: the held-out
    rows, kept inside), all read by truncated heads."""
    from made.store.versions import latest_version

    version = latest_version(store, name)
    where = quality.OUT / f"bounds-{bounds.replace(':', '-')}"
    dest = where / name / version
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(store / name / version, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    for col in manifest["columns"]:
        if col["kind"] != "numeric":
            continue
        col.pop("lower", None), col.pop("upper", None)
        if bounds != "none" and col["name"] in train and col["name"] not in categorical:
            values = train[col["name"]].to_numpy(dtype=float)
            values = values[~np.isnan(values)]
            if bounds == "range":
                col["lower"], col["upper"] = float(values.min()), float(values.max())
            elif bounds.startswith("margin:"):
                h = held[col["name"]].to_numpy(dtype=float)
                h = h[~np.isnan(h)]
                col["lower"], col["upper"] = margin_bounds(values, h, float(bounds[7:]), col.get("decimals"))
            else:  # as `made train` infers them now (made.io.tables)
                from made.io.tables import numeric_bounds

                col["lower"], col["upper"] = numeric_bounds(values, col.get("decimals"))
    # its recorded answers (reference.json) were for the stored bounds: the copy goes without them
    manifest["files"].pop("reference.json", None)
    (dest / "reference.json").unlink(missing_ok=True)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return where, name


def pairs_on_real_bins(test: Any, sample: Any, meta: dict[str, Any]) -> float:
    """Column Pair Trends as sdmetrics 0.32 computes it (the same pairs, thresholds and metrics),
    but both sides' numbers binned on the test split's edges (cells outside: first/last bin)."""
    from sdmetrics.column_pairs.statistical import ContingencySimilarity
    from sdmetrics.reports.single_table import QualityReport

    report = QualityReport()
    report.generate(test, sample, meta, verbose=False)
    details = report.get_details("Column Pair Trends")
    cats = {c for c, m in meta["columns"].items() if m["sdtype"] == "categorical"}
    scores = []
    for _, row in details.iterrows():
        if np.isnan(row["Score"]):
            continue
        a, b = row["Column 1"], row["Column 2"]
        if row["Metric"] == "CorrelationSimilarity":
            scores.append(float(row["Score"]))
            continue
        cols = []
        for c in (a, b):
            if c in cats:
                cols.append((test[c], sample[c]))
            else:
                edges = np.histogram_bin_edges(test[c].dropna())
                cols.append(
                    tuple(
                        np.digitize(np.clip(s.to_numpy(dtype=float), edges[0], edges[-1]), edges).astype(str)
                        for s in (test[c], sample[c])
                    )
                )
        import pandas as pd

        real = pd.DataFrame({a: cols[0][0], b: cols[1][0]})
        synth = pd.DataFrame({a: cols[0][1], b: cols[1][1]})
        scores.append(float(ContingencySimilarity.compute(real, synth)))
    return float(np.mean(scores))


def scores_of(
    test: Any, sample: Any, meta: dict[str, Any], train: Any, cats: set[str], detection: bool
) -> dict[str, float]:
    """The judge's figures of one sample (LogisticDetection only when asked: it is the slow one)."""
    from sdmetrics.reports.single_table import QualityReport
    from sdmetrics.single_table import LogisticDetection

    r = QualityReport()
    r.generate(test, sample, meta, verbose=False)
    props = r.get_properties().set_index("Property")["Score"]
    details = r.get_details("Column Pair Trends")
    counted = details[details["Meets Threshold?"].astype("boolean").fillna(False)]
    by_metric = counted.groupby("Metric")["Score"].mean()
    return {
        "overall": float(r.get_score()),
        "shapes": float(props["Column Shapes"]),
        "pairs": float(props["Column Pair Trends"]),
        "correlation": float(by_metric.get("CorrelationSimilarity", np.nan)),
        "contingency": float(by_metric.get("ContingencySimilarity", np.nan)),
        "pairs@real-bins": pairs_on_real_bins(test, sample, meta),
        "detection": float(LogisticDetection.compute(test, sample, meta)) if detection else float("nan"),
        "out-of-range": quality.out_of_range(sample, train, cats),
    }


KEYS = ("overall", "shapes", "pairs", "correlation", "contingency", "pairs@real-bins", "detection", "out-of-range")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The options, and --paired's two variants (none where not asked)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", default="diamonds")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--masks", type=int, default=8, help="single-mask variants to try (0: none)")
    p.add_argument("--seeds", type=int, default=3, help="draws of each variant (seeds 0..N-1): mean and spread")
    p.add_argument("--store", type=Path, default=quality.ROOT / "model_store")
    p.add_argument("--fit-rows", type=int, default=5000)
    p.add_argument("--made-epochs", type=int, default=100)
    p.add_argument("--detection", action="store_true", help="also LogisticDetection (slower)")
    p.add_argument("--variants", default="", help="only these variants (comma-separated labels; none holds a comma)")
    p.add_argument("--margins", default="", help="bound margins to try, shares of the range (variants `margin M`)")
    p.add_argument("--first-seed", type=int, default=0, help="the first draw's seed (draws S..S+N-1)")
    p.add_argument("--paired", default="", help='"A,B": Column Pair Trends of B minus A, draw by draw')
    args = p.parse_args(argv)
    paired = [v.strip() for v in args.paired.split(",") if v.strip()]
    if paired and len(paired) != 2:
        p.error('--paired takes two variants, "A,B"')
    return args, paired


def main(argv: list[str] | None = None) -> int:
    args, paired = parse_args(argv)
    warnings.filterwarnings("ignore")
    paths = quality.table_paths(args.table)
    train = quality.read_csv(paths["train"]).drop(columns=quality.DROP.get(args.table, []))
    test = quality.read_csv(paths["test"]).drop(columns=quality.DROP.get(args.table, []))
    cats = quality.categorical_columns(train)
    meta = quality.metadata(train, cats)
    train_a, test_a = quality.align(train, train, cats), quality.align(test, train, cats)
    store, name = quality.made_model(args.table, args.store, args.made_epochs)
    unbounded = bounds_copy(store, name, train_a, cats, "none")
    ranged = bounds_copy(store, name, train_a, cats, "range")
    inferred = bounds_copy(store, name, train_a, cats, "inferred")
    import pandas as pd

    held = pd.concat([quality.read_csv(paths[s]) for s in ("valid", "test")])
    held = quality.align(held.drop(columns=quality.DROP.get(args.table, [])), train, cats)
    margins = {
        f"margin {m}": bounds_copy(store, name, train_a, cats, f"margin:{m}", held)
        for m in args.margins.split(",")
        if m
    }

    def clip(sample: Any) -> Any:
        out = sample.copy()
        for c in out.columns:
            if c not in cats:
                out[c] = out[c].clip(np.nanmin(train_a[c]), np.nanmax(train_a[c]))
        return out

    def made(where: tuple[Path, str], seed: int, mask: int | None = None) -> Any:
        return quality.align(quality.made_samples(*where, args.n, seed, mask), train, cats)

    args.epochs, args.threads, args.seed = 0, 1, 0
    from sdv.metadata import Metadata
    from sdv.single_table import GaussianCopulaSynthesizer

    copula = GaussianCopulaSynthesizer(Metadata.load_from_dict({"tables": {"table": meta}}))
    copula.fit({"table": train_a.sample(n=min(args.fit_rows, len(train_a)), random_state=0)})

    def copula_sample(seed: int) -> Any:
        drawn = copula.sample(num_rows=args.n)  # each call draws afresh
        return quality.align(drawn["table"] if isinstance(drawn, dict) else drawn, train, cats)

    draws: dict[str, Any] = {
        "as stored": lambda seed: made((store, name), seed),
        "no bounds": lambda seed: made(unbounded, seed),
        "no bounds then clipped": lambda seed: clip(made(unbounded, seed)),
        "bounds = train range": lambda seed: made(ranged, seed),
        "bounds inferred": lambda seed: made(inferred, seed),
        **{label: (lambda seed, where=where: made(where, seed)) for label, where in margins.items()},
        **{f"mask-{k}": (lambda seed, k=k: made((store, name), seed, k)) for k in range(args.masks)},
        "gaussian_copula": copula_sample,
        "gaussian_copula refit": lambda seed: quality.align(
            quality.sdv_samples("gaussian_copula", train_a, meta, args, seed), train, cats
        ),
        "training rows": lambda seed: train_a.sample(n=min(args.n, len(train_a)), random_state=seed),
    }
    if args.variants:
        draws = {k: v for k, v in draws.items() if k in args.variants.split(",")}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    shown = f"seeds {seeds[0]}-{seeds[-1]}" if args.first_seed else f"{args.seeds} draws"
    print(f"{args.table}: mean (sd) over {shown} of {args.n} rows")
    pairs = print_variants(draws, seeds, lambda sample: scores_of(test_a, sample, meta, train_a, cats, args.detection))
    if paired:
        print_paired(pairs, *paired)
    return 0


def print_variants(draws: dict[str, Any], seeds: range, score: Any) -> dict[str, np.ndarray]:
    """The table of every variant's scores over the seeds (mean and sd); each variant's Column
    Pair Trends draw by draw."""
    print("| variant | " + " | ".join(KEYS) + " |\n|---|" + "---|" * len(KEYS))
    pairs: dict[str, np.ndarray] = {}
    for label, draw in draws.items():
        runs = [score(draw(seed)) for seed in seeds]
        pairs[label] = np.array([r["pairs"] for r in runs])
        cells = []
        for key in KEYS:
            v = np.array([r[key] for r in runs])
            cells.append("—" if np.isnan(v).all() else f"{v.mean():.3f} ({v.std(ddof=1) if len(v) > 1 else 0:.3f})")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    return pairs


def print_paired(pairs: dict[str, np.ndarray], a: str, b: str) -> None:
    """Column Pair Trends of variant b minus variant a, draw by draw over the same seeds."""
    diff = pairs[b] - pairs[a]
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
    print(
        f"\nColumn Pair Trends, {b} minus {a}, draw by draw over the same seeds: {diff.mean():+.4f} "
        f"(standard error {se:.4f}); {b} higher in {int((diff > 0).sum())} of {len(diff)} draws"
    )


if __name__ == "__main__":
    raise SystemExit(main())
