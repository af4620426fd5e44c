"""Sealed chunks on the gateway's disk: one directory per session, one file per chunk.

A chunk is stored as it arrived, still sealed (encrypted to the gateway's key), so the
chunk store holds no readable audio; it is opened again when the session is assembled.
Each file is written tmp -> fsync -> rename -> fsync of the directory *before* the device
gets its 200, because the device deletes its copy on that answer. The file name carries
the chunk's digest, so two different uploads under one seq can never overwrite each other.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from runtime.files import fsync_dir, write_atomically


class ChunkFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    def session_dir(self, session_id: str) -> Path:
        return self.root / session_id

    @staticmethod
    def name(seq: int, sha256: str) -> str:
        return f"{seq:06d}-{sha256[:16]}.sealed"

    def path(self, session_id: str, name: str) -> Path:
        return self.session_dir(session_id) / name

    def write(self, session_id: str, seq: int, sha256: str, blob: bytes) -> str:
        """Store durably; returns the file name (blocking: call it from a thread)."""
        directory = self.session_dir(session_id)
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fsync_dir(directory.parent)
        name = self.name(seq, sha256)
        write_atomically(directory / name, blob)
        return name

    def read(self, session_id: str, name: str) -> bytes:
        return self.path(session_id, name).read_bytes()

    def discard(self, session_id: str, name: str) -> None:
        """Drop a file written for an upload that lost a race to an earlier one."""
        self.path(session_id, name).unlink(missing_ok=True)

    def delete_session(self, session_id: str) -> None:
        shutil.rmtree(self.session_dir(session_id), ignore_errors=True)
