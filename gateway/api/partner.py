"""The partner REST API (``/v1``): clinicians, clients, rooms, sessions and their notes.

Clinicians and clients are PUT by the partner's own external ids (idempotent), and the
gateway ensures them in Blueprint through a durable job: the answer waits for it up to
``partner.ensure_wait_s`` (200 with the Blueprint id), else says it is pending (202).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Path, Response

from gateway.api.deps import BODY_CODES, PARTNER_CODES, Service, require_partner
from gateway.api.errors import ApiError, problems
from gateway.api.models import (
    EXTERNAL_ID_DESCRIPTION,
    EXTERNAL_ID_PATTERN,
    ArtifactOut,
    ArtifactsOut,
    ClientIn,
    ClinicianIn,
    ReceivedAudioOut,
    RecordOut,
    SessionIn,
    SessionOut,
)
from gateway.errors import Conflict, InvalidReference, NotFound
from gateway.ingest import records as ingest_records
from gateway.jobs import queue as jobs
from gateway.relay import room_status
from gateway.service import GatewayService
from gateway.sessions import artifacts, records
from gateway.sessions import states as sessions
from gateway.sessions.records import Client, Clinician
from gateway.store import Connection
from protocol.ids import ID_DESCRIPTION, ID_PATTERN

R = TypeVar("R")
ExternalIdPath = Annotated[
    str, Path(pattern=EXTERNAL_ID_PATTERN, description=EXTERNAL_ID_DESCRIPTION)
]
SessionIdPath = Annotated[str, Path(pattern=ID_PATTERN, description=ID_DESCRIPTION)]

ENSURE_ANSWERS = {
    202: {"model": RecordOut, "description": "stored; Blueprint not reached yet (pending)"},
}

router = APIRouter(prefix="/v1", dependencies=[Depends(require_partner)])


# --- clinicians and clients -------------------------------------------------------------


@router.put(
    "/clinicians/{external_id}",
    response_model=RecordOut,
    responses={**ENSURE_ANSWERS, **problems(*PARTNER_CODES, *BODY_CODES, "blueprint_refused")},
    tags=["clinicians and clients"],
)
async def put_clinician(
    external_id: ExternalIdPath, body: ClinicianIn, service: Service, response: Response
) -> RecordOut:
    """Create or update a clinician and ensure it exists in Blueprint."""

    def put(conn: Connection) -> int | None:
        records.put_clinician(conn, external_id, body.first_name, body.last_name, body.email)
        return service.lifecycle.ensure_clinician(conn, external_id)

    job_id = await service.db.run(put)
    record = await _wait_for_ensure(service, job_id, records.get_clinician, external_id)
    return _ensure_answer(record, response)


@router.get(
    "/clinicians/{external_id}",
    response_model=RecordOut,
    responses=problems(*PARTNER_CODES, "clinician_not_found"),
    tags=["clinicians and clients"],
)
async def get_clinician(external_id: ExternalIdPath, service: Service) -> RecordOut:
    record = await service.db.run(records.get_clinician, external_id, write=False)
    if record is None:
        raise NotFound(f"clinician {external_id} not found", code="clinician_not_found")
    return RecordOut.of(record)


@router.put(
    "/clients/{external_id}",
    response_model=RecordOut,
    responses={
        **ENSURE_ANSWERS,
        **problems(*PARTNER_CODES, *BODY_CODES, "unknown_clinician", "blueprint_refused"),
    },
    tags=["clinicians and clients"],
)
async def put_client(
    external_id: ExternalIdPath, body: ClientIn, service: Service, response: Response
) -> RecordOut:
    """Create or update a client (of a clinician already PUT) and ensure it in Blueprint."""

    def put(conn: Connection) -> int | None:
        if records.get_clinician(conn, body.clinician_external_id) is None:
            raise InvalidReference(
                f"clinician {body.clinician_external_id} not found; PUT it first",
                code="unknown_clinician",
            )
        records.put_client(
            conn, external_id, body.first_name, body.last_name, body.clinician_external_id
        )
        return service.lifecycle.ensure_client(conn, external_id)

    job_id = await service.db.run(put)
    record = await _wait_for_ensure(service, job_id, records.get_client, external_id)
    return _ensure_answer(record, response)


@router.get(
    "/clients/{external_id}",
    response_model=RecordOut,
    responses=problems(*PARTNER_CODES, "client_not_found"),
    tags=["clinicians and clients"],
)
async def get_client(external_id: ExternalIdPath, service: Service) -> RecordOut:
    record = await service.db.run(records.get_client, external_id, write=False)
    if record is None:
        raise NotFound(f"client {external_id} not found", code="client_not_found")
    return RecordOut.of(record)


async def _wait_for_ensure(
    service: GatewayService,
    job_id: int | None,
    read: Callable[[Connection, str], R],
    external_id: str,
) -> R:
    """Give the ensure job up to ``partner.ensure_wait_s`` to finish, then read the record."""
    if job_id is not None:
        service.worker.wake()
        await service.worker.wait_for(job_id, service.settings.partner.ensure_wait_s)
    return await service.db.run(read, external_id, write=False)


def _ensure_answer(record: Clinician | Client | None, response: Response) -> RecordOut:
    assert record is not None
    answer = RecordOut.of(record)
    if answer.state == "failed":
        raise ApiError("blueprint_refused", answer.error or "Blueprint refused the record")
    if answer.state == "pending":
        response.status_code = 202
    return answer


# --- sessions -----------------------------------------------------------------------------


@router.post(
    "/sessions",
    status_code=201,
    response_model=SessionOut,
    responses=problems(
        *PARTNER_CODES,
        *BODY_CODES,
        "room_not_provisioned",
        "unknown_clinician",
        "unknown_client",
        "room_busy",
        "device_busy",
    ),
    tags=["sessions"],
)
async def start_session(body: SessionIn, service: Service) -> SessionOut:
    """Start a session in a room, for a clinician and client already PUT."""

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
        )
        if service.relay is not None:
            service.relay.commands.queue(conn, body.room, session.id, "start")
        return session_out(conn, session.id)

    answer = await service.db.run(start)
    service.worker.wake()
    return answer


@router.get(
    "/sessions/{session_id}",
    response_model=SessionOut,
    responses=problems(*PARTNER_CODES, "session_not_found"),
    tags=["sessions"],
)
async def get_session(session_id: SessionIdPath, service: Service) -> SessionOut:
    """State, Blueprint ids, error and the timeline of every step."""
    return await service.db.run(session_out, session_id, write=False)


@router.post(
    "/sessions/{session_id}/stop",
    response_model=SessionOut,
    responses=problems(*PARTNER_CODES, "session_not_found"),
    tags=["sessions"],
)
async def stop_session(session_id: SessionIdPath, service: Service) -> SessionOut:
    """Stop recording. Harmless to repeat; a session already past recording is unchanged."""

    def stop(conn: Connection) -> SessionOut:
        before = service.lifecycle.get(conn, session_id)
        stopped = service.lifecycle.stop(conn, session_id)
        if service.relay is not None and (before.state, stopped.state) == ("recording", "stopping"):
            service.relay.commands.queue(conn, stopped.room_id, session_id, "stop")
        return session_out(conn, session_id)

    answer = await service.db.run(stop)
    service.worker.wake()
    return answer


@router.get(
    "/sessions/{session_id}/artifacts",
    response_model=ArtifactsOut,
    responses=problems(*PARTNER_CODES, "session_not_found"),
    tags=["sessions"],
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
            progress_note=_artifact(found, "progress_note"),
            transcript=_artifact(found, "transcript"),
            mdm=_artifact(found, "mdm"),
        )

    return await service.db.run(read, write=False)


def _artifact(found: dict[str, artifacts.Artifact], kind: str) -> ArtifactOut | None:
    return ArtifactOut.of(found.get(kind))


def session_out(conn: Connection, session_id: str) -> SessionOut:
    session = sessions.get(conn, session_id)
    if session is None:
        raise NotFound(f"session {session_id} not found", code="session_not_found")
    answer = SessionOut.of(
        session,
        sessions.timeline(conn, session_id),
        records.get_clinician(conn, session.clinician_external_id),
        records.get_client(conn, session.client_external_id),
        jobs.for_session(conn, session_id),
    )
    received = ingest_records.received(conn, session_id)
    if received is not None:
        answer.audio = ReceivedAudioOut(
            chunks_received=received.chunks,
            speech_s=received.speech_s,
            manifest_chunks=received.manifest_chunks,
            state=received.state,
        )
    return answer


def _refuse_if_device_busy(conn: Connection, room_id: str) -> None:
    """The device itself reports recording (a session started elsewhere, e.g. with
    ``room-agent record``): a start would be refused by it, so refuse it here, now."""
    status = room_status.get(conn, room_id)
    if status is not None and status.online and status.recorder in ("recording", "closing"):
        raise Conflict(
            f"the device in room {room_id} is recording ({status.session_id})", code="device_busy"
        )
