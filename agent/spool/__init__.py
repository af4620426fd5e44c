"""The durable spool: sealed chunks wait on disk until the gateway has acknowledged them.

Audio is protected health information that must survive power cuts and full disks, so a
chunk file that exists is complete (tmp -> fsync -> rename -> fsync dir), every change is
journaled and fsynced, a seq is never reused, nothing unacknowledged is ever deleted, and
what cannot be trusted is quarantined rather than crashing the agent. Only ids, seqs and
reasons are logged. The on-disk layout is in layout.py.
"""

from agent.spool.entries import read_regular, unreadable
from agent.spool.models import (
    PendingChunk,
    QuarantineEntry,
    ScanFinding,
    SessionInfo,
    SpoolReport,
    SpoolUsage,
)
from agent.spool.report import format_report, lock_file, oldest_chunk_age_s, spool_report
from agent.spool.store import (
    METADATA_RESERVE,
    ChunkCorrupt,
    Spool,
    SpoolBusy,
    SpoolError,
    SpoolFull,
)

__all__ = [
    "METADATA_RESERVE",
    "ChunkCorrupt",
    "PendingChunk",
    "QuarantineEntry",
    "ScanFinding",
    "SessionInfo",
    "Spool",
    "SpoolBusy",
    "SpoolError",
    "SpoolFull",
    "SpoolReport",
    "SpoolUsage",
    "format_report",
    "lock_file",
    "oldest_chunk_age_s",
    "read_regular",
    "spool_report",
    "unreadable",
]
