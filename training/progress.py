"""Training progress on stderr. On a terminal: a live bar over the minibatches of the whole run,
with the elapsed and the remaining time. Redirected to a file (a log, CI): no bar, whose carriage
returns would glue the lines together, only the plain per-epoch log line, which carries the same
estimate of the time left."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import IO, Any

log = logging.getLogger("made.train")


def format_duration(seconds: float) -> str:
    """42s, 3m05s, 1h02m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


_BAR = "{desc} {percentage:3.0f}%|{bar}| {elapsed} elapsed, at most {remaining} left{postfix}"


class Progress:
    def __init__(
        self, max_epochs: int, batches_per_epoch: int, start_epoch: int, enabled: bool, stream: IO[str] | None = None
    ):
        self.max_epochs = max_epochs
        self.stream = stream if stream is not None else sys.stderr
        self.bar: Any = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=max_epochs * batches_per_epoch,
                initial=start_epoch * batches_per_epoch,
                file=self.stream,
                dynamic_ncols=True,
                unit="batch",
                mininterval=0.5,
                desc=f"epoch {min(start_epoch + 1, max_epochs)}/{max_epochs}",
                bar_format=_BAR,
            )

    @contextlib.contextmanager
    def active(self) -> Iterator[Progress]:
        """While the bar is live, log lines are printed above it instead of through it."""
        if self.bar is None:
            yield self
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        try:
            with logging_redirect_tqdm():
                yield self
        finally:
            self.bar.close()

    def batch(self, running_train_nll: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"train {running_train_nll:.2f}", refresh=False)
            self.bar.update(1)

    def epoch(
        self, epoch: int, train_nll: float, valid_nll: float, best_valid: float, best_epoch: int, seconds: float
    ) -> None:
        """One line per epoch; `seconds` is the training time of all epochs so far."""
        per_epoch = seconds / max(epoch, 1)
        left = (self.max_epochs - epoch) * per_epoch
        log.info(
            "epoch %d/%d train %.3f valid %.3f (best %.3f @ %d), %.1f s/epoch, at most %s left",
            epoch,
            self.max_epochs,
            train_nll,
            valid_nll,
            best_valid,
            best_epoch,
            per_epoch,
            format_duration(left),
        )
        if self.bar is not None:
            self.bar.set_description_str(f"epoch {min(epoch + 1, self.max_epochs)}/{self.max_epochs}", refresh=False)
            self.bar.set_postfix_str(f"valid {valid_nll:.2f}")
