"""A typed Python client for the gateway's partner API (``/v1``), for EHR backends.

Small and hand-kept (a test compares its models with the gateway's OpenAPI document, so
it cannot drift unnoticed); it depends on httpx and pydantic only, never on the gateway::

    from partner_client import PartnerClient

    with PartnerClient("https://gateway.example", token) as api:
        api.put_clinician("c-42", first_name="Ada", last_name="Byron")
        api.put_client("p-7", first_name="Sam", last_name="Doe", clinician_external_id="c-42")
        session = api.start_session("room-101", "c-42", "p-7", note_type="soap")
        ...
        api.stop_session(session.session_id)
        done = api.wait_for_session(session.session_id, {"notes_ready"})
        note = api.artifacts(session.session_id).progress_note

Errors are :class:`ProblemError` (the RFC 9457 problem the gateway answered: ``code``,
``status``, ``detail``). :func:`verify_callback` checks the gateway's signed callback.
"""

from partner_client.callbacks import CallbackError, verify_callback
from partner_client.client import PartnerClient, ProblemError
from partner_client.models import (
    Artifact,
    Artifacts,
    Callback,
    Problem,
    Record,
    Room,
    Session,
    SessionPage,
    SessionSummary,
    TimelineStep,
)

__all__ = [
    "Artifact",
    "Artifacts",
    "Callback",
    "CallbackError",
    "PartnerClient",
    "Problem",
    "ProblemError",
    "Record",
    "Room",
    "Session",
    "SessionPage",
    "SessionSummary",
    "TimelineStep",
    "verify_callback",
]
