"""The Blueprint half of a session, as job handlers: each step is safe to run twice.

A step first looks at what the store already knows (a Blueprint id), then asks Blueprint
to *ensure* the record (the client looks it up by external id before creating it), then
stores the answer. A gateway killed between Blueprint's answer and our commit therefore
repeats the lookup, never the create. Steps that need an earlier one (a client needs its
clinician, an upload needs its session) ensure it themselves, so jobs can run in any
order after a crash. Per-record asyncio locks keep two jobs of this process from ensuring
the same record at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

from gateway.blueprint.client import BlueprintClient, BlueprintRejected, BlueprintUnavailable
from gateway.errors import NotFound
from gateway.jobs.queue import Job
from gateway.jobs.worker import Handler, Permanent, Retryable
from gateway.sessions import records
from gateway.sessions.lifecycle import JobKind, SessionLifecycle
from gateway.sessions.states import Session
from gateway.store import Connection, Database


@contextlib.contextmanager
def blueprint_errors() -> Iterator[None]:
    """Blueprint's two kinds of failure, as the worker understands them."""
    try:
        yield
    except BlueprintUnavailable as exc:
        raise Retryable(str(exc), exc.retry_after_s) from None
    except BlueprintRejected as exc:
        raise Permanent(str(exc)) from None


class Workflow:
    def __init__(self, db: Database, blueprint: BlueprintClient, lifecycle: SessionLifecycle):
        self._db = db
        self._blueprint = blueprint
        self._lifecycle = lifecycle
        self._locks: dict[str, asyncio.Lock] = {}

    def handlers(self) -> dict[str, Handler]:
        return {
            JobKind.ENSURE_CLINICIAN: self.ensure_clinician,
            JobKind.ENSURE_CLIENT: self.ensure_client,
            JobKind.CREATE_SESSION: self.create_session,
            JobKind.UPLOAD_AUDIO: self.upload_audio,
            JobKind.FETCH_ARTIFACT: self.fetch_artifact,
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
        await self._clinician_id(job.payload["external_id"])

    async def ensure_client(self, job: Job) -> None:
        await self._client_id(job.payload["external_id"])

    async def create_session(self, job: Job) -> None:
        session = await self._session(job.payload["session_id"])
        if session.state != "failed":
            await self._blueprint_session_id(session)

    async def upload_audio(self, job: Job) -> None:
        session = await self._session(job.payload["session_id"])
        if session.state not in ("audio_ready", "uploading"):
            return  # uploaded before a crash, or failed meanwhile
        if session.audio_path is None or session.audio_content_type is None:
            raise Permanent(f"session {session.id} has no audio file")
        audio = Path(session.audio_path)
        if not audio.is_file():
            raise Permanent(f"session {session.id}: audio file is missing")
        blueprint_id = await self._blueprint_session_id(session)
        await self._db.run(self._lifecycle.upload_started, session.id)
        with blueprint_errors():
            await self._blueprint.upload_audio(blueprint_id, audio, session.audio_content_type)
        await self._db.run(self._lifecycle.upload_finished, session.id)

    async def fetch_artifact(self, job: Job) -> None:
        payload = job.payload
        await self._session(payload["session_id"])
        with blueprint_errors():
            body = await self._blueprint.get_artifact(payload["url"])
        await self._db.run(
            self._lifecycle.artifact_fetched,
            payload["session_id"],
            payload["kind"],
            payload["event_type"],
            body,
        )

    # --- ensure steps ---------------------------------------------------------------------

    async def _clinician_id(self, external_id: str) -> str:
        async with self._lock(f"clinician:{external_id}"):
            clinician = await self._db.run(records.get_clinician, external_id, write=False)
            if clinician is None:
                raise Permanent(f"clinician {external_id} is not in the store")
            if clinician.blueprint_id is not None:
                return clinician.blueprint_id
            with blueprint_errors():
                blueprint_id = await self._blueprint.ensure_clinician(
                    external_id, clinician.first_name, clinician.last_name, clinician.email
                )
            await self._db.run(records.set_blueprint_id, "clinician", external_id, blueprint_id)
            return blueprint_id

    async def _client_id(self, external_id: str) -> str:
        async with self._lock(f"client:{external_id}"):
            client = await self._db.run(records.get_client, external_id, write=False)
            if client is None:
                raise Permanent(f"client {external_id} is not in the store")
            if client.blueprint_id is not None:
                return client.blueprint_id
            clinician_id = await self._clinician_id(client.clinician_external_id)
            with blueprint_errors():
                blueprint_id = await self._blueprint.ensure_client(
                    external_id, client.first_name, client.last_name, clinician_id
                )
            await self._db.run(records.set_blueprint_id, "client", external_id, blueprint_id)
            return blueprint_id

    async def _blueprint_session_id(self, session: Session) -> str:
        async with self._lock(f"session:{session.id}"):
            current = await self._session(session.id)
            if current.blueprint_session_id is not None:
                return current.blueprint_session_id
            clinician_id = await self._clinician_id(session.clinician_external_id)
            client_id = await self._client_id(session.client_external_id)
            options = {"note_type": session.note_type} if session.note_type else None
            with blueprint_errors():
                blueprint_id = await self._blueprint.ensure_session(
                    session.id,
                    clinician_id,
                    client_id,
                    session_setting=session.session_setting,  # type: ignore[arg-type]
                    note_options=options,
                )
            await self._db.run(self._lifecycle.blueprint_session_created, session.id, blueprint_id)
            return blueprint_id

    async def _session(self, session_id: str) -> Session:
        try:
            return await self._db.run(self._lifecycle.get, session_id, write=False)
        except NotFound as exc:
            raise Permanent(str(exc)) from None

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())
