"""The partner API's answers, as the client reads them (fields as in the OpenAPI document).

Unknown fields are ignored, so a newer gateway adding a field does not break an older
client; tests/partner_client checks these fields against the gateway's spec.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Problem(_Answer):
    """RFC 9457 problem details; switch on ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class Record(_Answer):
    """A clinician or client: ids and state only (names are never returned)."""

    external_id: str
    blueprint_id: str | None
    state: Literal["ensured", "pending", "failed"]
    details: Literal["in_blueprint", "update_pending", "local_only"]
    error: str | None = None


class BlueprintIds(_Answer):
    session_id: str | None
    clinician_id: str | None
    client_id: str | None


class TimelineStep(_Answer):
    at: datetime
    step: str
    detail: str | None = None


class PendingJob(_Answer):
    job_id: int
    kind: str
    state: str
    attempts: int
    max_attempts: int
    next_run_at: datetime
    last_error: str | None


class PausedInterval(_Answer):
    """A stretch the room's microphone was closed to the session (times only)."""

    offset_s: float
    started_at: datetime
    ended_at: datetime


class ReceivedAudio(_Answer):
    chunks_received: int
    speech_s: float
    manifest_chunks: int | None
    state: str
    paused: list[PausedInterval] = []


class Session(_Answer):
    session_id: str
    room: str
    state: str
    clinician_external_id: str
    client_external_id: str
    session_setting: str
    note_type: str | None
    blueprint: BlueprintIds
    error: str | None
    created_at: datetime
    updated_at: datetime
    timeline: list[TimelineStep]
    pending: list[PendingJob]
    audio: ReceivedAudio | None = None

    def steps(self) -> list[str]:
        return [entry.step for entry in self.timeline]


class SessionSummary(_Answer):
    session_id: str
    room: str
    state: str
    clinician_external_id: str
    client_external_id: str
    blueprint_session_id: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime


class SessionPage(_Answer):
    items: list[SessionSummary]
    next_cursor: str | None


class Artifact(_Answer):
    event_type: str
    fetched_at: datetime
    body: dict[str, Any]


class Artifacts(_Answer):
    session_id: str
    state: str
    progress_note: Artifact | None
    transcript: Artifact | None
    mdm: Artifact | None


class Room(_Answer):
    room: str
    name: str | None = None
    active_session_id: str | None
    device: str
    online: bool | None
    recorder: str | None
    device_session_id: str | None
    backlog_chunks: int | None
    backlog_bytes: int | None
    reason: str | None
    microphone: str | None = None
    microphone_device: str | None = None
    last_seen_at: datetime | None
    last_heartbeat_at: datetime | None = None
    paused: bool | None = None
    do_not_record: bool | None = None


class Callback(_Answer):
    """The body of the gateway's signed callback to ``partner.callback_url``."""

    event: Literal["notes_ready", "note_updated", "session_failed"]
    session_id: str
