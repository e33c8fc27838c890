"""Atomic file writes: a reader sees the old file or the complete new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from made.core.errors import DataError


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """`path` as a Path where atomic_path can write a file, or a DataError saying why it cannot
    (its folder is missing or is a file, it is a folder itself): commands call it before their
    work, atomic_path again before writing. os.path's tests, since pathlib's raise on a name
    too long."""
    target = Path(path)
    folder = target.parent
    if os.path.isdir(target):
        raise DataError(f"{target} is a folder; name a file to write")
    if not os.path.isdir(folder):
        why = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise DataError(f"cannot write {target}: the folder {folder} {why}")
    return target


def check_output_folder(path: str | os.PathLike[str]) -> Path:
    """`path` as a Path where a folder of output files can be (or is), or a DataError: it, or
    the nearest of its parents that exists, is a file."""
    folder = Path(path)
    existing = next((p for p in (folder, *folder.parents) if os.path.exists(p)), None)
    if existing is not None and not os.path.isdir(existing):
        if existing == folder:
            raise DataError(f"{folder} is a file; name a folder to write the files in")
        raise DataError(f"cannot make the folder {folder}: {existing} is a file")
    return folder


def _temporary_beside(target: Path) -> Path:
    """A new empty file .NAME.RANDOM.tmp beside `target`, created with mode 0666 less the umask
    as open() creates files (tempfile.mkstemp's are 0600, which a rename would keep)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:  # a name another writer drew: draw again
            continue
        except OSError as exc:  # not writable there, a name too long, ...
            raise DataError(f"cannot write {target}: {exc.strerror or exc}") from None
        return tmp
    raise DataError(f"cannot write {target}: no free temporary name beside it")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.
    A path that cannot be written (check_output_path) is a DataError before anything is."""
    target = check_output_path(path)
    tmp = _temporary_beside(target)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Let `writer` fill a temporary file, then move it into place."""
    with atomic_path(path) as tmp:
        writer(tmp)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
