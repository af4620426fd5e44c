"""What each room's device last said about itself: online, recorder, backlog, last seen.

Kept in the store (not only in memory) so ``GET /v1/rooms`` answers at once after a
gateway restart; the retained ``rooms/<id>/state`` messages arrive again at every
subscription and bring it up to date. Heartbeats refresh the backlog and the time seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.store import Connection, Row
from protocol.messages import DeviceState, Heartbeat


@dataclass(frozen=True)
class RoomStatus:
    room_id: str
    online: bool
    recorder: str
    session_id: str | None
    reason: str | None
    backlog_chunks: int
    backlog_bytes: int
    spool_free_bytes: int | None
    version: str | None
    state_at: float
    last_seen_at: float
    microphone: str | None = None
    microphone_device: str | None = None
    heartbeat_at: float | None = None
    paused: bool = False
    do_not_record: bool = False
    last_command_id: str | None = None


def record_state(conn: Connection, room_id: str, state: DeviceState) -> None:
    now = time.time()
    conn.execute(
        "INSERT INTO room_status (room_id, online, recorder, session_id, reason,"
        " backlog_chunks, backlog_bytes, spool_free_bytes, version, state_at, last_seen_at,"
        " microphone, microphone_device, paused, do_not_record, last_command_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (room_id) DO UPDATE SET"
        " online = excluded.online, recorder = excluded.recorder,"
        " session_id = excluded.session_id, reason = excluded.reason,"
        " backlog_chunks = excluded.backlog_chunks, backlog_bytes = excluded.backlog_bytes,"
        " spool_free_bytes = excluded.spool_free_bytes, version = excluded.version,"
        " state_at = excluded.state_at, last_seen_at = excluded.last_seen_at,"
        " microphone = excluded.microphone, microphone_device = excluded.microphone_device,"
        " paused = excluded.paused, do_not_record = excluded.do_not_record,"
        " last_command_id = excluded.last_command_id",
        (
            room_id,
            int(state.online),
            state.recorder,
            state.session_id,
            state.reason,
            state.backlog_chunks,
            state.backlog_bytes,
            state.spool_free_bytes,
            state.version,
            state.at.timestamp(),
            now,
            state.microphone,
            state.microphone_device,
            int(state.paused),
            int(state.do_not_record),
            state.last_command_id,
        ),
    )


def record_heartbeat(conn: Connection, room_id: str, beat: Heartbeat) -> None:
    """A heartbeat comes only from a connected device: online, with its current backlog
    (and microphone, when the agent reports it)."""
    now = time.time()
    conn.execute(
        "UPDATE room_status SET online = 1, backlog_chunks = ?, backlog_bytes = ?,"
        " spool_free_bytes = ?, version = ?, last_seen_at = ?, heartbeat_at = ?,"
        " microphone = COALESCE(?, microphone) WHERE room_id = ?",
        (
            beat.backlog_chunks,
            beat.backlog_bytes,
            beat.spool_free_bytes,
            beat.version,
            now,
            now,
            beat.microphone,
            room_id,
        ),
    )


def get(conn: Connection, room_id: str) -> RoomStatus | None:
    row = conn.execute("SELECT * FROM room_status WHERE room_id = ?", (room_id,)).fetchone()
    return _status(row) if row is not None else None


def all_rooms(conn: Connection) -> dict[str, RoomStatus]:
    rows = conn.execute("SELECT * FROM room_status").fetchall()
    return {row["room_id"]: _status(row) for row in rows}


def _status(row: Row) -> RoomStatus:
    values = dict(row)
    for flag in ("online", "paused", "do_not_record"):
        values[flag] = bool(values[flag])
    return RoomStatus(**values)
