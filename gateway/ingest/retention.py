"""Session audio is deleted once Blueprint holds it, after ``ingest.retention_s``.

Blueprint accepting the upload (``audio_uploaded``) queues a ``purge_audio`` job due after
the retention time; it deletes the session's sealed chunks and its stored audio, in one
transaction on either engine (and any files kept before audio moved into the store). A
failed session keeps its audio (a retried upload needs it). Chunk rows stay, so a device
repeating an upload still gets the right answer.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gateway.ingest import records
from gateway.ingest.files import ChunkFiles
from gateway.jobs.queue import Job
from gateway.sessions import states as sessions
from gateway.sessions.audio_vault import delete_session_audio, is_vault_ref
from gateway.sessions.lifecycle import JobKind, SessionEvent, SessionLifecycle
from gateway.sessions.states import Session
from gateway.settings import IngestSettings
from gateway.store import Connection, Database

logger = logging.getLogger(__name__)


class Retention:
    def __init__(
        self,
        db: Database,
        files: ChunkFiles,
        lifecycle: SessionLifecycle,
        settings: IngestSettings,
        audio_dir: Path,
    ) -> None:
        self._db = db
        self._files = files
        self._lifecycle = lifecycle
        self._settings = settings
        self._audio_dir = audio_dir

    def notifier(self, conn: Connection, session: Session, event: SessionEvent) -> None:
        """Session notifier: Blueprint has the audio; delete ours after the retention."""
        if event != SessionEvent.AUDIO_UPLOADED:
            return
        self._lifecycle.enqueue(
            conn,
            JobKind.PURGE_AUDIO,
            {"session_id": session.id},
            key=f"{JobKind.PURGE_AUDIO}:{session.id}",
            delay_s=self._settings.retention_s,
        )

    async def handle(self, job: Job) -> None:
        session_id = job.payload["session_id"]
        session = await self._db.run(sessions.get, session_id, write=False)
        if session is None or session.state == "failed":
            return  # keep a failed session's audio for its retry
        await self._db.run(self._purged, session_id)
        # A session's chunk directory can hold hundreds of files: off the event loop.
        await asyncio.to_thread(self._delete_files, session_id, session.audio_path)
        logger.info("session %s: audio deleted (Blueprint has it)", session_id)

    def _delete_files(self, session_id: str, audio_path: str | None) -> None:
        """Blocking: the session's sealed chunk files, and its audio file from before the
        vault, if any."""
        self._files.delete_session(session_id)
        if audio_path is not None and not is_vault_ref(audio_path):
            audio = Path(audio_path)
            if audio.is_relative_to(self._audio_dir):
                audio.unlink(missing_ok=True)

    @staticmethod
    def _purged(conn: Connection, session_id: str) -> None:
        delete_session_audio(conn, session_id)
        if records.get_session(conn, session_id) is not None:
            records.mark_purged(conn, session_id)
        sessions.add_event(conn, session_id, "audio_deleted")
