"""Session rows and their timeline: ids, states, Blueprint ids, the audio file; no names.

A session moves through::

    starting -> recording <-> paused
                    \\           |
                     -> stopping -> audio_ready -> uploading -> processing -> notes_ready
                                \\________________________________________________/
                                  any of them -> failed (with a reason)
    starting, recording, paused, stopping or audio_ready -> cancelled (audio discarded,
                                                                 never uploaded)

``starting``: started by the partner, waiting for the room's device to confirm (it may be
offline: the start is re-sent until its deadline). ``recording``: the room records.
``paused``: the session is open but the room's microphone is closed to it (by the partner
or a button in the room). ``stopping``: stopped (by the partner, or in the room); the room
is sending its last audio. ``audio_ready``: the whole session's
audio is one file at the gateway (``audio_path``) and its upload is queued. The rest
follows Blueprint. ``cancelled``: the partner cancelled it before its audio left for
Blueprint; the audio is discarded and never uploaded (terminal). The timeline records
every step with its time.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from gateway.store import Connection

SessionState = Literal[
    "starting",
    "recording",
    "paused",
    "stopping",
    "audio_ready",
    "uploading",
    "processing",
    "notes_ready",
    "failed",
    "cancelled",
]
SESSION_STATES: tuple[SessionState, ...] = (
    "starting",
    "recording",
    "paused",
    "stopping",
    "audio_ready",
    "uploading",
    "processing",
    "notes_ready",
    "failed",
    "cancelled",
)
# A room has at most one session in these (the one_active_session_per_room index).
ACTIVE_STATES: tuple[SessionState, ...] = ("starting", "recording", "paused", "stopping")
ACTIVE_SQL = "(" + ", ".join(f"'{state}'" for state in ACTIVE_STATES) + ")"
# Cancel is possible until the audio starts leaving for Blueprint.
CANCELLABLE_STATES: tuple[SessionState, ...] = (*ACTIVE_STATES, "audio_ready")
# Nothing moves a session out of these but a person (``jobs retry`` resumes a failed one):
# a late or out-of-order event (a transcript error after the note, a job that gave up after
# the note came) is recorded on the timeline, never obeyed.
TERMINAL_STATES: tuple[SessionState, ...] = ("notes_ready", "failed", "cancelled")
TERMINAL_SQL = "(" + ", ".join(f"'{state}'" for state in TERMINAL_STATES) + ")"


class RoomBusy(Exception):
    def __init__(self, room_id: str) -> None:
        super().__init__(f"room {room_id} is already recording a session")
        self.room_id = room_id


@dataclass(frozen=True)
class Session:
    id: str
    room_id: str
    clinician_external_id: str
    client_external_id: str
    session_setting: str
    note_type: str | None
    state: SessionState
    resume_state: SessionState | None
    blueprint_session_id: str | None
    audio_path: str | None
    audio_content_type: str | None
    error: str | None
    created_at: float
    updated_at: float
    blueprint_env: str | None = None

    def blueprint_session_id_in(self, environment: str) -> str | None:
        """The Blueprint session id if it belongs to ``environment`` (see records.py)."""
        if self.blueprint_env not in (None, environment):
            return None
        return self.blueprint_session_id


@dataclass(frozen=True)
class TimelineEntry:
    at: float
    step: str
    detail: str | None


def new_session_id() -> str:
    """Unguessable, and valid wherever protocol.ids.SessionId is (MQTT topics, paths)."""
    return "ses_" + secrets.token_hex(10)


def insert(
    conn: Connection,
    room_id: str,
    clinician_external_id: str,
    client_external_id: str,
    session_setting: str,
    note_type: str | None,
    state: SessionState = "recording",
) -> Session:
    """A new session, ``starting`` when a room device must confirm it, else ``recording``."""
    now = time.time()
    session_id = new_session_id()
    # A room records one session at a time: the unique index one_active_session_per_room
    # refuses a second, and DO NOTHING turns that into "no row" (no failed statement).
    cursor = conn.execute(
        "INSERT INTO sessions (id, room_id, clinician_external_id, client_external_id,"
        " session_setting, note_type, state, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (
            session_id,
            room_id,
            clinician_external_id,
            client_external_id,
            session_setting,
            note_type,
            state,
            now,
            now,
        ),
    )
    if cursor.rowcount == 0:
        raise RoomBusy(room_id)
    add_event(conn, session_id, "created")
    return _get(conn, session_id)


def get(conn: Connection, session_id: str) -> Session | None:
    row = conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return Session(**dict(row)) if row is not None else None


def by_blueprint_id(conn: Connection, blueprint_session_id: str) -> Session | None:
    row = conn.execute(
        "SELECT * FROM sessions WHERE blueprint_session_id = ?", (blueprint_session_id,)
    ).fetchone()
    return Session(**dict(row)) if row is not None else None


def active_in_room(conn: Connection, room_id: str) -> Session | None:
    row = conn.execute(
        f"SELECT * FROM sessions WHERE room_id = ? AND state IN {ACTIVE_SQL}",
        (room_id,),
    ).fetchone()
    return Session(**dict(row)) if row is not None else None


@dataclass(frozen=True)
class SessionFilter:
    """Which sessions to list; every field left None matches all."""

    room_id: str | None = None
    states: Collection[SessionState] | None = None
    clinician_external_id: str | None = None
    client_external_id: str | None = None
    created_after: float | None = None
    created_before: float | None = None


def search(
    conn: Connection,
    where: SessionFilter,
    limit: int,
    after: tuple[float, str] | None = None,
) -> list[Session]:
    """Sessions newest first (created_at, then id), starting after the ``after`` key (the
    last one of the previous page): keyset pagination, stable while sessions are added."""
    clauses: list[str] = []
    args: list[object] = []
    for column, value in (
        ("room_id", where.room_id),
        ("clinician_external_id", where.clinician_external_id),
        ("client_external_id", where.client_external_id),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if where.states:
        clauses.append(f"state IN ({', '.join('?' for _ in where.states)})")
        args.extend(where.states)
    if where.created_after is not None:
        clauses.append("created_at >= ?")
        args.append(where.created_after)
    if where.created_before is not None:
        clauses.append("created_at < ?")
        args.append(where.created_before)
    if after is not None:
        clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
        args.extend((after[0], after[0], after[1]))
    sql = "SELECT * FROM sessions"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
    rows = conn.execute(sql, (*args, limit)).fetchall()
    return [Session(**dict(row)) for row in rows]


def timeline(conn: Connection, session_id: str) -> list[TimelineEntry]:
    """In time order: concurrent transactions write their rows in another order than
    their times, and a device's events carry the device's time."""
    rows = conn.execute(
        "SELECT at, step, detail FROM session_events WHERE session_id = ? ORDER BY at, id",
        (session_id,),
    ).fetchall()
    return [TimelineEntry(**dict(row)) for row in rows]


def add_event(
    conn: Connection,
    session_id: str,
    step: str,
    detail: str | None = None,
    at: float | None = None,
) -> None:
    """``at``: when it happened, if not now (e.g. a pause, at the device's time)."""
    conn.execute(
        "INSERT INTO session_events (session_id, at, step, detail) VALUES (?, ?, ?, ?)",
        (session_id, time.time() if at is None else at, step, detail),
    )


def transition(
    conn: Connection,
    session_id: str,
    to_state: SessionState,
    allowed_from: Collection[SessionState],
    *,
    step: str,
    detail: str | None = None,
    at: float | None = None,
) -> Session | None:
    """Move to ``to_state`` if the session is in one of ``allowed_from``; record the step.

    Returns the updated session, or None when it was elsewhere (a late or repeated event:
    e.g. the note's webhook can overtake the end of the upload), which is not an error.
    """
    placeholders = ", ".join("?" for _ in allowed_from)
    cursor = conn.execute(
        f"UPDATE sessions SET state = ?, updated_at = ? WHERE id = ? AND state IN ({placeholders})",
        (to_state, time.time(), session_id, *allowed_from),
    )
    if cursor.rowcount == 0:
        return None
    add_event(conn, session_id, step, detail, at)
    return _get(conn, session_id)


def mark_failed(conn: Connection, session_id: str, reason: str) -> Session | None:
    """Fail the session, remembering its state so a retried job can resume it; None when
    it is in a terminal state already (notes_ready, failed, cancelled stay as they are)."""
    now = time.time()
    cursor = conn.execute(
        "UPDATE sessions SET resume_state = state, state = 'failed', error = ?, updated_at = ?"
        f" WHERE id = ? AND state NOT IN {TERMINAL_SQL}",
        (reason, now, session_id),
    )
    if cursor.rowcount == 0:
        return None
    add_event(conn, session_id, "failed", reason)
    return _get(conn, session_id)


def resume(conn: Connection, session_id: str) -> Session | None:
    """Undo mark_failed (a failed job was retried by hand); None if not failed."""
    cursor = conn.execute(
        "UPDATE sessions SET state = resume_state, resume_state = NULL, error = NULL,"
        " updated_at = ? WHERE id = ? AND state = 'failed' AND resume_state IS NOT NULL",
        (time.time(), session_id),
    )
    if cursor.rowcount == 0:
        return None
    add_event(conn, session_id, "resumed")
    return _get(conn, session_id)


def set_blueprint_session_id(
    conn: Connection,
    session_id: str,
    blueprint_session_id: str | None,
    environment: str | None,
) -> None:
    """Cache the session's Blueprint id (None: forget it, Blueprint does not know it)."""
    conn.execute(
        "UPDATE sessions SET blueprint_session_id = ?, blueprint_env = ?, updated_at = ?"
        " WHERE id = ?",
        (blueprint_session_id, environment, time.time(), session_id),
    )


def set_audio(conn: Connection, session_id: str, audio_path: str, content_type: str) -> None:
    conn.execute(
        "UPDATE sessions SET audio_path = ?, audio_content_type = ?, updated_at = ? WHERE id = ?",
        (audio_path, content_type, time.time(), session_id),
    )


def _get(conn: Connection, session_id: str) -> Session:
    session = get(conn, session_id)
    assert session is not None, session_id
    return session


def counts(conn: Connection) -> dict[str, int]:
    """How many sessions are in each state (for /metrics)."""
    rows = conn.execute("SELECT state, COUNT(*) AS n FROM sessions GROUP BY state").fetchall()
    return {str(row[0]): int(row[1]) for row in rows}
