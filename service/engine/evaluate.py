"""`made evaluate`: NLL of a stored model on a data split, with its standard error.

The model's kind (service.engine.registry.model_kind) picks how the split is read, before the
engine is built (registry.build_engine) so that a refusal of the data is the command's only line
on stderr; the NLL is then the engine contract's log p of those rows as records."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from made.core.errors import DataError, InvalidInput
from made.io.data import load_dataset
from made.io.tables import load_table_dataset
from made.store.reference import Reference, build_reference
from made.store.versions import StoredModel, open_model
from service.engine.registry import ModelKind, build_engine, model_kind


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
    x = _READERS[model_kind(model)](model, dataset, split)
    if masks != "all" and (isinstance(masks, bool) or not isinstance(masks, int)):
        raise InvalidInput(f"--masks must be 'all' or a mask index, got {masks!r}")
    if isinstance(masks, int) and not 0 <= masks < model.n_masks:
        raise InvalidInput(
            f"mask {masks} is out of range: model {name} has {model.n_masks} masks (0..{model.n_masks - 1})"
        )
    engine = build_engine(model, providers, threads)
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


# How each kind reads a data split: rows of bits, or a table's records (encoded).
_READERS: dict[ModelKind, Callable[[StoredModel, str, str], np.ndarray]] = {"bits": _bit_rows, "table": _table_rows}


def version_reference(
    version_dir: str | Path,
    dataset: str,
    split: str = "test",
    providers: list[str] | None = None,
    threads: int | None = None,
) -> Reference:
    """reference.json of a stored version (made.store.reference) from its data set: `split`'s rows
    scored by the serving engine (the mixture's log p, as /logprob answers it), the training
    split's marginals; `made export --reference` writes it into the version (add_reference)."""
    version_dir = Path(version_dir)
    model = open_model(version_dir.parent.parent, version_dir.parent.name, version_dir.name)
    read = _READERS[model_kind(model)]
    heldout, train = read(model, dataset, split), read(model, dataset, "train")
    engine = build_engine(model, providers, threads)
    return build_reference(
        model.name,
        model.version,
        model.schema,
        heldout,
        train,
        lambda rows: engine.logprob(rows.astype("float64"), masks="all").logprob,
        split=split,
        bits=not model.is_table,
    )
