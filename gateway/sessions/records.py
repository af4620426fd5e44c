"""Clinicians and clients as the partner named them, and their Blueprint ids once ensured.

The names are kept because a job may need them again after a restart (to create the
record in Blueprint); they are PHI, so the dataclasses hide them from repr and no other
table or log line carries them. A record is keyed by the partner's external id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from gateway.store import Connection

RecordKind = Literal["clinician", "client"]
_TABLES: dict[RecordKind, str] = {"clinician": "clinicians", "client": "clients"}


@dataclass(frozen=True)
class Clinician:
    external_id: str
    first_name: str = field(repr=False)
    last_name: str = field(repr=False)
    email: str | None = field(repr=False)
    blueprint_id: str | None
    error: str | None


@dataclass(frozen=True)
class Client:
    external_id: str
    first_name: str = field(repr=False)
    last_name: str = field(repr=False)
    clinician_external_id: str
    blueprint_id: str | None
    error: str | None


def put_clinician(
    conn: Connection,
    external_id: str,
    first_name: str,
    last_name: str,
    email: str | None,
) -> Clinician:
    """Create or update the local record; a known Blueprint id is kept (Blueprint has no
    known update call, so a later change of name stays local)."""
    now = time.time()
    conn.execute(
        "INSERT INTO clinicians (external_id, first_name, last_name, email, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (external_id) DO UPDATE SET"
        " first_name = excluded.first_name, last_name = excluded.last_name,"
        " email = excluded.email, error = NULL, updated_at = excluded.updated_at",
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
        " DO UPDATE SET first_name = excluded.first_name, last_name = excluded.last_name,"
        " clinician_external_id = excluded.clinician_external_id, error = NULL,"
        " updated_at = excluded.updated_at",
        (external_id, first_name, last_name, clinician_external_id, now, now),
    )
    client = get_client(conn, external_id)
    assert client is not None
    return client


def get_clinician(conn: Connection, external_id: str) -> Clinician | None:
    row = conn.execute(
        "SELECT external_id, first_name, last_name, email, blueprint_id, error"
        " FROM clinicians WHERE external_id = ?",
        (external_id,),
    ).fetchone()
    return Clinician(**dict(row)) if row is not None else None


def get_client(conn: Connection, external_id: str) -> Client | None:
    row = conn.execute(
        "SELECT external_id, first_name, last_name, clinician_external_id, blueprint_id,"
        " error FROM clients WHERE external_id = ?",
        (external_id,),
    ).fetchone()
    return Client(**dict(row)) if row is not None else None


def set_blueprint_id(
    conn: Connection, kind: RecordKind, external_id: str, blueprint_id: str
) -> None:
    conn.execute(
        f"UPDATE {_TABLES[kind]} SET blueprint_id = ?, error = NULL, updated_at = ?"
        " WHERE external_id = ?",
        (blueprint_id, time.time(), external_id),
    )


def set_error(conn: Connection, kind: RecordKind, external_id: str, error: str) -> None:
    conn.execute(
        f"UPDATE {_TABLES[kind]} SET error = ?, updated_at = ? WHERE external_id = ?",
        (error, time.time(), external_id),
    )
