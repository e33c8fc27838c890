"""The `made` command line's parser: one subcommand per command of made.cli.commands, and the
argument types they share."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    pass


from made.cli.commands import cmd_evaluate, cmd_export, cmd_sample, cmd_score, cmd_serve, cmd_split, cmd_train
from made.cli.report_cmd import add_report
from made.cli.schema_cmd import cmd_schema


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


def _widths_arg(text: str) -> list[int]:
    """Hidden layer widths, W1,W2,...: each a positive integer. An empty list or item used to
    train a model with no hidden layer, or one layer fewer, without a word."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got '{text}'") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every hidden layer width must be 1 or more, got '{text}'")
    return values


def _image_shape_arg(text: str) -> list[int]:
    from made.core.errors import DataError
    from made.io.data import parse_image_shape

    try:
        return parse_image_shape(text)
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# the largest seed: the HTTP API's (service.core.fields.Seed), so a seed means the same draws there
MAX_SEED = 2**53 - 1


def _int_within(low: int, high: int | None, expected: str, hint: str = "") -> Callable[[str], int]:
    """An argparse type: an integer from low to high (None: no top), else one line saying what is
    expected and what was given (a value past what numpy, torch or a socket take was a traceback)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got '{text}'{hint}")
        return value

    return parse


# the most threads a command takes: torch.set_num_threads refused 2**31 with a traceback
MAX_THREADS = 1024

# --seed: numpy and torch refused a negative one, and a huge one, with a traceback
_seed_arg = _int_within(0, MAX_SEED, f"an integer from 0 to {MAX_SEED}")
# --max-epochs, --patience: 0 was taken as "leave it out", the default
_positive_arg = _int_within(1, None, "an integer of 1 or more (leave it out for the default)")
_port_arg = _int_within(
    1,
    65535,
    "a port number from 1 to 65535",
    " (the compose files' MADE_PORT may hold HOST:PORT for publishing; for make serve give PORT=8000)",
)
# --threads: 0 picks the default
_count_arg = _int_within(0, MAX_THREADS, f"an integer from 0 to {MAX_THREADS}")


def _masks_arg(text: str) -> str | int:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or a mask index, got '{text}'") from None


_DATASET_HELP = "an .npz/.csv/.amat path, or a name in $MADE_DATA_DIR"
NO_ESCAPE_HELP = (
    "write text cells that begin with =, +, -, @, a tab or a carriage return as they are, not with a leading ' "
    "that keeps a spreadsheet from running them (for files read back by made score or made report)"
)


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
        "--hidden", type=_widths_arg, default="500", metavar="W1,W2,...", help="hidden layer widths, e.g. 500,500"
    )
    t.add_argument("--masks", type=int, default=1, help="K, the fixed set of masks (1: plain MADE)")
    t.add_argument("--out", required=True, help="run directory: checkpoints, config, log, curve")
    t.add_argument("--seed", type=_seed_arg, default=0, help="seeds weights, masks, shuffling: same seed, same run")
    t.add_argument(
        "--max-epochs",
        type=_positive_arg,
        default=None,
        help="at most this many epochs (early stopping may end sooner; below 1,000 training rows, as many as make "
        "10,000 updates); the progress shows the time left (default: 200)",
    )
    _add_architecture(t)
    _add_optimizer(t)
    _add_train_data(t)
    t.add_argument(
        "--threads",
        type=_count_arg,
        default=0,
        help="torch CPU threads (0: 1 for a table, torch's default for bit data)",
    )
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
    t.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="rows per minibatch (below 1,000 training rows: a tenth of them, 8 at least) (default: 100)",
    )
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
    t.add_argument(
        "--patience",
        type=_positive_arg,
        default=None,
        help="early stopping patience in epochs (below 1,000 training rows, as many as make 1,000 updates) "
        "(default: 20)",
    )


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
        help="a table's columns as JSON (the manifest's 'columns' format, as `made schema CSV` writes it), "
        "instead of inferring them",
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
    e.add_argument(
        "--bounds",
        metavar="DATASET",
        default=None,
        help="add bounds to the numeric columns of the version directory STORE/NAME/VERSION in place, inferred "
        "from this data set's training split as made train infers them (then rerun --reference)",
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
        "--stderr",
        action="store_true",
        help="also exact and stderr after logprob, as POST /logprob answers them: whether the row's log p is "
        "exact, else an estimate (unknown cells no mask's order sums out) and its standard error (empty or "
        "null where exact; a row scored -inf by --impossible inf is exact)",
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
    c.add_argument(
        "--impossible",
        choices=["error", "inf"],
        default="error",
        help="table models: a cell the model gives no probability (a number outside its column's bounds, "
        "a level it does not have; an empty or NA cell of a column never absent is unknown, summed out): "
        "'error' stops at the first, naming it; 'inf' scores its row logprob -inf and goes on (for anomaly "
        "scoring), counting such rows",
    )
    c.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines on stderr")
    c.add_argument("--no-escape-formulas", action="store_true", help=NO_ESCAPE_HELP)
    c.set_defaults(func=cmd_score)


def _add_split(sub: argparse._SubParsersAction[_OneLineParser]) -> None:
    p = sub.add_parser(
        "split",
        help="split one table into NAME_train.csv, NAME_valid.csv and NAME_test.csv",
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument("csv", metavar="CSV", help="a table: a CSV with a header row (or Parquet)")
    p.add_argument("--valid", type=float, default=0.1, help="share of the rows for the validation split")
    p.add_argument("--test", type=float, default=0.1, help="share of the rows for the test split")
    p.add_argument("--seed", type=_seed_arg, default=0, help="which rows go where: same seed, same split")
    p.add_argument(
        "--out", metavar="DIR", default=None, help="folder of the split files, made if missing (default: beside CSV)"
    )
    p.add_argument("--force", action="store_true", help="overwrite split files already there")
    p.set_defaults(func=cmd_split)


def _add_sample(sub: argparse._SubParsersAction[_OneLineParser]) -> None:
    p = sub.add_parser(
        "sample", help="draw records from a stored model into a CSV (no server)", formatter_class=_DefaultsFormatter
    )
    _add_store_and_name(p)
    p.add_argument("--version", default=None, help="model version (default: the highest stored)")
    p.add_argument("--n", type=int, required=True, help="how many records to draw (drawn and written 50,000 at a time)")
    p.add_argument(
        "--given",
        nargs="+",
        action="extend",
        metavar="COLUMN=VALUE",
        default=None,
        help="draw records that meet these values (sampled from the model's conditional); one flag with "
        'several pairs or several flags, each column once; or one JSON object, {"cut": "Ideal"}, as '
        "POST /sample's given",
    )
    p.add_argument("--seed", type=_seed_arg, default=0, help="same seed, same records")
    p.add_argument(
        "--out",
        "--output",  # the contract's name
        dest="out",
        required=True,
        metavar="PATH",
        help="a .csv file (written atomically), or - for stdout",
    )
    p.add_argument("--no-escape-formulas", action="store_true", help=NO_ESCAPE_HELP)
    p.set_defaults(func=cmd_sample)


def _add_schema(sub: argparse._SubParsersAction[_OneLineParser]) -> None:
    p = sub.add_parser(
        "schema",
        help="infer a table's schema (kinds, levels, bounds, resolution) as JSON, to edit and pass to train --schema",
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument("csv", metavar="CSV", help="a table: a CSV with a header row (or Parquet), e.g. its training split")
    p.add_argument("--out", metavar="PATH", default=None, help="the JSON file to write (atomically; default: stdout)")
    p.add_argument("--drop-columns", metavar="A,B", default=None, help="columns to leave out (e.g. free text)")
    p.add_argument(
        "--seed",
        type=_seed_arg,
        default=0,
        help="one file without split files beside it: infer from the training rows of made train --seed's split",
    )
    p.set_defaults(func=cmd_schema)


def _add_serve(sub: argparse._SubParsersAction[_OneLineParser]) -> None:
    s = sub.add_parser("serve", help="run the HTTP service", formatter_class=_DefaultsFormatter)
    # defaults None: the service's Settings fill them from MADE_* variables, or their own defaults
    s.add_argument("--store", default=None, help="model store directory (default: $MADE_STORE or model_store)")
    s.add_argument("--host", default=None, help="address to listen on (default: $MADE_HOST or 127.0.0.1)")
    s.add_argument("--port", type=_port_arg, default=None, help="port (default: $MADE_PORT or 8000)")
    s.add_argument("--workers", type=int, default=None, help="server processes (default: $MADE_WORKERS or 1)")
    s.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="made", description="Train, export, evaluate, sample and serve MADE models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_train,
        _add_export,
        _add_evaluate,
        _add_score,
        _add_sample,
        _add_split,
        _add_schema,
        add_report,
        _add_serve,
    ):
        add(sub)
    return parser
