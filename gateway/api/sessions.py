"""``/v1/sessions``: start a session in a room, follow it, stop or cancel it, read its notes.

``POST``s take an ``Idempotency-Key``: a retry with the same key gets the first answer
(gateway/api/idempotency.py). A stop ends recording and the audio goes on to Blueprint; a
cancel ends it and discards the audio, which is never uploaded.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from gateway.api.deps import BODY_CODES, PARTNER_CODES, Principal, Service, require_partner
from gateway.api.errors import ApiError, problems
from gateway.api.idempotency import IdempotencyKey, answer_once
from gateway.api.models import (
    ArtifactOut,
    ArtifactsOut,
    ExternalId,
    RoomId,
    SessionIn,
    SessionOut,
    SessionPage,
    SessionSummary,
)
from gateway.api.params import SessionIdPath
from gateway.api.session_views import session_out
from gateway.errors import Conflict
from gateway.relay import room_status
from gateway.service import GatewayService
from gateway.sessions import artifacts
from gateway.sessions import states as sessions
from gateway.sessions.lifecycle import STOPPABLE_FROM
from gateway.sessions.states import SessionFilter, SessionState
from gateway.store import Connection

MAX_PAGE = 200
IDEMPOTENCY_CODES = ("idempotency_key_reused",)

router = APIRouter(prefix="/v1", dependencies=[Depends(require_partner)], tags=["sessions"])


@router.post(
    "/sessions",
    status_code=201,
    response_model=SessionOut,
    responses={
        202: {
            "model": SessionOut,
            "description": "Accepted: the session is ``starting``, waiting for the room's"
            " device (it may be offline) to confirm; it becomes ``recording`` when it"
            " does, or ``failed`` with the reason after ``mqtt.command_expiry_s``.",
        },
        **problems(
            *PARTNER_CODES,
            *BODY_CODES,
            *IDEMPOTENCY_CODES,
            "room_not_provisioned",
            "room_revoked",
            "unknown_clinician",
            "unknown_client",
            "room_busy",
            "device_busy",
            "room_do_not_record",
        ),
    },
)
async def start_session(
    body: SessionIn,
    request: Request,
    service: Service,
    principal: Principal,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Start recording in a room, for a clinician and a client already PUT.

    With room devices (the gateway's MQTT relay on) the answer is 202 and the session
    ``starting``: the start is sent to the room's device, again whenever it reconnects,
    until it confirms (then ``recording``) or ``mqtt.command_expiry_s`` passes (then
    ``failed``, the reason naming what was waited for). Without them it is 201 and
    ``recording``. The Blueprint session is created now, so the upload at the end waits
    for nothing. A room records one session at a time (``room_busy``). Send an
    ``Idempotency-Key`` so a retry after a lost answer returns this session rather than
    ``room_busy``."""

    def start(conn: Connection) -> SessionOut:
        if service.relay is not None:
            _refuse_if_device_busy(conn, body.room)
        session = service.lifecycle.start(
            conn,
            body.room,
            body.clinician_external_id,
            body.client_external_id,
            body.session_setting,
            body.note_type,
            waits_for_room=service.relay is not None,
        )
        if service.relay is not None:
            service.relay.commands.queue(conn, body.room, session.id, "start")
        return session_out(conn, session.id, service.lifecycle.environment)

    status = 202 if service.relay is not None else 201
    async with _room_order(service, body.room):
        answer = await answer_once(
            service, principal, idempotency_key, request, body, start, status
        )
    return answer


@contextlib.asynccontextmanager
async def _room_order(service: GatewayService, room_id: str | None) -> AsyncIterator[None]:
    """A request that changes a room's commands holds the room's order (relay/commands.py)
    around its transaction: a send already deciding goes out first, or sees the change."""
    if service.relay is None or room_id is None:
        yield
        return
    async with service.relay.commands.ordered(room_id):
        yield


@contextlib.asynccontextmanager
async def _session_room_order(service: GatewayService, session_id: str) -> AsyncIterator[None]:
    found = None
    if service.relay is not None:  # a session's room never changes: read it first
        found = await service.db.run(sessions.get, session_id, write=False)
    async with _room_order(service, found.room_id if found is not None else None):
        yield


@router.get(
    "/sessions",
    response_model=SessionPage,
    responses=problems(*PARTNER_CODES, "invalid_cursor"),
)
async def list_sessions(
    service: Service,
    room: Annotated[RoomId | None, Query(description="only this room's sessions")] = None,
    state: Annotated[
        list[SessionState] | None,
        Query(description="only sessions in these states (repeat: state=a&state=b)"),
    ] = None,
    clinician_external_id: Annotated[ExternalId | None, Query()] = None,
    client_external_id: Annotated[ExternalId | None, Query()] = None,
    created_after: Annotated[
        datetime | None, Query(description="created at or after (ISO 8601, with zone)")
    ] = None,
    created_before: Annotated[
        datetime | None, Query(description="created before (ISO 8601, with zone)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=200, description="next_cursor of the previous page"),
    ] = None,
) -> SessionPage:
    """Sessions, newest first, filtered; ``next_cursor`` pages through the rest (stable
    while new sessions start)."""
    where = SessionFilter(
        room_id=room,
        states=state,
        clinician_external_id=clinician_external_id,
        client_external_id=client_external_id,
        created_after=_seconds(created_after),
        created_before=_seconds(created_before),
    )
    after = _decode_cursor(cursor) if cursor else None
    found = await service.db.run(sessions.search, where, limit + 1, after, write=False)
    page = found[:limit]
    more = len(found) > limit
    environment = service.lifecycle.environment
    return SessionPage(
        items=[SessionSummary.of(session, environment) for session in page],
        next_cursor=_encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    )


@router.get(
    "/sessions/{session_id}",
    response_model=SessionOut,
    responses=problems(*PARTNER_CODES, "session_not_found"),
)
async def get_session(session_id: SessionIdPath, service: Service) -> SessionOut:
    """State, Blueprint ids, error, the timeline of every step, work still pending, and the
    audio received from the room so far."""
    return await service.db.run(session_out, session_id, service.lifecycle.environment, write=False)


@router.post(
    "/sessions/{session_id}/stop",
    response_model=SessionOut,
    responses=problems(*PARTNER_CODES, *IDEMPOTENCY_CODES, "session_not_found"),
)
async def stop_session(
    session_id: SessionIdPath,
    request: Request,
    service: Service,
    principal: Principal,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Stop recording; the audio then goes to Blueprint. Harmless to repeat; a session
    already past recording is unchanged."""

    def stop(conn: Connection) -> SessionOut:
        before = service.lifecycle.get(conn, session_id)
        stopped = service.lifecycle.stop(conn, session_id)
        if (
            service.relay is not None
            and before.state in STOPPABLE_FROM
            and stopped.state == "stopping"
        ):
            service.relay.commands.queue(conn, stopped.room_id, session_id, "stop")
        return session_out(conn, session_id, service.lifecycle.environment)

    async with _session_room_order(service, session_id):
        answer = await answer_once(service, principal, idempotency_key, request, None, stop, 200)
    return answer


PAUSE_CODES = ("session_not_found", "session_not_recording")


@router.post(
    "/sessions/{session_id}/pause",
    response_model=SessionOut,
    responses=problems(*PARTNER_CODES, *IDEMPOTENCY_CODES, *PAUSE_CODES),
)
async def pause_session(
    session_id: SessionIdPath,
    request: Request,
    service: Service,
    principal: Principal,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Pause: the room's microphone is closed to the session (nothing it hears is kept)
    until resumed; the session stays open. The state is ``paused`` at once; the room's
    device closes the microphone when the command reaches it (the timeline's
    ``microphone_closed`` says when, by the device's clock), and the session's manifest
    lists each paused interval (times only). A session still ``starting`` begins paused.
    Harmless to repeat; ``session_not_recording`` once it is stopped."""
    return await _pause(session_id, request, service, principal, idempotency_key, pause=True)


@router.post(
    "/sessions/{session_id}/resume",
    response_model=SessionOut,
    responses=problems(*PARTNER_CODES, *IDEMPOTENCY_CODES, *PAUSE_CODES),
)
async def resume_session(
    session_id: SessionIdPath,
    request: Request,
    service: Service,
    principal: Principal,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Resume a paused session: the microphone is open to it again. A room whose "do not
    record" switch is on refuses: the session goes back to ``paused`` and the timeline
    says why (``resume_refused``). Harmless to repeat."""
    return await _pause(session_id, request, service, principal, idempotency_key, pause=False)


async def _pause(
    session_id: str,
    request: Request,
    service: GatewayService,
    principal: str,
    idempotency_key: str | None,
    *,
    pause: bool,
) -> JSONResponse:
    def change(conn: Connection) -> SessionOut:
        session = service.lifecycle.pause(conn, session_id, pause=pause)
        if service.relay is not None:
            service.relay.commands.pause(conn, session, pause=pause)
        return session_out(conn, session_id, service.lifecycle.environment)

    async with _session_room_order(service, session_id):
        answer = await answer_once(service, principal, idempotency_key, request, None, change, 200)
    return answer


@router.post(
    "/sessions/{session_id}/cancel",
    response_model=SessionOut,
    responses=problems(
        *PARTNER_CODES, *IDEMPOTENCY_CODES, "session_not_found", "session_not_cancellable"
    ),
)
async def cancel_session(
    session_id: SessionIdPath,
    request: Request,
    service: Service,
    principal: Principal,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Cancel: stop recording and discard the audio; it is never uploaded.

    Possible until the upload starts (``recording``, ``stopping``, ``audio_ready``, or
    ``failed`` before that); ``session_not_cancellable`` after. The room's device is told
    to stop; audio it still sends is accepted and dropped. The Blueprint session record
    made at the start stays in Blueprint, without audio (our contract has no delete).
    Harmless to repeat."""

    def cancel(conn: Connection) -> SessionOut:
        before = service.lifecycle.get(conn, session_id)
        service.lifecycle.cancel(conn, session_id)
        if service.relay is not None and before.state in ("starting", "recording", "paused"):
            service.relay.commands.queue(conn, before.room_id, session_id, "stop")
        return session_out(conn, session_id, service.lifecycle.environment)

    async with _session_room_order(service, session_id):
        answer = await answer_once(service, principal, idempotency_key, request, None, cancel, 200)
    return answer


@router.get(
    "/sessions/{session_id}/artifacts",
    response_model=ArtifactsOut,
    responses=problems(*PARTNER_CODES, "session_not_found"),
)
async def get_artifacts(session_id: SessionIdPath, service: Service) -> ArtifactsOut:
    """The progress note, transcript and MDM elements as fetched from Blueprint (null until
    they are); a regenerated or finalized note replaces the earlier one."""

    def read(conn: Connection) -> ArtifactsOut:
        session = service.lifecycle.get(conn, session_id)
        found = artifacts.for_session(conn, session_id)
        return ArtifactsOut(
            session_id=session_id,
            state=session.state,
            progress_note=ArtifactOut.of(found.get("progress_note")),
            transcript=ArtifactOut.of(found.get("transcript")),
            mdm=ArtifactOut.of(found.get("mdm")),
        )

    return await service.db.run(read, write=False)


def _refuse_if_device_busy(conn: Connection, room_id: str) -> None:
    """The device itself reports recording (a session started elsewhere, e.g. with
    ``room-agent record``): a start would be refused by it, so refuse it here, now."""
    status = room_status.get(conn, room_id)
    if status is not None and status.online and status.recorder in ("recording", "closing"):
        raise Conflict(
            f"the device in room {room_id} is recording ({status.session_id})", code="device_busy"
        )
    if status is not None and status.do_not_record:
        raise Conflict(
            f'room {room_id} has its "do not record" switch on; it records nothing until'
            " it is released in the room",
            code="room_do_not_record",
        )


def _seconds(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ApiError("invalid_request", "times need a zone (e.g. 2026-03-02T14:00:00Z)")
    return moment.timestamp()


def _encode_cursor(created_at: float, session_id: str) -> str:
    raw = json.dumps([created_at, session_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, session_id = json.loads(raw)
        if not isinstance(session_id, str) or isinstance(created_at, bool):
            raise ValueError
        return float(created_at), session_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ApiError("invalid_cursor", "cursor is not one this API gave out") from None
