"""One audio file per session from its chunks: decode, concatenate in seq order, encode.

A durable job (``assemble_audio``), queued in the transaction that finds the session
complete, so a gateway killed mid-assembly does it again at start. The work (opening,
decoding, encoding) runs in a thread; the event loop only waits. The file is written the
same durable way as any session audio, then handed to ``SessionLifecycle.attach_audio``,
which queues the upload to Blueprint. Only the chunks the manifest lists are used: a
device leaves out chunks it set aside, and extra uploads cannot slip into the session.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.ingest import records
from gateway.ingest.files import ChunkFiles
from gateway.jobs.queue import Job
from gateway.jobs.worker import Permanent
from gateway.sessions import states as sessions
from gateway.sessions.audio_files import DurableFile, audio_path
from gateway.sessions.lifecycle import UPLOADABLE_FROM, SessionLifecycle
from gateway.settings import IngestSettings
from gateway.store import Connection, Database
from protocol.codec import CONTENT_TYPES, SAMPLE_RATE, CodecError, decode, encode_into
from protocol.envelope import EnvelopeError, open_chunk

logger = logging.getLogger(__name__)
DECODERS = 2
T = TypeVar("T")


@dataclass(frozen=True)
class _Plan:
    session: records.IngestSession
    files: list[tuple[int, str]]  # (seq, file name), in seq order


@dataclass(frozen=True)
class Assembled:
    path: Path
    content_type: str
    duration_s: float
    chunks: int


class Assembler:
    def __init__(
        self,
        db: Database,
        files: ChunkFiles,
        key: X25519PrivateKey | None,
        lifecycle: SessionLifecycle,
        settings: IngestSettings,
        audio_dir: Path,
        max_bytes: int,
    ) -> None:
        self._db = db
        self._files = files
        self._key = key
        self._lifecycle = lifecycle
        self._settings = settings
        self._audio_dir = audio_dir
        self._max_bytes = max_bytes

    async def handle(self, job: Job) -> None:
        """Job handler: assemble the session, then attach it (claimed) or keep it."""
        session_id = job.payload["session_id"]
        plan = await self._db.run(_plan, session_id, write=False)
        if plan is None or plan.session.state != "assembling":
            return  # done before a restart, or nothing to do
        if not plan.files:
            await self._db.run(self._no_speech, plan.session)
            return
        if self._key is None:
            raise Permanent("the gateway has no sealing key")
        assembled = await asyncio.to_thread(self.build, plan)
        await self._db.run(self._attach, plan.session, assembled)
        logger.info(
            "session %s assembled: %d chunks, %.2f s of audio",
            session_id,
            assembled.chunks,
            assembled.duration_s,
        )

    def build(self, plan: _Plan) -> Assembled:
        """Blocking: open and decode the chunks (two at a time: libsndfile releases the GIL)
        while the previous ones are encoded straight into the durable file, in seq order."""
        session = plan.session
        codec = self._settings.codec
        content_type = CONTENT_TYPES[codec]
        target = self._target(session, content_type)

        def decoded(item: tuple[int, str]) -> np.ndarray:
            return self._decoded(session.session_id, *item)

        with (
            ThreadPoolExecutor(DECODERS, thread_name_prefix="assemble") as pool,
            DurableFile(target, self._max_bytes) as file,
        ):
            pieces = _in_order(pool, decoded, plan.files, ahead=2 * DECODERS)
            samples = encode_into(file.fileno(), pieces, codec, self._settings.opus_bitrate_kbps)
            file.written_directly()
        return Assembled(target, content_type, samples / SAMPLE_RATE, len(plan.files))

    def _decoded(self, session_id: str, seq: int, name: str) -> np.ndarray:
        assert self._key is not None
        try:
            blob = self._files.read(session_id, name)
        except OSError:
            raise Permanent(f"session {session_id}: chunk {seq} is missing on disk") from None
        try:
            audio = decode(open_chunk(blob, self._key).audio)
        except (EnvelopeError, CodecError):
            raise Permanent(f"session {session_id}: chunk {seq} cannot be decoded") from None
        if audio.sample_rate != SAMPLE_RATE:
            raise Permanent(f"session {session_id}: chunk {seq} is not {SAMPLE_RATE} Hz")
        return audio.pcm

    def _target(self, session: records.IngestSession, content_type: str) -> Path:
        if session.claimed:
            return audio_path(self._audio_dir, session.session_id, content_type)
        unclaimed = self._audio_dir / "unclaimed" / session.device_id
        return audio_path(unclaimed, session.session_id, content_type)

    def _attach(
        self, conn: Connection, session: records.IngestSession, assembled: Assembled
    ) -> None:
        session_id = session.session_id
        records.set_state(conn, session_id, "assembled", str(assembled.path))
        if not session.claimed:
            return
        current = sessions.get(conn, session_id)
        if current is not None and current.state == "cancelled":
            self._lifecycle.discard_audio(conn, session_id)  # assembled after the cancel
            return
        if current is None or current.state not in UPLOADABLE_FROM:
            state = current.state if current else "unknown"
            sessions.add_event(conn, session_id, "audio_not_attached", f"session is {state}")
            return
        self._lifecycle.attach_audio(conn, session_id, str(assembled.path), assembled.content_type)

    def _no_speech(self, conn: Connection, session: records.IngestSession) -> None:
        records.set_state(conn, session.session_id, "failed")
        if session.claimed:
            self._lifecycle.failed(conn, session.session_id, "no speech was recorded")


def _in_order(
    pool: ThreadPoolExecutor,
    fn: Callable[[T], np.ndarray],
    items: list[T],
    ahead: int,
) -> Iterator[np.ndarray]:
    """``fn`` over ``items`` on ``pool``, results in order, at most ``ahead`` in flight (so
    a long session is never all in memory at once)."""
    pending: deque[Future[np.ndarray]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _plan(conn: Connection, session_id: str) -> _Plan | None:
    session = records.get_session(conn, session_id)
    if session is None or session.manifest is None:
        return None
    stored = records.chunks(conn, session_id)
    files = []
    for listed in sorted(session.manifest.chunks, key=lambda chunk: chunk.seq):
        held = stored.get(listed.seq)
        if held is None or held.sha256 != listed.sha256:
            raise Permanent(f"session {session_id}: chunk {listed.seq} is not stored")
        files.append((listed.seq, held.file))
    return _Plan(session, files)
