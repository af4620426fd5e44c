"""What the store knows about received audio: a row per session a device sent chunks for,
and a row per chunk (seq, SHA-256 of the sealed bytes, timing, file name).

Chunk rows are kept after their files are deleted (retention), so a device repeating an
upload it never saw acknowledged still gets 200 for identical bytes and 409 for others.
A session is *claimed* when the partner started it in this device's room; chunks of any
other session id (e.g. recorded with ``room-agent record``) are kept, assembled and
listed, but never uploaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from gateway.store import Connection
from protocol.manifest import PausedInterval, SessionManifest

IngestState = Literal["receiving", "waiting_for_chunks", "assembling", "assembled", "failed"]


@dataclass(frozen=True)
class IngestSession:
    session_id: str
    device_id: str
    claimed: bool
    state: IngestState
    manifest: SessionManifest | None
    closed_at: float | None
    audio_path: str | None
    purged_at: float | None
    created_at: float


@dataclass(frozen=True)
class StoredChunk:
    seq: int
    sha256: str
    bytes: int
    start_s: float
    duration_s: float
    file: str
    received_at: float


def get_session(conn: Connection, session_id: str) -> IngestSession | None:
    row = conn.execute(
        "SELECT * FROM ingest_sessions WHERE session_id = ?", (session_id,)
    ).fetchone()
    if row is None:
        return None
    manifest = row["manifest"]
    return IngestSession(
        session_id=row["session_id"],
        device_id=row["device_id"],
        claimed=bool(row["claimed"]),
        state=row["state"],
        manifest=SessionManifest.model_validate_json(manifest) if manifest else None,
        closed_at=row["closed_at"],
        audio_path=row["audio_path"],
        purged_at=row["purged_at"],
        created_at=row["created_at"],
    )


def create_session(
    conn: Connection, session_id: str, device_id: str, claimed: bool
) -> IngestSession:
    now = time.time()
    conn.execute(
        "INSERT INTO ingest_sessions (session_id, device_id, claimed, state, created_at,"
        " updated_at) VALUES (?, ?, ?, 'receiving', ?, ?)",
        (session_id, device_id, int(claimed), now, now),
    )
    session = get_session(conn, session_id)
    assert session is not None
    return session


def set_state(
    conn: Connection, session_id: str, state: IngestState, audio_path: str | None = None
) -> None:
    conn.execute(
        "UPDATE ingest_sessions SET state = ?, audio_path = COALESCE(?, audio_path),"
        " updated_at = ? WHERE session_id = ?",
        (state, audio_path, time.time(), session_id),
    )


def set_manifest(conn: Connection, manifest: SessionManifest) -> None:
    now = time.time()
    conn.execute(
        "UPDATE ingest_sessions SET manifest = ?, closed_at = COALESCE(closed_at, ?),"
        " updated_at = ? WHERE session_id = ?",
        (manifest.model_dump_json(), now, now, manifest.session_id),
    )


def mark_purged(conn: Connection, session_id: str) -> None:
    now = time.time()
    conn.execute(
        "UPDATE ingest_sessions SET purged_at = ?, updated_at = ? WHERE session_id = ?",
        (now, now, session_id),
    )


def get_chunk(conn: Connection, session_id: str, seq: int) -> StoredChunk | None:
    row = conn.execute(
        "SELECT seq, sha256, bytes, start_s, duration_s, file, received_at FROM chunks"
        " WHERE session_id = ? AND seq = ?",
        (session_id, seq),
    ).fetchone()
    return StoredChunk(**dict(row)) if row is not None else None


def insert_chunk(conn: Connection, session_id: str, chunk: StoredChunk, sealed: bytes) -> None:
    """The chunk's row with its sealed bytes as received (the store is where every replica
    reads them; ``file`` is only set on chunks stored before that, as files)."""
    conn.execute(
        "INSERT INTO chunks (session_id, seq, sha256, bytes, start_s, duration_s, file,"
        " received_at, sealed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            session_id,
            chunk.seq,
            chunk.sha256,
            chunk.bytes,
            chunk.start_s,
            chunk.duration_s,
            chunk.file,
            chunk.received_at,
            sealed,
        ),
    )


def sealed_chunk(conn: Connection, session_id: str, seq: int) -> bytes | None:
    """A chunk's sealed bytes; None once deleted (retention) or if kept as a file."""
    row = conn.execute(
        "SELECT sealed FROM chunks WHERE session_id = ? AND seq = ?", (session_id, seq)
    ).fetchone()
    return bytes(row["sealed"]) if row is not None and row["sealed"] is not None else None


def chunks(conn: Connection, session_id: str) -> dict[int, StoredChunk]:
    rows = conn.execute(
        "SELECT seq, sha256, bytes, start_s, duration_s, file, received_at FROM chunks"
        " WHERE session_id = ? ORDER BY seq",
        (session_id,),
    ).fetchall()
    return {row["seq"]: StoredChunk(**dict(row)) for row in rows}


@dataclass(frozen=True)
class Received:
    """A session's audio as received so far: for the partner API and the room listing."""

    chunks: int
    speech_s: float
    manifest_chunks: int | None
    state: IngestState
    claimed: bool
    paused: list[PausedInterval] = field(default_factory=list)


def received(conn: Connection, session_id: str) -> Received | None:
    session = get_session(conn, session_id)
    if session is None:
        return None
    row = conn.execute(
        "SELECT COUNT(*) AS n, COALESCE(SUM(duration_s), 0) AS speech FROM chunks"
        " WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    return Received(
        chunks=row["n"],
        speech_s=round(row["speech"], 3),
        manifest_chunks=len(session.manifest.chunks) if session.manifest else None,
        state=session.state,
        claimed=session.claimed,
        paused=list(session.manifest.paused) if session.manifest else [],
    )


def unclaimed_count(conn: Connection, device_id: str) -> int:
    row = conn.execute(
        "SELECT COUNT(*) AS n FROM ingest_sessions WHERE claimed = 0 AND device_id = ?",
        (device_id,),
    ).fetchone()
    return int(row["n"])


def delete_unclaimed(conn: Connection, session_id: str) -> None:
    """Forget an unclaimed session entirely (the operator's ``device unclaimed --delete``):
    its stored audio, its chunks and its record; a device sending it again starts anew."""
    conn.execute("DELETE FROM audio_parts WHERE session_id = ?", (session_id,))
    conn.execute("DELETE FROM chunks WHERE session_id = ?", (session_id,))
    conn.execute("DELETE FROM ingest_sessions WHERE session_id = ? AND claimed = 0", (session_id,))


def unclaimed(conn: Connection, device_id: str | None = None) -> list[IngestSession]:
    """Sessions a device sent that no partner session claims, newest first."""
    rows = conn.execute(
        "SELECT session_id FROM ingest_sessions WHERE claimed = 0"
        " AND (CAST(? AS TEXT) IS NULL OR device_id = ?) ORDER BY created_at DESC",
        (device_id, device_id),
    ).fetchall()
    found = [get_session(conn, row["session_id"]) for row in rows]
    return [session for session in found if session is not None]
