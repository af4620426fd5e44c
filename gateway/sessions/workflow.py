"""The Blueprint half of a session, as job handlers: each step is safe to run twice.

Records are ensured through :class:`BlueprintRecords` (cache first, then a lookup by
external id before any create). Steps that need an earlier one (a client needs its
clinician, an upload needs its session) ensure it themselves, so jobs can run in any
order after a crash. When Blueprint refuses a step in a way that can mean "unknown id"
(404, 410, 422), the ids it named are checked against Blueprint and repaired, and the
step is retried once; the session's timeline shows it (``blueprint_ids_repaired``).

Blueprint's webhooks can stop coming (it gives up delivering while the gateway is down),
so each upload also queues a ``poll_artifacts`` job (``blueprint.poll_after_s`` later): if
the note is not here by then, the gateway asks Blueprint for it (paths.SESSION_PROGRESS_
NOTE) every ``poll_interval_s``, ``poll_attempts`` times, and fails the session with the
reason when none came. The note's arrival settles the job; any replica may run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import cast

from gateway.blueprint.client import BlueprintRejected, BlueprintUnavailable, UploadBody
from gateway.errors import NotFound
from gateway.jobs.queue import Job
from gateway.jobs.worker import Finish, Handler, Later, Permanent, Retryable
from gateway.sessions import artifacts, records
from gateway.sessions import states as sessions
from gateway.sessions.audio_vault import AudioUnreadable, AudioVault, is_vault_ref
from gateway.sessions.blueprint_records import (
    BlueprintRecords,
    RecordMissing,
    Verified,
    stale_id_answer,
)
from gateway.sessions.lifecycle import JobKind, SessionLifecycle, poll_key
from gateway.sessions.states import Session
from gateway.settings import BlueprintSettings
from gateway.store import Connection, Database

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def blueprint_errors() -> Iterator[None]:
    """Blueprint's two kinds of failure, as the worker understands them."""
    try:
        yield
    except BlueprintUnavailable as exc:
        raise Retryable(str(exc), exc.retry_after_s) from None
    except BlueprintRejected as exc:
        raise Permanent(str(exc)) from None
    except RecordMissing as exc:
        raise Permanent(str(exc)) from None


class Workflow:
    def __init__(
        self,
        db: Database,
        records: BlueprintRecords,
        lifecycle: SessionLifecycle,
        vault: AudioVault | None = None,
        polling: BlueprintSettings | None = None,
    ):
        """``polling``: poll_after_s, poll_interval_s, poll_attempts (None: no polls)."""
        self._db = db
        self._polling = polling
        self._vault = vault
        self._records = records
        self._blueprint = records.blueprint
        self._lifecycle = lifecycle

    def handlers(self) -> dict[str, Handler]:
        return {
            JobKind.ENSURE_CLINICIAN: self.ensure_clinician,
            JobKind.ENSURE_CLIENT: self.ensure_client,
            JobKind.CREATE_SESSION: self.create_session,
            JobKind.UPLOAD_AUDIO: self.upload_audio,
            JobKind.FETCH_ARTIFACT: self.fetch_artifact,
            JobKind.POLL_ARTIFACTS: self.poll_artifacts,
        }

    def on_failed(self, conn: Connection, job: Job) -> None:
        """A job gave up: its session (or its record) shows the reason."""
        reason = f"{job.kind} failed: {job.last_error}"
        if job.session_id is not None and job.kind == JobKind.FETCH_ARTIFACT:
            self._lifecycle.artifact_fetch_failed(conn, job.session_id, reason)
        elif job.session_id is not None:
            self._lifecycle.failed(conn, job.session_id, reason)
        elif job.kind == JobKind.ENSURE_CLINICIAN:
            records.set_error(conn, "clinician", job.payload["external_id"], reason)
        elif job.kind == JobKind.ENSURE_CLIENT:
            records.set_error(conn, "client", job.payload["external_id"], reason)

    # --- handlers -------------------------------------------------------------------------

    async def ensure_clinician(self, job: Job) -> None:
        with blueprint_errors():
            await self._records.clinician_id(job.payload["external_id"])

    async def ensure_client(self, job: Job) -> None:
        with blueprint_errors():
            await self._records.client_id(job.payload["external_id"])

    async def create_session(self, job: Job) -> None:
        session = await self._session(job.payload["session_id"])
        if session.state in ("failed", "cancelled"):
            return
        await self._with_repair(session, "create_session", lambda: self._session_id(session))

    async def upload_audio(self, job: Job) -> Finish | None:
        session = await self._session(job.payload["session_id"])
        if session.state not in ("audio_ready", "uploading"):
            return None  # uploaded before a crash, failed or cancelled meanwhile
        if session.audio_path is None or session.audio_content_type is None:
            raise Permanent(f"session {session.id} has no audio file")
        audio = await self._audio(session.id, session.audio_path)
        content_type = session.audio_content_type
        uploaded = False

        async def upload() -> None:
            nonlocal uploaded
            blueprint_id = await self._session_id(session)
            if await self._db.run(self._lifecycle.upload_started, session.id) is None:
                return  # cancelled (or failed) meanwhile: never upload
            await self._blueprint.upload_audio(blueprint_id, audio, content_type)
            uploaded = True

        await self._with_repair(session, "upload_audio", upload)
        if not uploaded:
            return None
        return functools.partial(self._uploaded, session_id=session.id)  # with the job's end

    def _uploaded(self, conn: Connection, session_id: str) -> None:
        """Blueprint has the audio: processing, and (in the same transaction) a poll in
        case the note's webhook never comes."""
        self._lifecycle.upload_finished(conn, session_id)
        polling = self._polling
        if polling is None:
            return
        self._lifecycle.enqueue(
            conn,
            JobKind.POLL_ARTIFACTS,
            {"session_id": session_id},
            session_id=session_id,
            key=poll_key(session_id),
            delay_s=polling.poll_after_s,
            max_attempts=polling.poll_attempts,
        )

    async def poll_artifacts(self, job: Job) -> None:
        """The note's webhook has not come: ask Blueprint for the session's note."""
        session = await self._session(job.payload["session_id"])
        if session.state not in ("uploading", "processing"):
            return  # the note came (or the session ended otherwise): nothing to ask
        polling = self._polling
        assert polling is not None
        blueprint_id = await self._session_id(session)
        with blueprint_errors():
            body = await self._blueprint.find_progress_note(blueprint_id)
        waited = time.time() - job.created_at
        if body is not None:
            expected = artifacts.Expected(sessionId=blueprint_id)
            problem = artifacts.mismatch("progress_note", expected, body)
            if problem is None:
                await self._db.run(
                    self._lifecycle.artifact_fetched,
                    session.id,
                    "progress_note",
                    "progress_note_polled",
                    body,
                )
                logger.info("session %s: progress note found by polling Blueprint", session.id)
                return
            detail = f"progress_note_polled: not this session's: {problem}"
            logger.warning("session %s: polled progress_note refused: %s", session.id, problem)
            await self._db.run(sessions.add_event, session.id, "progress_note_refused", detail)
        if job.attempts >= job.max_attempts:
            raise Permanent(
                f"Blueprint sent no progress note: no webhook in {waited:.0f} s and"
                f" {job.attempts} polls of Blueprint found none"
            )
        raise Later(
            f"no progress note yet (poll {job.attempts} of {job.max_attempts})",
            polling.poll_interval_s,
        )

    async def _audio(self, session_id: str, audio_path: str) -> Path | UploadBody:
        """The session's audio: in the store's vault, or a file from before it."""
        if not is_vault_ref(audio_path):
            audio = Path(audio_path)
            if not await asyncio.to_thread(audio.is_file):
                raise Permanent(f"session {session_id}: audio file is missing")
            return audio
        vault = self._vault
        if vault is None:
            raise Permanent("the gateway has no audio key")
        try:
            size = await vault.size(audio_path)
        except AudioUnreadable as exc:
            raise Permanent(f"session {session_id}: {exc}") from None
        return UploadBody(size, lambda: vault.read(audio_path))

    async def fetch_artifact(self, job: Job) -> Finish:
        payload = job.payload
        session = await self._session(payload["session_id"])
        with blueprint_errors():
            body = await self._blueprint.get_artifact(payload["url"])
        expected = cast(artifacts.Expected, payload.get("expected") or {})  # a job payload
        if not expected and session.blueprint_session_id is not None:  # queued before checks
            expected = artifacts.Expected(sessionId=session.blueprint_session_id)
        problem = artifacts.mismatch(payload["kind"], expected, body)
        if problem is not None:
            # Never attached (it may be another patient's); the timeline and log say why,
            # and the session waits for its own.
            detail = f"{payload['event_type']}: not this session's: {problem}"
            logger.warning("session %s: %s refused: %s", session.id, payload["kind"], problem)
            step = f"{payload['kind']}_refused"
            return functools.partial(sessions.add_event, session_id=session.id, step=step,
                                     detail=detail)  # fmt: skip
        # Stored in the transaction that ends the job: one commit.
        return functools.partial(
            self._lifecycle.artifact_fetched,
            session_id=payload["session_id"],
            kind=payload["kind"],
            event_type=payload["event_type"],
            body=body,
        )

    # --- repair -------------------------------------------------------------------------------

    async def _with_repair(
        self, session: Session, step: str, attempt: Callable[[], Awaitable[object]]
    ) -> None:
        """Run a step; if Blueprint refuses it as if an id were unknown, check the session's
        ids against Blueprint, repair the stale ones, and run it once more."""
        with blueprint_errors():
            try:
                await attempt()
                return
            except BlueprintRejected as exc:
                if not stale_id_answer(exc):
                    raise
                first = exc
            repaired = await self._repair(session)
            if not repaired:
                raise first
            detail = "; ".join(found.describe() for found in repaired) + f"; {step} retried"
            await self._db.run(sessions.add_event, session.id, "blueprint_ids_repaired", detail)
            await attempt()

    async def _repair(self, session: Session) -> list[Verified]:
        checked = [
            await self._records.verify_clinician(session.clinician_external_id),
            await self._records.verify_client(session.client_external_id),
            await self._records.verify_session(session.id),
        ]
        return [found for found in checked if found.repaired or found.outcome == "missing"]

    async def _session_id(self, session: Session) -> str:
        try:
            return await self._records.session_id(session.id)
        except RecordMissing as exc:
            raise Permanent(str(exc)) from None

    async def _session(self, session_id: str) -> Session:
        try:
            return await self._db.run(self._lifecycle.get, session_id, write=False)
        except NotFound as exc:
            raise Permanent(str(exc)) from None
