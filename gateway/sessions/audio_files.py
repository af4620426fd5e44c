"""Audio content types, the audio errors, and the one durable-write helper for files.

Session audio itself lives encrypted in the store (audio_vault.py), never in a file. Small
files (configs, credentials, certificates, keys) are written to a temporary file,
fsynced, renamed into place and the directory fsynced, so after a crash a file is either
complete or absent, never torn.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from types import TracebackType

CONTENT_TYPES = {"audio/flac": ".flac", "audio/x-flac": ".flac", "audio/ogg": ".ogg"}


class AudioRejected(Exception):
    """The audio cannot be used (empty, too large); the message says which."""


class AudioTooLarge(AudioRejected):
    pass


def write_small_file(target: Path, data: bytes, mode: int = 0o600) -> Path:
    """A small file (a config, a credential, a certificate) written the same durable way."""
    with DurableFile(target, max(len(data), 1), mode) as file:
        file.write(data)
    return target


class DurableFile:
    """A file that appears at ``target`` complete, or not at all (mode 0600 unless told)."""

    def __init__(self, target: Path, max_bytes: int, mode: int = 0o600) -> None:
        self.target = target
        self.max_bytes = max_bytes
        self.mode = mode
        self.size = 0
        self._partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")

    def __enter__(self) -> DurableFile:
        self.target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._file = self._partial.open("xb")
        os.fchmod(self._file.fileno(), self.mode)
        return self

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise AudioTooLarge(f"audio exceeds {self.max_bytes} bytes")
        self._file.write(data)

    def fileno(self) -> int:
        """For a writer that takes a descriptor (libsndfile); then call written_directly()."""
        return self._file.fileno()

    def written_directly(self) -> None:
        """Account for what was written through fileno(), with the same size limit."""
        self.size = os.fstat(self._file.fileno()).st_size
        if self.size > self.max_bytes:
            raise AudioTooLarge(f"audio exceeds {self.max_bytes} bytes")

    def require_content(self) -> None:
        if self.size == 0:
            raise AudioRejected("audio is empty")

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
        fd = os.open(self.target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
