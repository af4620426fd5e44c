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
    first_name: PersonName
    last_name: PersonName
    email: Email | None = None


class ClientIn(_Request):
    first_name: PersonName
    last_name: PersonName
    clinician_external_id: ExternalId


class SessionIn(_Request):
    room: RoomId
    clinician_external_id: ExternalId
    client_external_id: ExternalId
    note_type: NoteType | None = None
    session_setting: Literal["in-person", "telehealth"] = "in-person"


class RecordOut(BaseModel):
    """A clinician or client as the gateway holds it (ids and state only)."""

    external_id: str
    blueprint_id: str | None = Field(description="Blueprint's id once the record is ensured")
    state: RecordState = Field(
        description="ensured: exists in Blueprint; pending: queued, Blueprint not reached yet;"
        " failed: Blueprint refused it (see error; PUT again to retry)"
    )
    error: str | None = None

    @classmethod
    def of(cls, record: Clinician | Client) -> RecordOut:
        if record.blueprint_id is not None:
            state: RecordState = "ensured"
        else:
            state = "failed" if record.error else "pending"
        return cls(
            external_id=record.external_id,
            blueprint_id=record.blueprint_id,
            state=state,
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
            state=job.state,  # type: ignore[arg-type]
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


class SessionOut(BaseModel):
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
                session_id=session.blueprint_session_id,
                clinician_id=clinician.blueprint_id if clinician else None,
                client_id=client.blueprint_id if client else None,
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
    session_id: str
    state: SessionState
    progress_note: ArtifactOut | None
    transcript: ArtifactOut | None
    mdm: ArtifactOut | None


class RoomOut(BaseModel):
    """A room, its session and its device as the device last reported (via MQTT)."""

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
    status: str = Field(description="queued, session_failed, duplicate, ignored, unknown_session")


def timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
