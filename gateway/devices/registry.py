"""The devices the gateway knows, in the ``rooms`` table: a room's device has the room's id.

Credentials are stored as hashes only (the ingest token's SHA-256, the MQTT password's
mosquitto hash, or the client certificate's SHA-256 fingerprint). Revoking keeps the row,
so sessions and timelines still name the room, and sets ``revoked_at``: ingest checks it on
every request and the broker's files are rewritten without the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from gateway.store import Connection, Row

CredentialKind = Literal["password", "certificate"]


@dataclass(frozen=True)
class Device:
    id: str
    name: str | None
    created_at: float
    credentials_issued_at: float | None
    revoked_at: float | None
    has_token: bool
    mqtt_password_hash: str | None
    cert_fingerprint: str | None

    @property
    def active(self) -> bool:
        return self.credentials_issued_at is not None and self.revoked_at is None

    @property
    def credential_kind(self) -> CredentialKind | None:
        if self.cert_fingerprint is not None:
            return "certificate"
        return "password" if self.mqtt_password_hash is not None else None

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.credentials_issued_at is not None else "no-credentials"


_COLUMNS = (
    "id, name, created_at, credentials_issued_at, revoked_at, token_sha256 IS NOT NULL AS"
    " has_token, mqtt_password_hash, cert_fingerprint"
)


def issue(
    conn: Connection,
    room_id: str,
    name: str | None,
    token_sha256: str,
    mqtt_password_hash: str | None,
    cert_fingerprint: str | None,
) -> Device:
    """Give ``room_id`` new credentials (adding the room if needed); earlier ones stop
    working, and a revoked device becomes active again."""
    now = time.time()
    conn.execute(
        "INSERT INTO rooms (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
        (room_id, now),
    )
    conn.execute(
        "UPDATE rooms SET name = COALESCE(?, name), token_sha256 = ?, mqtt_password_hash = ?,"
        " cert_fingerprint = ?, credentials_issued_at = ?, revoked_at = NULL WHERE id = ?",
        (name, token_sha256, mqtt_password_hash, cert_fingerprint, now, room_id),
    )
    device = get(conn, room_id)
    assert device is not None
    return device


def get(conn: Connection, room_id: str) -> Device | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM rooms WHERE id = ?", (room_id,)).fetchone()
    return _device(row) if row is not None else None


def by_token(conn: Connection, token_sha256: str) -> Device | None:
    """The device holding this token, revoked or not (the caller tells 401 from 403)."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM rooms WHERE token_sha256 = ?", (token_sha256,)
    ).fetchone()
    return _device(row) if row is not None else None


def list_devices(conn: Connection) -> list[Device]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM rooms ORDER BY id").fetchall()
    return [_device(row) for row in rows]


def active(conn: Connection) -> list[Device]:
    """Devices the broker admits: credentials issued, not revoked."""
    return [device for device in list_devices(conn) if device.active]


def revoke(conn: Connection, room_id: str) -> bool:
    """False when there is no active device with this id."""
    cursor = conn.execute(
        "UPDATE rooms SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        " AND credentials_issued_at IS NOT NULL",
        (time.time(), room_id),
    )
    return cursor.rowcount == 1


def _device(row: Row) -> Device:
    values = dict(row)
    values["has_token"] = bool(values["has_token"])
    return Device(**values)
