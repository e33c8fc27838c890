"""Binary data sets: .npz with train/valid/test, CSV of 0/1, Larochelle's .amat text files.

A data set is named either by a path or by a name looked up as $MADE_DATA_DIR/NAME.npz.
Every problem (missing file, non-binary values, ragged rows, empty split) is a DataError
naming the file and, where it applies, the row and column.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from made.errors import DataError

SPLITS = ("train", "valid", "test")
_TEXT_SUFFIXES = (".csv", ".amat", ".txt")


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


def resolve(name_or_path: str) -> Path:
    """A path as given if it exists, else $MADE_DATA_DIR/NAME.npz."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    looks_like_path = os.sep in name_or_path or path.suffix in (".npz", *_TEXT_SUFFIXES)
    data_dir = os.environ.get("MADE_DATA_DIR")
    if not looks_like_path and data_dir:
        candidate = Path(data_dir).expanduser() / f"{name_or_path}.npz"
        if candidate.exists():
            return candidate
        raise DataError(f"no data set named '{name_or_path}': {candidate} does not exist")
    if not looks_like_path:
        raise DataError(
            f"no data set '{name_or_path}': it is not a file, and MADE_DATA_DIR is not set "
            "to look it up as a name"
        )
    raise DataError(f"data file not found: {path}")


def load_dataset(name_or_path: str, splits: tuple[str, ...] = SPLITS) -> Dataset:
    """Load the requested splits of a data set; each must be a non-empty binary matrix."""
    path = resolve(name_or_path)
    if path.suffix == ".npz":
        arrays = _load_npz(path, splits)
        name = path.stem
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


def _image_shape(name: str, dims: int) -> list[int] | None:
    side = int(round(dims**0.5))
    if "mnist" in name.lower() and side * side == dims:
        return [side, side]
    return None


def _load_npz(path: Path, splits: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [s for s in splits if s not in npz.files]
            if missing:
                have = ", ".join(npz.files) or "nothing"
                raise DataError(f"{path} has no '{missing[0]}' array (it has: {have})")
            return {s: check_binary(npz[s], f"{path}[{s}]") for s in splits}
    except DataError:
        raise
    except Exception as exc:  # zip errors, pickled object arrays, truncated files
        raise DataError(f"cannot read {path} as .npz: {exc}") from None


def _split_files(path: Path) -> dict[str, Path]:
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
    files = _split_files(path)
    if not files and path.is_file():
        # one file with no split in its name: it serves whichever split is asked for
        if len(splits) > 1:
            raise DataError(
                f"{path} is a single file; training needs train/valid/test files "
                f"(e.g. {path.stem}_train{path.suffix}, ..._valid, ..._test) or an .npz"
            )
        return {splits[0]: read_text_matrix(path)}, path.stem
    missing = [s for s in splits if s not in files]
    if missing:
        raise DataError(f"no '{missing[0]}' file found beside {path}")
    name = re.sub(r"[_\-.]?(train|valid|test)$", "", files[splits[0]].stem) or path.stem
    return {s: read_text_matrix(files[s]) for s in splits}, name


def read_text_matrix(path: Path) -> np.ndarray:
    """A text matrix of 0/1 separated by commas or whitespace (CSV or .amat)."""
    rows: list[list[str]] = []
    width = None
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = [f for f in re.split(r"[,\s]+", line) if f]
            if width is None:
                width = len(fields)
            elif len(fields) != width:
                raise DataError(
                    f"{path} line {lineno} has {len(fields)} values, expected {width} like the first row"
                )
            rows.append(fields)
    if not rows:
        raise DataError(f"{path} holds no rows")
    try:
        matrix = np.array(rows, dtype=np.float64)
    except ValueError:
        bad = next((r, c, v) for r, row in enumerate(rows) for c, v in enumerate(row) if not _is_number(v))
        raise DataError(
            f"{path} row {bad[0]} column {bad[1]} holds '{bad[2]}', expected 0 or 1"
        ) from None
    return check_binary(matrix, str(path))


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def check_binary(array: np.ndarray, where: str) -> np.ndarray:
    """Return array as uint8 if it is a non-empty 2-D matrix of 0/1, else raise naming the cell."""
    array = np.asarray(array)
    if array.dtype == object:
        raise DataError(f"{where} holds Python objects, expected a numeric 0/1 matrix")
    if array.ndim != 2:
        raise DataError(f"{where} has shape {array.shape}, expected a 2-D matrix (rows x dimensions)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{where} is empty (shape {array.shape})")
    bad = (array != 0) & (array != 1)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{where} row {r} column {c} holds {array[r, c]!r}, expected 0 or 1")
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
    try:
        with np.load(path, allow_pickle=False) as npz:
            if key not in npz.files:
                have = ", ".join(npz.files) or "nothing"
                raise DataError(f"{path} has no '{key}' array (it has: {have})")
            images = npz[key]
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {path} as .npz: {exc}") from None
    n, d = binary_train.shape
    if images.dtype != np.uint8:
        raise DataError(f"{path}[{key}] holds {images.dtype}, expected uint8 intensities 0..255")
    images = images.reshape(len(images), -1)
    if images.shape[1] != d or len(images) < n:
        raise DataError(f"{path}[{key}] has {len(images)} images of {images.shape[1]} pixels; the training "
                        f"split needs at least {n} of {d}")
    images = images[:n]
    bad = ((images == 0) & (binary_train == 1)) | ((images == 255) & (binary_train == 0))
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{path}[{key}] image {r} pixel {c} has intensity {images[r, c]} but the binary "
                        f"training row {r} has {binary_train[r, c]}: these are not the images it was drawn from")
    return (images.astype(np.float32) / 255.0).astype(np.float32)
