"""One audio file per session from its chunks: decode, concatenate in seq order, encode.

A durable job (``assemble_audio``), queued in the transaction that finds the session
complete, so when a replica dies mid-assembly another does it again (its lease). The
work (reading the sealed chunks from the store, opening, decoding, encoding) runs in
threads; the event loop only waits. The encoder writes into memory (a memfd: plain audio
never touches a disk), and the result is stored encrypted in the store's audio vault
(gateway/sessions/audio_vault.py), then handed to ``SessionLifecycle.attach_audio``,
which queues the upload to Blueprint. Only the chunks the manifest lists are used: a
device leaves out chunks it set aside, and extra uploads cannot slip into the session.

One bad chunk never sinks a session: ingest refuses audio it cannot use, and a chunk that
still cannot be used here (gone from disk, unopenable after a key mix-up, undecodable) is
left out, named in the session's timeline (``chunk_left_out``, with the reason), and the
rest is uploaded. Only a session with no usable chunk at all fails, saying so.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from gateway.ingest import records
from gateway.ingest.files import ChunkFiles
from gateway.jobs.queue import Job
from gateway.jobs.worker import Permanent
from gateway.keys import SealingKeys
from gateway.sessions import states as sessions
from gateway.sessions.audio_files import AudioTooLarge
from gateway.sessions.audio_vault import AudioVault, memory_file
from gateway.sessions.lifecycle import UPLOADABLE_FROM, SessionLifecycle
from gateway.settings import IngestSettings
from gateway.store import Connection, Database
from protocol.envelope import EnvelopeError
from runtime.codec import CONTENT_TYPES, SAMPLE_RATE, CodecError, decode, encode_into

logger = logging.getLogger(__name__)
DECODERS = 2
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class _Plan:
    session: records.IngestSession
    files: list[tuple[int, str]]  # (seq, file name), in seq order


@dataclass(frozen=True)
class Assembled:
    ref: str  # the audio in the vault
    content_type: str
    duration_s: float
    chunks: int
    left_out: tuple[tuple[int, str], ...] = ()  # (seq, why), in seq order


class Assembler:
    def __init__(
        self,
        db: Database,
        files: ChunkFiles,
        keys: SealingKeys,
        lifecycle: SessionLifecycle,
        settings: IngestSettings,
        vault: AudioVault,
        max_bytes: int,
    ) -> None:
        self._db = db
        self._files = files  # chunks stored as files before the vault (read only)
        self._keys = keys
        self._lifecycle = lifecycle
        self._settings = settings
        self._vault = vault
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
        if self._keys.current() is None:
            raise Permanent("the gateway has no sealing key")
        assembled = await asyncio.to_thread(self.build, plan)
        for seq, why in assembled.left_out:
            logger.warning("session %s: chunk %d left out: %s", session_id, seq, why)
        if assembled.chunks == 0:
            await self._db.run(self._unusable, plan.session, assembled)
            return
        await self._db.run(self._attach, plan.session, assembled)
        logger.info(
            "session %s assembled: %d chunks (%d left out), %.2f s of audio",
            session_id,
            assembled.chunks,
            len(assembled.left_out),
            assembled.duration_s,
        )

    def build(self, plan: _Plan) -> Assembled:
        """Blocking: open and decode the chunks (two at a time: libsndfile releases the GIL)
        while the previous ones are encoded, in seq order, into memory; then stored."""
        session = plan.session
        codec = self._settings.codec
        content_type = CONTENT_TYPES[codec]
        left_out: dict[int, str] = {}

        def decoded(item: tuple[int, str]) -> np.ndarray | None:
            seq, name = item
            try:
                return self._decoded(session.session_id, seq, name)
            except _Unusable as exc:
                left_out[seq] = str(exc)
                return None

        fd = memory_file(f"assemble-{session.session_id}")
        with (
            ThreadPoolExecutor(DECODERS, thread_name_prefix="assemble") as pool,
            os.fdopen(fd, "w+b") as encoded,
        ):
            results = _in_order(pool, decoded, plan.files, ahead=2 * DECODERS)
            pieces = (pcm for pcm in results if pcm is not None)
            samples = encode_into(fd, pieces, codec, self._settings.opus_bitrate_kbps)
            used = len(plan.files) - len(left_out)
            ref = ""
            too_large = Permanent(f"session {session.session_id}: audio exceeds the limit")
            if used:  # nothing to keep when no chunk could be used
                if os.fstat(fd).st_size > self._max_bytes:
                    raise too_large
                encoded.seek(0)
                try:
                    ref = self._vault.store_file(session.session_id, encoded, self._max_bytes)
                except AudioTooLarge:
                    raise too_large from None
        return Assembled(
            ref, content_type, samples / SAMPLE_RATE, used, tuple(sorted(left_out.items()))
        )

    def _decoded(self, session_id: str, seq: int, name: str) -> np.ndarray:
        blob = self._db.call(records.sealed_chunk, session_id, seq, write=False)
        if blob is None and name:  # stored as a file before the vault
            try:
                blob = self._files.read(session_id, name)
            except OSError as exc:
                raise _Unusable(f"cannot be read ({exc.strerror or 'gone'})") from None
        if blob is None:
            raise _Unusable("is not in the store")
        try:
            opened = self._keys.open(blob)  # the current key or a retired one
        except EnvelopeError:
            raise _Unusable("cannot be opened with the sealing key (nor a retired one)") from None
        try:
            audio = decode(opened.audio)
        except CodecError:
            raise _Unusable("its audio cannot be decoded") from None
        if audio.sample_rate != SAMPLE_RATE:
            raise _Unusable(f"its audio is {audio.sample_rate} Hz, not {SAMPLE_RATE} Hz")
        return audio.pcm

    def _attach(
        self, conn: Connection, session: records.IngestSession, assembled: Assembled
    ) -> None:
        session_id = session.session_id
        records.set_state(conn, session_id, "assembled", assembled.ref)
        if not session.claimed:
            return
        _record_left_out(conn, session_id, assembled)
        current = sessions.get(conn, session_id)
        if current is not None and current.state == "cancelled":
            self._lifecycle.discard_audio(conn, session_id)  # assembled after the cancel
            return
        if current is None or current.state not in UPLOADABLE_FROM:
            state = current.state if current else "unknown"
            sessions.add_event(conn, session_id, "audio_not_attached", f"session is {state}")
            return
        self._lifecycle.attach_audio(conn, session_id, assembled.ref, assembled.content_type)

    def _unusable(
        self, conn: Connection, session: records.IngestSession, assembled: Assembled
    ) -> None:
        records.set_state(conn, session.session_id, "failed")
        if session.claimed:
            _record_left_out(conn, session.session_id, assembled)
            reason = f"none of the session's {len(assembled.left_out)} chunks could be used"
            self._lifecycle.failed(conn, session.session_id, reason)

    def _no_speech(self, conn: Connection, session: records.IngestSession) -> None:
        records.set_state(conn, session.session_id, "failed")
        if session.claimed:
            self._lifecycle.failed(conn, session.session_id, "no speech was recorded")


class _Unusable(Exception):
    """A chunk that cannot join its session; the message says why (no audio, no PHI)."""


def _record_left_out(conn: Connection, session_id: str, assembled: Assembled) -> None:
    for seq, why in assembled.left_out:
        sessions.add_event(conn, session_id, "chunk_left_out", f"chunk {seq}: {why}")


def _in_order(
    pool: ThreadPoolExecutor,
    fn: Callable[[T], R],
    items: list[T],
    ahead: int,
) -> Iterator[R]:
    """``fn`` over ``items`` on ``pool``, results in order, at most ``ahead`` in flight (so
    a long session is never all in memory at once)."""
    pending: deque[Future[R]] = deque()
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
