"""`made evaluate`: NLL of a stored model on a data split, with its standard error."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from made.core.errors import DataError, InvalidInput
from made.io.data import load_dataset
from made.io.tables import load_table_dataset
from made.store.versions import StoredModel, open_model
from service.engine.engine import Engine
from service.engine.table_engine import TableEngine


def evaluate_store_model(
    store: str | Path,
    name: str,
    dataset: str,
    split: str = "test",
    masks: str | int = "all",
    providers: list[str] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    # Check the model, the data and --masks against the manifest before loading the engine, so
    # that a refusal is the command's only line on stderr (loading logs a line of its own).
    model = open_model(Path(store), name)
    x = _table_rows(model, dataset, split) if "columns" in model.manifest else _bit_rows(model, dataset, split)
    if masks != "all" and (isinstance(masks, bool) or not isinstance(masks, int)):
        raise InvalidInput(f"--masks must be 'all' or a mask index, got {masks!r}")
    if isinstance(masks, int) and not 0 <= masks < model.n_masks:
        raise InvalidInput(
            f"mask {masks} is out of range: model {name} has {model.n_masks} masks (0..{model.n_masks - 1})"
        )
    kind = TableEngine if "columns" in model.manifest else Engine
    engine: Engine | TableEngine = kind(model, providers, threads)
    nll = -engine.logprob(x.astype("float64"), masks=masks).logprob  # type: ignore[arg-type]
    n = len(nll)
    stderr = float(nll.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {
        "nll": float(nll.mean()),
        "stderr": stderr,
        "n": n,
        "split": split,
        "model": name,
        "version": engine.version,
        "masks": masks,
    }


def _bit_rows(model: StoredModel, dataset: str, split: str) -> np.ndarray:
    data = load_dataset(dataset, splits=(split,))
    x = data.split(split)
    if x.shape[1] != model.dims:
        raise DataError(f"data set {data.source} has {x.shape[1]} dimensions, model {model.name} has {model.dims}")
    return x


def _table_rows(model: StoredModel, dataset: str, split: str) -> np.ndarray:
    """A table model scores its table's rows; one trained on bit groups (--groups) scores bit rows
    through those groups, so its NLL compares with a bit-level model's on the same rows."""
    schema = model.schema
    if schema.bit_dims:
        data = load_dataset(dataset, splits=(split,))
        return schema.encode_bits(data.split(split), f"{data.source}[{split}]")
    return load_table_dataset(dataset, schema=schema, splits=(split,)).split(split)
