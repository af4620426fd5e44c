"""Durable file primitives: a file that exists is complete, a line that was appended is on disk.

Every write that holds audio or bookkeeping goes through here, so the crash rules
(write a temporary file, fsync it, rename it, fsync the directory) live in one place.
Files are created 0600: they hold protected health information, even if sealed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def open_fd(path: Path, flags: int, mode: int = 0o600) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CLOEXEC, mode)
    try:
        yield fd
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``path`` and fsync it (not yet visible atomically: see write_atomically)."""
    with open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) as fd:
        _write_all(fd, data)
        os.fsync(fd)


def write_atomically(path: Path, data: bytes, tmp: Path | None = None) -> None:
    """Replace ``path`` so a crash leaves the old or the new content, never a mix.
    On failure the temporary file is removed and the error raised."""
    tmp = tmp or path.with_name(path.name + ".new")
    try:
        write_durably(tmp, data)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.rename(tmp, path)
    fsync_dir(path.parent)


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync it; on failure the partial line is cut off again."""
    data = line.encode() + b"\n"
    with open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND) as fd:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            with suppress(OSError):
                os.ftruncate(fd, size)
            raise


def truncate(path: Path, length: int) -> None:
    with open_fd(path, os.O_WRONLY) as fd:
        os.ftruncate(fd, length)
        os.fsync(fd)


def read_lines(path: Path) -> list[bytes]:
    """The non-blank lines of a JSON-lines file; none if it does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [line for line in data.split(b"\n") if line.strip()]


def fsync_dir(path: Path) -> None:
    with open_fd(path, os.O_RDONLY | os.O_DIRECTORY, 0) as fd:
        os.fsync(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
