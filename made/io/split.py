"""One table file split into the train/valid/test files the table loader finds (made.io.tables,
made.io.data.split_files): NAME.csv -> NAME_train.csv, NAME_valid.csv, NAME_test.csv, beside it
or in another folder. The rows are drawn at random by a seed (the same seed, the same split) and
keep the file's order within each split; every file is written atomically, and files already
there are refused unless `force`. `made split` and `made train` on a single table both call it.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from made.core.errors import DataError
from made.io.atomic import atomic_write_text
from made.io.csv import to_csv
from made.io.data import SPLITS
from made.io.tables import read_table

_SPLIT_WORD = re.compile(r"(^|[_\-.])(train|valid|test)([_\-.]|$)")


def split_paths(path: Path, out: Path | None = None) -> dict[str, Path]:
    """The files `split_table` writes for `path`: NAME_train.csv, NAME_valid.csv, NAME_test.csv
    beside it (or in `out`). A name that already holds a split's word is refused, since the
    loader would read that word as the split."""
    if _SPLIT_WORD.search(path.stem):
        raise DataError(
            f"{path.name} already names a split (train, valid or test in its name); rename the file "
            "to split it, or train on it with its _valid and _test files beside it"
        )
    folder = out if out is not None else path.parent
    return {s: folder / f"{path.stem}_{s}.csv" for s in SPLITS}


def stale_splits(path: Path, targets: dict[str, Path]) -> str | None:
    """A warning where `path` was changed after the split files written from it (`targets`,
    split_paths) were: made train, evaluate, report and schema read those files, not the table, so
    its rows as they were when split (a column renamed since, rows added) would be used without a
    word. None where the files are newer, or where one cannot be read; and where the table is
    newer but its header and rows are still those of the files together (a copy, `cp -r`, writes
    them in any order; an editor saves a file unchanged), which is read only then."""
    try:
        changed = path.stat().st_mtime
        written = min(p.stat().st_mtime for p in targets.values())
    except OSError:
        return None
    if changed <= written or _same_rows(path, targets):
        return None
    return (
        f"{path.name} was changed after its split files ({', '.join(p.name for p in targets.values())}) "
        f"were written: they hold its rows as they were then; `made split {path} --force` rewrites them"
    )


def _same_rows(path: Path, targets: dict[str, Path]) -> bool:
    """Whether the split files together hold the table's header and rows (in any order)."""
    try:
        header, rows, _ = read_table(path)
        held: Counter[tuple[str, ...]] = Counter()
        for target in targets.values():
            names, part, _ = read_table(target)
            if names != header:
                return False
            held.update(map(tuple, part))
    except (DataError, OSError, UnicodeDecodeError):
        return False
    return held == Counter(map(tuple, rows))


def split_counts(n: int, valid: float, test: float) -> dict[str, int]:
    """Rows of each split: round(n * valid) and round(n * test), each at least one, the rest train."""
    for name, share in (("valid", valid), ("test", test)):
        if not 0 < share < 1:
            raise DataError(f"--{name} is {share}; it is a share of the rows, between 0 and 1")
    if valid + test >= 1:
        raise DataError(f"--valid {valid} and --test {test} leave no rows to train on; their sum must be below 1")
    n_valid, n_test = max(1, round(n * valid)), max(1, round(n * test))
    if n - n_valid - n_test < 1:
        rows = f"{n} rows are" if n != 1 else "1 row is"
        raise DataError(f"{rows} too few to split into train, valid and test: each needs a row")
    return {"train": n - n_valid - n_test, "valid": n_valid, "test": n_test}


def split_table(
    path: str | Path,
    *,
    valid: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Write the train/valid/test files of one table (a CSV with a header row, or Parquet) as
    CSV, each atomically; their paths by split. Cells are copied as the file holds them."""
    path = Path(path)
    folder = Path(out) if out is not None else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise DataError(f"--out {folder} is a file, not a folder")
    targets = split_paths(path, folder)
    there = [p for p in targets.values() if p.exists()]
    if there and not force:
        raise DataError(f"{there[0]} exists; pass --force to overwrite the split files")
    header, rows, _ = read_table(path)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)  # once the table is read: a bad one leaves none
    for split, chosen in split_rows(len(rows), valid=valid, test=test, seed=seed).items():
        atomic_write_text(targets[split], to_csv(header, (rows[i] for i in chosen), escape=False))
    return targets


def split_rows(n: int, *, valid: float = 0.1, test: float = 0.1, seed: int = 0) -> dict[str, np.ndarray]:
    """The rows (indices, in the file's order) of each split of a table of n rows, drawn by the
    seed: what split_table writes, and what `made schema` infers from without writing files, so
    that both mean the same rows by the same seed."""
    counts = split_counts(n, valid, test)
    order = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for split in SPLITS:
        out[split] = np.sort(order[start : start + counts[split]])
        start += counts[split]
    return out
