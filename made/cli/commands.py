"""The `made` commands, one function each (`cmd_NAME(args) -> exit status`): the parser
(made.cli.parser) maps each subcommand to its function.

Heavy imports (torch, onnxruntime, fastapi) happen inside each command, so that the serving
image, which has no torch, can still run `made serve`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from made.core.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from made.core.schema import Schema
    from made.io.data import Dataset
    from made.io.tables import TableDataset
    from training.train import TrainConfig


def train_config(args: argparse.Namespace, dims: int, schema: Schema | None = None) -> TrainConfig:
    """The TrainConfig that `made train` arguments describe (imports torch); with a schema, a
    model of the table's columns."""
    from training.model import MADEConfig
    from training.table_model import TableMADEConfig
    from training.train import TrainConfig

    connectivity = args.connectivity_agnostic or (args.masks > 1 and not args.order_agnostic)
    bits_only = {"--activation": args.activation != "relu", "--init": args.init != "default"}
    bits_only["--resample-masks"] = args.resample_masks
    if schema is not None and any(bits_only.values()):
        flag = next(f for f, used in bits_only.items() if used)
        raise ConfigError(
            f"{flag} is for bit data; table models (--schema, --groups, a table) train ReLU units as built"
        )
    shape = dict(
        hidden=args.hidden,
        n_masks=args.masks,
        order_agnostic=args.order_agnostic,
        connectivity_agnostic=connectivity,
        random_ordering=args.random_ordering,
        direct=args.direct,
        mask_seed=args.seed,
    )
    model = (
        MADEConfig(dims=dims, activation=args.activation, init=args.init, **shape)  # type: ignore[arg-type]
        if schema is None
        else TableMADEConfig(columns=schema.to_json(), **shape)  # type: ignore[arg-type]
    )
    lr = args.lr if args.lr is not None else (1.0 if args.optimizer == "adadelta" else 1e-3)
    # every other TrainConfig field that `made train` has an option of, as given
    names = [f.name for f in fields(TrainConfig) if f.name not in ("model", "lr") and hasattr(args, f.name)]
    return TrainConfig(model=model, lr=lr, **{name: getattr(args, name) for name in names})


def training_data(args: argparse.Namespace) -> Dataset | TableDataset:
    """The data of `made train`'s arguments (made.io.training_data reads it): bits (.npz, CSV of
    0/1, .amat), bits read as categories (--groups), or a table (a CSV with a header row,
    Parquet, or any data with --schema)."""
    from made.core.errors import DataError
    from made.core.schema import Schema
    from made.io.training_data import load_training_data

    drop = tuple(c.strip() for c in (args.drop_columns or "").split(",") if c.strip())
    if args.groups and (args.schema or drop):
        raise DataError("--groups reads bit data as categories; it does not go with --schema or --drop-columns")
    schema = Schema.read(args.schema) if args.schema else None
    return load_training_data(args.dataset, schema=schema, groups=args.groups, drop_columns=drop)


def cmd_train(args: argparse.Namespace) -> int:
    from made.core.masks import validate_architecture
    from made.io.data import check_image_shape
    from made.io.tables import TableDataset

    # bad data and impossible architectures are refused before the seconds of importing torch
    _split_single_table(args)
    data = training_data(args)
    if not isinstance(data, TableDataset) and not args.schema and not args.groups:
        _note_headered_bits(Path(args.dataset))
    validate_architecture(data.dims, args.hidden, args.masks)
    if isinstance(data, TableDataset) and args.image_shape:  # was kept in config.json, and dropped by export
        raise ConfigError("--image-shape is for bit data (pixels); a model of a table's columns has no image")
    args.image_shape = check_image_shape(args.image_shape, data.dims) or data.image_shape
    schema = data.schema if isinstance(data, TableDataset) else None
    if schema is not None and args.rebinarize:
        raise ConfigError("--rebinarize is for bit data drawn from grayscale images, not for tables")

    from training.train import Trainer

    cfg = train_config(args, data.dims, schema)
    cfg.model.mask_set()  # refuse impossible architectures before touching RUN_DIR
    if isinstance(data, TableDataset) and not args.groups:  # a table's columns (not bits read as categories)
        from made.cli.schema_cmd import print_schema

        origin = f"from {args.schema}" if args.schema else "inferred from the training split; edit it with made schema"
        print_schema(data.schema, data.notes, origin, "made train")
    if args.threads or schema is not None:
        import torch

        # a table model's small matrices gain little from more threads and lose much on a busy
        # machine (docs/tables.md "Training cost"): one, unless --threads says otherwise
        torch.set_num_threads(args.threads or 1)
    metrics = Trainer(cfg, args.out, data).run(progress=not args.no_progress)
    print(json.dumps({k: metrics[k] for k in ("valid_nll", "test_nll", "test_nll_stderr", "best_epoch")}))
    return 0


def _note_headered_bits(path: Path) -> None:
    """A CSV of named columns whose cells are all 0/1 trains as bits: say so, and how to keep the
    names (a table of binary columns, through the schema made schema writes)."""
    from made.io.tables import is_headered_bits

    if is_headered_bits(path):
        base = path.name.replace("_train", "") if "_train" in path.stem else path.name
        if not (path.parent / base).is_file():  # h_train.csv given as it is: no h.csv to name
            base = path.name
        print(
            f"made train: {path.name} holds only 0/1 cells: trained as a model of bits, its columns read by "
            f"position (their names are not kept); to model it as a table of named binary columns, "
            f"`made schema {base} --out schema.json` and train with --schema schema.json",
            file=sys.stderr,
        )


def _split_single_table(args: argparse.Namespace) -> None:
    """`made train --dataset one.csv`, a table with no split files beside it: split it as `made
    split` does (seed --seed), or use the split files an earlier call wrote, and train on those."""
    from made.core.errors import DataError
    from made.io.data import split_files
    from made.io.split import split_paths, split_table
    from made.io.tables import is_headered_bits, is_table_file

    path = Path(args.dataset)
    if args.groups or not path.is_file() or split_files(path):
        return
    if not (is_table_file(path) or path.suffix == ".parquet" or is_headered_bits(path)):
        return
    targets = split_paths(path)
    there = [p for p in targets.values() if p.exists()]
    if there and len(there) < len(targets):
        raise DataError(f"{there[0]} exists without the other split files; write them with made split --force")
    if there:
        print(
            f"made train: training on the split files of {path.name} beside it ({targets['train'].name}, ...)",
            file=sys.stderr,
        )
        warn_stale_splits(path, targets, "made train")
    else:
        split_table(path, seed=args.seed)
        names = ", ".join(p.name for p in targets.values())
        print(
            f"made train: {path.name} has no split files; split it 80/10/10 by seed {args.seed} into {names}",
            file=sys.stderr,
        )
    args.dataset = str(targets["train"])


def cmd_export(args: argparse.Namespace) -> int:
    from training.export import export_run, upgrade

    if args.upgrade:
        for upgraded in upgrade(args.upgrade):
            print(str(upgraded))
        return 0
    if args.bounds:
        from made.cli.schema_cmd import export_bounds

        if not args.run_dir or args.store or args.name or args.reference:
            raise ConfigError("made export --bounds DATASET takes one version directory, STORE/NAME/VERSION")
        print(str(export_bounds(Path(args.run_dir), dataset_path(args.bounds))))
        return 0
    if args.reference:
        return _export_reference(args)
    if not (args.run_dir and args.store and args.name):
        raise ConfigError("made export needs a run directory, --store and --name (or --upgrade PATH)")
    version_dir = export_run(
        args.run_dir, args.store, args.name, args.version, args.weights, image_shape=args.image_shape
    )
    from made.store.versions import latest_version

    served = latest_version(Path(args.store), args.name)
    if served != version_dir.name:  # --version below the highest, or not a number
        print(
            f"made export: version {version_dir.name} is not the one served: a server serves the highest "
            f"version, {served} (numbers rank above names)",
            file=sys.stderr,
        )
    print(str(version_dir))
    return 0


def _export_reference(args: argparse.Namespace) -> int:
    """`made export --reference DATASET STORE/NAME/VERSION`: reference.json added to a version in
    place, its held-out log p from the serving engine."""
    from made.store.versions import add_reference
    from service.engine.evaluate import version_reference
    from service.engine.runtime import requested_providers
    from service.settings import load_settings

    if not args.run_dir or args.store or args.name:
        raise ConfigError("made export --reference DATASET takes one version directory, STORE/NAME/VERSION")
    settings = load_settings()
    reference = version_reference(
        args.run_dir,
        split_file_beside(dataset_path(args.reference), args.reference_split, "made export"),
        args.reference_split,
        requested_providers(settings.providers),
        settings.threads or None,
    )
    print(str(add_reference(Path(args.run_dir), reference)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from service.engine.evaluate import evaluate_store_model
    from service.engine.runtime import requested_providers
    from service.settings import load_settings

    settings = load_settings()  # MADE_PROVIDERS and MADE_THREADS, as for `made serve` (a bad one: one line)
    result = evaluate_store_model(
        args.store,
        args.name,
        split_file_beside(args.dataset, args.split, "made evaluate"),
        args.split,
        args.masks,
        requested_providers(settings.providers),
        settings.threads or None,
    )
    print(json.dumps(result))
    return 0


def warn_stale_splits(path: Path, targets: dict[str, Path], command: str) -> None:
    """A warning on stderr where `path` changed after the split files (`targets`) a command is
    about to read were written from it (made.io.split.stale_splits)."""
    from made.io.split import stale_splits

    stale = stale_splits(path, targets)
    if stale:
        print(f"{command}: warning: {stale}", file=sys.stderr)


def split_file_beside(dataset: str, split: str, command: str, doing: str = "scoring") -> str:
    """--dataset as given, or for one table file that `made train` (or `made split`) split into
    NAME_train/_valid/_test.csv beside it, the file of `split`, said on stderr: `made train
    --dataset shop.csv` trains on shop_train.csv, so the same --dataset scores shop_test.csv,
    not the whole file (its training rows among them) under the name of the test split. `doing`
    says what the command does with it ("scoring")."""
    from made.core.errors import DataError
    from made.io.data import split_files
    from made.io.split import split_paths

    path = Path(dataset)
    if not path.is_file() or split_files(path):
        return dataset
    try:
        targets = split_paths(path)
    except DataError:
        return dataset
    if not all(p.is_file() for p in targets.values()):
        return dataset
    print(
        f"{command}: {path.name} has split files beside it, as made train writes them: {doing} its {split} "
        f"split, {targets[split].name}",
        file=sys.stderr,
    )
    warn_stale_splits(path, targets, command)
    return str(targets[split])


def cmd_score(args: argparse.Namespace) -> int:
    from service.batch.score import score_file

    if not args.verbose:  # the engine's "loaded model" line is noise here; errors stay one line
        logging.getLogger("made.engine").setLevel(logging.WARNING)
    warnings: list[str] = []
    result = score_file(
        args.store,
        args.name,
        args.input,
        args.output,
        version=args.version,
        conditionals=args.conditionals,
        batch_size=args.batch_size,
        ray=args.ray,
        progress=not args.no_progress,
        threads=args.threads or None,
        escape_formulas=not args.no_escape_formulas,
        warn=warnings.append,
        impossible=args.impossible,
        stderr=args.stderr,
    )
    for text in warnings:  # once scored: a refused input's error stays its one line
        print(f"made score: warning: {text}", file=sys.stderr)
    print(json.dumps(result.to_json()))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from made.io.split import split_table

    written = split_table(args.csv, valid=args.valid, test=args.test, seed=args.seed, out=args.out, force=args.force)
    print(json.dumps({split: str(path) for split, path in written.items()}))
    return 0


def _given_row(schema: Schema, given: list[str]) -> object:
    """--given COLUMN=VALUE ... (one flag or several) -> one row of encoded cells (NaN where not
    given), each value read as a CSV cell of its column is (made.io.csv.table_cell); or --given
    JSON, an object of {column: value} as POST /sample's `given` reads it (numbers as numbers,
    "NA" absent). A column given twice is refused, not decided by the last one."""
    import numpy as np

    from made.core.errors import DataError
    from made.io.csv import UNKNOWN_CELL, table_cell

    row = np.full(len(schema), np.nan)
    seen: dict[str, str] = {}

    def column(name: str, item: str) -> int:
        if name not in schema.names:
            from service.core.records import LISTED_COLUMNS

            names = schema.names
            listed = (
                ", ".join(names)
                if len(names) <= LISTED_COLUMNS
                else f"{len(names)} columns: {', '.join(names[:3])}, ..., {names[-1]}"
            )
            raise DataError(f"--given {item!r} is not COLUMN=VALUE of a column of the model ({listed})")
        if name in seen:
            raise DataError(f"--given names {name} twice ({seen[name]!r} and {item!r}); give each column once")
        seen[name] = item
        return schema.names.index(name)

    for item in given:
        if item.lstrip().startswith("{"):
            for name, value in _given_json(item):
                j = column(name, f"{name}={json.dumps(value)}")
                if value is None:
                    raise DataError(f"--given {name} is null; leave it out to leave the column free")
                row[j] = schema.columns[j].encode_cell(value, "", label=f"--given {name}")
                if np.isnan(row[j]):  # "?" is unknown, as in a CSV cell: no condition
                    raise DataError(
                        f"--given {name} is {json.dumps(value)}, unknown; leave it out to leave the column free"
                    )
            continue
        name, sep, value = item.partition("=")
        j = column(name.strip() if sep else "", item)
        row[j] = table_cell(schema.columns[j], value, f"--given {name.strip()}")
        if np.isnan(row[j]):
            if value.strip() and value.strip() != UNKNOWN_CELL:  # NA, NaN: absent, where the column never is
                raise DataError(
                    f"--given {name.strip()}={value.strip()}: {value.strip()!r} is an absent value, but column "
                    f"{name.strip()} is never absent in the training data; leave it out to leave the column free"
                )
            raise DataError(f"--given {name.strip()} has no value; leave it out to leave the column free")
    return row


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object of --given as json.loads read it: its (key, value) pairs in order, a key
    named twice kept twice (POST /sample refuses it; a dict would keep the last silently)."""


def _given_json(text: str) -> list[tuple[str, object]]:
    from made.core.errors import DataError

    try:
        value = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as exc:
        raise DataError(f"--given {text!r} is not JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(value, _Pairs):
        raise DataError(f"--given {text!r}: expected a JSON object of {{column: value}}")
    # a nested object is a value no column takes: as a dict, for its error message
    return [(k, dict(v) if isinstance(v, _Pairs) else v) for k, v in value]


# `made sample` draws and writes this many records at a time: memory stays bounded whatever --n
SAMPLE_CHUNK = 50_000


def sample_seed(seed: int, chunk: int) -> int:
    """The seed of `made sample`'s chunk `chunk`: --seed itself for the first (so --n up to
    SAMPLE_CHUNK gives the records the engine's sample(n, seed) gives), then a seed derived from
    (--seed, chunk)."""
    import numpy as np

    if chunk == 0:
        return seed
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1, np.uint64)[0] >> 1)


def cmd_sample(args: argparse.Namespace) -> int:
    """n records drawn by the engine (no server), meeting --given when sent, as CSV, drawn and
    written SAMPLE_CHUNK records at a time (each chunk from its own seed, sample_seed)."""
    import numpy as np

    from made.io.atomic import atomic_path
    from made.io.csv import to_csv
    from made.store.versions import open_model
    from service.engine.registry import build_engine
    from service.engine.runtime import requested_providers
    from service.engine.table_impute import ImpossibleEvidence
    from service.engine.table_smc import given_importance
    from service.settings import load_settings

    if args.n < 1:
        raise ConfigError(f"--n is {args.n}; draw at least one record")
    if Path(args.out).suffix.lower() == ".parquet":  # it would be CSV text under a Parquet name
        raise ConfigError(f"--out {args.out}: made sample writes CSV; name a .csv file (or - for stdout)")
    if not args.verbose:  # the engine's "loaded model" line is noise here; errors stay one line
        logging.getLogger("made.engine").setLevel(logging.WARNING)
    settings = load_settings()
    engine = build_engine(
        open_model(Path(args.store), args.name, args.version),
        requested_providers(settings.providers),
        settings.threads or None,
    )
    schema = engine.schema
    row = np.asarray(_given_row(schema, args.given)) if args.given else None

    def chunks() -> Iterator[str]:
        """The CSV text, header first, SAMPLE_CHUNK records at a time."""
        for i, start in enumerate(range(0, args.n, SAMPLE_CHUNK)):
            n, seed = min(SAMPLE_CHUNK, args.n - start), sample_seed(args.seed, i)
            if row is None:
                values = engine.sample(n, seed)
            else:
                try:
                    # the particles /sample spends on `given` (given_importance): the same records for
                    # the same seed as POST /sample {"given": ..., "seed": ...} up to SAMPLE_CHUNK
                    result = engine.impute(row[None, :], n_samples=n, seed=seed, n_importance=given_importance(n))
                except ImpossibleEvidence as exc:
                    raise ConfigError(f"--given: {exc.reason()}") from None
                values = result.samples[0]
            rows = ([r.get(c) for c in schema.names] for r in schema.decode_rows(values))
            text = to_csv(schema.names, rows, escape=not args.no_escape_formulas)
            yield text if i == 0 else text.partition("\n")[2]  # the header once

    if args.out == "-":
        for text in chunks():
            sys.stdout.write(text)
        return 0
    with atomic_path(args.out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out:
        for text in chunks():
            out.write(text)
    print(json.dumps({"rows": args.n, "output": args.out, "model": engine.name, "version": engine.version}))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from service.http.server import serve

    serve(store=args.store, host=args.host, port=args.port, workers=args.workers)
    return 0


def dataset_path(dataset: str) -> str:
    """--dataset as given, or for a bare name that is not a file (`mushrooms`), its path in
    MADE_DATA_DIR (Settings.data_dir): runs record the path, so a resume needs no variable."""
    from made.io.data import resolve

    if os.sep in dataset or Path(dataset).suffix or Path(dataset).exists():
        return dataset
    from service.settings import load_settings

    return str(resolve(dataset, load_settings().data_dir))
