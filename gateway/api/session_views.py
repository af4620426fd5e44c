"""A session as the partner API shows it (routers share it; it is no router itself)."""

from __future__ import annotations

from gateway.api.models import ReceivedAudioOut, SessionOut
from gateway.errors import NotFound
from gateway.ingest import records as ingest_records
from gateway.jobs import queue as jobs
from gateway.sessions import records
from gateway.sessions import states as sessions
from gateway.store import Connection


def session_out(conn: Connection, session_id: str, environment: str) -> SessionOut:
    session = sessions.get(conn, session_id)
    if session is None:
        raise NotFound(f"session {session_id} not found", code="session_not_found")
    answer = SessionOut.of(
        session,
        sessions.timeline(conn, session_id),
        records.get_clinician(conn, session.clinician_external_id),
        records.get_client(conn, session.client_external_id),
        jobs.for_session(conn, session_id),
        environment,
    )
    received = ingest_records.received(conn, session_id)
    if received is not None:
        answer.audio = ReceivedAudioOut(
            chunks_received=received.chunks,
            speech_s=received.speech_s,
            manifest_chunks=received.manifest_chunks,
            state=received.state,
            paused=received.paused,
        )
    return answer
