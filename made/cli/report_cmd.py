"""`made report MODEL TEST_CSV --out DIR`: a quality report of a stored table model against
held-out rows (service.batch.report), as PNG plots and one HTML page."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path

from made.core.errors import ConfigError


def add_report(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # the other commands' help (no "(default: None)") and --seed
    from made.cli.parser import _DefaultsFormatter, _seed_arg

    p = sub.add_parser(
        "report",
        help="compare a table model's samples with held-out rows: plots (PNG) and one HTML page",
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        help="a model: its name in --store, STORE/NAME (its highest version) or STORE/NAME/VERSION",
    )
    p.add_argument(
        "test_csv", metavar="TEST_CSV", nargs="?", help="held-out rows with the model's columns (CSV or Parquet)"
    )
    # the contract's spelling: made report --store DIR --name M --dataset TEST.csv --output DIR
    p.add_argument("--name", default=None, help="MODEL as a name in --store")
    p.add_argument("--dataset", default=None, metavar="TEST_CSV", help="TEST_CSV as an option")
    p.add_argument(
        "--out",
        "--output",  # the contract's name
        dest="out",
        required=True,
        metavar="DIR",
        help="folder of index.html, its PNGs and scores.json",
    )
    p.add_argument("--store", default="model_store", help="model store of a MODEL given by name")
    p.add_argument("--n", type=int, default=5000, help="how many rows to sample")
    p.add_argument("--seed", type=_seed_arg, default=0, help="same seed, same samples")
    p.set_defaults(func=cmd_report)


def model_location(model: str, store: str) -> tuple[Path, str, str | None]:
    """(store, name, version or None) of MODEL: a version folder (it holds manifest.json), a
    model folder (it holds versions), or a name in --store."""
    path = Path(model)  # os.path's tests, since pathlib's raise on a name too long
    if os.path.isfile(path / "manifest.json"):
        return path.parent.parent, path.parent.name, path.name
    if os.path.isdir(path) and any(p.is_dir() for p in path.iterdir()):
        return path.parent, path.name, None
    if "/" in model or not model:
        raise ConfigError(f"model {model!r} is not a model folder (STORE/NAME or STORE/NAME/VERSION)")
    return Path(store), model, None


def cmd_report(args: argparse.Namespace) -> int:
    from made.cli.commands import split_file_beside
    from made.store.versions import open_model
    from service.batch.report import write_report

    if not args.verbose:  # the engine's "loaded model" line is noise here; errors stay one line
        logging.getLogger("made.engine").setLevel(logging.WARNING)
    given = [v for v in (args.model, args.test_csv) if v is not None]
    if args.name is not None or args.dataset is not None:  # --name M --dataset TEST.csv for MODEL TEST_CSV
        if len(given) > int(args.name is None) + int(args.dataset is None):
            raise ConfigError("give the model and the test rows once: MODEL TEST_CSV, or --name and --dataset")
        args.model = args.name if args.name is not None else given.pop(0) if given else None
        args.test_csv = args.dataset if args.dataset is not None else given.pop(0) if given else None
    if args.model is None or args.test_csv is None:
        raise ConfigError("made report needs a model and held-out rows: MODEL TEST_CSV (or --name and --dataset)")
    if not Path(args.test_csv).is_file():
        raise ConfigError(f"TEST_CSV {args.test_csv} is not a file")
    # the one table made train split (shop.csv beside shop_train/_valid/_test.csv): its test split,
    # as made evaluate scores it, not the whole file, whose training rows flatter the model
    args.test_csv = split_file_beside(args.test_csv, "test", "made report", doing="comparing samples with")
    store, name, version = model_location(args.model, args.store)
    model = open_model(store, name, version)
    report = write_report(model, Path(args.test_csv), Path(args.out), args.n, args.seed)
    q = report.quality
    print(
        json.dumps(
            {
                "report": str(Path(args.out) / "index.html"),
                "model": model.name,
                "version": model.version,
                "rows": report.rows,
                "overall": _score(q.overall),
                "column_shapes": _score(q.column_shapes),
                "column_pair_trends": _score(q.column_pair_trends),
            },
            allow_nan=False,
        )
    )
    return 0


def _score(value: float) -> float | None:
    """A score as printed: 4 decimals, or None (null, as in scores.json) where it cannot be
    computed (NaN, which JSON does not have)."""
    return None if math.isnan(value) else round(value, 4)
