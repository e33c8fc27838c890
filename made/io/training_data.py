"""The data a model is trained on, read the one way that `made train` (before it builds a
model) and the trainer (on a resumed or re-run configuration) both use, so that the rows a run
saw are the rows its checks see."""

from __future__ import annotations

from pathlib import Path

from made.core.errors import DataError
from made.core.schema import ANSWER_COLUMNS, Schema
from made.io.data import Dataset, load_dataset
from made.io.tables import TableDataset, is_table_file, load_grouped_bits, load_table_dataset, read_groups


def load_training_data(
    dataset: str,
    *,
    schema: Schema | None = None,
    groups: str | Path | None = None,
    drop_columns: tuple[str, ...] = (),
) -> Dataset | TableDataset:
    """Bits (.npz, CSV of 0/1, .amat); bits read as categories through a groups file (`schema`,
    when given, is that reading, as a trained table model records it); or a table (a CSV with a
    header row, Parquet, or any data read with a given schema), its schema inferred from the
    training split unless given, `drop_columns` left out of an inferred one."""
    if groups:
        if drop_columns:
            raise DataError("--groups reads bit data as categories; it does not go with --drop-columns")
        bits = load_dataset(dataset)
        return load_grouped_bits(bits, schema if schema is not None else read_groups(groups, bits.dims))
    path = Path(dataset)
    if schema is not None or is_table_file(path) or path.suffix == ".parquet":
        if schema is not None and drop_columns:
            raise DataError(
                "--drop-columns goes with an inferred schema; with --schema, list only the columns "
                "to model in the schema file"
            )
        table = load_table_dataset(dataset, schema=schema, drop_columns=drop_columns)
        refuse_answer_names(table.schema.names, dataset)
        return table
    if drop_columns:
        raise DataError(f"--drop-columns names columns of a table (a CSV with a header row); {dataset} is bit data")
    return load_dataset(dataset)


def refuse_answer_names(names: list[str], dataset: str) -> None:
    """A table column named as a column that scoring adds (logprob, exact, stderr) cannot be
    modelled: a scored row could not tell them apart. made train and made schema refuse it alike."""
    taken = [name for name in names if name in ANSWER_COLUMNS]
    if taken:
        raise DataError(
            f"{dataset}: column '{taken[0]}' has the name of a column that scoring adds "
            f"({', '.join(ANSWER_COLUMNS)}), so a scored row could not tell them apart; rename it, or leave "
            f"it out with --drop-columns {taken[0]}"
        )
