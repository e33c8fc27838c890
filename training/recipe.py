"""The training recipe of small data sets: batch size, max epochs and patience from the number of
training rows where `made train` is not told them, and the warning of a run stopped while still
improving (issue 26; docs/tables.md "Training cost")."""

from __future__ import annotations

import math
from typing import Any

from made.core.errors import ConfigError

# The small-data recipe, below SMALL_TABLE training rows: at least this many minibatches an epoch
# (of 8 rows at least), this many updates before max_epochs stops a run and this many before
# patience can; from SMALL_TABLE rows up, the defaults of before.
SMALL_TABLE = 1_000
MIN_BATCHES_PER_EPOCH = 10
MIN_BATCH_SIZE = 8
MIN_UPDATES = 10_000
MIN_PATIENCE_UPDATES = 1_000
DEFAULT_BATCH_SIZE, DEFAULT_MAX_EPOCHS, DEFAULT_PATIENCE = 100, 200, 20


def small_data_recipe(n_rows: int, batch_size: int = 0, max_epochs: int = 0, patience: int = 0) -> tuple[int, int, int]:
    """(batch size, max epochs, patience) for `n_rows` training rows, each of them where 0 (not
    given): 100, 200 and 20 from 1,000 rows up, as before; below that, batches of n/10 rows (8 at
    least), so that an epoch makes 10 updates or more, and as many epochs as make 10,000 updates
    (patience: 1,000 updates), instead of the 2 updates an epoch that 124 rows made in batches
    of 100."""
    if n_rows >= SMALL_TABLE:
        return batch_size or DEFAULT_BATCH_SIZE, max_epochs or DEFAULT_MAX_EPOCHS, patience or DEFAULT_PATIENCE
    bs = batch_size or max(MIN_BATCH_SIZE, n_rows // MIN_BATCHES_PER_EPOCH)
    per_epoch = max(1, math.ceil(n_rows / bs))
    epochs = max_epochs or max(DEFAULT_MAX_EPOCHS, math.ceil(MIN_UPDATES / per_epoch))
    return bs, epochs, patience or max(DEFAULT_PATIENCE, math.ceil(MIN_PATIENCE_UPDATES / per_epoch))


def still_improving(best_epoch: int, epochs: int) -> str | None:
    """The warning of a run whose best validation epoch is its last (None otherwise): it stopped
    at max_epochs while its validation NLL still fell, so more epochs would likely help."""
    if epochs < 1 or best_epoch != epochs:
        return None
    return (
        f"still improving: the best validation NLL is at the last epoch ({epochs}); train longer with "
        f"--max-epochs {2 * epochs} (the same --out resumes this run)"
    )


def adapt_to_rows(cfg: Any, n_rows: int) -> str | None:
    """Set a TrainConfig's batch_size, max_epochs and patience left at 0 or None from its
    `n_rows` training rows (small_data_recipe); the line that says what was chosen, or None
    where all three were given."""
    cfg.batch_size, cfg.max_epochs, cfg.patience = (v or 0 for v in (cfg.batch_size, cfg.max_epochs, cfg.patience))
    if min(cfg.batch_size, cfg.max_epochs, cfg.patience) < 0:
        raise ConfigError("batch size, max epochs and patience must be positive (0: from the training rows)")
    if cfg.batch_size and cfg.max_epochs and cfg.patience:
        return None
    cfg.batch_size, cfg.max_epochs, cfg.patience = small_data_recipe(
        n_rows, cfg.batch_size, cfg.max_epochs, cfg.patience
    )
    return (
        f"{n_rows} training rows: batch size {cfg.batch_size} ({math.ceil(n_rows / cfg.batch_size)} updates an "
        f"epoch), at most {cfg.max_epochs} epochs, patience {cfg.patience} (--batch-size, --max-epochs and "
        "--patience choose them)"
    )
