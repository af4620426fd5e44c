"""Spool: the one owner of the spool directory, shared by the recorder and uplink threads.

Opening it takes an exclusive flock (a second process gets SpoolBusy) and runs a scan.
Only acknowledged chunks are ever deleted; when a chunk does not fit under ``max_bytes``
or would leave less than ``min_free_bytes`` free (plus METADATA_RESERVE, so a full spool
can still close its session), SpoolFull is raised and nothing is written.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from agent.settings import SpoolSettings
from agent.spool.entries import is_directory, odd_directory, odd_file, read_regular, unreadable
from agent.spool.journal import (
    JOURNAL,
    AckRecord,
    ChunkRecord,
    CloseRecord,
    LostRecord,
    OpenRecord,
    PausedRecord,
    RecordsLostRecord,
    SessionIndex,
    encode_records,
)
from agent.spool.layout import (
    FORGOTTEN,
    LOCK,
    NEW_PREFIX,
    SESSIONS,
    TRASH,
    ForgottenRecord,
    chunk_name,
    tmp_name,
)
from agent.spool.models import (
    PendingChunk,
    QuarantineEntry,
    ScanFinding,
    SessionInfo,
    SpoolReport,
    SpoolUsage,
)
from agent.spool.quarantine import Quarantine, unique_name
from agent.spool.restore import journal_records, rebuilt
from agent.spool.scan import MISSING, SHA_MISMATCH, Scanner
from protocol.envelope import EnvelopeError, read_header
from protocol.manifest import CloseReason, SessionManifest
from protocol.messages import DeviceReason
from runtime.files import append_line, disk_full, fsync_dir, write_atomically

log = logging.getLogger(__name__)

METADATA_RESERVE = 64 * 1024


class SpoolError(Exception):
    """A spool operation that cannot be done; the message names ids only."""


class SpoolFull(SpoolError):
    """No room for the chunk under the quota or the free-space floor; nothing was written."""

    def __init__(self, limit: Literal["quota", "disk"], message: str) -> None:
        super().__init__(message)
        self.limit = limit


class SpoolBusy(SpoolError):
    """Another process holds the spool."""


class ChunkCorrupt(SpoolError):
    """A spooled chunk no longer matches its journal record; it has been quarantined."""


class Spool:
    def __init__(
        self, directory: Path, max_bytes: int, min_free_bytes: int, *, _live: bool = False
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.quarantine = Quarantine(self.directory)
        self.last_scan: list[ScanFinding] = []
        self._live = _live
        self._mutex = threading.RLock()
        self._sessions: dict[str, SessionIndex] = {}
        self._forgotten: set[str] = set()
        self._lock_fd: int | None = None
        self._set_aside: list[ScanFinding] = []  # found while taking the lock
        # A loss of the spool under us (restore.py): reported until the sessions it hit
        # are delivered and a new session has been opened.
        self._hit_by_loss: set[str] = set()
        self._loss_unseen = False
        if not _live:
            self._take_lock()
        self.scan()

    @classmethod
    def open(cls, directory: Path, limits: SpoolSettings) -> Spool:
        """The spool, or a SpoolError whose message is one line a person can act on (held
        by another process; the directory cannot be created or read)."""
        try:
            return cls(directory, limits.max_bytes, limits.min_free_bytes)
        except OSError as exc:
            raise SpoolError(f"{directory}: {exc.strerror or type(exc).__name__}") from None

    @classmethod
    def inspect(cls, directory: Path) -> SpoolReport:
        """A report on a spool another process holds: nothing is moved, repaired or deleted."""
        return cls(directory, 0, 0, _live=True).report()

    # -- lifecycle

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take_lock(self) -> None:
        """Take the lock, then make the layout usable. What stands where the lock, the
        quarantine or the sessions directory belong (a directory for the lock, a file for
        sessions/, a FIFO...) is set aside and reported, never fatal: only the lock itself
        has to be renamed before it is held (``lock.odd``), and nobody can hold a lock
        that is not a regular file."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = self.directory / LOCK
        odd_lock = odd_file(lock)
        if odd_lock is not None:
            aside = unique_name(self.directory / f"{LOCK}.odd")
            os.rename(lock, aside)
        fd = _open_lock(lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SpoolBusy(
                f"spool {self.directory} is in use by another process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        self._set_aside = [_aside(where, why) for where, why in self.quarantine.prepare()]
        if odd_lock is not None:
            self.quarantine.move(aside, None, odd_lock, original=lock)
            self._set_aside.append(_aside(LOCK, odd_lock))
        sessions = self.directory / SESSIONS
        if (odd := odd_directory(sessions)) is not None:
            self.quarantine.move(sessions, None, odd)
            self._set_aside.append(_aside(SESSIONS, odd))
        sessions.mkdir(mode=0o700, exist_ok=True)

    def scan(self) -> list[ScanFinding]:
        """Rebuild the index from disk, reconciling what a crash left and quarantining what
        cannot be trusted (see scan.py). Never raises for bad content."""
        with self._mutex:
            result = Scanner(self.directory, self.quarantine, live=self._live).run()
            self._sessions = result.sessions
            self._forgotten = result.forgotten
            self.last_scan = self._set_aside + result.findings
            self._set_aside = []
            return result.findings

    # -- sessions

    def create_session(
        self, session_id: str, device_id: str, records_lost_below: int | None = None
    ) -> SessionInfo:
        """A new, empty session, created atomically: its journal is written in a staging
        directory that is then renamed into place. ``records_lost_below``: the session
        existed before and its records went with a lost spool (journal.RecordsLostRecord):
        it starts at that seq."""
        try:
            record = OpenRecord(device_id=device_id, session_id=session_id, at=_now())
        except ValidationError:
            raise SpoolError("invalid session id or device id") from None
        records: list[OpenRecord | RecordsLostRecord] = [record]
        if records_lost_below is not None:
            records.append(RecordsLostRecord(below=records_lost_below))
        with self._mutex:
            self._check_writable()
            self._loss_unseen = False  # reported until now; the sessions it hit still are
            if session_id in self._sessions or session_id in self._forgotten:
                raise SpoolError(f"session {session_id} already exists in the spool")
            sessions = self.directory / SESSIONS
            staging = sessions / f"{NEW_PREFIX}{session_id}"
            session = SessionIndex(session_id, sessions / session_id)
            try:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(mode=0o700)
                for line in records:
                    append_line(staging / JOURNAL, line.model_dump_json())
                fsync_dir(staging)
                os.rename(staging, session.directory)
                fsync_dir(sessions)
            except OSError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                if disk_full(exc):
                    raise SpoolFull("disk", "spool full: the disk is full") from None
                raise
            for line in records:
                session.apply(line)
            self._sessions[session_id] = session
            if records_lost_below is not None:
                self._hit_by_loss.add(session_id)
            log.info("spool: session %s opened", session_id)
            return session.info()

    def record_pause(
        self, session_id: str, offset_s: float, started_at: datetime, ended_at: datetime
    ) -> None:
        """A paused stretch of an open session, for its manifest (times only)."""
        with self._mutex:
            session = self._session(session_id)
            if session.closed is not None:
                raise SpoolError(f"session {session_id} is closed")
            self._check_writable()
            session.record(
                PausedRecord(offset_s=offset_s, started_at=started_at, ended_at=ended_at)
            )

    def close_session(self, session_id: str, reason: CloseReason) -> SessionManifest:
        """Record the end of a session; closing a closed session returns its manifest."""
        with self._mutex:
            session = self._session(session_id)
            if session.closed is None:
                self._check_writable()
                session.record(CloseRecord(reason=reason, at=_now()))
                log.info("spool: session %s closed (%s)", session_id, reason)
            return self._manifest(session)

    def manifest(self, session_id: str) -> SessionManifest:
        """The manifest of a closed session: every chunk recorded, acked or not, lost
        ones left out."""
        with self._mutex:
            return self._manifest(self._session(session_id))

    def closed_manifests(self) -> list[SessionManifest]:
        """Manifests of the closed sessions still in the spool, oldest first."""
        with self._mutex:
            return [m for s in self._ordered() if (m := s.manifest()) is not None]

    def forget_session(self, session_id: str) -> None:
        """Remove a closed session whose chunks are all acknowledged, once the gateway has
        accepted its manifest. Its id stays reserved, so no seq of it is ever reused."""
        with self._mutex:
            self._check_writable()
            session = self._session(session_id)
            if session.closed is None:
                raise SpoolError(f"session {session_id} is still open")
            if session.pending_seqs():
                raise SpoolError(f"session {session_id} still has unacknowledged chunks")
            record = ForgottenRecord(session_id=session_id, at=_now())
            append_line(self.directory / FORGOTTEN, record.model_dump_json())
            self._forgotten.add(session_id)
            del self._sessions[session_id]
            trash = self.directory / TRASH
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(session.directory, trash)
            fsync_dir(session.directory.parent)
            shutil.rmtree(trash, ignore_errors=True)
            log.info("spool: session %s forgotten", session_id)

    def session(self, session_id: str) -> SessionInfo:
        with self._mutex:
            return self._session(session_id).info()

    def sessions(self) -> list[SessionInfo]:
        """Every session in the spool, oldest first."""
        with self._mutex:
            return [s.info() for s in self._ordered()]

    def next_seq(self, session_id: str) -> int:
        """One past the highest seq ever recorded for the session, acked and lost included."""
        with self._mutex:
            return self._session(session_id).highest_seq + 1

    # -- chunks

    def append(self, sealed: bytes) -> PendingChunk:
        """Store one sealed chunk durably; its header names the session and the seq, which
        must be the session's next. Raises SpoolFull, having written nothing, if it does
        not fit."""
        try:
            header = read_header(sealed)
        except EnvelopeError as exc:
            raise SpoolError(f"refusing a chunk that is not a valid envelope: {exc}") from None
        with self._mutex:
            self._check_writable()
            session = self._session(header.session_id)
            if session.closed is not None:
                raise SpoolError(f"session {header.session_id} is closed")
            if header.seq != session.highest_seq + 1:
                raise SpoolError(
                    f"session {header.session_id}: seq {header.seq} is not the next "
                    f"({session.highest_seq + 1})"
                )
            if session.device_id is not None and header.device_id != session.device_id:
                raise SpoolError(f"session {header.session_id} belongs to another device id")
            self.check_room(len(sealed))
            try:
                self._write_chunk(header.session_id, header.seq, sealed)
            except FileNotFoundError:  # the spool vanished just now: once more, recreated
                if not self.recover():
                    raise
                self._write_chunk(header.session_id, header.seq, sealed)
            session = self._session(header.session_id)
            record = ChunkRecord(
                seq=header.seq,
                sha256=hashlib.sha256(sealed).hexdigest(),
                bytes=len(sealed),
                start_s=header.start_s,
                duration_s=header.duration_s,
            )
            self._journal_stored_chunk(session, record)
            return _pending(session.session_id, record)

    def pending(self) -> list[PendingChunk]:
        """Chunks not yet acknowledged, sessions by open time, then seq. Never a temporary
        or quarantined file."""
        with self._mutex:
            return [
                _pending(s.session_id, s.chunks[seq])
                for s in self._ordered()
                for seq in s.pending_seqs()
            ]

    def read(self, session_id: str, seq: int) -> bytes:
        """The sealed bytes, checked against the journal; a mismatch is quarantined and
        raises ChunkCorrupt, so corrupt audio is never sent."""
        with self._mutex:
            if not self._live:
                self.recover()
            session = self._session(session_id)
            if not session.is_pending(seq):
                raise SpoolError(f"session {session_id}: no pending chunk {seq}")
            path = session.directory / chunk_name(seq)
            try:
                blob = read_regular(path)
            except FileNotFoundError:
                session.record(LostRecord(seq=seq, reason=MISSING))
                raise ChunkCorrupt(f"session {session_id}: chunk {seq} is missing") from None
            except OSError as exc:  # replaced by a FIFO, a directory...; or unreadable
                reason = unreadable(exc)
                self._move_aside(path, session_id, reason)
                session.record(LostRecord(seq=seq, reason=reason))
                log.warning("spool: session %s chunk %s %s; set aside", session_id, seq, reason)
                raise ChunkCorrupt(f"session {session_id}: chunk {seq} {reason}") from None
            if hashlib.sha256(blob).hexdigest() != session.chunks[seq].sha256:
                self.quarantine.move(path, session_id, SHA_MISMATCH)
                session.record(LostRecord(seq=seq, reason=SHA_MISMATCH))
                log.warning("spool: session %s chunk %s corrupt, quarantined", session_id, seq)
                raise ChunkCorrupt(f"session {session_id}: chunk {seq} is corrupt, quarantined")
            return blob

    def ack(self, session_id: str, seq: int) -> bool:
        """The gateway holds the chunk durably: journal that, then delete the file.
        False if it was already acknowledged (acks are idempotent)."""
        with self._mutex:
            self._check_writable()
            session = self._session(session_id)
            if seq in session.acked:
                return False
            if seq in session.chunks and seq in session.lost:
                # Recorded lost (its file vanished with the spool) while the gateway was
                # taking it: it is there after all, so the manifest lists it again.
                session.record(AckRecord(seq=seq))
                log.info("spool: session %s chunk %s is at the gateway after all", session_id, seq)
                return True
            if not session.is_pending(seq):
                raise SpoolError(f"session {session_id}: no pending chunk {seq}")
            session.record(AckRecord(seq=seq))
            (session.directory / chunk_name(seq)).unlink(missing_ok=True)
            fsync_dir(session.directory)
            return True

    def set_aside(self, session_id: str, seq: int, reason: str) -> None:
        """Quarantine a pending chunk the gateway cannot open (HTTP 422): kept for a person,
        never deleted, left out of the manifest so the rest of the session can be
        assembled. Moved first, then journaled: a crash in between is found by scan."""
        with self._mutex:
            self._check_writable()
            session = self._session(session_id)
            if not session.is_pending(seq):
                raise SpoolError(f"session {session_id}: no pending chunk {seq}")
            path = session.directory / chunk_name(seq)
            if os.path.lexists(path):
                self.quarantine.move(path, session_id, reason)
            session.record(LostRecord(seq=seq, reason=reason))
            log.warning("spool: session %s chunk %s quarantined (%s)", session_id, seq, reason)

    # -- capacity and reports

    def check_room(self, nbytes: int = 0) -> None:
        """Raise SpoolFull unless ``nbytes`` more fit under the quota and the free-space floor."""
        used = self.bytes_used()
        if used + nbytes > self.max_bytes:
            raise SpoolFull(
                "quota", f"spool full: quota of {self.max_bytes} bytes reached ({used} used)"
            )
        if self.free_bytes() - nbytes - METADATA_RESERVE < self.min_free_bytes:
            raise SpoolFull(
                "disk",
                f"spool full: the disk would have less than {self.min_free_bytes} bytes free",
            )

    def bytes_used(self) -> int:
        with self._mutex:
            return sum(s.pending_bytes for s in self._sessions.values())

    def free_bytes(self) -> int:
        self.recover()
        try:
            stat = os.statvfs(self.directory)
        except FileNotFoundError:  # the spool vanished just after the check: recreated
            if not self.recover():
                raise
            stat = os.statvfs(self.directory)
        return stat.f_bavail * stat.f_frsize

    def usage(self) -> SpoolUsage:
        with self._mutex:
            return SpoolUsage(
                bytes=self.bytes_used(),
                chunks=sum(len(s.pending_seqs()) for s in self._sessions.values()),
                sessions=len(self._sessions),
                quarantined=len(self.quarantined()),
            )

    def problem(self) -> DeviceReason | None:
        """A code for the device state: spool_lost (see restore.py), an odd entry left in
        place (it could not even be moved aside), else None."""
        with self._mutex:
            if self._loss_unseen or self._hit_by_loss & self._sessions.keys():
                return DeviceReason.SPOOL_LOST
            if any(f.action == "skipped" for f in self.last_scan):
                return DeviceReason.SPOOL_ENTRY_SKIPPED
            return None

    def quarantined(self) -> list[QuarantineEntry]:
        return self.quarantine.entries()

    def report(self) -> SpoolReport:
        with self._mutex:
            return SpoolReport(
                directory=str(self.directory),
                live=self._live,
                usage=self.usage(),
                sessions=self.sessions(),
                findings=list(self.last_scan),
                quarantine=self.quarantined(),
            )

    # -- helpers

    def _move_aside(self, path: Path, session_id: str, reason: str) -> None:
        """Quarantine ``path``; if even that fails it stays where it is (never deleted)."""
        try:
            self.quarantine.move(path, session_id, reason)
        except OSError as exc:
            log.warning(
                "spool: session %s: %s cannot be moved aside (%s); left in place",
                session_id,
                path.name,
                os.strerror(exc.errno or 0),
            )

    def _write_chunk(self, session_id: str, seq: int, sealed: bytes) -> None:
        directory = self._session(session_id).directory
        try:
            write_atomically(directory / chunk_name(seq), sealed, tmp=directory / tmp_name(seq))
        except OSError as exc:
            if disk_full(exc):
                raise SpoolFull("disk", "spool full: the disk is full") from None
            raise

    def _journal_stored_chunk(self, session: SessionIndex, record: ChunkRecord) -> None:
        """The chunk is already durable: if its journal line cannot be written (disk full,
        I/O error), scan re-adds it from its header at the next start, so carry on."""
        try:
            session.record(record)
        except OSError as exc:
            session.apply(record)
            log.warning(
                "spool: session %s chunk %s stored, journal append failed (%s); "
                "it will be recovered from its header",
                session.session_id,
                record.seq,
                os.strerror(exc.errno or 0),
            )

    def _session(self, session_id: str) -> SessionIndex:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SpoolError(f"no session {session_id} in the spool") from None

    def _ordered(self) -> list[SessionIndex]:
        epoch = datetime.fromtimestamp(0, UTC)
        return sorted(self._sessions.values(), key=lambda s: (s.opened_at or epoch, s.session_id))

    def _manifest(self, session: SessionIndex) -> SessionManifest:
        manifest = session.manifest()
        if manifest is None:
            state = "still open" if session.closed is None else "missing its device id"
            raise SpoolError(f"session {session.session_id} is {state}")
        return manifest

    def _check_writable(self) -> None:
        if self._live:
            raise SpoolError("the spool is held by another process; this view is read-only")
        self.recover()

    # -- a spool that vanished under us

    def recover(self) -> bool:
        """Recreate what vanished of the spool while this process holds it (restore.py):
        the directories, the lock, forgotten.jsonl and each session's journal, from
        memory. True if anything had. Cheap when nothing did (a few lstat calls), so every
        write and the watchdog's check call it."""
        with self._mutex:
            if self._live or self._lock_fd is None or self._intact():
                return False
            self._restore()
            return True

    def _intact(self) -> bool:
        assert self._lock_fd is not None
        try:
            on_disk = os.lstat(self.directory / LOCK)
            held = os.fstat(self._lock_fd)
        except OSError:
            return False
        if (on_disk.st_dev, on_disk.st_ino) != (held.st_dev, held.st_ino):
            return False
        return is_directory(self.directory / SESSIONS) and all(
            os.path.lexists(s.journal) for s in self._sessions.values()
        )

    def _restore(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # a lock on a deleted file protects nothing
            self._lock_fd = None
        self._take_lock()
        self.last_scan += self._set_aside
        self._set_aside = []
        if self._forgotten and not os.path.lexists(self.directory / FORGOTTEN):
            lines = "".join(
                ForgottenRecord(session_id=sid, at=_now()).model_dump_json() + "\n"
                for sid in sorted(self._forgotten)
            )
            write_atomically(self.directory / FORGOTTEN, lines.encode())
        sessions, rebuilt_count, lost = self.directory / SESSIONS, 0, 0
        for sid, session in list(self._sessions.items()):
            if os.path.lexists(session.journal):
                continue
            if is_directory(session.directory):  # half deleted: what is left stays
                present = {
                    seq
                    for seq in session.pending_seqs()
                    if odd_file(session.directory / chunk_name(seq)) is None
                    and os.path.lexists(session.directory / chunk_name(seq))
                }
                records = journal_records(session, present)
                write_atomically(session.journal, encode_records(records))
            else:
                records = journal_records(session, present=set())
                staging = sessions / f"{NEW_PREFIX}{sid}"
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(mode=0o700)
                write_atomically(staging / JOURNAL, encode_records(records))
                os.rename(staging, session.directory)
                fsync_dir(sessions)
            fresh = rebuilt(session, records)
            lost += len(fresh.lost) - len(session.lost)
            rebuilt_count += 1
            self._sessions[sid] = fresh
            self._hit_by_loss.add(sid)
        self._loss_unseen = True
        log.warning(
            "spool: %s vanished while in use; recreated: %d session(s) rebuilt from memory,"
            " %d chunk(s) not yet delivered are lost",
            self.directory,
            rebuilt_count,
            lost,
        )


def _open_lock(path: Path) -> int:
    """The lock file, never through a link and never blocking (a FIFO swapped in after the
    lstat); SpoolError if it is not a regular file even so."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    fd = os.open(path, flags, 0o600)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SpoolError(f"{path}: not a regular file; move it away, then start again")
    return fd


def _aside(where: str, why: str) -> ScanFinding:
    return ScanFinding(path=where, action="quarantined", reason=why)


def _pending(session_id: str, record: ChunkRecord) -> PendingChunk:
    return PendingChunk(session_id=session_id, **record.model_dump(exclude={"type"}))


def _now() -> datetime:
    return datetime.now(UTC)
