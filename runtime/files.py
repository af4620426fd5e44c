"""The one durable write: a file that exists is complete, a line that was appended is on disk.

Every file either program keeps (spool chunks and journals, the gateway's sealed chunks,
keys, credentials, broker files, certificates, state flags) is written through here, so the
crash rules live in one place: write a temporary file next to the target, fsync it, rename
it over the target, fsync the directory. After a crash a file is the old one or the new
one, never torn (``durable=False`` leaves out the syncs, for status.json alone: rewritten
every few seconds, it is not worth a sync each time). The mode a file gets is the one
asked for (fchmod after creating it), whatever the umask; the default is 0600 because most
of these hold secrets or health information, even when sealed.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType

PRIVATE = 0o600


def disk_full(exc: OSError) -> bool:
    """Whether ``exc`` means no space (or quota) is left: callers report it, never retry it."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def open_fd(path: Path, flags: int, mode: int = PRIVATE) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CLOEXEC, mode)
    try:
        yield fd
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of ``data`` is written (one call may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` survive a power cut."""
    with open_fd(path, os.O_RDONLY | os.O_DIRECTORY, 0) as fd:
        os.fsync(fd)


def partial_name(target: Path) -> Path:
    """A temporary file next to ``target`` no other writer uses at the same time."""
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")


def write_durably(
    path: Path, data: bytes, mode: int = PRIVATE, group: int | None = None, *, sync: bool = True
) -> None:
    """Write ``path`` (created or truncated, never through a symlink) with exactly ``mode``
    and fsync it (unless not ``sync``); not yet visible atomically: write_atomically
    renames it into place."""
    with open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, PRIVATE) as fd:
        write_all(fd, data)
        if group is not None:
            os.fchown(fd, -1, group)
        os.fchmod(fd, mode)
        if sync:
            os.fsync(fd)


def write_atomically(
    path: Path,
    data: bytes,
    mode: int = PRIVATE,
    *,
    tmp: Path | None = None,
    parents: bool = False,
    group: int | None = None,
    durable: bool = True,
) -> Path:
    """Replace ``path`` so a crash leaves the old or the new content, never a mix, and the
    file is never readable by others before it has its mode (and ``group``). ``parents``
    creates missing directories (0700). On failure the temporary file is removed and the
    error raised. Returns ``path``.

    ``durable=False`` keeps all that but the two fsyncs, for a file rewritten every few
    seconds that the next write replaces anyway (status.json): after a power cut it may
    be the old content, the new, or unreadable, never a mix of two."""
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = tmp or partial_name(path)
    try:
        write_durably(tmp, data, mode, group, sync=durable)
        os.rename(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def write_new(path: Path, data: bytes, mode: int = PRIVATE) -> Path:
    """Like write_atomically, but never replaces a file: FileExistsError if ``path``
    exists, even if another process created it a moment ago (a hard link, not a rename)."""
    tmp = partial_name(path)
    try:
        write_durably(tmp, data, mode)
        os.link(tmp, path)
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync it; on failure the partial line is cut off again."""
    data = line.encode() + b"\n"
    with open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND) as fd:
        size = os.fstat(fd).st_size
        try:
            write_all(fd, data)
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


class DurableFile:
    """A file written in pieces (an audio export) that appears at ``target``
    complete, or not at all, with exactly ``mode``. Parent directories are created (0700)."""

    def __init__(self, target: Path, mode: int = PRIVATE) -> None:
        self.target = target
        self.mode = mode
        self.size = 0
        self._partial = partial_name(target)

    def __enter__(self) -> DurableFile:
        self.target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._file = self._partial.open("xb")
        os.fchmod(self._file.fileno(), self.mode)
        return self

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self._file.write(data)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
        finally:
            self._file.close()
        if exc_type is not None:
            self._partial.unlink(missing_ok=True)
            return
        self._partial.replace(self.target)
        fsync_dir(self.target.parent)
