"""TESTING ONLY: ``POST /v1/sessions/{id}/audio`` gives a session its whole audio over HTTP.

Mounted only with ``testing.audio_endpoint = true``, so the Blueprint half can be driven
end to end before room devices exist. In production a session's audio is assembled from
the room device's sealed chunks and handed to ``SessionLifecycle.attach_audio``, exactly
as this route does.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from gateway.api.deps import PARTNER_CODES, Service, require_partner
from gateway.api.errors import ApiError, problems
from gateway.api.models import SessionOut
from gateway.api.params import SessionIdPath
from gateway.api.session_views import session_out
from gateway.errors import Conflict
from gateway.sessions.audio_files import CONTENT_TYPES, AudioRejected, AudioTooLarge
from gateway.sessions.lifecycle import UPLOADABLE_FROM
from gateway.store import Connection

router = APIRouter(prefix="/v1", dependencies=[Depends(require_partner)])


@router.post(
    "/sessions/{session_id}/audio",
    status_code=202,
    response_model=SessionOut,
    responses=problems(
        *PARTNER_CODES,
        "session_not_found",
        "audio_already_attached",
        "unsupported_media_type",
        "body_too_large",
        "audio_unreadable",
    ),
    tags=["testing"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                ctype: {"schema": {"type": "string", "format": "binary"}} for ctype in CONTENT_TYPES
            },
        }
    },
)
async def upload_session_audio(
    session_id: SessionIdPath, request: Request, service: Service
) -> SessionOut:
    """TESTING ONLY (``testing.audio_endpoint``): the session's whole audio as the raw body
    (audio/flac or audio/ogg); it is stored and its upload to Blueprint queued. In
    production the room device's sealed chunks are assembled into this file instead."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in CONTENT_TYPES:
        raise ApiError(
            "unsupported_media_type", f"Content-Type must be one of {', '.join(CONTENT_TYPES)}"
        )
    session = await service.db.run(service.lifecycle.get, session_id, write=False)
    if session.state not in UPLOADABLE_FROM:
        raise Conflict(
            f"session {session_id} is {session.state}; audio is already attached",
            code="audio_already_attached",
        )
    try:
        ref = await service.vault.store_stream(
            session_id, request.stream(), service.settings.http.audio_max_bytes
        )
    except AudioTooLarge as exc:
        raise ApiError("body_too_large", str(exc)) from None
    except AudioRejected as exc:
        raise ApiError("audio_unreadable", str(exc)) from None

    def attach(conn: Connection) -> SessionOut:
        service.lifecycle.attach_audio(conn, session_id, ref, content_type)
        return session_out(conn, session_id, service.lifecycle.environment)

    answer = await service.db.run(attach)
    return answer
