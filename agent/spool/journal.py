"""A session's journal: append-only JSON lines, each fsynced, replayed in any order.

Records: ``open`` (device, session, time), ``chunk`` (after the chunk's rename, with the
sha256 of the sealed bytes), ``ack`` (before the chunk is deleted), ``lost`` (a chunk that
was quarantined or went missing: left out of the manifest, its seq still used), ``close``.
Because replay does not depend on order, scan() may append what a crash left out (a chunk
found without its record, a rebuilt open record) after later records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agent.spool.entries import read_regular
from agent.spool.models import SessionInfo
from protocol.ids import DeviceId, SessionId, Sha256Hex
from protocol.manifest import CloseReason, ManifestChunk, PausedInterval, SessionManifest
from runtime.files import append_line

JOURNAL = "journal.jsonl"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenRecord(_Record):
    type: Literal["open"] = "open"
    device_id: DeviceId
    session_id: SessionId
    at: datetime


class ChunkRecord(_Record):
    type: Literal["chunk"] = "chunk"
    seq: int = Field(ge=0)
    sha256: Sha256Hex = Field(description="sha256 of the sealed bytes as stored")
    bytes: int = Field(gt=0)
    start_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)


class AckRecord(_Record):
    type: Literal["ack"] = "ack"
    seq: int = Field(ge=0)


class LostRecord(_Record):
    type: Literal["lost"] = "lost"
    seq: int = Field(ge=0)
    reason: str


class CloseRecord(_Record):
    type: Literal["close"] = "close"
    reason: CloseReason
    at: datetime


class PausedRecord(_Record):
    """A stretch with the microphone closed to the session (times only, no audio)."""

    type: Literal["paused"] = "paused"
    offset_s: float = Field(ge=0)
    started_at: datetime
    ended_at: datetime


class RecordsLostRecord(_Record):
    """The session's earlier records went with a lost spool (recorder.py resumed it from
    its state file): seqs below ``below`` may be at the gateway, none is used again, and
    the manifest tells the gateway to keep what it holds there."""

    type: Literal["records_lost"] = "records_lost"
    below: int = Field(ge=1)


JournalRecord = Annotated[
    OpenRecord
    | ChunkRecord
    | AckRecord
    | LostRecord
    | CloseRecord
    | PausedRecord
    | RecordsLostRecord,
    Field(discriminator="type"),
]
_journal_record: TypeAdapter[JournalRecord] = TypeAdapter(JournalRecord)


@dataclass
class SessionIndex:
    """A session as its journal (and scan) describe it, kept in memory by the spool."""

    session_id: str
    directory: Path
    device_id: str | None = None
    opened_at: datetime | None = None
    chunks: dict[int, ChunkRecord] = field(default_factory=dict)
    acked: set[int] = field(default_factory=set)
    lost: dict[int, str] = field(default_factory=dict)
    closed: CloseRecord | None = None
    paused: list[PausedRecord] = field(default_factory=list)
    highest_seq: int = -1
    pending_bytes: int = 0
    records_lost_below: int | None = None

    @property
    def journal(self) -> Path:
        return self.directory / JOURNAL

    def record(self, record: _Record) -> None:
        """Append to the journal (fsynced), then apply."""
        append_line(self.journal, record.model_dump_json())
        self.apply(record)

    def apply(self, record: _Record) -> None:
        seq = getattr(record, "seq", None)
        was_pending = seq is not None and self.is_pending(seq)
        if isinstance(record, OpenRecord):
            self.device_id, self.opened_at = record.device_id, record.at
        elif isinstance(record, ChunkRecord):
            self.chunks[record.seq] = record
        elif isinstance(record, AckRecord):
            self.acked.add(record.seq)
        elif isinstance(record, LostRecord):
            self.lost.setdefault(record.seq, record.reason)
        elif isinstance(record, CloseRecord):
            self.closed = record
        elif isinstance(record, PausedRecord):
            self.paused.append(record)
        elif isinstance(record, RecordsLostRecord):
            self.records_lost_below = max(self.records_lost_below or 0, record.below)
            self.highest_seq = max(self.highest_seq, record.below - 1)
        if seq is not None:
            self.highest_seq = max(self.highest_seq, seq)
            change = int(self.is_pending(seq)) - int(was_pending)
            self.pending_bytes += change * self.chunks[seq].bytes if change else 0

    def is_pending(self, seq: int) -> bool:
        return seq in self.chunks and seq not in self.acked and seq not in self.lost

    def pending_seqs(self) -> list[int]:
        return sorted(s for s in self.chunks if self.is_pending(s))

    def manifest_chunks(self) -> list[ChunkRecord]:
        """Every chunk but the lost ones; a chunk the gateway acknowledged is there even if
        it was also recorded lost (its file vanished while it was being sent)."""
        return [
            self.chunks[s] for s in sorted(self.chunks) if s not in self.lost or s in self.acked
        ]

    def manifest(self) -> SessionManifest | None:
        """None while the session is open or when its device id was lost."""
        if self.closed is None or self.device_id is None:
            return None
        return SessionManifest(
            device_id=self.device_id,
            session_id=self.session_id,
            reason=self.closed.reason,
            chunks=[
                ManifestChunk.model_validate(c.model_dump(exclude={"type"}))
                for c in self.manifest_chunks()
            ],
            paused=[
                PausedInterval.model_validate(p.model_dump(exclude={"type"})) for p in self.paused
            ],
            records_lost_below=self.records_lost_below,
        )

    def info(self) -> SessionInfo:
        pending = self.pending_seqs()
        kept = self.manifest_chunks()
        end_s = max((c.start_s + c.duration_s for c in self.chunks.values()), default=0.0)
        return SessionInfo(
            session_id=self.session_id,
            device_id=self.device_id,
            opened_at=self.opened_at or datetime.fromtimestamp(0, UTC),
            closed=self.closed is not None,
            reason=self.closed.reason if self.closed else None,
            chunks=len(kept),
            pending=len(pending),
            pending_bytes=self.pending_bytes,
            acked=len(self.acked),
            lost=len(self.lost.keys() - self.acked),
            next_seq=self.highest_seq + 1,
            end_s=round(end_s, 3),
            speech_s=round(sum(c.duration_s for c in kept), 3),
        )


@dataclass
class JournalRead:
    records: list[_Record]
    good_length: int  # bytes up to the end of the last valid line
    torn_tail: bytes = b""
    bad_lines: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def has_open(self) -> bool:
        return any(isinstance(r, OpenRecord) for r in self.records)


def read_journal(path: Path) -> JournalRead:
    """Parse a journal: invalid lines after the last valid one are a torn tail (a crash
    mid-append), invalid lines before it are corruption (line numbers from 1). Raises
    OddEntry when the journal is not a regular file, OSError when it cannot be read."""
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return JournalRead(records=[], good_length=0)
    records: list[_Record] = []
    invalid: list[tuple[int, bytes, int]] = []
    good_length = offset = 0
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        end = offset + len(line) + 1
        if line.strip():
            record = _parse(line) if end <= len(data) else None
            if record is None:
                invalid.append((lineno, line, offset))
            else:
                records.append(record)
                good_length = end
        offset = end
    tail = data[good_length:]
    return JournalRead(
        records=records,
        good_length=good_length,
        torn_tail=tail if tail.strip() else b"",
        bad_lines=[(n, raw) for n, raw, at in invalid if at < good_length],
    )


def encode_records(records: list[_Record]) -> bytes:
    return b"".join(r.model_dump_json().encode() + b"\n" for r in records)


def _parse(line: bytes) -> _Record | None:
    try:
        return _journal_record.validate_json(line)
    except ValidationError:
        return None
