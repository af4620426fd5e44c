"""What the simulated Blueprint does after an upload: inspect the audio, "process" it,
write artifacts, and deliver signed webhooks with Blueprint's retry rules.

Artifacts are generated from session facts (duration, codec, note options) and never
from names, so simulator output can be logged and asserted on without handling PHI.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import soundfile

from devtools.simulator.state import SimSession, SimulatorState, WebhookDelivery
from gateway.blueprint import paths, signature
from gateway.blueprint.models import (
    PROGRESS_NOTE_GENERATED,
    SESSION_TRANSCRIPT_ERROR,
    TRANSCRIPT_READY,
    NoteSection,
    ProgressNote,
    ProgressNotePayload,
    Transcript,
    TranscriptErrorPayload,
    TranscriptItem,
    TranscriptReadyPayload,
    WebhookEvent,
)

logger = logging.getLogger(__name__)

# Content-Type -> the libsndfile container the body must decode as.
AUDIO_CONTAINERS = {"audio/flac": "FLAC", "audio/x-flac": "FLAC", "audio/ogg": "OGG"}
NOTE_SECTIONS = {
    "soap": ("Subjective", "Objective", "Assessment", "Plan"),
    "dap": ("Data", "Assessment", "Plan"),
    "birp": ("Behavior", "Intervention", "Response", "Plan"),
}
TRANSCRIPT_ITEM_S = 5.0
WEBHOOK_TIMEOUT_S = 5.0


class AudioRejected(Exception):
    """The upload is not audio the simulated Blueprint accepts; ``status`` is the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AudioFacts:
    codec: str
    duration_s: float


def inspect_audio(path: Path, content_type: str) -> AudioFacts:
    """Decode the whole file (as transcription would) to measure its real duration."""
    expected = AUDIO_CONTAINERS[content_type]
    try:
        info = soundfile.info(str(path))
        frames = sum(len(block) for block in soundfile.blocks(str(path), blocksize=65536))
    except (soundfile.LibsndfileError, RuntimeError):
        raise AudioRejected(422, f"body is not decodable {content_type}") from None
    if info.format != expected:
        raise AudioRejected(422, f"body is {info.format}, not {content_type}")
    if frames == 0:
        raise AudioRejected(422, "audio holds no samples")
    codec = "flac" if info.format == "FLAC" else info.subtype.lower()
    return AudioFacts(codec=codec, duration_s=frames / info.samplerate)


def build_transcript(session: SimSession) -> Transcript:
    duration = session.audio_duration_s or 0.0
    count = max(1, math.ceil(duration / TRANSCRIPT_ITEM_S))
    items = [
        TranscriptItem(
            speaker="clinician" if n % 2 == 0 else "client",
            start_time=round(n * TRANSCRIPT_ITEM_S, 3),
            end_time=round(min(duration, (n + 1) * TRANSCRIPT_ITEM_S), 3),
            text=f"Simulated utterance {n + 1} of {count}.",
        ).model_dump(by_alias=True)
        for n in range(count)
    ]
    return Transcript(transcript_items=items)


def build_progress_note(session: SimSession) -> ProgressNote:
    options = session.record.note_options
    note_type = (options.note_type if options else None) or "soap"
    session_type = (options.session_type if options else None) or "individual"
    titles = NOTE_SECTIONS.get(note_type.lower(), NOTE_SECTIONS["soap"])
    facts = (
        f"{session.audio_duration_s or 0:.1f} s of {session.codec} audio, "
        f"{session.record.session_setting} {session_type} session"
    )
    sections = [
        NoteSection(key=title.lower(), title=title, content=f"Simulated {title.lower()}: {facts}.")
        for title in titles
    ]
    return ProgressNote(
        id=str(uuid.uuid4()),
        session_id=session.record.id,
        note=sections,
        template=note_type,
        preferences={"simulated": True},
    )


@dataclass(frozen=True)
class Organization:
    """The fixed ids the simulated partner account lives under."""

    clinic_id: str
    organization_id: str


class SessionProcessor:
    """Turns an accepted upload into artifacts and webhooks, in the background."""

    def __init__(
        self,
        state: SimulatorState,
        org: Organization,
        api_key: str,
        client_secret: str,
    ) -> None:
        self._state = state
        self._org = org
        self._api_key = api_key
        self._client_secret = client_secret
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S)

    async def stop(self) -> None:
        await self.cancel_all()
        if self._http is not None:
            await self._http.aclose()

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def submit(self, session_id: str, public_url: str) -> None:
        task = asyncio.create_task(self._process(session_id, public_url))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, session_id: str, public_url: str) -> None:
        await asyncio.sleep(self._state.timings.processing_delay_s)
        session = self._state.sessions[session_id]
        if self._state.take_transcript_error():
            self._state.set_status(session_id, "failed")
            events = [self._transcript_error(session)]
        else:
            session.transcript = build_transcript(session)
            session.progress_note = build_progress_note(session)
            self._state.set_status(session_id, "completed")
            events = [self._transcript_ready(session, public_url)]
            events.append(self._note_generated(session, public_url))
        if self._state.faults.out_of_order_webhooks:
            events.reverse()
        copies = 2 if self._state.faults.duplicate_webhooks else 1
        for event in events:
            for _ in range(copies):
                await self._deliver(event, session_id)

    def _transcript_ready(self, session: SimSession, public_url: str) -> WebhookEvent:
        payload = TranscriptReadyPayload(
            session_id=session.record.id,
            transcript_url=public_url + paths.transcript(session.record.id),
        )
        return _event(TRANSCRIPT_READY, payload)

    def _note_generated(self, session: SimSession, public_url: str) -> WebhookEvent:
        assert session.progress_note is not None
        record = session.record
        payload = ProgressNotePayload(
            progress_note_id=session.progress_note.id,
            session_id=record.id,
            session_external_id=record.session_external_id,
            client_id=record.client_id,
            clinician_id=record.clinician_id,
            clinic_id=self._org.clinic_id,
            organization_id=self._org.organization_id,
            progress_note_url=public_url + paths.progress_note(session.progress_note.id),
        )
        return _event(PROGRESS_NOTE_GENERATED, payload)

    def _transcript_error(self, session: SimSession) -> WebhookEvent:
        payload = TranscriptErrorPayload(
            session_id=session.record.id, error="Simulated transcription failure"
        )
        return _event(SESSION_TRANSCRIPT_ERROR, payload)

    async def _deliver(self, event: WebhookEvent, session_id: str) -> None:
        """POST until 2xx; retry only connect errors, 5xx, 408 and 429, like Blueprint."""
        delivery = WebhookDelivery(event_type=event.event_type, session_id=session_id)
        self._state.webhooks.append(delivery)
        body = event.model_dump_json(by_alias=True).encode()
        headers = {
            "Content-Type": "application/json",
            "X-API-Key": self._api_key,
            signature.HEADER: signature.sign(body, self._client_secret),
        }
        while delivery.attempts < self._state.timings.webhook_max_attempts:
            delivery.attempts += 1
            delivery.last_status = await self._post(body, headers)
            if 200 <= delivery.last_status < 300:
                delivery.outcome = "delivered"
                break
            if not _worth_retrying(delivery.last_status):
                delivery.outcome = "dropped"
                break
            await asyncio.sleep(self._state.timings.webhook_retry_interval_s)
        else:
            delivery.outcome = "abandoned"
        logger.info(
            "webhook %s for session %s: %s after %d attempt(s), last status %s",
            event.event_type,
            session_id,
            delivery.outcome,
            delivery.attempts,
            delivery.last_status,
        )

    async def _post(self, body: bytes, headers: dict[str, str]) -> int:
        """The receiver's status, or 0 when there is no callback URL or no answer."""
        url = self._state.callback_url
        if url is None or self._http is None:
            return 0
        try:
            response = await self._http.post(url, content=body, headers=headers)
        except httpx.TransportError:
            return 0
        return response.status_code


def _event(
    event_type: str, payload: ProgressNotePayload | TranscriptReadyPayload | TranscriptErrorPayload
) -> WebhookEvent:
    return WebhookEvent(event_type=event_type, payload=payload.model_dump(by_alias=True))


def _worth_retrying(status: int) -> bool:
    return status == 0 or status in (408, 429) or status >= 500
