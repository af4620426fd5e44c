"""What the Blueprint simulator remembers: records, tokens, faults, and what happened.

Plain in-memory state, mutated only from the simulator's event loop (no awaits between a
check and its update), so "look up, then insert" is atomic and a duplicate external id
reliably gets a 409 even under concurrent requests. Everything a test wants to assert on
is exposed through ``view()``.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from gateway.blueprint.models import (
    ClientCreate,
    ClientRecord,
    ClientUpdate,
    ClinicianCreate,
    ClinicianRecord,
    ClinicianUpdate,
    ProgressNote,
    SessionCreate,
    SessionRecord,
    Transcript,
)

SessionStatus = Literal["created", "receiving", "processing", "transcribed", "completed", "failed"]
WebhookOutcome = Literal["pending", "delivered", "dropped", "abandoned"]


class Faults(BaseModel):
    """Misbehaviour on demand; counters count down as calls consume them."""

    model_config = {"extra": "forbid"}

    fail_next: int = Field(default=0, ge=0, description="answer the next N calls with fail_status")
    fail_status: int = Field(default=500, ge=400, le=599)
    throttle_next: int = Field(default=0, ge=0, description="answer the next N calls with 429")
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After sent with each 429")
    latency_ms: int = Field(default=0, ge=0, description="delay before answering any call")
    duplicate_webhooks: bool = False
    out_of_order_webhooks: bool = False
    transcript_error_next: int = Field(
        default=0, ge=0, description="the next N uploaded sessions end in session_transcript_error"
    )


class Timings(BaseModel):
    token_lifetime_s: float = Field(default=3600.0, gt=0)
    processing_delay_s: float = Field(default=0.5, ge=0)
    webhook_retry_interval_s: float = Field(default=1.0, ge=0)
    webhook_max_attempts: int = Field(default=20, ge=1)


class FaultUpdate(BaseModel):
    """Body of POST /_sim/faults: only the fields given change."""

    model_config = {"extra": "forbid"}

    fail_next: int | None = Field(default=None, ge=0)
    fail_status: int | None = Field(default=None, ge=400, le=599)
    throttle_next: int | None = Field(default=None, ge=0)
    retry_after_s: int | None = Field(default=None, ge=0)
    latency_ms: int | None = Field(default=None, ge=0)
    duplicate_webhooks: bool | None = None
    out_of_order_webhooks: bool | None = None
    transcript_error_next: int | None = Field(default=None, ge=0)
    expire_tokens: bool = Field(default=False, description="make every issued token invalid now")
    token_lifetime_s: float | None = Field(default=None, gt=0)
    processing_delay_s: float | None = Field(default=None, ge=0)
    webhook_retry_interval_s: float | None = Field(default=None, ge=0)
    webhook_max_attempts: int | None = Field(default=None, ge=1)


class SessionView(BaseModel):
    id: str
    session_external_id: str
    status: SessionStatus
    codec: str | None
    audio_bytes: int | None
    audio_duration_s: float | None
    progress_note_id: str | None


class WebhookView(BaseModel):
    event_type: str
    session_id: str
    attempts: int
    outcome: WebhookOutcome
    last_status: int | None = Field(description="HTTP status of the last attempt; 0: no answer")


class StateView(BaseModel):
    """GET /_sim/state."""

    clinicians: int
    clients: int
    sessions: int
    audio_uploads: int
    tokens_issued: int
    calls: dict[str, dict[str, int]] = Field(description='"METHOD /path/template" -> status -> n')
    webhook_deliveries: int = Field(description="webhooks answered with 2xx")
    webhook_attempts: int
    webhooks: list[WebhookView] = Field(description="in the order they were first sent")
    session_details: dict[str, SessionView]
    callback_url: str | None
    faults: Faults
    timings: Timings


@dataclass
class SimSession:
    record: SessionRecord
    codec: str | None = None
    audio_bytes: int | None = None
    audio_duration_s: float | None = None
    progress_note: ProgressNote | None = None
    transcript: Transcript | None = None


@dataclass
class WebhookDelivery:
    event_type: str
    session_id: str
    attempts: int = 0
    outcome: WebhookOutcome = "pending"
    last_status: int | None = None


@dataclass
class SimulatorState:
    faults: Faults
    timings: Timings
    callback_url: str | None
    clinicians: dict[str, ClinicianRecord] = field(default_factory=dict)
    clients: dict[str, ClientRecord] = field(default_factory=dict)
    sessions: dict[str, SimSession] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)
    tokens_issued: int = 0
    audio_uploads: int = 0
    calls: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    webhooks: list[WebhookDelivery] = field(default_factory=list)

    # --- tokens ---------------------------------------------------------------------------

    def issue_token(self) -> str:
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.monotonic() + self.timings.token_lifetime_s
        self.tokens_issued += 1
        return token

    def token_valid(self, token: str | None) -> bool:
        expires_at = self.tokens.get(token or "")
        return expires_at is not None and time.monotonic() < expires_at

    def expire_tokens(self) -> None:
        self.tokens.clear()

    # --- records --------------------------------------------------------------------------

    def find_clinicians(self, external_id: str | None) -> list[ClinicianRecord]:
        return [c for c in self.clinicians.values() if external_id in (None, c.external_id)]

    def create_clinician(self, body: ClinicianCreate) -> ClinicianRecord | None:
        """None when the external id is taken (the API answers 409)."""
        if self.find_clinicians(body.external_id):
            return None
        record = ClinicianRecord(id=_new_id(), **body.model_dump())
        self.clinicians[record.id] = record
        return record

    def update_clinician(self, clinician_id: str, body: ClinicianUpdate) -> ClinicianRecord | None:
        record = self.clinicians.get(clinician_id)
        if record is None:
            return None
        updated = record.model_copy(update=body.model_dump())
        self.clinicians[clinician_id] = updated
        return updated

    def update_client(self, client_id: str, body: ClientUpdate) -> ClientRecord | None:
        record = self.clients.get(client_id)
        if record is None:
            return None
        updated = record.model_copy(update=body.model_dump())
        self.clients[client_id] = updated
        return updated

    def find_clients(self, external_id: str | None) -> list[ClientRecord]:
        return [c for c in self.clients.values() if external_id in (None, c.external_id)]

    def create_client(self, body: ClientCreate) -> ClientRecord | None:
        if self.find_clients(body.external_id):
            return None
        record = ClientRecord(id=_new_id(), **body.model_dump())
        self.clients[record.id] = record
        return record

    def find_sessions(self, session_external_id: str | None) -> list[SessionRecord]:
        return [
            s.record
            for s in self.sessions.values()
            if session_external_id in (None, s.record.session_external_id)
        ]

    def create_session(self, body: SessionCreate) -> SessionRecord | None:
        if self.find_sessions(body.session_external_id):
            return None
        record = SessionRecord(id=_new_id(), status="created", **body.model_dump())
        self.sessions[record.id] = SimSession(record)
        return record

    def set_status(self, session_id: str, status: SessionStatus) -> None:
        self.sessions[session_id].record.status = status

    # --- faults ---------------------------------------------------------------------------

    def apply(self, update: FaultUpdate) -> None:
        given = update.model_dump(exclude_unset=True, exclude={"expire_tokens"})
        for name, value in given.items():
            target = self.faults if name in Faults.model_fields else self.timings
            setattr(target, name, value)
        if update.expire_tokens:
            self.expire_tokens()

    def take_injected_status(self) -> int | None:
        """The status a fault wants for this call, if any, consuming one count."""
        if self.faults.fail_next > 0:
            self.faults.fail_next -= 1
            return self.faults.fail_status
        if self.faults.throttle_next > 0:
            self.faults.throttle_next -= 1
            return 429
        return None

    def take_transcript_error(self) -> bool:
        if self.faults.transcript_error_next > 0:
            self.faults.transcript_error_next -= 1
            return True
        return False

    # --- observation ----------------------------------------------------------------------

    def count_call(self, route: str, status: int) -> None:
        self.calls[route][status] += 1

    def view(self) -> StateView:
        return StateView(
            clinicians=len(self.clinicians),
            clients=len(self.clients),
            sessions=len(self.sessions),
            audio_uploads=self.audio_uploads,
            tokens_issued=self.tokens_issued,
            calls={
                route: {str(status): n for status, n in sorted(counts.items())}
                for route, counts in self.calls.items()
            },
            webhook_deliveries=sum(1 for w in self.webhooks if w.outcome == "delivered"),
            webhook_attempts=sum(w.attempts for w in self.webhooks),
            webhooks=[WebhookView(**vars(w)) for w in self.webhooks],
            session_details={sid: _session_view(s) for sid, s in self.sessions.items()},
            callback_url=self.callback_url,
            faults=self.faults.model_copy(),
            timings=self.timings.model_copy(),
        )


def _session_view(session: SimSession) -> SessionView:
    return SessionView(
        id=session.record.id,
        session_external_id=session.record.session_external_id,
        status=session.record.status,
        codec=session.codec,
        audio_bytes=session.audio_bytes,
        audio_duration_s=session.audio_duration_s,
        progress_note_id=session.progress_note.id if session.progress_note else None,
    )


def _new_id() -> str:
    return str(uuid.uuid4())
