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

from agent.spool.models import QuarantineEntry
from runtime.files import append_line, fsync_dir, read_lines

QUARANTINE = "quarantine"
INDEX = "index.jsonl"
SPOOL_LEVEL = "_spool"  # not a valid session id, so it cannot collide with one


class Quarantine:
    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self.root = spool_dir / QUARANTINE

    def move(self, path: Path, session_id: str | None, reason: str) -> Path:
        """Move a file or directory to quarantine/<session or _spool>/ and index it."""
        folder = self.root / (session_id or SPOOL_LEVEL)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = folder / path.name
        counter = 1
        while target.exists():
            target = folder / f"{path.name}.{counter}"
            counter += 1
        os.rename(path, target)
        fsync_dir(folder)
        fsync_dir(path.parent)
        entry = QuarantineEntry(
            at=datetime.now(UTC),
            session_id=session_id,
            original=self._relative(path),
            stored=self._relative(target),
            reason=reason,
        )
        append_line(self.root / INDEX, entry.model_dump_json())
        return target

    def entries(self) -> list[QuarantineEntry]:
        """Everything in quarantine now, with its recorded reason."""
        found: dict[str, QuarantineEntry] = {}
        for line in read_lines(self.root / INDEX):
            with suppress(ValidationError):
                entry = QuarantineEntry.model_validate_json(line)
                if (self.spool_dir / entry.stored).exists():
                    found[entry.stored] = entry
        if self.root.is_dir():
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
                for path in sorted(folder.iterdir()):
                    stored = self._relative(path)
                    if stored not in found:
                        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                        found[stored] = QuarantineEntry(
                            at=mtime, original="?", stored=stored, reason="unknown"
                        )
        return sorted(found.values(), key=lambda e: e.stored)

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self.spool_dir))
