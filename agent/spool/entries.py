"""What is on disk where the spool expects its files, and reading only what is a file.

A spool lives on an SD card that fails, in a directory a technician (or an attacker with
the device's user) may touch: where a chunk, a journal or the lock should be, there may be
a directory, a FIFO, a device node or a symbolic link. Opening a FIFO blocks for ever and
a link may lead out of the spool, so every entry is looked at with lstat first and opened
with O_NONBLOCK | O_NOFOLLOW, and its fstat must say "regular file" before a byte is read.
Whatever is not one is an *odd entry*: set aside (quarantined) and reported, never fatal.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class OddEntry(OSError):
    """Not a regular file where one belongs; ``reason`` says what it is instead."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(errno.EINVAL, reason, str(path))
        self.reason = reason


def kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "an unknown kind of entry"


def describe(path: Path) -> str:
    """What ``path`` is (``a FIFO``), without following or opening it."""
    try:
        return kind(os.lstat(path).st_mode)
    except OSError:
        return "gone"


def odd_file(path: Path) -> str | None:
    """Why ``path`` is not a regular file (``not a regular file (a FIFO)``), None when it
    is one or is not there. Never follows a link, never opens anything."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    return None if stat.S_ISREG(mode) else f"not a regular file ({kind(mode)})"


def odd_directory(path: Path) -> str | None:
    """Why ``path`` is not a real directory (a link to one is not), None when it is one or
    is not there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    return None if stat.S_ISDIR(mode) else f"not a directory ({kind(mode)})"


def is_directory(path: Path) -> bool:
    """A real directory, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def listed(directory: Path) -> list[Path]:
    """A real directory's entries, sorted; none when it is not one or is gone, even if it
    went between the look and the listing (the spool can be removed under the agent)."""
    if not is_directory(directory):
        return []
    try:
        return sorted(directory.iterdir())
    except FileNotFoundError:
        return []


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file. Raises FileNotFoundError, OddEntry (anything else,
    a link included) or another OSError (unreadable: permissions, I/O errors)."""
    if (odd := odd_file(path)) is not None:
        raise OddEntry(path, odd)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a link since the lstat
            raise OddEntry(path, "not a regular file (a symbolic link)") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # swapped since the lstat
            raise OddEntry(path, f"not a regular file ({kind(info.st_mode)})")
        parts = []
        while block := os.read(fd, max(info.st_size, 65536)):
            parts.append(block)
        return b"".join(parts)
    finally:
        os.close(fd)


def unreadable(exc: OSError) -> str:
    """A reason for the report: what kind of entry it was, or why it could not be read."""
    if isinstance(exc, OddEntry):
        return exc.reason
    return f"unreadable ({(exc.strerror or type(exc).__name__).lower()})"
