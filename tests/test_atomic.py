"""made.io.atomic: files written whole or not at all, with the mode a plain open() gives them, and
paths that cannot be written refused as one DataError before anything is."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from made.core.errors import DataError
from made.io.atomic import atomic_write_text, atomic_write_with, check_output_folder, check_output_path


@pytest.fixture
def umask() -> Iterator[None]:
    """Let a test set the umask; the process's own comes back afterwards."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_get_the_mode_open_gives_them(tmp_path: Path, umask: None, mask: int) -> None:
    os.umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"y")

    atomic_write_with(tmp_path / "b.bin", writer)
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("z")
    expected = 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == expected
    for name in ("a.txt", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_a_path_in_a_missing_folder_is_refused_and_nothing_written(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "x.csv") == tmp_path / "x.csv"
    with pytest.raises(DataError, match=r"the folder .*missing does not exist"):
        atomic_write_text(tmp_path / "missing" / "x.csv", "x")
    assert os.listdir(tmp_path) == []


def test_a_path_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"the folder .*file is a file, not a folder"):
        atomic_write_text(tmp_path / "file" / "x.csv", "x")


def test_a_folder_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    calls: list[Path] = []
    with pytest.raises(DataError, match="is a folder; name a file"):
        atomic_write_with(tmp_path / "dir", calls.append)
    assert calls == [] and os.listdir(tmp_path) == ["dir"] and os.listdir(tmp_path / "dir") == []


def test_a_name_too_long_is_one_data_error(tmp_path: Path) -> None:
    long = tmp_path / ("a" * 300 + ".csv")
    with pytest.raises(DataError, match="File name too long"):
        atomic_write_text(long, "x")
    assert os.listdir(tmp_path) == []


def test_an_output_folder_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert check_output_folder(tmp_path) == tmp_path
    with pytest.raises(DataError, match="is a file; name a folder"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(DataError, match=r"cannot make the folder .*sub: .*file is a file"):
        check_output_folder(tmp_path / "file" / "sub")
