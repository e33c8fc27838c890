"""`made evaluate`: NLL of a stored model on a data split, with its standard error."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from made.data import load_dataset
from made.errors import DataError, InvalidInput
from made.store import open_model
from service.engine.engine import Engine


def evaluate_store_model(store: str | Path, name: str, dataset: str, split: str = "test",
                         masks: str | int = "all") -> dict[str, Any]:
    # Check the model, the data and --masks against the manifest before loading the engine, so
    # that a refusal is the command's only line on stderr (loading logs a line of its own).
    model = open_model(Path(store), name)
    data = load_dataset(dataset, splits=(split,))
    x = data.split(split)
    if x.shape[1] != model.dims:
        raise DataError(f"data set {data.source} has {x.shape[1]} dimensions, model {name} has {model.dims}")
    if masks != "all" and (isinstance(masks, bool) or not isinstance(masks, int)):
        raise InvalidInput(f"--masks must be 'all' or a mask index, got {masks!r}")
    if isinstance(masks, int) and not 0 <= masks < model.n_masks:
        raise InvalidInput(f"mask {masks} is out of range: model {name} has {model.n_masks} masks "
                           f"(0..{model.n_masks - 1})")
    engine = Engine(model)
    nll = -engine.logprob(x.astype("float64"), masks=masks).logprob  # type: ignore[arg-type]
    n = len(nll)
    stderr = float(nll.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {"nll": float(nll.mean()), "stderr": stderr, "n": n, "split": split, "model": name,
            "version": engine.version, "masks": masks}
