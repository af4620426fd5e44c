"""Quarantine: files the spool cannot trust are moved aside with a reason, never deleted.

A quarantined file may still hold a session's audio (sealed), so a person decides what
happens to it; ``room-agent spool verify`` lists it until then. The index is JSON lines,
one QuarantineEntry per move, appended after the rename: a crash in between leaves a file
listed with reason "unknown", never a reason without its file.
"""

from __future__ import annotations

import os
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from agent.spool.entries import listed, odd_directory, odd_file, read_regular
from agent.spool.models import QuarantineEntry
from runtime.files import append_line, fsync_dir

QUARANTINE = "quarantine"
INDEX = "index.jsonl"
SPOOL_LEVEL = "_spool"  # not a valid session id, so it cannot collide with one


class Quarantine:
    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self.root = spool_dir / QUARANTINE

    def move(
        self, path: Path, session_id: str | None, reason: str, original: Path | None = None
    ) -> Path:
        """Move a file or directory (or any entry: a FIFO, a link; never opened) to
        quarantine/<session or _spool>/ and index it. ``original``: where it was found, if
        it was renamed on the way (an odd lock is renamed before the lock is taken)."""
        folder = self.root / (session_id or SPOOL_LEVEL)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = unique_name(folder / path.name)
        os.rename(path, target)
        fsync_dir(folder)
        fsync_dir(path.parent)
        entry = QuarantineEntry(
            at=datetime.now(UTC),
            session_id=session_id,
            original=self._relative(original or path),
            stored=self._relative(target),
            reason=reason,
        )
        append_line(self.root / INDEX, entry.model_dump_json())
        return target

    def prepare(self) -> list[tuple[str, str]]:
        """Make quarantine/ a directory with a usable index, setting aside what stood in
        their place; returns (where, why) of each. Called with the spool's lock held."""
        moved: list[tuple[str, str]] = []
        if (odd := odd_directory(self.root)) is not None:
            aside = unique_name(self.root.with_name(QUARANTINE + ".odd"))
            os.rename(self.root, aside)
            self.root.mkdir(mode=0o700)
            self.move(aside, None, odd, original=self.root)
            moved.append((QUARANTINE, odd))
        self.root.mkdir(mode=0o700, exist_ok=True)
        index = self.root / INDEX
        if (odd := odd_file(index)) is not None:
            folder = self.root / SPOOL_LEVEL
            folder.mkdir(mode=0o700, exist_ok=True)
            target = unique_name(folder / INDEX)
            os.rename(index, target)
            fsync_dir(self.root)
            entry = QuarantineEntry(
                at=datetime.now(UTC),
                original=self._relative(index),
                stored=self._relative(target),
                reason=odd,
            )
            append_line(index, entry.model_dump_json())
            moved.append((self._relative(index), odd))
        return moved

    def entries(self) -> list[QuarantineEntry]:
        """Everything in quarantine now, with its recorded reason."""
        found: dict[str, QuarantineEntry] = {}
        for line in self._index_lines():
            with suppress(ValidationError):
                entry = QuarantineEntry.model_validate_json(line)
                if os.path.lexists(self.spool_dir / entry.stored):
                    found[entry.stored] = entry
        for folder in listed(self.root):  # the index, a file, lists nothing
            for path in listed(folder):
                stored = self._relative(path)
                if stored in found:
                    continue
                try:
                    mtime = datetime.fromtimestamp(path.lstat().st_mtime, UTC)
                except FileNotFoundError:  # gone since the listing, with the spool
                    continue
                found[stored] = QuarantineEntry(
                    at=mtime, original="?", stored=stored, reason="unknown"
                )
        return sorted(found.values(), key=lambda e: e.stored)

    def _index_lines(self) -> list[bytes]:
        """The index's lines; none when it is missing or odd (the spool sets an odd index
        aside when it opens; a read-only look just does without it)."""
        try:
            data = read_regular(self.root / INDEX)
        except OSError:
            return []
        return [line for line in data.split(b"\n") if line.strip()]

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self.spool_dir))


def unique_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``...: the first name nothing (not even a dangling
    link) holds."""
    target, counter = path, 1
    while os.path.lexists(target):
        target = path.with_name(f"{path.name}.{counter}")
        counter += 1
    return target
