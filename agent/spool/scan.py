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
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

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
from runtime.files import fsync_dir, read_lines, truncate, write_atomically

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
        self.result.forgotten = _forgotten(self.spool_dir / FORGOTTEN)
        if self.spool_dir.is_dir():
            self._scan_root()
        sessions = self.spool_dir / SESSIONS
        if sessions.is_dir():
            for entry in sorted(sessions.iterdir()):
                try:
                    self._scan_sessions_entry(entry)
                except FileNotFoundError:
                    if not self.live:
                        raise
                    # The owner acked and deleted a chunk, or forgot a session, meanwhile.
        if self.live:
            kept = [f for f in self.result.findings if f.action in ("quarantined", "lost")]
            self.result.findings = kept
        for finding in self.result.findings:
            if finding.action in ("quarantined", "lost"):
                log.warning(
                    "spool: %s: %s (session %s, seq %s)",
                    finding.action,
                    finding.reason,
                    finding.session_id,
                    finding.seq,
                )
        return self.result

    def _scan_root(self) -> None:
        known = {SESSIONS, QUARANTINE, LOCK, FORGOTTEN}
        for entry in sorted(self.spool_dir.iterdir()):
            if entry.name == TRASH:
                self._found(entry, None, None, "deleted", "forgotten session leftovers")
                if not self.live:
                    shutil.rmtree(entry, ignore_errors=True)
            elif entry.name not in known:
                self._quarantine(entry, None, None, "unexpected entry")

    def _scan_sessions_entry(self, entry: Path) -> None:
        staging = entry.name.startswith(NEW_PREFIX) and entry.is_dir()
        if staging and {p.name for p in entry.iterdir()} <= {JOURNAL}:
            self._found(entry, None, None, "deleted", "unfinished session creation")
            if not self.live:
                shutil.rmtree(entry, ignore_errors=True)
            return
        if not entry.is_dir() or not SESSION_NAME.match(entry.name):
            self._quarantine(entry, None, None, "unexpected entry")
        elif entry.name in self.result.forgotten:
            self._finish_forgetting(entry)
        elif not any(entry.iterdir()):
            self._quarantine(entry, None, None, "empty session directory")
        else:
            self.result.sessions[entry.name] = self._scan_session(entry)

    def _finish_forgetting(self, directory: Path) -> None:
        """A crash between recording a forget and removing the directory: finish it, unless
        chunk files are there (they never should be), which are quarantined instead."""
        if any(directory.glob("*.chunk")):
            self._quarantine(directory, directory.name, None, "chunks of a forgotten session")
            return
        self._found(directory, directory.name, None, "deleted", "forgotten session leftovers")
        if not self.live:
            shutil.rmtree(directory, ignore_errors=True)

    def _scan_session(self, directory: Path) -> SessionIndex:
        session = SessionIndex(directory.name, directory)
        files = sorted(directory.iterdir())
        journal = read_journal(session.journal)
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
                    self._quarantine(path, session.session_id, int(tmp.group(1)), TORN_WRITE)
            else:
                self._quarantine(path, session.session_id, None, "unexpected file")
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
        if seq in session.acked:
            self._found(path, sid, seq, "deleted", "acknowledged before a crash")
            if not self.live:
                path.unlink(missing_ok=True)
                fsync_dir(session.directory)
            return False
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            if self.live:  # acked and deleted by the owner since the listing
                return False
            raise
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

    def _quarantine(self, path: Path, sid: str | None, seq: int | None, reason: str) -> None:
        self._found(path, sid, seq, "quarantined", reason)
        if not self.live:
            self.quarantine.move(path, sid, reason)

    def _found(
        self, path: Path, sid: str | None, seq: int | None, action: FindingAction, reason: str
    ) -> None:
        self.result.findings.append(
            ScanFinding(
                path=str(path.relative_to(self.spool_dir)),
                session_id=sid,
                seq=seq,
                action=action,
                reason=reason,
                applied=not self.live,
            )
        )


def _forgotten(path: Path) -> set[str]:
    forgotten = set()
    for line in read_lines(path):
        try:
            forgotten.add(ForgottenRecord.model_validate_json(line).session_id)
        except ValidationError:
            log.warning("spool: an unreadable line in %s was skipped", path.name)
    return forgotten
