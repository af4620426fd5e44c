"""Clinicians and clients as the partner named them, and their Blueprint ids once ensured.

The names are kept because a job may need them again after a restart (to create the
record in Blueprint, or to send changed details); they are PHI, so the dataclasses hide
them from repr and no other table or log line carries them. A record is keyed by the
partner's external id.

A Blueprint id is valid only in the Blueprint environment it came from
(``blueprint_env``; see gateway/blueprint/environment.py): read it with
:meth:`Clinician.blueprint_id_in`. A PUT that changes the details of a record Blueprint
has marks it ``needs_update``; a DELETE forgets the names (``deleted_at``) and the record
reads as absent, while the row stays for the sessions that name it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.store import Connection, Row

RecordKind = Literal["clinician", "client"]
_TABLES: dict[RecordKind, str] = {"clinician": "clinicians", "client": "clients"}
_COLUMNS = "blueprint_id, blueprint_env, needs_update, error, updated_at"


@dataclass(frozen=True)
class _Record:
    external_id: str
    blueprint_id: str | None
    blueprint_env: str | None
    needs_update: bool
    error: str | None
    updated_at: float

    def blueprint_id_in(self, environment: str) -> str | None:
        """The cached Blueprint id if it belongs to ``environment`` (an id cached before
        environments were recorded is taken as the current one's)."""
        if self.blueprint_env not in (None, environment):
            return None
        return self.blueprint_id


@dataclass(frozen=True)
class Clinician(_Record):
    first_name: str = field(repr=False)
    last_name: str = field(repr=False)
    email: str | None = field(repr=False)


@dataclass(frozen=True)
class Client(_Record):
    first_name: str = field(repr=False)
    last_name: str = field(repr=False)
    clinician_external_id: str


def put_clinician(
    conn: Connection,
    external_id: str,
    first_name: str,
    last_name: str,
    email: str | None,
) -> Clinician:
    """Create or update the local record. Changed details of a record Blueprint already
    has mark it for an update there (the ensure job sends them)."""
    now = time.time()
    conn.execute(
        "INSERT INTO clinicians (external_id, first_name, last_name, email, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (external_id) DO UPDATE SET"
        " needs_update = CASE WHEN clinicians.blueprint_id IS NOT NULL AND ("
        "   clinicians.first_name IS DISTINCT FROM excluded.first_name"
        "   OR clinicians.last_name IS DISTINCT FROM excluded.last_name"
        "   OR clinicians.email IS DISTINCT FROM excluded.email) THEN 1"
        "   ELSE clinicians.needs_update END,"
        " first_name = excluded.first_name, last_name = excluded.last_name,"
        " email = excluded.email, error = NULL, deleted_at = NULL,"
        " updated_at = excluded.updated_at",
        (external_id, first_name, last_name, email, now, now),
    )
    clinician = get_clinician(conn, external_id)
    assert clinician is not None
    return clinician


def put_client(
    conn: Connection,
    external_id: str,
    first_name: str,
    last_name: str,
    clinician_external_id: str,
) -> Client:
    now = time.time()
    conn.execute(
        "INSERT INTO clients (external_id, first_name, last_name, clinician_external_id,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (external_id)"
        " DO UPDATE SET"
        " needs_update = CASE WHEN clients.blueprint_id IS NOT NULL AND ("
        "   clients.first_name IS DISTINCT FROM excluded.first_name"
        "   OR clients.last_name IS DISTINCT FROM excluded.last_name"
        "   OR clients.clinician_external_id IS DISTINCT FROM excluded.clinician_external_id)"
        "   THEN 1 ELSE clients.needs_update END,"
        " first_name = excluded.first_name, last_name = excluded.last_name,"
        " clinician_external_id = excluded.clinician_external_id, error = NULL,"
        " deleted_at = NULL, updated_at = excluded.updated_at",
        (external_id, first_name, last_name, clinician_external_id, now, now),
    )
    client = get_client(conn, external_id)
    assert client is not None
    return client


def get_clinician(conn: Connection, external_id: str) -> Clinician | None:
    row = conn.execute(
        f"SELECT external_id, first_name, last_name, email, {_COLUMNS}"
        " FROM clinicians WHERE external_id = ? AND deleted_at IS NULL",
        (external_id,),
    ).fetchone()
    return Clinician(**_fields(row)) if row is not None else None


def get_client(conn: Connection, external_id: str) -> Client | None:
    row = conn.execute(
        f"SELECT external_id, first_name, last_name, clinician_external_id, {_COLUMNS}"
        " FROM clients WHERE external_id = ? AND deleted_at IS NULL",
        (external_id,),
    ).fetchone()
    return Client(**_fields(row)) if row is not None else None


def external_ids(conn: Connection, kind: RecordKind) -> list[str]:
    rows = conn.execute(
        f"SELECT external_id FROM {_TABLES[kind]} WHERE deleted_at IS NULL ORDER BY external_id"
    ).fetchall()
    return [row["external_id"] for row in rows]


def clients_of(conn: Connection, clinician_external_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT external_id FROM clients WHERE clinician_external_id = ? AND deleted_at IS NULL"
        " ORDER BY external_id",
        (clinician_external_id,),
    ).fetchall()
    return [row["external_id"] for row in rows]


def set_blueprint_id(
    conn: Connection,
    kind: RecordKind,
    external_id: str,
    blueprint_id: str,
    environment: str,
) -> None:
    conn.execute(
        f"UPDATE {_TABLES[kind]} SET blueprint_id = ?, blueprint_env = ?, error = NULL,"
        " updated_at = ? WHERE external_id = ?",
        (blueprint_id, environment, time.time(), external_id),
    )


def forget_blueprint_id(conn: Connection, kind: RecordKind, external_id: str) -> None:
    """Blueprint does not know the cached id (any more): the next ensure looks it up."""
    conn.execute(
        f"UPDATE {_TABLES[kind]} SET blueprint_id = NULL, blueprint_env = NULL,"
        " needs_update = 0, updated_at = ? WHERE external_id = ?",
        (time.time(), external_id),
    )


def mark_updated(conn: Connection, kind: RecordKind, external_id: str, seen_at: float) -> None:
    """Blueprint has the details as of ``seen_at``; a PUT since then keeps the mark."""
    conn.execute(
        f"UPDATE {_TABLES[kind]} SET needs_update = 0, error = NULL"
        " WHERE external_id = ? AND updated_at <= ?",
        (external_id, seen_at),
    )


def set_error(conn: Connection, kind: RecordKind, external_id: str, error: str) -> None:
    conn.execute(
        f"UPDATE {_TABLES[kind]} SET error = ?, updated_at = ? WHERE external_id = ?",
        (error, time.time(), external_id),
    )


def delete(conn: Connection, kind: RecordKind, external_id: str) -> bool:
    """Forget the names and the Blueprint id; False if there was no such record."""
    cursor = conn.execute(
        f"UPDATE {_TABLES[kind]} SET first_name = '', last_name = '',"
        + (" email = NULL," if kind == "clinician" else "")
        + " blueprint_id = NULL, blueprint_env = NULL, needs_update = 0, error = NULL,"
        " deleted_at = ?, updated_at = ? WHERE external_id = ? AND deleted_at IS NULL",
        (time.time(), time.time(), external_id),
    )
    return cursor.rowcount == 1


def _fields(row: Row) -> dict[str, Any]:
    fields = dict(row)
    fields["needs_update"] = bool(fields["needs_update"])
    return fields
