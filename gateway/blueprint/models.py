"""The bodies that cross the Blueprint boundary, in both directions.

Blueprint speaks camelCase JSON; Python code uses snake_case attributes and the wire
names come from aliases. Models that read Blueprint's answers ignore unknown fields
(the real API may send more than we know of); the client parses only what it needs
(``RecordRef``), so a richer real response never breaks it. The simulator serves the
full models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, field_serializer
from pydantic.alias_generators import to_camel

SessionSetting = Literal["in-person", "telehealth"]


class BlueprintModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ErrorBody(BlueprintModel):
    """Blueprint's only documented error shape (its API gateway's 403)."""

    message: str


# --- authentication ---------------------------------------------------------------------


class AuthenticateRequest(BlueprintModel):
    client_id: str
    client_secret: SecretStr

    @field_serializer("client_secret", when_used="json")
    def _reveal_on_the_wire(self, value: SecretStr) -> str:
        """Only the JSON request body carries the secret; repr and logs keep it masked."""
        return value.get_secret_value()


class AccessToken(BlueprintModel):
    access_token: SecretStr
    expires_in: int | float = Field(gt=0, description="seconds the token stays valid")

    @field_serializer("access_token", when_used="json")
    def _reveal_on_the_wire(self, value: SecretStr) -> str:
        return value.get_secret_value()


class Partner(BlueprintModel):
    id: str
    callback_url: str | None = None


class PartnerUpdate(BlueprintModel):
    callback_url: AnyHttpUrl


# --- records ----------------------------------------------------------------------------


class RecordRef(BlueprintModel):
    """What the client needs from a created or found record: its Blueprint id, and the
    external id it was looked up by when the API echoes it (to double-check the match)."""

    id: str
    external_id: str | None = None
    session_external_id: str | None = None


class RecordPage(BlueprintModel):
    items: list[RecordRef]


class ClinicianCreate(BlueprintModel):
    external_id: str = Field(min_length=1, max_length=200)
    first_name: str = Field(min_length=1, max_length=200)
    last_name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=320)


class ClinicianUpdate(BlueprintModel):
    first_name: str = Field(min_length=1, max_length=200)
    last_name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=320)


class ClinicianRecord(ClinicianCreate):
    id: str


class ClinicianPage(BlueprintModel):
    items: list[ClinicianRecord]


class ClientCreate(BlueprintModel):
    external_id: str = Field(min_length=1, max_length=200)
    first_name: str = Field(min_length=1, max_length=200)
    last_name: str = Field(min_length=1, max_length=200)
    clinician_id: str = Field(min_length=1)


class ClientUpdate(BlueprintModel):
    first_name: str = Field(min_length=1, max_length=200)
    last_name: str = Field(min_length=1, max_length=200)
    clinician_id: str = Field(min_length=1)


class ClientRecord(ClientCreate):
    id: str


class ClientPage(BlueprintModel):
    items: list[ClientRecord]


class NoteOptions(BlueprintModel):
    """Options seen in Blueprint's widget; unknown keys pass through to Blueprint."""

    model_config = ConfigDict(extra="allow")

    note_group: Literal["therapists", "prescribers"] | None = None
    session_type: Literal["individual", "couple", "group"] | None = None
    note_type: str | None = None
    treatment_approaches: list[str] | None = None


class SessionCreate(BlueprintModel):
    clinician_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    session_external_id: str = Field(min_length=1, max_length=200)
    session_setting: SessionSetting = "in-person"
    note_options: NoteOptions | None = None


class SessionRecord(SessionCreate):
    id: str
    status: str


class SessionPage(BlueprintModel):
    items: list[SessionRecord]


# --- webhooks ---------------------------------------------------------------------------

PROGRESS_NOTE_GENERATED = "progress_note_generated"
PROGRESS_NOTE_REGENERATED = "progress_note_regenerated"
PROGRESS_NOTE_FINALIZED = "progress_note_finalized"
TRANSCRIPT_READY = "transcript_ready"
SESSION_TRANSCRIPT_ERROR = "session_transcript_error"
MDM_ELEMENTS_IDENTIFIED = "mdm_elements_identified"
ASSESSMENT_COMPLETED = "assessment_completed"


class WebhookEvent(BlueprintModel):
    """The envelope of every webhook; ``event_type`` stays a plain string because a
    receiver must accept (2xx) event types it does not know yet."""

    event_type: str
    payload: dict[str, Any]


class ProgressNotePayload(BlueprintModel):
    """Payload of progress_note_generated / _regenerated / _finalized."""

    progress_note_id: str
    session_id: str
    session_external_id: str | None = None
    client_id: str
    clinician_id: str
    clinic_id: str
    organization_id: str
    progress_note_url: str


class TranscriptReadyPayload(BlueprintModel):
    session_id: str
    transcript_url: str


class TranscriptErrorPayload(BlueprintModel):
    session_id: str
    error: str


# --- artifacts --------------------------------------------------------------------------


class NoteSection(BlueprintModel):
    key: str
    title: str
    content: str


class ProgressNote(BlueprintModel):
    id: str
    session_id: str
    note: list[NoteSection]
    template: str
    preferences: dict[str, Any] = Field(default_factory=dict)


class TranscriptItem(BlueprintModel):
    speaker: str
    start_time: float
    end_time: float
    text: str


class Transcript(BlueprintModel):
    transcript_items: list[dict[str, Any]]
