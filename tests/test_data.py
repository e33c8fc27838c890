"""Data loading (made/io/data.py): .npz, CSV and .amat files, lookup by name, one-line errors that
say what and where, and the real data sets with the shapes their README documents."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from made.core.errors import ConfigError, DataError
from made.io.data import dataset_name, load_dataset, load_intensities, read_text_matrix
from training.model import MADEConfig
from training.train import TrainConfig, Trainer


def _matrix(rows: int, cols: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((rows, cols)) < 0.4).astype(np.uint8)


def _write_text(path: Path, matrix: np.ndarray, sep: str) -> Path:
    path.write_text("\n".join(sep.join(str(int(v)) for v in row) for row in matrix) + "\n")
    return path


def _data_error(name_or_path: str | Path, **kwargs: object) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(str(name_or_path), **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_npz_splits_load_as_uint8_matrices(tmp_path: Path) -> None:
    splits = {"train": _matrix(30, 7, 0), "valid": _matrix(10, 7, 1), "test": _matrix(12, 7, 2)}
    as_float = {k: v.astype(np.float32) for k, v in splits.items()}
    np.savez(tmp_path / "toy.npz", train=as_float["train"], valid=as_float["valid"], test=as_float["test"])
    data = load_dataset(str(tmp_path / "toy.npz"))
    assert data.name == "toy" and data.dims == 7 and data.image_shape is None
    for name, expected in splits.items():
        got = data.split(name)
        assert got.dtype == np.uint8
        assert np.array_equal(got, expected)


def test_csv_files_of_each_split_load(tmp_path: Path) -> None:
    splits = {"train": _matrix(20, 5, 3), "valid": _matrix(6, 5, 4), "test": _matrix(8, 5, 5)}
    for name, matrix in splits.items():
        _write_text(tmp_path / f"votes_{name}.csv", matrix, ",")
    data = load_dataset(str(tmp_path / "votes_valid.csv"))  # any one of the three names the set
    assert data.name == "votes" and data.dims == 5
    for name, expected in splits.items():
        assert np.array_equal(data.split(name), expected)
    # a single CSV can serve one split
    one = load_dataset(str(tmp_path / "votes_test.csv"), splits=("test",))
    assert np.array_equal(one.split("test"), splits["test"])


def test_larochelle_amat_files_load_by_file_and_by_directory(tmp_path: Path) -> None:
    folder = tmp_path / "amat"
    folder.mkdir()
    splits = {"train": _matrix(25, 9, 6), "valid": _matrix(5, 9, 7), "test": _matrix(7, 9, 8)}
    for name, matrix in splits.items():
        _write_text(folder / f"foo_{name}.amat", matrix, " ")
    by_file = load_dataset(str(folder / "foo_train.amat"))
    by_dir = load_dataset(str(folder))
    for data in (by_file, by_dir):
        assert data.dims == 9
        for name, expected in splits.items():
            assert np.array_equal(data.split(name), expected)
    assert by_file.name == "foo"


def test_text_matrix_accepts_mixed_whitespace_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.amat"
    path.write_text("# a comment\n0 1\t1\n\n1,0, 0\n  1 1 1  \n")
    assert read_text_matrix(path).tolist() == [[0, 1, 1], [1, 0, 0], [1, 1, 1]]


def test_a_name_is_looked_up_in_the_data_directory_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez(tmp_path / "toy.npz", train=_matrix(9, 4, 0), valid=_matrix(3, 4, 1), test=_matrix(3, 4, 2))
    monkeypatch.chdir(tmp_path.parent)  # 'toy' is not a file in the working directory
    data = load_dataset("toy", data_dir=tmp_path)
    assert data.source == str(tmp_path / "toy.npz")
    assert np.array_equal(data.split("train"), _matrix(9, 4, 0))
    with pytest.raises(DataError) as info:
        load_dataset("nosuchset", data_dir=tmp_path)
    assert str(tmp_path / "nosuchset.npz") in str(info.value)
    # the environment is Settings' to read (made/cli passes Settings.data_dir), not made.io.data's
    monkeypatch.setenv("MADE_DATA_DIR", str(tmp_path))
    assert "MADE_DATA_DIR" in _data_error("toy")


def test_made_resolves_a_bare_dataset_name_in_made_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`made train/evaluate --dataset NAME`: the CLI looks NAME up in Settings.data_dir
    (MADE_DATA_DIR) once, so the run records a path and resumes without the variable."""
    from made.cli.commands import dataset_path

    np.savez(tmp_path / "toy.npz", train=_matrix(9, 4, 0), valid=_matrix(3, 4, 1), test=_matrix(3, 4, 2))
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.setenv("MADE_DATA_DIR", str(tmp_path))
    assert dataset_path("toy") == str(tmp_path / "toy.npz")
    assert dataset_path("some/file.csv") == "some/file.csv"  # a path stays as given
    monkeypatch.delenv("MADE_DATA_DIR")
    with pytest.raises(DataError, match="MADE_DATA_DIR"):
        dataset_path("toy")


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "absent.npz"
    assert str(missing) in _data_error(missing)


def test_non_binary_npz_value_names_its_row_and_column(tmp_path: Path) -> None:
    train = _matrix(10, 6, 0)
    train[3, 5] = 2
    np.savez(tmp_path / "bad.npz", train=train, valid=_matrix(3, 6, 1), test=_matrix(3, 6, 2))
    message = _data_error(tmp_path / "bad.npz")
    assert "row 3 column 5" in message and "train" in message and "bad.npz" in message


def test_non_binary_text_values_name_their_line_and_column(tmp_path: Path) -> None:
    for name in ("train", "valid", "test"):
        _write_text(tmp_path / f"s_{name}.csv", _matrix(4, 3, 0), ",")
    (tmp_path / "s_valid.csv").write_text("0,1,1\n1,0,0.5\n")
    message = _data_error(tmp_path / "s_train.csv")
    assert "s_valid.csv" in message and "line 2, column 3 holds 0.5, expected 0 or 1" in message
    (tmp_path / "s_valid.csv").write_text("0,1,1\n1,yes,0\n")
    message = _data_error(tmp_path / "s_train.csv")
    assert "line 2, column 2 holds 'yes'" in message
    (tmp_path / "s_valid.csv").write_text("0,1,1\n1,2,0\n")
    message = _data_error(tmp_path / "s_train.csv")
    assert "holds 2, expected 0 or 1" in message and "np." not in message


def test_a_blank_csv_cell_is_a_cell_not_a_merged_separator(tmp_path: Path) -> None:
    # issue 15.1: ",," used to be one separator, so a column blank on every row vanished
    rows = _matrix(6, 5, 3)
    path = tmp_path / "b_test.csv"
    path.write_text("".join(f"{r[0]},,{','.join(str(v) for v in r[2:])}\n" for r in rows))
    message = _data_error(path, splits=("test",))
    assert "line 1, column 2 is blank" in message and "fill the cell or drop the row" in message
    # one blank in a later row is named as blank, on its own line, not as a short row
    lines = [",".join(str(v) for v in r) for r in rows]
    lines[4] = "1,,0,1,1"
    path.write_text("\n".join(lines) + "\n")
    assert "line 5, column 2 is blank" in _data_error(path, splits=("test",))
    lines[4] = "1,0,0,1,"
    path.write_text("\n".join(lines) + "\n")
    assert "line 5, column 5 is blank (a separator at the end of the line?)" in _data_error(path, splits=("test",))
    lines[4] = "1,NA,0,1,1"
    path.write_text("\n".join(lines) + "\n")
    assert "line 5, column 2 holds 'NA', a missing value" in _data_error(path, splits=("test",))


def test_real_data_with_a_blanked_column_is_refused_not_shifted(data_dir: Path, tmp_path: Path) -> None:
    """The issue's repro: ocr_letters as CSV with column 2 blanked on every row of every split."""
    with np.load(data_dir / "ocr_letters.npz") as npz:
        for split in ("train", "valid", "test"):
            text = "\n".join(",".join(str(v) for v in row) for row in npz[split][:50])
            (tmp_path / f"b_{split}.csv").write_text(re.sub(r"^([01]),[01],", r"\1,,", text, flags=re.M) + "\n")
    message = _data_error(tmp_path / "b_train.csv")
    assert "b_train.csv line 1, column 2 is blank" in message


def test_a_header_row_of_names_is_skipped(tmp_path: Path) -> None:
    matrix = _matrix(5, 4, 7)
    path = tmp_path / "h_test.csv"
    path.write_text("c0,c1,c2,c3\n" + "\n".join(",".join(str(v) for v in r) for r in matrix) + "\n")
    assert np.array_equal(read_text_matrix(path), matrix)
    # a first line that mixes names and numbers is an error that says what a header must be
    path.write_text("c0,1,c2,c3\n" + "\n".join(",".join(str(v) for v in r) for r in matrix) + "\n")
    message = _data_error(path, splits=("test",))
    assert "line 1, column 1 holds 'c0'" in message and "header row" in message
    path.write_text("c0,c1,c2,c3\n")
    assert "header row but no rows" in _data_error(path, splits=("test",))
    path.write_text("c0,c1,c2,c3\n1,0,1\n")
    assert "line 2 has 3 values, expected 4 like the header row" in _data_error(path, splits=("test",))


def test_semicolon_tab_and_pipe_separated_files_load(tmp_path: Path) -> None:
    matrix = _matrix(5, 30, 8)
    for sep, suffix in ((";", ".csv"), ("\t", ".tsv"), ("|", ".txt")):
        path = _write_text(tmp_path / f"m_test{suffix}", matrix, sep)
        assert np.array_equal(load_dataset(str(path), splits=("test",)).split("test"), matrix)


def test_a_line_that_is_one_long_cell_says_how_to_separate_values(tmp_path: Path) -> None:
    path = tmp_path / "colon_test.csv"
    path.write_text("\n".join(":".join("01"[i % 2] for i in range(128)) for _ in range(3)) + "\n")
    message = _data_error(path, splits=("test",))
    assert "the whole line is one cell" in message and "separate the values with ','" in message
    assert len(message) < 400  # the 255-character line is shortened, not quoted whole


def test_dataset_names_drop_the_split(tmp_path: Path) -> None:
    for name in ("train", "valid", "test"):
        _write_text(tmp_path / f"ocr_letters_{name}.csv", _matrix(4, 3, 0), ",")
    assert load_dataset(str(tmp_path / "ocr_letters_train.csv")).name == "ocr_letters"
    assert dataset_name(tmp_path / "ocr_letters_test.csv") == "ocr_letters"
    assert dataset_name("mushrooms.npz") == "mushrooms" and dataset_name("mushrooms") == "mushrooms"


def test_ragged_rows_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "r.amat"
    path.write_text("0 1 1 0\n1 0 0 1\n1 1 0\n0 0 0 0\n")
    message = _data_error(path, splits=("test",))
    assert "line 3" in message and "r.amat" in message


def test_empty_splits_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz", train=np.zeros((0, 5), np.uint8), valid=_matrix(3, 5, 1), test=_matrix(3, 5, 2))
    message = _data_error(tmp_path / "e.npz")
    assert "empty" in message and "train" in message
    (tmp_path / "blank_test.amat").write_text("\n# only a comment\n\n")
    message = _data_error(tmp_path / "blank_test.amat", splits=("test",))
    assert "no rows" in message and "blank_test.amat" in message


def test_missing_splits_are_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "m.npz", train=_matrix(5, 3, 0), test=_matrix(5, 3, 1))
    message = _data_error(tmp_path / "m.npz")
    assert "'valid'" in message and "m.npz" in message
    for name in ("train", "valid"):
        _write_text(tmp_path / f"t_{name}.amat", _matrix(4, 3, 0), " ")
    assert "'test'" in _data_error(tmp_path / "t_train.amat")


def test_grey_level_images_and_image_arrays_say_what_to_do(tmp_path: Path) -> None:
    """mnist.npz's keys (train_images, ...) were refused as a missing 'train' array, with no word
    that they are grey levels, nor of binarized_mnist.npz and --rebinarize; a 3-D array of images
    with no word of flattening them and --image-shape."""
    images = np.zeros((4, 3, 2), np.uint8)
    np.savez(tmp_path / "grey.npz", train_images=images, test_images=images)
    message = _data_error(tmp_path / "grey.npz")
    assert "has no 'train' array (it has: train_images, test_images)" in message
    assert "grey-level images" in message and "--rebinarize grey.npz" in message
    assert "binarized_mnist.npz" in message
    np.savez(tmp_path / "img.npz", train=images, valid=images, test=images)
    message = _data_error(tmp_path / "img.npz")
    assert "has shape (4, 3, 2), expected a 2-D matrix" in message
    assert "reshape(len(a), -1)" in message and "--image-shape 3,2" in message


def test_malformed_arrays_and_files_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "w.npz", train=_matrix(5, 3, 0), valid=_matrix(5, 4, 1), test=_matrix(5, 3, 2))
    assert "different numbers of columns" in _data_error(tmp_path / "w.npz")
    np.savez(tmp_path / "flat.npz", train=np.ones(5), valid=_matrix(5, 3, 1), test=_matrix(5, 3, 2))
    assert "2-D" in _data_error(tmp_path / "flat.npz")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    assert "junk.npz" in _data_error(tmp_path / "junk.npz")
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    assert "unsupported" in _data_error(tmp_path / "x.parquet")


def test_files_that_are_not_npz_archives_are_refused_saying_what_they_are(tmp_path: Path) -> None:
    """Never numpy's fallback advice to unpickle: a text file, a lone .npy array, object arrays,
    a truncated archive and an empty one each get their own reason, in one line."""
    (tmp_path / "text.npz").write_text("0,1,1\n1,0,0\n")
    message = _data_error(tmp_path / "text.npz")
    assert "text.npz is not an .npz archive" in message and "pickle" not in message
    np.save(tmp_path / "one.npy", _matrix(4, 3, 0))
    (tmp_path / "one.npz").write_bytes((tmp_path / "one.npy").read_bytes())
    assert "one.npz is a .npy file (one array); expected an .npz archive of named arrays: train, valid, test" in (
        _data_error(tmp_path / "one.npz")
    )
    splits = {s: _matrix(4, 3, i) for i, s in enumerate(("train", "valid", "test"))}
    np.savez(tmp_path / "objects.npz", **{**splits, "train": np.array([[0, 1], [1]], dtype=object)})
    message = _data_error(tmp_path / "objects.npz")
    assert "objects.npz holds object arrays, which only unpickling could read" in message
    assert "allow_pickle" not in message
    np.savez(tmp_path / "whole.npz", **splits)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:300])
    assert "cannot read" in _data_error(tmp_path / "cut.npz") and "cut.npz as .npz" in _data_error(tmp_path / "cut.npz")
    np.savez(tmp_path / "empty.npz")
    assert "empty.npz has no 'train' array (it has: nothing)" in _data_error(tmp_path / "empty.npz")
    # the grayscale images behind --rebinarize are read the same way
    with pytest.raises(DataError, match="text.npz is not an .npz archive"):
        load_intensities(tmp_path / "text.npz", splits["train"])
    assert load_dataset(str(tmp_path / "whole.npz")).split("train").shape == (4, 3)


def test_a_model_of_other_dimensions_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d5.npz", train=_matrix(20, 5, 0), valid=_matrix(5, 5, 1), test=_matrix(5, 5, 2))
    cfg = TrainConfig(dataset=str(tmp_path / "d5.npz"), model=MADEConfig(dims=7, hidden=[8]))
    with pytest.raises(ConfigError) as info:
        Trainer(cfg, tmp_path / "run")
    assert "5" in str(info.value) and "7" in str(info.value)
    assert not (tmp_path / "run").exists()


def _documented_shapes(readme: Path) -> dict[str, tuple[int, int, int, int]]:
    """name -> (D, train, valid, test) from the README's table."""
    shapes = {}
    for line in readme.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and all(re.fullmatch(r"\d+", c) for c in cells[1:5]):
            shapes[cells[0]] = (int(cells[1]), int(cells[2]), int(cells[3]), int(cells[4]))
    return shapes


def test_real_data_sets_have_their_documented_shapes(data_dir: Path) -> None:
    documented = _documented_shapes(data_dir / "README.md")
    files = sorted(p.stem for p in data_dir.glob("*.npz") if p.stem != "mnist")
    assert files and sorted(documented) == files
    for name in files:
        dims, n_train, n_valid, n_test = documented[name]
        data = load_dataset(str(data_dir / f"{name}.npz"))
        assert data.dims == dims, name
        assert data.split("train").shape == (n_train, dims), name
        assert data.split("valid").shape == (n_valid, dims), name
        assert data.split("test").shape == (n_test, dims), name
        assert data.image_shape == ([28, 28] if name == "binarized_mnist" else None), name


def _gray_and_binary(tmp_path: Path, n: int = 40, d: int = 12) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(n + 5, 3, 4), dtype=np.uint8)  # d = 12 pixels as 3x4 images
    images[:, 0, 0] = 0
    images[:, 2, 3] = 255
    binary = (rng.random((n, d)) < images[:n].reshape(n, d) / 255.0).astype(np.uint8)
    path = tmp_path / "gray.npz"
    np.savez(path, train_images=images)
    return path, images, binary


def test_intensities_of_the_images_behind_a_binary_split(tmp_path: Path) -> None:
    path, images, binary = _gray_and_binary(tmp_path)
    p = load_intensities(path, binary)
    assert p.dtype == np.float32 and p.shape == binary.shape  # the first N images only
    np.testing.assert_allclose(p, images[: len(binary)].reshape(len(binary), -1) / 255.0, rtol=1e-6)


def test_images_a_binary_split_cannot_come_from_are_refused(tmp_path: Path) -> None:
    path, images, binary = _gray_and_binary(tmp_path)
    flipped = binary.copy()
    flipped[7, 0] = 1  # pixel (0, 0) has intensity 0 in every image
    with pytest.raises(DataError, match=r"image 7 pixel 0 has intensity 0 .* not the images"):
        load_intensities(path, flipped)
    flipped = binary.copy()
    flipped[3, 11] = 0  # pixel (2, 3) is 255 everywhere
    with pytest.raises(DataError, match=r"image 3 pixel 11 has intensity 255"):
        load_intensities(path, flipped)
    with pytest.raises(DataError, match=r"45 images of 12 pixels; the training split needs at least 40 of 13"):
        load_intensities(path, np.zeros((40, 13), dtype=np.uint8))
    with pytest.raises(DataError, match=r"has no 'test_images' array \(it has: train_images\)"):
        load_intensities(path, binary, key="test_images")
    with pytest.raises(DataError, match="grayscale image file not found"):
        load_intensities(tmp_path / "absent.npz", binary)
    np.savez(tmp_path / "float.npz", train_images=images.astype(np.float32))
    with pytest.raises(DataError, match="holds float32, expected uint8"):
        load_intensities(tmp_path / "float.npz", binary)


def test_binarized_mnist_training_rows_were_drawn_from_mnist_train_images(data_dir: Path) -> None:
    """What `made train --rebinarize mnist.npz` relies on: the first 50000 MNIST training images are
    the images behind binarized_mnist's train split (the valid and test images are not used)."""
    train = load_dataset(str(data_dir / "binarized_mnist.npz"), splits=("train",)).split("train")
    p = load_intensities(data_dir / "mnist.npz", train)
    assert p.shape == (50000, 784)
    # the binary rows are a typical draw: per-pixel means agree within sampling error
    assert abs(float(train.mean()) - float(p.mean())) < 1e-3
    with pytest.raises(DataError, match="not the images it was drawn from"):
        load_intensities(data_dir / "mnist.npz", train[::-1].copy())
