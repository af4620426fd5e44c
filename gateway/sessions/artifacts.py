"""What Blueprint produced for a session, as fetched: progress note, transcript, MDM.

Bodies are Blueprint's JSON, kept as received (PHI: served to the partner, never logged).
A regenerated or finalized note replaces the earlier one; the timeline keeps the history.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.store import Connection

ArtifactKind = Literal["progress_note", "transcript", "mdm"]


@dataclass(frozen=True)
class Artifact:
    kind: ArtifactKind
    event_type: str
    fetched_at: float
    body: dict[str, Any] = field(repr=False)


def save(
    conn: Connection,
    session_id: str,
    kind: ArtifactKind,
    event_type: str,
    body: dict[str, Any],
) -> None:
    conn.execute(
        "INSERT INTO artifacts (session_id, kind, event_type, body, fetched_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_id, kind) DO UPDATE SET"
        " event_type = excluded.event_type, body = excluded.body,"
        " fetched_at = excluded.fetched_at",
        (session_id, kind, event_type, json.dumps(body), time.time()),
    )


def for_session(conn: Connection, session_id: str) -> dict[str, Artifact]:
    rows = conn.execute(
        "SELECT kind, event_type, fetched_at, body FROM artifacts WHERE session_id = ?",
        (session_id,),
    ).fetchall()
    return {
        row["kind"]: Artifact(
            kind=row["kind"],
            event_type=row["event_type"],
            fetched_at=row["fetched_at"],
            body=json.loads(row["body"]),
        )
        for row in rows
    }
