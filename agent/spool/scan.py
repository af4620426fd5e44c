"""scan: rebuild the spool's index from its journals and files after any crash.

What a crash can leave, and what scan does about it:

* a ``.tmp`` chunk (killed mid-write): quarantined; it was never offered for upload;
* a chunk renamed but not journaled: its record is rebuilt from its envelope header;
* an ``ack`` journaled but the file not yet deleted: the file is deleted;
* a torn last journal line: cut off;
* a half-created session (``.new-<id>`` holding at most a journal): removed;
* a forgotten session's directory (forget recorded, removal cut short): removed.

What corruption can leave: a chunk whose framing fails, whose header names another
chunk, or whose sealed sha256 differs from its journal record; unreadable journal lines;
unknown files. All are quarantined with a reason and recorded as findings; a chunk that is
quarantined or missing gets a ``lost`` record, so the manifest leaves it out but its seq
is never used again. A ``live`` scan (another process holds the spool) changes nothing
and reports only what would be quarantined or lost.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from agent.spool.entries import (
    describe,
    is_directory,
    odd_directory,
    odd_file,
    read_regular,
    unreadable,
)
from agent.spool.journal import (
    JOURNAL,
    ChunkRecord,
    JournalRead,
    LostRecord,
    OpenRecord,
    SessionIndex,
    encode_records,
    read_journal,
)
from agent.spool.layout import (
    CHUNK_NAME,
    FORGOTTEN,
    LOCK,
    NEW_PREFIX,
    SESSION_NAME,
    SESSIONS,
    TMP_NAME,
    TRASH,
    ForgottenRecord,
)
from agent.spool.models import FindingAction, ScanFinding
from agent.spool.quarantine import QUARANTINE, Quarantine
from protocol.envelope import EnvelopeError, read_header
from runtime.files import fsync_dir, truncate, write_atomically

log = logging.getLogger(__name__)

TORN_WRITE = "torn write (temporary file left by a crash)"
SHA_MISMATCH = "sealed sha256 differs from the journal"
MISSING = "missing from the spool"


@dataclass
class ScanResult:
    sessions: dict[str, SessionIndex] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)
    findings: list[ScanFinding] = field(default_factory=list)


class Scanner:
    def __init__(self, spool_dir: Path, quarantine: Quarantine, live: bool) -> None:
        self.spool_dir = spool_dir
        self.quarantine = quarantine
        self.live = live
        self.result = ScanResult()

    def run(self) -> ScanResult:
        self.result.forgotten = self._forgotten()
        if is_directory(self.spool_dir):
            self._scan_root()
        sessions = self.spool_dir / SESSIONS
        if is_directory(sessions):
            for entry in sorted(sessions.iterdir()):
                try:
                    self._scan_sessions_entry(entry)
                except FileNotFoundError:
                    if not self.live:
                        raise
                    # The owner acked and deleted a chunk, or forgot a session, meanwhile.
                except OSError as exc:  # a session directory it cannot read: left alone
                    self._found(entry, None, None, "skipped", unreadable(exc), applied=True)
        if self.live:
            shown = ("quarantined", "lost", "skipped")
            self.result.findings = [f for f in self.result.findings if f.action in shown]
        for finding in self.result.findings:
            if finding.action in ("quarantined", "lost", "skipped"):
                log.warning(
                    "spool: %s: %s (session %s, seq %s)",
                    finding.action,
                    finding.reason,
                    finding.session_id,
                    finding.seq,
                )
        return self.result

    def _scan_root(self) -> None:
        # What each known name must be; the owner's Spool has already set aside an odd
        # lock, quarantine or sessions entry (forgotten.jsonl: see _forgotten).
        known = {SESSIONS: odd_directory, QUARANTINE: odd_directory, LOCK: odd_file}
        for entry in sorted(self.spool_dir.iterdir()):
            if entry.name == TRASH:
                if (odd := odd_directory(entry)) is not None:
                    self._quarantine(entry, None, None, odd)
                    continue
                self._found(entry, None, None, "deleted", "forgotten session leftovers")
                if not self.live:
                    shutil.rmtree(entry, ignore_errors=True)
            elif entry.name in known:
                if self.live and (odd := known[entry.name](entry)) is not None:
                    self._quarantine(entry, None, None, odd)
            elif entry.name != FORGOTTEN:
                self._quarantine(entry, None, None, _unexpected(entry))

    def _scan_sessions_entry(self, entry: Path) -> None:
        real_dir = is_directory(entry)  # a link to a directory is not a session
        staging = entry.name.startswith(NEW_PREFIX) and real_dir
        if staging and {p.name for p in entry.iterdir()} <= {JOURNAL}:
            self._found(entry, None, None, "deleted", "unfinished session creation")
            if not self.live:
                shutil.rmtree(entry, ignore_errors=True)
            return
        if not real_dir or not SESSION_NAME.match(entry.name):
            self._quarantine(entry, None, None, _unexpected(entry))
        elif entry.name in self.result.forgotten:
            self._finish_forgetting(entry)
        elif not any(entry.iterdir()):
            self._quarantine(entry, None, None, "empty session directory")
        elif (session := self._scan_session(entry)) is not None:
            self.result.sessions[entry.name] = session

    def _finish_forgetting(self, directory: Path) -> None:
        """A crash between recording a forget and removing the directory: finish it, unless
        chunk files are there (they never should be), which are quarantined instead."""
        if any(directory.glob("*.chunk")):
            self._quarantine(directory, directory.name, None, "chunks of a forgotten session")
            return
        self._found(directory, directory.name, None, "deleted", "forgotten session leftovers")
        if not self.live:
            shutil.rmtree(directory, ignore_errors=True)

    def _scan_session(self, directory: Path) -> SessionIndex | None:
        """The session's index; None if its journal is odd and cannot even be moved aside
        (the session is then left alone, untouched, and reported)."""
        session = SessionIndex(directory.name, directory)
        files = sorted(directory.iterdir())
        try:
            journal = read_journal(session.journal)
        except OSError as exc:  # a directory, a FIFO... or unreadable: rebuilt from chunks
            if not self._quarantine(session.journal, session.session_id, None, unreadable(exc)):
                return None
            journal = JournalRead(records=[], good_length=0)
        self._repair_journal(session, journal)
        for record in journal.records:
            session.apply(record)
        if session.opened_at is None:
            session.opened_at = datetime.fromtimestamp(directory.stat().st_mtime, UTC)
        present: set[int] = set()
        for path in files:
            if path.name == JOURNAL:
                continue
            if chunk := CHUNK_NAME.match(path.name):
                if self._scan_chunk(session, path, int(chunk.group(1))):
                    present.add(int(chunk.group(1)))
            elif tmp := TMP_NAME.match(path.name):
                if not self.live:  # in a live spool it is a write in progress
                    reason = odd_file(path) or TORN_WRITE
                    self._quarantine(path, session.session_id, int(tmp.group(1)), reason)
            else:
                self._quarantine(path, session.session_id, None, _unexpected(path, "file"))
        if not self.live:
            for seq in session.pending_seqs():
                if seq not in present:
                    self._found(directory, session.session_id, seq, "lost", MISSING)
                    session.record(LostRecord(seq=seq, reason=MISSING))
        if not journal.has_open:
            self._rebuild_open_record(session)
        return session

    def _scan_chunk(self, session: SessionIndex, path: Path, seq: int) -> bool:
        """True if the file stays as a pending chunk."""
        sid = session.session_id
        odd = odd_file(path)
        if seq in session.acked and odd is None:
            self._found(path, sid, seq, "deleted", "acknowledged before a crash")
            if not self.live:
                path.unlink(missing_ok=True)
                fsync_dir(session.directory)
            return False
        try:
            blob = read_regular(path)  # never a FIFO (it would block), never through a link
        except FileNotFoundError:
            if self.live:  # acked and deleted by the owner since the listing
                return False
            raise
        except OSError as exc:
            reason = unreadable(exc)
            self._quarantine(path, sid, seq, reason)
            if not self.live and session.is_pending(seq):
                session.record(LostRecord(seq=seq, reason=reason))
            return False
        digest = hashlib.sha256(blob).hexdigest()
        record = session.chunks.get(seq)
        problem: str | None
        try:
            header = read_header(blob)
        except EnvelopeError as exc:
            problem = f"unreadable envelope: {exc}"
        else:
            problem = None
            if header.session_id != sid or header.seq != seq:
                problem = "envelope header names another chunk"
            elif record is not None and record.sha256 != digest:
                problem = SHA_MISMATCH
        if problem is not None:
            self._quarantine(path, sid, seq, problem)
            if not self.live:
                session.record(LostRecord(seq=seq, reason=problem))
            return False
        if record is None:
            self._found(path, sid, seq, "recovered", "chunk missing from the journal")
            record = ChunkRecord(
                seq=seq,
                sha256=digest,
                bytes=len(blob),
                start_s=header.start_s,
                duration_s=header.duration_s,
            )
            self._record(session, record)
        if session.device_id is None:
            session.device_id = header.device_id
        return True

    def _repair_journal(self, session: SessionIndex, journal: JournalRead) -> None:
        sid = session.session_id
        if journal.torn_tail:
            self._found(session.journal, sid, None, "repaired", "torn journal tail dropped")
            if not self.live:
                truncate(session.journal, journal.good_length)
        for lineno, _raw in journal.bad_lines:
            reason = f"unreadable journal line {lineno}"
            self._found(session.journal, sid, None, "quarantined", reason)
        if journal.bad_lines and not self.live:
            evidence = session.directory / "journal-lines.bad"
            write_atomically(evidence, b"\n".join(raw for _, raw in journal.bad_lines) + b"\n")
            self.quarantine.move(evidence, sid, "unreadable journal lines")
            write_atomically(session.journal, encode_records(journal.records))

    def _rebuild_open_record(self, session: SessionIndex) -> None:
        """The journal lost its open record; a chunk header still names the device."""
        sid = session.session_id
        if session.device_id is None or session.opened_at is None:
            self._found(session.journal, sid, None, "lost", "open record lost, device unknown")
            return
        self._found(session.journal, sid, None, "repaired", "open record rebuilt from a chunk")
        record = OpenRecord(device_id=session.device_id, session_id=sid, at=session.opened_at)
        self._record(session, record)

    def _record(self, session: SessionIndex, record: ChunkRecord | OpenRecord) -> None:
        if self.live:
            session.apply(record)
        else:
            session.record(record)

    def _quarantine(self, path: Path, sid: str | None, seq: int | None, reason: str) -> bool:
        """Move ``path`` aside (a live scan only says it would); False if it cannot be
        moved: then it stays where it is, reported as skipped, and is ignored."""
        if not self.live:
            try:
                self.quarantine.move(path, sid, reason)
            except OSError as exc:
                why = f"{reason}; cannot be moved aside ({os.strerror(exc.errno or 0).lower()})"
                self._found(path, sid, seq, "skipped", why)
                return False
        self._found(path, sid, seq, "quarantined", reason)
        return True

    def _forgotten(self) -> set[str]:
        """Sessions delivered and removed; an odd list is set aside (its ids are then
        no longer known: harmless, a leftover of one is only sent again)."""
        path = self.spool_dir / FORGOTTEN
        try:
            data = read_regular(path)
        except FileNotFoundError:
            return set()
        except OSError as exc:
            self._quarantine(path, None, None, unreadable(exc))
            return set()
        forgotten = set()
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                forgotten.add(ForgottenRecord.model_validate_json(line).session_id)
            except ValidationError:
                log.warning("spool: an unreadable line in %s was skipped", path.name)
        return forgotten

    def _found(
        self,
        path: Path,
        sid: str | None,
        seq: int | None,
        action: FindingAction,
        reason: str,
        applied: bool | None = None,
    ) -> None:
        self.result.findings.append(
            ScanFinding(
                path=str(path.relative_to(self.spool_dir)),
                session_id=sid,
                seq=seq,
                action=action,
                reason=reason,
                applied=not self.live if applied is None else applied,
            )
        )


def _unexpected(path: Path, what: str = "entry") -> str:
    kind = describe(path)
    plain = kind in ("a regular file", "a directory")
    return f"unexpected {what}" + ("" if plain else f" ({kind})")
