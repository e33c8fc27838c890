"""Training progress on stderr, with made.core.progress's one Progress. On a terminal: a live bar
over the minibatches of the whole run, with the elapsed and the remaining time. Redirected to a
file (a log, CI): no bar, only the plain per-epoch log line, which carries the same estimate of
the time left. And the run's training curve (curve.png)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, Any

from made.core.progress import Progress, format_duration
from made.io.atomic import atomic_write_with

log = logging.getLogger("made.train")

_BAR = "{desc} {percentage:3.0f}%|{bar}| {elapsed} elapsed, at most {remaining} left{postfix}"


def epoch_progress(
    max_epochs: int, batches_per_epoch: int, start_epoch: int, enabled: bool, stream: IO[str] | None = None
) -> Progress:
    """A bar over every minibatch of the run, starting after the epochs already done (a resumed
    run); advance it one minibatch at a time with update(1, note=...)."""
    return Progress(
        max_epochs * batches_per_epoch,
        "batch",
        enabled,
        stream,
        desc=f"epoch {min(start_epoch + 1, max_epochs)}/{max_epochs}",
        initial=start_epoch * batches_per_epoch,
        bar_format=_BAR,
    )


def log_epoch(
    bar: Progress,
    max_epochs: int,
    epoch: int,
    train_nll: float,
    valid_nll: float,
    best_valid: float,
    best_epoch: int,
    seconds: float,
) -> None:
    """One log line per epoch (with or without a bar); `seconds` is the training time of all
    epochs so far, so the time left is an estimate from the mean epoch."""
    per_epoch = seconds / max(epoch, 1)
    left = (max_epochs - epoch) * per_epoch
    log.info(
        "epoch %d/%d train %.3f valid %.3f (best %.3f @ %d), %.1f s/epoch, at most %s left",
        epoch,
        max_epochs,
        train_nll,
        valid_nll,
        best_valid,
        best_epoch,
        per_epoch,
        format_duration(left),
    )
    bar.describe(f"epoch {min(epoch + 1, max_epochs)}/{max_epochs}", note=f"valid {valid_nll:.2f}")


def write_curve(path: Path, history: list[dict[str, Any]]) -> None:
    """Training curve PNG (train and valid NLL per epoch), replaced atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_nll"] for r in history], label="train")
    ax.plot(epochs, [r["valid_nll"] for r in history], label="valid")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)
