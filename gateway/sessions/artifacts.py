"""What Blueprint produced for a session, as fetched: progress note, transcript, MDM.

Bodies are Blueprint's JSON, kept as received (PHI: served to the partner, never logged).
A regenerated or finalized note replaces the earlier one; the timeline keeps the history.

A fetched body is checked against the session it is to be attached to before it is kept
(:func:`mismatch`): a webhook for one session that names another session's artifact URL
must never put that note in front of the wrong patient.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from gateway.store import Connection

ArtifactKind = Literal["progress_note", "transcript", "mdm"]


@dataclass(frozen=True)
class Artifact:
    kind: ArtifactKind
    event_type: str
    fetched_at: float
    body: dict[str, Any] = field(repr=False)


class Expected(TypedDict, total=False):
    """What the webhook said the artifact is: the Blueprint session it belongs to and, for a
    progress note, the note's id (the fields of Blueprint's body they must match)."""

    sessionId: str
    id: str


# Fields of a fetched body that must be there (progress notes carry their session's id;
# Blueprint's transcript and MDM bodies are not known to, so for them only a present field
# is compared).
REQUIRED: dict[ArtifactKind, tuple[str, ...]] = {"progress_note": ("sessionId",)}


def mismatch(kind: ArtifactKind, expected: Expected, body: dict[str, Any]) -> str | None:
    """Why ``body`` is not the artifact ``expected`` describes, in ids only; None if it is."""
    for name, want in expected.items():
        got = body.get(name)
        if got is None and name not in REQUIRED.get(kind, ()):
            continue
        if got != want:
            shown = got[:100] if isinstance(got, str) else type(got).__name__
            return f"its {name} is {shown!r}, the webhook said {want!r}"
    return None


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
