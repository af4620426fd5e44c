"""Blueprint's webhooks, once verified: recorded once, turned into jobs, answered fast.

Blueprint sends no event id, so a delivery is identified by the SHA-256 of its raw body:
a redelivery has the same bytes and is absorbed. Fetching the artifact is queued, never
done while Blueprint waits for our answer. Event types we do not know are recorded and
acknowledged (Blueprint may add some), as are events for sessions we do not know. A
``session_transcript_error`` is obeyed only while the session waits for Blueprint (after
its audio went there, before its note came): late or out of order, it is recorded on the
timeline (``webhook_ignored``) and answered ``ignored``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.blueprint import models as bp
from gateway.errors import GatewayError
from gateway.sessions import states as sessions
from gateway.sessions.artifacts import ArtifactKind, Expected
from gateway.sessions.lifecycle import AFTER_UPLOAD, JobKind, SessionLifecycle
from gateway.sessions.states import Session
from gateway.store import Connection

M = TypeVar("M", bound=BaseModel)
Outcome = Literal["queued", "session_failed", "duplicate", "ignored", "unknown_session", "refused"]
MAX_REASON_CHARS = 300

PROGRESS_NOTE_EVENTS = frozenset(
    {bp.PROGRESS_NOTE_GENERATED, bp.PROGRESS_NOTE_REGENERATED, bp.PROGRESS_NOTE_FINALIZED}
)


class InvalidPayload(GatewayError):
    """A known event type whose payload lacks what we need; the message names fields."""


class MdmPayload(bp.BlueprintModel):
    """mdm_elements_identified (prescriber note types); not modelled in blueprint.models."""

    session_id: str
    mdm_url: str


@dataclass(frozen=True)
class _Fetch:
    kind: ArtifactKind
    url: str
    expected: Expected


@dataclass(frozen=True)
class Recorded:
    outcome: Outcome
    session_id: str | None = None
    job_id: int | None = None


def record(
    conn: Connection, lifecycle: SessionLifecycle, digest: str, event: bp.WebhookEvent
) -> Recorded:
    """Record a verified delivery and act on it, in one transaction."""
    cursor = conn.execute(
        "INSERT INTO webhook_events (digest, event_type, outcome, received_at)"
        " VALUES (?, ?, 'received', ?) ON CONFLICT (digest) DO NOTHING",
        (digest, event.event_type[:100], time.time()),
    )
    if cursor.rowcount == 0:
        return Recorded("duplicate")
    result = _act(conn, lifecycle, event)
    conn.execute(
        "UPDATE webhook_events SET outcome = ?, session_id = ?, blueprint_session_id = ?"
        " WHERE digest = ?",
        (result.outcome, result.session_id, _blueprint_session_id(event), digest),
    )
    return result


def _act(conn: Connection, lifecycle: SessionLifecycle, event: bp.WebhookEvent) -> Recorded:
    kind = event.event_type
    if kind in PROGRESS_NOTE_EVENTS:
        note = _parse(bp.ProgressNotePayload, event)
        session = _find(conn, note.session_id, note.session_external_id)
        if session is not None and note.session_external_id not in (None, session.id):
            # Blueprint's session is ours, but the payload names another of ours with it.
            detail = (
                f"{kind}: Blueprint session {note.session_id[:100]!r} is {session.id}, the"
                f" payload's sessionExternalId {note.session_external_id[:100]!r}"
            )
            sessions.add_event(conn, session.id, "webhook_refused", detail)
            return Recorded("refused", session.id)
        expected = Expected(sessionId=note.session_id, id=note.progress_note_id)
        return _queue_fetch(
            conn,
            lifecycle,
            session,
            kind,
            _Fetch("progress_note", note.progress_note_url, expected),
        )
    if kind == bp.TRANSCRIPT_READY:
        ready = _parse(bp.TranscriptReadyPayload, event)
        session = _find(conn, ready.session_id, None)
        fetch = _Fetch("transcript", ready.transcript_url, Expected(sessionId=ready.session_id))
        return _queue_fetch(conn, lifecycle, session, kind, fetch)
    if kind == bp.MDM_ELEMENTS_IDENTIFIED:
        mdm = _parse(MdmPayload, event)
        session = _find(conn, mdm.session_id, None)
        fetch = _Fetch("mdm", mdm.mdm_url, Expected(sessionId=mdm.session_id))
        return _queue_fetch(conn, lifecycle, session, kind, fetch)
    if kind == bp.SESSION_TRANSCRIPT_ERROR:
        error = _parse(bp.TranscriptErrorPayload, event)
        session = _find(conn, error.session_id, None)
        if session is None:
            return Recorded("unknown_session")
        reason = f"Blueprint could not transcribe the session: {error.error}"
        if session.state not in AFTER_UPLOAD:
            # Late (the note is here: a terminal state) or out of order (no audio went to
            # Blueprint yet): recorded, never obeyed, and nobody is told "failed".
            detail = f"{kind} while {session.state}: {error.error}"
            sessions.add_event(conn, session.id, "webhook_ignored", detail[:MAX_REASON_CHARS])
            return Recorded("ignored", session.id)
        lifecycle.failed(conn, session.id, reason[:MAX_REASON_CHARS])
        return Recorded("session_failed", session.id)
    return Recorded("ignored")


def _queue_fetch(
    conn: Connection,
    lifecycle: SessionLifecycle,
    session: Session | None,
    event_type: str,
    fetch: _Fetch,
) -> Recorded:
    if session is None:
        return Recorded("unknown_session")
    sessions.add_event(conn, session.id, event_type)
    job_id = lifecycle.enqueue(
        conn,
        JobKind.FETCH_ARTIFACT,
        {
            "session_id": session.id,
            "kind": fetch.kind,
            "url": fetch.url,
            "event_type": event_type,
            "expected": dict(fetch.expected),
        },
        session_id=session.id,
    )
    return Recorded("queued", session.id, job_id)


def _find(
    conn: Connection, blueprint_session_id: str, session_external_id: str | None
) -> Session | None:
    """By Blueprint's id; else by the external id we gave Blueprint (our session id), which
    covers a crash between Blueprint creating the session and us storing its id."""
    session = sessions.by_blueprint_id(conn, blueprint_session_id)
    if session is None and session_external_id:
        session = sessions.get(conn, session_external_id)
    return session


def _parse(model: type[M], event: bp.WebhookEvent) -> M:
    try:
        return model.model_validate(event.payload)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"]) or "payload" for e in exc.errors()})
        raise InvalidPayload(
            f"{event.event_type}: payload field(s) missing or invalid: {', '.join(fields)}"
        ) from None


def _blueprint_session_id(event: bp.WebhookEvent) -> str | None:
    value = event.payload.get("sessionId")
    return value[:100] if isinstance(value, str) else None
