"""The `made` command line: train, export, evaluate, score, serve.

Heavy imports (torch, onnxruntime, fastapi) happen inside each command, so that the serving
image, which has no torch, can still run `made serve`. Every MadeError ends as one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from made.core.errors import ConfigError, MadeError

if TYPE_CHECKING:
    from made.core.schema import Schema
    from made.io.data import Dataset
    from made.io.tables import TableDataset
    from training.train import TrainConfig


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default, except where there is none to show (None, off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action) or ""


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors end like every other error: one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    return values


def _image_shape_arg(text: str) -> list[int]:
    from made.core.errors import DataError
    from made.io.data import parse_image_shape

    try:
        return parse_image_shape(text)
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _masks_arg(text: str) -> str | int:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or a mask index, got '{text}'") from None


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
    data = training_data(args)
    validate_architecture(data.dims, args.hidden, args.masks)
    args.image_shape = check_image_shape(args.image_shape, data.dims) or data.image_shape
    schema = data.schema if isinstance(data, TableDataset) else None
    if schema is not None and args.rebinarize:
        raise ConfigError("--rebinarize is for bit data drawn from grayscale images, not for tables")

    from training.train import Trainer

    cfg = train_config(args, data.dims, schema)
    cfg.model.mask_set()  # refuse impossible architectures before touching RUN_DIR
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    metrics = Trainer(cfg, args.out, data).run(progress=not args.no_progress)
    print(json.dumps({k: metrics[k] for k in ("valid_nll", "test_nll", "test_nll_stderr", "best_epoch")}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from training.export import export_run, upgrade

    if args.upgrade:
        for upgraded in upgrade(args.upgrade):
            print(str(upgraded))
        return 0
    if args.reference:
        return _export_reference(args)
    if not (args.run_dir and args.store and args.name):
        raise ConfigError("made export needs a run directory, --store and --name (or --upgrade PATH)")
    version_dir = export_run(
        args.run_dir, args.store, args.name, args.version, args.weights, image_shape=args.image_shape
    )
    print(str(version_dir))
    return 0


def _export_reference(args: argparse.Namespace) -> int:
    """`made export --reference DATASET STORE/NAME/VERSION`: reference.json added to a version in
    place, its held-out log p from the serving engine."""
    from made.store.versions import add_reference
    from service.engine.evaluate import version_reference
    from service.engine.runtime import requested_providers
    from service.settings import Settings

    if not args.run_dir or args.store or args.name:
        raise ConfigError("made export --reference DATASET takes one version directory, STORE/NAME/VERSION")
    settings = Settings()
    reference = version_reference(
        args.run_dir,
        _dataset_path(args.reference),
        args.reference_split,
        requested_providers(settings.providers),
        settings.threads or None,
    )
    print(str(add_reference(Path(args.run_dir), reference)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from service.engine.evaluate import evaluate_store_model
    from service.engine.runtime import requested_providers
    from service.settings import Settings

    settings = Settings()  # MADE_PROVIDERS and MADE_THREADS, as for `made serve`
    result = evaluate_store_model(
        args.store,
        args.name,
        args.dataset,
        args.split,
        args.masks,
        requested_providers(settings.providers),
        settings.threads or None,
    )
    print(json.dumps(result))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from service.batch.score import score_file

    if not args.verbose:  # the engine's "loaded model" line is noise here; errors stay one line
        logging.getLogger("made.engine").setLevel(logging.WARNING)
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
    )
    print(json.dumps(result.to_json()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from service.http.server import serve

    serve(store=args.store, host=args.host, port=args.port, workers=args.workers)
    return 0


_DATASET_HELP = "an .npz/.csv/.amat path, or a name in $MADE_DATA_DIR"


def _add_store_and_name(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--store and --name: which model of which store a command reads (or writes)."""
    unless = "" if required else " (required unless --upgrade)"
    p.add_argument("--store", required=required, help=f"model store directory{unless}")
    p.add_argument("--name", required=required, help=f"model name in the store{unless}")


def _add_image_shape(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--image-shape", type=_image_shape_arg, default=None, metavar="H,W", help=help)


def _add_train(sub: argparse._SubParsersAction[_OneLineParser]) -> None:
    t = sub.add_parser(
        "train", help="train a MADE (resumes an unfinished run in --out)", formatter_class=_DefaultsFormatter
    )
    t.add_argument("--dataset", required=True, help=_DATASET_HELP)
    t.add_argument(
        "--hidden", type=_int_list, default="500", metavar="W1,W2,...", help="hidden layer widths, e.g. 500,500"
    )
    t.add_argument("--masks", type=int, default=1, help="K, the fixed set of masks (1: plain MADE)")
    t.add_argument("--out", required=True, help="run directory: checkpoints, config, log, curve")
    t.add_argument("--seed", type=int, default=0, help="seeds weights, masks, shuffling: same seed, same run")
    t.add_argument(
        "--max-epochs",
        type=int,
        default=200,
        help="at most this many epochs (early stopping may end sooner); the progress shows the time left",
    )
    _add_architecture(t)
    _add_optimizer(t)
    _add_train_data(t)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    t.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (one line per epoch is logged either way; there is no bar when stderr is not a terminal)",
    )
    t.set_defaults(func=cmd_train)


def _add_architecture(t: argparse.ArgumentParser) -> None:
    """`made train`'s options of the network and its masks."""
    t.add_argument("--order-agnostic", action="store_true", help="a random ordering per mask")
    t.add_argument(
        "--connectivity-agnostic",
        action="store_true",
        help="new hidden degrees per mask (implied when --masks > 1 without --order-agnostic)",
    )
    t.add_argument("--random-ordering", action="store_true", help="one random ordering instead of natural")
    t.add_argument("--direct", action="store_true", help="direct input-to-output connections")
    t.add_argument("--activation", choices=["relu", "tanh"], default="relu", help="hidden units (bit data only)")
    t.add_argument(
        "--init",
        choices=["default", "orthogonal"],
        default="default",
        help="weights: torch's default, or orthogonal matrices with zero biases (bit data only)",
    )
    t.add_argument(
        "--resample-masks",
        action="store_true",
        help="a fresh mask for every update (per --order-agnostic/--connectivity-agnostic); the K "
        "--masks are the ensemble validated, tested and exported (bit data only)",
    )
    t.add_argument(
        "--valid-masks",
        type=int,
        default=0,
        help="validate each epoch on the first N masks' mixture (0: all K); the final scores use all K",
    )


def _add_optimizer(t: argparse.ArgumentParser) -> None:
    """`made train`'s options of the optimizer, its rate and early stopping."""
    t.add_argument("--batch-size", type=int, default=100, help="rows per minibatch")
    t.add_argument(
        "--optimizer",
        choices=["adam", "adamw", "adagrad", "adadelta", "sgd"],
        default="adam",
        help="the optimizer (sgd: plain, constant rate)",
    )
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.001; 1.0 with adadelta)")
    t.add_argument("--eps", type=float, default=None, help="the optimizer's epsilon (default: torch's)")
    t.add_argument("--rho", type=float, default=0.9, help="adadelta's decay of its running averages")
    t.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty (decoupled with adamw)")
    t.add_argument("--lr-step", type=int, default=0, help="decay the learning rate every N epochs")
    t.add_argument("--lr-gamma", type=float, default=0.1, help="factor of each --lr-step decay")
    t.add_argument("--patience", type=int, default=20, help="early stopping patience in epochs")


def _add_train_data(t: argparse.ArgumentParser) -> None:
    """`made train`'s options of how the data is read."""
    t.add_argument(
        "--rebinarize",
        metavar="IMAGES_NPZ",
        default=None,
        help="grayscale .npz (train_images) the binary training rows were drawn from, e.g. "
        "mnist.npz: train each epoch on a fresh binarization of them (valid/test stay as given)",
    )
    t.add_argument(
        "--schema",
        metavar="FILE",
        default=None,
        help="a table's columns as JSON (the manifest's 'columns' format), instead of inferring them",
    )
    t.add_argument(
        "--groups",
        metavar="FILE",
        default=None,
        help="one-hot groups of bit columns (../shared/data/groups/NAME.json): train them as categories",
    )
    t.add_argument(
        "--drop-columns", metavar="A,B", default=None, help="columns of a table to leave out (e.g. free text)"
    )
    _add_image_shape(
        t,
        "height,width of image data, e.g. 16,8 (MNIST-like 28,28 is found by itself): "
        "its models answer /sample with a PNG grid",
    )


def _add_export(sub: argparse._SubParsersAction[_OneLineParser]) -> None:
    e = sub.add_parser(
        "export", help="export a run to the model store as ONNX + manifest", formatter_class=_DefaultsFormatter
    )
    e.add_argument("run_dir", nargs="?", help="a run directory of made train (with --reference: a version directory)")
    _add_store_and_name(e, required=False)
    e.add_argument(
        "--upgrade",
        metavar="PATH",
        default=None,
        help="rewrite format-1 versions as format 2 in place: STORE/NAME/VERSION, or STORE for all",
    )
    e.add_argument(
        "--reference",
        metavar="DATASET",
        default=None,
        help="add reference.json (held-out log p quantiles, a few held-out rows, the training marginals) to "
        "the version directory STORE/NAME/VERSION in place, from this data set (" + _DATASET_HELP + ")",
    )
    e.add_argument(
        "--reference-split", default="test", choices=["valid", "test"], help="the held-out split of --reference"
    )
    e.add_argument("--version", default=None, help="default: one more than the highest stored")
    e.add_argument(
        "--weights",
        choices=["float32", "float16"],
        default="float32",
        help="storage type of the weight matrices (float16: half the file; arithmetic stays float32)",
    )
    _add_image_shape(e, "height,width of image data (default: the run's own, from made train)")
    e.set_defaults(func=cmd_export)


def _add_evaluate(sub: argparse._SubParsersAction[_OneLineParser]) -> None:
    v = sub.add_parser(
        "evaluate", help="test NLL of a stored model, as JSON on the last line", formatter_class=_DefaultsFormatter
    )
    _add_store_and_name(v)
    v.add_argument("--dataset", required=True, help=_DATASET_HELP)
    v.add_argument("--split", default="test", choices=["train", "valid", "test"], help="the split to score")
    v.add_argument("--masks", type=_masks_arg, default="all", help="'all' (the mixture) or a mask index")
    v.set_defaults(func=cmd_evaluate)


def _add_score(sub: argparse._SubParsersAction[_OneLineParser]) -> None:
    c = sub.add_parser(
        "score",
        help="score a CSV or Parquet file: the same rows with a logprob column",
        formatter_class=_DefaultsFormatter,
    )
    _add_store_and_name(c)
    c.add_argument("--version", default=None, help="model version (default: the highest stored)")
    c.add_argument(
        "--input",
        required=True,
        metavar="PATH",
        help="a .csv (or .tsv) or .parquet file: rows of 0/1 for a bit model (empty cell: missing), "
        "named columns for a table model",
    )
    c.add_argument(
        "--output",
        required=True,
        metavar="PATH",
        help="a .csv or .parquet file (written atomically): the input's rows, then logprob in nats",
    )
    c.add_argument(
        "--conditionals",
        action="store_true",
        help="bit models: also cond_0..cond_{D-1}, p(x_d = 1 | the dimensions before d in mask 0's order)",
    )
    c.add_argument(
        "--threads",
        type=int,
        default=0,
        help="blocks scored at once, each on one onnxruntime thread (0: the CPU cores; without --ray)",
    )
    c.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS|local",
        help="score on Ray Data: a cluster's address (ray://HOST:10001, auto), or 'local' for an "
        "in-process Ray with 2 CPUs (needs pip install made[ray])",
    )
    c.add_argument("--batch-size", type=int, default=4096, help="rows read, scored and written at a time")
    c.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines on stderr")
    c.add_argument(
        "--no-escape-formulas",
        action="store_true",
        help="write text cells that begin with =, +, -, @, a tab or a carriage return as they are, "
        "not with a leading ' that keeps a spreadsheet from running them (trusted pipelines only)",
    )
    c.set_defaults(func=cmd_score)


def _add_serve(sub: argparse._SubParsersAction[_OneLineParser]) -> None:
    s = sub.add_parser("serve", help="run the HTTP service", formatter_class=_DefaultsFormatter)
    # defaults None: the service's Settings fill them from MADE_* variables, or their own defaults
    s.add_argument("--store", default=None, help="model store directory (default: $MADE_STORE or model_store)")
    s.add_argument("--host", default=None, help="address to listen on (default: $MADE_HOST or 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="port (default: $MADE_PORT or 8000)")
    s.add_argument("--workers", type=int, default=None, help="server processes (default: $MADE_WORKERS or 1)")
    s.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="made", description="Train, export, evaluate and serve MADE models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_export, _add_evaluate, _add_score, _add_serve):
        add(sub)
    return parser


def _dataset_path(dataset: str) -> str:
    """--dataset as given, or for a bare name that is not a file (`mushrooms`), its path in
    MADE_DATA_DIR (Settings.data_dir): runs record the path, so a resume needs no variable."""
    from made.io.data import resolve

    if os.sep in dataset or Path(dataset).suffix or Path(dataset).exists():
        return dataset
    from service.settings import load_settings

    return str(resolve(dataset, load_settings().data_dir))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if args.command in ("train", "evaluate"):
            args.dataset = _dataset_path(args.dataset)
        return func(args)
    except MadeError as exc:
        print(f"made {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"made {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
