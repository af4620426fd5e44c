"""``/v1/clinicians`` and ``/v1/clients``: the people sessions are for, by the partner's ids.

A PUT stores the details and ensures the record in Blueprint through a durable job: the
answer waits for it up to ``partner.ensure_wait_s`` (200 with the Blueprint id), else says
it is pending (202). A PUT is idempotent: Blueprint never gets a record twice (it is looked
up by external id first). Changed details are sent to Blueprint (PATCH of the record; an
assumed endpoint, see gateway/blueprint/paths.py) unless ``blueprint.record_updates`` is
off, in which case the answer says ``details: local_only``.

A DELETE forgets the record here (its names are erased). Blueprint keeps its record: our
contract with Blueprint has no delete. A later PUT of the same external id finds that
Blueprint record again by external id, so nothing is created twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Response

from gateway.api.deps import BODY_CODES, PARTNER_CODES, Service, require_partner
from gateway.api.errors import ApiError, problems
from gateway.api.models import ClientIn, ClinicianIn, RecordOut
from gateway.api.params import ExternalIdPath
from gateway.errors import Conflict, InvalidReference, NotFound
from gateway.service import GatewayService
from gateway.sessions import records
from gateway.sessions.records import Client, Clinician, RecordKind
from gateway.store import Connection

R = TypeVar("R")
TAG = "clinicians and clients"
ENSURE_ANSWERS: dict[int | str, dict[str, Any]] = {
    202: {"model": RecordOut, "description": "stored; Blueprint not reached yet (pending)"},
}
DELETED: dict[int | str, dict[str, Any]] = {
    204: {"description": "forgotten here; Blueprint keeps its record"}
}
# Sessions in these states are over: deleting their people cannot hurt them.
FINISHED_STATES = ("notes_ready", "failed", "cancelled")

router = APIRouter(prefix="/v1", dependencies=[Depends(require_partner)], tags=[TAG])


@router.put(
    "/clinicians/{external_id}",
    response_model=RecordOut,
    responses={**ENSURE_ANSWERS, **problems(*PARTNER_CODES, *BODY_CODES, "blueprint_refused")},
)
async def put_clinician(
    external_id: ExternalIdPath, body: ClinicianIn, service: Service, response: Response
) -> RecordOut:
    """Create or update a clinician, by your id, and ensure it in Blueprint.

    Repeat it freely: Blueprint gets the record once. Changed details are sent to Blueprint
    (``details`` says whether they are there yet, or stay local only)."""

    def put(conn: Connection) -> int | None:
        records.put_clinician(conn, external_id, body.first_name, body.last_name, body.email)
        return service.lifecycle.ensure_clinician(conn, external_id)

    job_id = await service.db.run(put)
    record = await _wait_for_ensure(service, job_id, records.get_clinician, external_id)
    return _ensure_answer(service, record, response)


@router.get(
    "/clinicians/{external_id}",
    response_model=RecordOut,
    responses=problems(*PARTNER_CODES, "clinician_not_found"),
)
async def get_clinician(external_id: ExternalIdPath, service: Service) -> RecordOut:
    """The clinician's Blueprint id and state (never the names)."""
    record = await service.db.run(records.get_clinician, external_id, write=False)
    if record is None:
        raise NotFound(f"clinician {external_id} not found", code="clinician_not_found")
    return _record_out(service, record)


@router.delete(
    "/clinicians/{external_id}",
    status_code=204,
    responses={
        **DELETED,
        **problems(
            *PARTNER_CODES, "clinician_not_found", "clinician_has_clients", "person_in_session"
        ),
    },
)
async def delete_clinician(external_id: ExternalIdPath, service: Service) -> Response:
    """Forget the clinician here: names erased, Blueprint id dropped.

    Blueprint keeps its record (there is no delete in our contract with Blueprint); a later
    PUT of the same id finds it again. Refused while the clinician has clients here
    (DELETE them first) or a session not yet finished."""

    def delete(conn: Connection) -> None:
        if records.get_clinician(conn, external_id) is None:
            raise NotFound(f"clinician {external_id} not found", code="clinician_not_found")
        clients = records.clients_of(conn, external_id)
        if clients:
            raise Conflict(
                f"clinician {external_id} has {len(clients)} client(s); delete them first",
                code="clinician_has_clients",
            )
        _refuse_if_in_session(conn, "clinician", external_id)
        records.delete(conn, "clinician", external_id)

    await service.db.run(delete)
    return Response(status_code=204)


@router.put(
    "/clients/{external_id}",
    response_model=RecordOut,
    responses={
        **ENSURE_ANSWERS,
        **problems(*PARTNER_CODES, *BODY_CODES, "unknown_clinician", "blueprint_refused"),
    },
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
    return _ensure_answer(service, record, response)


@router.get(
    "/clients/{external_id}",
    response_model=RecordOut,
    responses=problems(*PARTNER_CODES, "client_not_found"),
)
async def get_client(external_id: ExternalIdPath, service: Service) -> RecordOut:
    """The client's Blueprint id and state (never the names)."""
    record = await service.db.run(records.get_client, external_id, write=False)
    if record is None:
        raise NotFound(f"client {external_id} not found", code="client_not_found")
    return _record_out(service, record)


@router.delete(
    "/clients/{external_id}",
    status_code=204,
    responses={**DELETED, **problems(*PARTNER_CODES, "client_not_found", "person_in_session")},
)
async def delete_client(external_id: ExternalIdPath, service: Service) -> Response:
    """Forget the client here: names erased, Blueprint id dropped.

    Blueprint keeps its record (there is no delete in our contract with Blueprint); a later
    PUT of the same id finds it again. Refused while a session of the client is not
    finished (notes ready, failed or cancelled)."""

    def delete(conn: Connection) -> None:
        if records.get_client(conn, external_id) is None:
            raise NotFound(f"client {external_id} not found", code="client_not_found")
        _refuse_if_in_session(conn, "client", external_id)
        records.delete(conn, "client", external_id)

    await service.db.run(delete)
    return Response(status_code=204)


def _refuse_if_in_session(conn: Connection, kind: RecordKind, external_id: str) -> None:
    placeholders = ", ".join("?" for _ in FINISHED_STATES)
    row = conn.execute(
        f"SELECT id, state FROM sessions WHERE {kind}_external_id = ?"
        f" AND state NOT IN ({placeholders}) ORDER BY created_at LIMIT 1",
        (external_id, *FINISHED_STATES),
    ).fetchone()
    if row is not None:
        raise Conflict(
            f"{kind} {external_id} is in session {row['id']} ({row['state']});"
            " stop or cancel it first",
            code="person_in_session",
        )


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


def _record_out(service: GatewayService, record: Clinician | Client) -> RecordOut:
    blueprint = service.settings.blueprint
    return RecordOut.of(record, blueprint.environment, blueprint.record_updates)


def _ensure_answer(
    service: GatewayService, record: Clinician | Client | None, response: Response
) -> RecordOut:
    assert record is not None
    answer = _record_out(service, record)
    if answer.state == "failed":
        raise ApiError("blueprint_refused", answer.error or "Blueprint refused the record")
    if answer.state == "pending":
        response.status_code = 202
    return answer
