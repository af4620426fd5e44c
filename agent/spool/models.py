"""What the spool tells its users (uplink, status, verify): ids, seqs, sizes, reasons."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.manifest import CloseReason


class PendingChunk(BaseModel):
    """A sealed chunk waiting for the gateway's acknowledgement."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    seq: int
    sha256: str = Field(description="of the sealed bytes, as the manifest lists it")
    bytes: int
    start_s: float
    duration_s: float


class SessionInfo(BaseModel):
    session_id: str
    device_id: str | None
    opened_at: datetime
    closed: bool
    reason: CloseReason | None = None
    chunks: int = Field(description="chunks in the manifest (acked included, lost excluded)")
    pending: int
    pending_bytes: int
    acked: int
    lost: int
    next_seq: int
    end_s: float = Field(description="end of the last chunk in the session timeline, seconds")
    speech_s: float


class SpoolUsage(BaseModel):
    bytes: int = Field(description="bytes of chunks not yet acknowledged")
    chunks: int
    sessions: int
    quarantined: int


class QuarantineEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: datetime
    session_id: str | None = None
    original: str = Field(description="path relative to the spool directory")
    stored: str = Field(description="path relative to the spool directory")
    reason: str


# skipped: an odd or unreadable entry that could not even be moved aside; left where it is
# (never deleted), ignored by the agent, reported until a person removes it.
FindingAction = Literal["quarantined", "repaired", "recovered", "deleted", "lost", "skipped"]


class ScanFinding(BaseModel):
    """One thing a scan found and, when ``applied``, did about it."""

    path: str = Field(description="relative to the spool directory")
    session_id: str | None = None
    seq: int | None = None
    action: FindingAction
    reason: str
    applied: bool = True


class SpoolReport(BaseModel):
    directory: str
    live: bool = Field(description="another process holds the spool; nothing was changed")
    usage: SpoolUsage
    sessions: list[SessionInfo]
    findings: list[ScanFinding]
    quarantine: list[QuarantineEntry]
