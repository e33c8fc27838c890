"""The `made` command line: train, export, evaluate, score, sample, split, serve.

Heavy imports (torch, onnxruntime, fastapi) happen inside each command, so that the serving
image, which has no torch, can still run `made serve`. Every MadeError ends as one line on
stderr and exit status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from made.cli.commands import dataset_path, train_config
from made.cli.parser import build_parser
from made.core.errors import MadeError

if TYPE_CHECKING:
    import argparse

__all__ = ["build_parser", "main", "train_config"]


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
            args.dataset = dataset_path(args.dataset)
        return func(args)
    except MadeError as exc:
        print(f"made {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"made {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of stdout went away (`made sample --out - | head`): stop as `cat` does, with
        # no traceback, and no second one when Python flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, a shell's status of a command a closed pipe ended
