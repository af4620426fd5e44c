"""The rooms the gateway knows: a session can only be started in a provisioned room.

Provisioning (``room-gateway room add``; later ``room-gateway device add``, which also
issues the device's credentials) fills this table; the room id is the device id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.sessions.states import ACTIVE_SQL
from gateway.store import Connection


@dataclass(frozen=True)
class Room:
    id: str
    created_at: float
    active_session_id: str | None


def add(conn: Connection, room_id: str) -> bool:
    """Add a room; False if it was already there."""
    cursor = conn.execute(
        "INSERT INTO rooms (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
        (room_id, time.time()),
    )
    return cursor.rowcount == 1


def exists(conn: Connection, room_id: str) -> bool:
    return conn.execute("SELECT 1 FROM rooms WHERE id = ?", (room_id,)).fetchone() is not None


def list_rooms(conn: Connection) -> list[Room]:
    rows = conn.execute(
        "SELECT rooms.id, rooms.created_at, sessions.id AS active_session_id FROM rooms"
        " LEFT JOIN sessions ON sessions.room_id = rooms.id"
        f" AND sessions.state IN {ACTIVE_SQL} ORDER BY rooms.id"
    ).fetchall()
    return [Room(**dict(row)) for row in rows]
