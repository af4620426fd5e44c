"""The room's desired state (the device shadow): what the gateway wants its device doing.

One row per room: session S ``recording``, ``paused`` or ``stopped``, the id of the
command that says so, who wanted it (the partner, or the room itself: a button), and until
when it is worth asking. The device reports what it actually does (its retained state, with
the id of the last command it applied); the relay compares the two on every report,
reconnection and restart, and sends the command again until the report matches
(``confirmed_at``) or the deadline passes. Re-sending is safe: the device applies each
command id once. Ids and times only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from gateway.store import Connection

DesiredState = Literal["recording", "paused", "stopped"]
Origin = Literal["partner", "room"]


@dataclass(frozen=True)
class Desired:
    room_id: str
    session_id: str
    state: DesiredState
    command_id: str | None
    origin: Origin
    deadline_at: float | None
    confirmed_at: float | None
    last_sent_at: float | None
    sends: int
    updated_at: float

    @property
    def open(self) -> bool:
        """Still to be closed: not confirmed, and its deadline not passed."""
        return self.confirmed_at is None and (
            self.deadline_at is None or self.deadline_at > time.time()
        )


def get(conn: Connection, room_id: str) -> Desired | None:
    row = conn.execute("SELECT * FROM room_desired WHERE room_id = ?", (room_id,)).fetchone()
    return Desired(**dict(row)) if row is not None else None


def open_gaps(conn: Connection) -> list[Desired]:
    """Every room whose desired state is not confirmed yet and still worth asking for."""
    rows = conn.execute(
        "SELECT * FROM room_desired WHERE confirmed_at IS NULL AND command_id IS NOT NULL"
        " AND (deadline_at IS NULL OR deadline_at > ?)",
        (time.time(),),
    ).fetchall()
    return [Desired(**dict(row)) for row in rows]


def want(
    conn: Connection,
    room_id: str,
    session_id: str,
    state: DesiredState,
    command_id: str | None,
    deadline_at: float | None,
    origin: Origin = "partner",
) -> None:
    """What the room should do from now on (replacing what it should have done before).

    ``command_id`` None: nothing to send (the room itself did it, e.g. a button): the
    state is taken as confirmed."""
    now = time.time()
    confirmed = now if command_id is None else None
    conn.execute(
        "INSERT INTO room_desired (room_id, session_id, state, command_id, origin,"
        " deadline_at, confirmed_at, last_sent_at, sends, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 0, ?)"
        " ON CONFLICT (room_id) DO UPDATE SET session_id = excluded.session_id,"
        " state = excluded.state, command_id = excluded.command_id,"
        " origin = excluded.origin, deadline_at = excluded.deadline_at,"
        " confirmed_at = excluded.confirmed_at, last_sent_at = NULL, sends = 0,"
        " updated_at = excluded.updated_at",
        (room_id, session_id, state, command_id, origin, deadline_at, confirmed, now),
    )


def confirm(conn: Connection, room_id: str, command_id: str) -> bool:
    """The device did (or answered) ``command_id``; True when that settled the room's gap."""
    cursor = conn.execute(
        "UPDATE room_desired SET confirmed_at = ?, updated_at = ?"
        " WHERE room_id = ? AND command_id = ? AND confirmed_at IS NULL",
        (time.time(), time.time(), room_id, command_id),
    )
    return cursor.rowcount > 0


def mark_sent(conn: Connection, room_id: str, command_id: str) -> None:
    conn.execute(
        "UPDATE room_desired SET last_sent_at = ?, sends = sends + 1"
        " WHERE room_id = ? AND command_id = ?",
        (time.time(), room_id, command_id),
    )
