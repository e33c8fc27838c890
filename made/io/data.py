"""Binary data sets: .npz with train/valid/test, CSV of 0/1, Larochelle's .amat text files.

A data set is named either by a path or by a name looked up as DATA_DIR/NAME.npz (the caller's
data directory: `made` passes Settings.data_dir, from MADE_DATA_DIR).
Every problem (missing file, non-binary values, ragged rows, empty split) is a DataError
naming the file and, where it applies, the row and column.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from made.core.errors import DataError, format_value
from made.io.csv import MISSING_MARKERS, check_header, is_header, is_number, sniff_delimiter

SPLITS = ("train", "valid", "test")
_TEXT_SUFFIXES = (".csv", ".tsv", ".amat", ".txt")


@dataclass
class Dataset:
    name: str
    source: str
    splits: dict[str, np.ndarray]  # split -> (N, D) uint8 of 0/1
    image_shape: list[int] | None = None

    @property
    def dims(self) -> int:
        return int(next(iter(self.splits.values())).shape[1])

    def split(self, name: str) -> np.ndarray:
        if name not in self.splits:
            have = ", ".join(sorted(self.splits))
            raise DataError(f"data set {self.source} has no '{name}' split (it has: {have})")
        return self.splits[name]


def resolve(name_or_path: str, data_dir: Path | None = None) -> Path:
    """A path as given if it exists, else data_dir/NAME.npz for a bare name."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    looks_like_path = os.sep in name_or_path or path.suffix in (".npz", *_TEXT_SUFFIXES)
    if not looks_like_path and data_dir is not None:
        candidate = Path(data_dir).expanduser() / f"{name_or_path}.npz"
        if candidate.exists():
            return candidate
        raise DataError(f"no data set named '{name_or_path}': {candidate} does not exist")
    if not looks_like_path:
        raise DataError(
            f"no data set '{name_or_path}': it is not a file, and MADE_DATA_DIR is not set to look it up as a name"
        )
    raise DataError(f"data file not found: {path}")


def load_dataset(name_or_path: str, splits: tuple[str, ...] = SPLITS, data_dir: Path | None = None) -> Dataset:
    """Load the requested splits of a data set (a path, or a name in data_dir); each must be a
    non-empty binary matrix."""
    path = resolve(name_or_path, data_dir)
    if path.suffix == ".npz":
        arrays = _load_npz(path, splits)
        name = dataset_name(path)
    elif path.is_dir() or path.suffix in _TEXT_SUFFIXES:
        arrays, name = _load_text_splits(path, splits)
    else:
        raise DataError(f"unsupported data file {path}: expected .npz, .csv or .amat")
    dims = {a.shape[1] for a in arrays.values()}
    if len(dims) > 1:
        shapes = ", ".join(f"{s}: {a.shape[1]}" for s, a in arrays.items())
        raise DataError(f"splits of {path} have different numbers of columns ({shapes})")
    d = dims.pop()
    image_shape = _image_shape(name, d)
    return Dataset(name=name, source=str(path), splits=arrays, image_shape=image_shape)


def dataset_name(path: str | Path) -> str:
    """A data set's name from its file, without the split: `ocr_letters_train.csv` and a folder
    `ocr_letters/` are 'ocr_letters', `mushrooms.npz` is 'mushrooms'."""
    path = Path(path)
    stem = path.name if path.is_dir() or not path.suffix else path.stem
    return re.sub(r"[_\-.]?(train|valid|test)$", "", stem) or stem


def parse_image_shape(text: str) -> list[int]:
    """'16,8' (or '16x8') -> [16, 8]: the height and width of image data."""
    try:
        shape = [int(p) for p in re.split(r"[,x]", text.strip()) if p.strip()]
    except ValueError:
        shape = []
    if len(shape) != 2 or min(shape) < 1:
        raise DataError(f"image shape '{text}' is not H,W: expected two positive integers, e.g. 16,8")
    return shape


def check_image_shape(shape: list[int] | None, dims: int) -> list[int] | None:
    """The shape, if its H x W pixels are the data's dimensions."""
    if shape is not None and math.prod(shape) != dims:
        raise DataError(
            f"image shape {shape[0]},{shape[1]} has {math.prod(shape)} pixels but the data have "
            f"{dims} dimensions: H x W must equal the number of columns"
        )
    return shape


def _image_shape(name: str, dims: int) -> list[int] | None:
    side = int(round(dims**0.5))
    if "mnist" in name.lower() and side * side == dims:
        return [side, side]
    return None


def _load_npz(path: Path, splits: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {s: check_binary(a, f"{path}[{s}]") for s, a in read_npz(path, splits).items()}


def read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of an .npz archive, never unpickled. Otherwise a one-line DataError that
    names the file and what is wrong: not an .npz archive at all, a lone .npy array, a missing
    array, object arrays (which only unpickling could read), a damaged archive. The file is
    opened here, so that it is closed whatever numpy makes of it."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
            if head == b"\x93NUMPY":
                raise DataError(
                    f"{path} is a .npy file (one array); expected an .npz archive of named arrays: {', '.join(keys)}"
                )
            if not head.startswith(b"PK"):  # every zip archive, an empty one included
                raise DataError(f"{path} is not an .npz archive (numpy's zip of named arrays, as numpy.savez writes)")
            f.seek(0)
            with np.load(f, allow_pickle=False) as npz:
                missing = [k for k in keys if k not in npz.files]
                if missing:
                    have = ", ".join(npz.files) or "nothing"
                    hint = ""
                    if missing[0] in SPLITS and "train_images" in npz.files:
                        hint = (
                            f": it holds grey-level images, not 0/1 splits; use a 0/1 binarization of them (for "
                            f"MNIST, binarized_mnist.npz; made train --rebinarize {path.name} then draws a fresh one "
                            "each epoch)"
                        )
                    raise DataError(f"{path} has no '{missing[0]}' array (it has: {have}){hint}")
                return {k: npz[k] for k in keys}
    except DataError:
        raise
    except Exception as exc:  # unreadable, zip errors, truncated files, object arrays
        if isinstance(exc, ValueError) and "pickle" in str(exc):
            raise DataError(
                f"{path} holds object arrays, which only unpickling could read: save numeric arrays"
            ) from None
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
        raise DataError(f"cannot read {path} as .npz: {why or type(exc).__name__}") from None


def split_files(path: Path) -> dict[str, Path]:
    """Files of each split: a directory of *train*/*valid*/*test* files, or a file whose name
    carries the split (mnist_train.amat finds mnist_valid.amat and mnist_test.amat)."""
    if path.is_dir():
        found: dict[str, Path] = {}
        for f in sorted(path.iterdir()):
            for s in SPLITS:
                if f.suffix in _TEXT_SUFFIXES and re.search(rf"(^|[_\-.]){s}([_\-.]|$)", f.stem):
                    found.setdefault(s, f)
        return found
    match = re.search(r"(^|[_\-.])(train|valid|test)([_\-.]|$)", path.stem)
    if not match:
        return {}
    found = {}
    for s in SPLITS:
        stem = path.stem[: match.start(2)] + s + path.stem[match.end(2) :]
        candidate = path.with_name(stem + path.suffix)
        if candidate.exists():
            found[s] = candidate
    return found


def _load_text_splits(path: Path, splits: tuple[str, ...]) -> tuple[dict[str, np.ndarray], str]:
    files = split_files(path)
    if not files and path.is_file():
        # one file with no split in its name: it serves whichever split is asked for
        if len(splits) > 1:
            raise DataError(
                f"{path} is a single file; training needs train/valid/test files "
                f"(e.g. {path.stem}_train{path.suffix}, ..._valid, ..._test) or an .npz"
            )
        return {splits[0]: read_text_matrix(path)}, dataset_name(path)
    missing = [s for s in splits if s not in files]
    if missing:
        raise DataError(f"no '{missing[0]}' file found beside {path}")
    return {s: read_text_matrix(files[s]) for s in splits}, dataset_name(files[splits[0]])


def read_text_matrix(path: Path) -> np.ndarray:
    """A text matrix of 0/1: CSV (cells separated by ',', or by ';', '|' or tab where the file's
    first line uses one of those; an optional header row of column names) or whitespace-separated
    (Larochelle's .amat). Empty lines and lines starting with '#' are skipped. A blank cell is a
    cell: it is refused naming its line and column (1-based, as editors show them), never merged
    into its neighbour."""
    rows: list[np.ndarray] = []
    width, width_from, header = 0, "", False
    for lineno, cells in _text_rows(path):
        if not rows and not header and is_header(cells):
            check_header(cells, str(path))
            width, width_from, header = len(cells), "the header row", True
            continue
        if not width:
            width, width_from = len(cells), f"line {lineno}"
        elif len(cells) != width:
            raise DataError(f"{path} line {lineno} has {len(cells)} values, expected {width} like {width_from}")
        rows.append(_binary_row(path, lineno, cells, first=not rows and not header))
    if not rows:
        raise DataError(f"{path} holds {'a header row but ' if header else ''}no rows")
    return np.stack(rows)


def _text_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each data line; a UTF-8 byte-order mark (Excel) is ignored."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        lines = ((n, line) for n, line in enumerate(fh, start=1) if line.strip() and not line.lstrip().startswith("#"))
        first = next(lines, None)
        if first is None:
            return
        delimiter = sniff_delimiter(first[1], tab=path.suffix != ".amat")
        for lineno, line in itertools.chain([first], lines):
            if delimiter is None:
                yield lineno, re.split(r"\s*,\s*|\s+", line.strip())
            else:
                yield lineno, [c.strip() for c in next(csv.reader([line], delimiter=delimiter))]


def _binary_row(path: Path, lineno: int, cells: list[str], first: bool) -> np.ndarray:
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        col = next(j for j, c in enumerate(cells) if not is_number(c))
        raise DataError(f"{path} line {lineno}, column {col + 1} {_cell_problem(cells, col, first)}") from None
    bad = (values != 0) & (values != 1)
    if bad.any():
        col = int(np.argmax(bad))
        what = (
            _cell_problem(cells, col, first)
            if np.isnan(values[col])
            else f"holds {format_value(values[col])}, expected 0 or 1"
        )
        raise DataError(f"{path} line {lineno}, column {col + 1} {what}")
    return values.astype(np.uint8)


def _cell_problem(cells: list[str], col: int, first: bool) -> str:
    """What is wrong with a cell that is not 0 or 1, and what to do about it."""
    cell = cells[col]
    if cell.lower() in MISSING_MARKERS:
        shown = "is blank" if cell == "" else f"holds {_show(cell)}, a missing value"
        trailing = " (a separator at the end of the line?)" if cell == "" and col == len(cells) - 1 else ""
        return f"{shown}{trailing}: 0/1 data here must be complete; fill the cell or drop the row"
    problem = f"holds {_show(cell)}, expected 0 or 1"
    if len(cells) == 1 and len(cell) > 16:
        return f"{problem}: the whole line is one cell; separate the values with ',' (or ';', '|', tab or spaces)"
    if first:
        return f"{problem} (if this line is a header row, every cell of it must be a name, not a number)"
    return problem


def _show(cell: str, limit: int = 40) -> str:
    return repr(cell if len(cell) <= limit else cell[:limit] + "...")


def check_binary(array: np.ndarray, where: str) -> np.ndarray:
    """Return array as uint8 if it is a non-empty 2-D matrix of 0/1, else raise naming the cell."""
    array = np.asarray(array)
    if array.dtype == object:
        raise DataError(f"{where} holds Python objects, expected a numeric 0/1 matrix")
    if array.ndim != 2:
        hint = ""
        if array.ndim == 3 and min(array.shape) > 0:
            h, w = array.shape[1:]
            hint = f": images? flatten each to a row (a.reshape(len(a), -1)) and pass --image-shape {h},{w}"
        raise DataError(f"{where} has shape {array.shape}, expected a 2-D matrix (rows x dimensions){hint}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{where} is empty (shape {array.shape})")
    bad = (array != 0) & (array != 1)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{where} row {r} column {c} holds {format_value(array[r, c])}, expected 0 or 1")
    return array.astype(np.uint8)


def load_intensities(path: str | Path, binary_train: np.ndarray, key: str = "train_images") -> np.ndarray:
    """Pixel probabilities (N, D) float32 in [0, 1] of the grayscale images behind a binarized
    training split: the first N images of `key` (uint8 0..255) in `path`, where N is the number of
    binary training rows. Refused unless every binary row could have been drawn from its image
    (a pixel of intensity 0 is never on, one of 255 never off), so the images cannot belong to
    another split or another order."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"grayscale image file not found: {path}")
    images = read_npz(path, (key,))[key]
    n, d = binary_train.shape
    if images.dtype != np.uint8:
        raise DataError(f"{path}[{key}] holds {images.dtype}, expected uint8 intensities 0..255")
    images = images.reshape(len(images), -1)
    if images.shape[1] != d or len(images) < n:
        raise DataError(
            f"{path}[{key}] has {len(images)} images of {images.shape[1]} pixels; the training "
            f"split needs at least {n} of {d}"
        )
    images = images[:n]
    bad = ((images == 0) & (binary_train == 1)) | ((images == 255) & (binary_train == 0))
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{path}[{key}] image {r} pixel {c} has intensity {images[r, c]} but the binary "
            f"training row {r} has {binary_train[r, c]}: these are not the images it was drawn from"
        )
    return (images.astype(np.float32) / 255.0).astype(np.float32)
