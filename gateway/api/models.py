"""The partner API's request and response bodies.

Requests forbid unknown fields, so a typo ("frist_name") is a 422 naming the field rather
than a silently missing value. Names and emails are accepted here and stored, but never
returned: responses carry ids, states and times (and, for artifacts, Blueprint's notes).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from gateway.jobs.queue import Job
from gateway.sessions.artifacts import Artifact
from gateway.sessions.records import Client, Clinician
from gateway.sessions.states import Session, SessionState, TimelineEntry
from protocol.ids import ID_DESCRIPTION, ID_PATTERN
from protocol.manifest import PausedInterval

EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
EXTERNAL_ID_DESCRIPTION = "the partner's id: 1-128 letters, digits, '.', '_', ':' or '-'"

ExternalId = Annotated[str, Field(pattern=EXTERNAL_ID_PATTERN, description=EXTERNAL_ID_DESCRIPTION)]
RoomId = Annotated[str, Field(pattern=ID_PATTERN, description=ID_DESCRIPTION)]
SessionId = Annotated[str, Field(pattern=ID_PATTERN, description=ID_DESCRIPTION)]
PersonName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]
NoteType = Annotated[
    str,
    Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Blueprint note type, e.g. soap, dap"),
]
RecordState = Literal["ensured", "pending", "failed"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClinicianIn(_Request):
    """A clinician's details (stored by the gateway, sent only to Blueprint, never returned)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"first_name": "Ada", "last_name": "Example", "email": "ada@clinic.example"}
            ]
        },
    )

    first_name: PersonName
    last_name: PersonName
    email: Email | None = None


class ClientIn(_Request):
    """A client's details and their clinician (PUT that clinician first)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"first_name": "Sam", "last_name": "Sample", "clinician_external_id": "clin-1042"}
            ]
        },
    )

    first_name: PersonName
    last_name: PersonName
    clinician_external_id: ExternalId


class SessionIn(_Request):
    """Start recording in a room, for a clinician and a client already PUT."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "room": "room-1",
                    "clinician_external_id": "clin-1042",
                    "client_external_id": "client-77",
                    "note_type": "soap",
                    "session_setting": "in-person",
                }
            ]
        },
    )

    room: RoomId
    clinician_external_id: ExternalId
    client_external_id: ExternalId
    note_type: NoteType | None = None
    session_setting: Literal["in-person", "telehealth"] = "in-person"


RecordDetails = Literal["in_blueprint", "update_pending", "local_only"]


class RecordOut(BaseModel):
    """A clinician or client as the gateway holds it (ids and state only)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "external_id": "clin-1042",
                    "blueprint_id": "0b7e5c1e-3f1a-4c7e-9a55-5b1d6c2f8e10",
                    "state": "ensured",
                    "details": "in_blueprint",
                    "error": None,
                }
            ]
        }
    )

    external_id: str
    blueprint_id: str | None = Field(description="Blueprint's id once the record is ensured")
    state: RecordState = Field(
        description="ensured: exists in Blueprint; pending: queued, Blueprint not reached yet"
        " (or changed details not sent yet); failed: Blueprint refused it (see error; PUT"
        " again to retry)"
    )
    details: RecordDetails = Field(
        description="in_blueprint: Blueprint has the details last PUT; update_pending: they"
        " changed and are being sent; local_only: they changed and stay local"
        " (blueprint.record_updates is off)"
    )
    error: str | None = None

    @classmethod
    def of(
        cls, record: Clinician | Client, environment: str, record_updates: bool = True
    ) -> RecordOut:
        blueprint_id = record.blueprint_id_in(environment)
        details: RecordDetails = "in_blueprint"
        if record.needs_update:
            details = "update_pending" if record_updates else "local_only"
        if blueprint_id is not None and details != "update_pending":
            state: RecordState = "ensured"
        else:
            state = "failed" if record.error else "pending"
        return cls(
            external_id=record.external_id,
            blueprint_id=blueprint_id,
            state=state,
            details=details,
            error=record.error,
        )


class BlueprintIds(BaseModel):
    session_id: str | None
    clinician_id: str | None
    client_id: str | None


class TimelineStep(BaseModel):
    at: datetime
    step: str
    detail: str | None = None


class PendingJob(BaseModel):
    """Work still to do for the session: why it is waiting, and until when."""

    job_id: int
    kind: str
    state: Literal["queued", "running", "failed"]
    attempts: int
    max_attempts: int
    next_run_at: datetime
    last_error: str | None

    @classmethod
    def of(cls, job: Job) -> PendingJob:
        return cls(
            job_id=job.id,
            kind=job.kind,
            state=job.state,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            next_run_at=timestamp(job.next_run_at),
            last_error=job.last_error,
        )


class ReceivedAudioOut(BaseModel):
    """The session's audio as the gateway received it from the room device so far."""

    chunks_received: int
    speech_s: float = Field(description="audio seconds received (speech only: VAD-trimmed)")
    manifest_chunks: int | None = Field(description="chunks the device's manifest lists")
    state: Literal["receiving", "waiting_for_chunks", "assembling", "assembled", "failed"]
    paused: list[PausedInterval] = Field(
        default_factory=list,
        description="the stretches the room's microphone was closed to the session, from"
        " its manifest (offset in the audio, and the device's start and end times)",
    )


class SessionOut(BaseModel):
    """A session: its state, Blueprint ids, error, timeline, pending work and audio."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "session_id": "ses_0123456789abcdef0123",
                    "room": "room-1",
                    "state": "processing",
                    "clinician_external_id": "clin-1042",
                    "client_external_id": "client-77",
                    "session_setting": "in-person",
                    "note_type": "soap",
                    "blueprint": {
                        "session_id": "5d7c2a9e-1b3f-4e6a-8c0d-2f4b6a8c0e1d",
                        "clinician_id": "0b7e5c1e-3f1a-4c7e-9a55-5b1d6c2f8e10",
                        "client_id": "9a1c3e5f-7b9d-4f1a-8c3e-5a7b9c1d3e5f",
                    },
                    "error": None,
                    "created_at": "2026-03-02T14:00:00Z",
                    "updated_at": "2026-03-02T14:51:02Z",
                    "timeline": [
                        {"at": "2026-03-02T14:00:00Z", "step": "created", "detail": None},
                        {"at": "2026-03-02T14:50:40Z", "step": "stopped", "detail": None},
                        {"at": "2026-03-02T14:51:02Z", "step": "audio_uploaded", "detail": None},
                    ],
                    "pending": [],
                    "audio": {
                        "chunks_received": 212,
                        "speech_s": 2315.4,
                        "manifest_chunks": 212,
                        "state": "assembled",
                    },
                }
            ]
        }
    )

    session_id: str
    room: str
    state: SessionState
    clinician_external_id: str
    client_external_id: str
    session_setting: str
    note_type: str | None
    blueprint: BlueprintIds
    error: str | None = Field(description="why the session failed, when it did")
    created_at: datetime
    updated_at: datetime
    timeline: list[TimelineStep]
    pending: list[PendingJob] = Field(
        description="jobs of this session not done yet, e.g. an upload waiting to retry"
    )
    audio: ReceivedAudioOut | None = Field(
        default=None, description="chunks received from the room device (null: none yet)"
    )

    @classmethod
    def of(
        cls,
        session: Session,
        timeline: list[TimelineEntry],
        clinician: Clinician | None,
        client: Client | None,
        jobs: list[Job],
        environment: str,
    ) -> SessionOut:
        return cls(
            session_id=session.id,
            room=session.room_id,
            state=session.state,
            clinician_external_id=session.clinician_external_id,
            client_external_id=session.client_external_id,
            session_setting=session.session_setting,
            note_type=session.note_type,
            blueprint=BlueprintIds(
                session_id=session.blueprint_session_id_in(environment),
                clinician_id=clinician.blueprint_id_in(environment) if clinician else None,
                client_id=client.blueprint_id_in(environment) if client else None,
            ),
            error=session.error,
            created_at=timestamp(session.created_at),
            updated_at=timestamp(session.updated_at),
            timeline=[
                TimelineStep(at=timestamp(entry.at), step=entry.step, detail=entry.detail)
                for entry in timeline
            ],
            pending=[PendingJob.of(job) for job in jobs if job.state != "done"],
        )


class SessionSummary(BaseModel):
    """A session in a listing (GET /v1/sessions/{id} has its timeline and pending work)."""

    session_id: str
    room: str
    state: SessionState
    clinician_external_id: str
    client_external_id: str
    blueprint_session_id: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, session: Session, environment: str) -> SessionSummary:
        return cls(
            session_id=session.id,
            room=session.room_id,
            state=session.state,
            clinician_external_id=session.clinician_external_id,
            client_external_id=session.client_external_id,
            blueprint_session_id=session.blueprint_session_id_in(environment),
            error=session.error,
            created_at=timestamp(session.created_at),
            updated_at=timestamp(session.updated_at),
        )


class SessionPage(BaseModel):
    """One page of sessions, newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "session_id": "ses_0123456789abcdef0123",
                            "room": "room-1",
                            "state": "notes_ready",
                            "clinician_external_id": "clin-1042",
                            "client_external_id": "client-77",
                            "blueprint_session_id": "5d7c2a9e-1b3f-4e6a-8c0d-2f4b6a8c0e1d",
                            "error": None,
                            "created_at": "2026-03-02T14:00:00Z",
                            "updated_at": "2026-03-02T14:52:10Z",
                        }
                    ],
                    "next_cursor": None,
                }
            ]
        }
    )

    items: list[SessionSummary]
    next_cursor: str | None = Field(description="null on the last page")


class PartnerCallback(BaseModel):
    """The body of the gateway's callback to the partner (``partner.callback_url``).

    Signed the Standard Webhooks way: headers ``webhook-id`` (stable across retries: use it
    to de-duplicate), ``webhook-timestamp`` (unix seconds of this attempt) and
    ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``
    keyed with ``partner.callback_secret``). Answer 2xx; anything else is retried with
    backoff, 410 stops the retries. Then GET the session or its artifacts."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"event": "notes_ready", "session_id": "ses_0123456789abcdef0123"}]
        }
    )

    event: Literal["notes_ready", "note_updated", "session_failed"]
    session_id: str


class ArtifactOut(BaseModel):
    event_type: str = Field(description="the Blueprint webhook that announced this version")
    fetched_at: datetime
    body: dict[str, Any] = Field(description="Blueprint's JSON, as fetched")

    @classmethod
    def of(cls, artifact: Artifact | None) -> ArtifactOut | None:
        if artifact is None:
            return None
        return cls(
            event_type=artifact.event_type,
            fetched_at=timestamp(artifact.fetched_at),
            body=artifact.body,
        )


class ArtifactsOut(BaseModel):
    """A session's notes as fetched from Blueprint (null until they are)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "session_id": "ses_0123456789abcdef0123",
                    "state": "notes_ready",
                    "progress_note": {
                        "event_type": "progress_note_generated",
                        "fetched_at": "2026-03-02T14:53:10Z",
                        "body": {"id": "pn_1", "note": [{"key": "s", "title": "Subjective"}]},
                    },
                    "transcript": None,
                    "mdm": None,
                }
            ]
        }
    )

    session_id: str
    state: SessionState
    progress_note: ArtifactOut | None
    transcript: ArtifactOut | None
    mdm: ArtifactOut | None


class RoomOut(BaseModel):
    """A room, its session and its device as the device last reported (via MQTT)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "room": "room-1",
                    "name": "Therapy room 1",
                    "active_session_id": None,
                    "device": "active",
                    "online": True,
                    "recorder": "idle",
                    "device_session_id": None,
                    "backlog_chunks": 0,
                    "backlog_bytes": 0,
                    "reason": None,
                    "last_seen_at": "2026-03-02T14:00:05Z",
                }
            ]
        }
    )

    room: str
    name: str | None = None
    active_session_id: str | None = Field(description="the partner session recording here")
    device: Literal["active", "revoked", "no-credentials"] = Field(
        description="the room device's credentials (room-gateway device add|revoke)"
    )
    online: bool | None = Field(description="null: never heard from the device")
    recorder: str | None = Field(description="idle, recording, closing or closed")
    device_session_id: str | None = Field(description="the session the device reports")
    backlog_chunks: int | None = Field(description="chunks the device has not delivered")
    backlog_bytes: int | None
    reason: str | None = Field(description="the device's problem code, e.g. spool_full")
    microphone: Literal["ok", "missing", "unavailable"] | None = Field(
        default=None, description="the configured input device: there, missing, not opening"
    )
    microphone_device: str | None = Field(
        default=None, description="audio.device as the room device has it configured"
    )
    last_seen_at: datetime | None
    last_heartbeat_at: datetime | None = None
    paused: bool | None = Field(
        default=None, description="the session is open with the room's microphone closed"
    )
    do_not_record: bool | None = Field(
        default=None,
        description="the room's 'do not record' switch is on: starts are refused until released",
    )


class WebhookAck(BaseModel):
    status: str = Field(
        description="queued, session_failed, duplicate, ignored, unknown_session, refused"
    )


def timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
