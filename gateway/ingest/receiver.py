"""Sealed chunks and manifests from room devices, as protocol/ingest.py describes them.

A chunk is checked in this order: the device's token (store), the header against the URL
(no key needed), then the seal is opened (authenticating header and audio) and the audio
decoded (16 kHz, as long as the header says: a chunk that would sink its session at
assembly is refused now, 422 with a code the device's state shows), both off the event
loop (opening.py: in worker processes on the other cores, or on a thread of the gateway
where there are none); then one transaction checks ownership of the session, answers a
repeat or a cancelled session's chunk, and commits the chunk, still sealed, with its row
(where every replica can read it). Only then does the device get its 200, and may delete
its copy. Two store round trips per chunk, not three: a chunk the store would refuse
anyway (another room's, a repeat) costs its opening, and when the seal or audio is
refused the store's answer still comes first, as before.

Which sessions a device may send: its own (a session started in its room) and ones the
gateway does not know (recorded without a partner session, e.g. ``room-agent record``):
those are stored and assembled like any other but never uploaded (*unclaimed*), because
refusing them would leave them blocking the device's uplink, and audio is never dropped.
A session started in another room is refused (403).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.devices import credentials, registry
from gateway.ingest import records
from gateway.ingest.errors import (
    Conflict,
    Forbidden,
    OverQuota,
    Rejected,
    Unauthenticated,
    Unavailable,
)
from gateway.ingest.opening import ChunkOpener
from gateway.ingest.records import IngestSession, StoredChunk
from gateway.keys import SealingKeys
from gateway.sessions import states as sessions
from gateway.sessions.lifecycle import JobKind, SessionLifecycle
from gateway.stages import UNTIMED, Stages
from gateway.store import Connection, Database, serialize_on
from protocol.envelope import (
    ChunkHeader,
    EnvelopeError,
    key_fingerprint,
    public_key_to_text,
    read_header,
)
from protocol.ingest import ChunkReceipt, CloseReceipt, SealingKeyInfo
from protocol.manifest import ManifestChunk, SessionManifest

logger = logging.getLogger(__name__)
# Manifest times against header times: both are the device's, rounded to the millisecond.
TIME_SLACK_S = 0.002

ChunkStored = Callable[[str, str, int], None]
"""Told (device, session, seq) after a new chunk is stored: the relay's chunk_acked."""
Wake = Callable[[], None]


@dataclass(frozen=True)
class _Recorded:
    receipt: ChunkReceipt
    assemble: bool


class ChunkReceiver:
    def __init__(
        self,
        db: Database,
        keys: SealingKeys,
        lifecycle: SessionLifecycle,
        wake: Wake,
        max_unclaimed: int = 20,
        stages: Stages = UNTIMED,
        open_workers: int = 0,
    ) -> None:
        self._db = db
        self._opener = ChunkOpener(keys, open_workers, stages)
        self._max_unclaimed = max_unclaimed
        self._keys = keys
        self._lifecycle = lifecycle
        self._wake = wake
        self._stages = stages
        self._listeners: list[ChunkStored] = []

    @property
    def has_key(self) -> bool:
        return self._keys.current() is not None

    @property
    def key_fingerprint(self) -> str | None:
        """The sealing key's fingerprint (what devices must seal to), if there is a key."""
        key = self._keys.current()
        return key_fingerprint(key.public_key()) if key is not None else None

    @property
    def sealing_key_info(self) -> SealingKeyInfo | None:
        """What GET .../sealing-key answers (protocol/ingest.py), if there is a key: the
        current one (a rotated key's chunks still open, but devices must seal to this)."""
        key = self._keys.current()
        if key is None:
            return None
        public = key.public_key()
        return SealingKeyInfo(
            fingerprint=key_fingerprint(public), public_key=public_key_to_text(public)
        )

    def stop_workers(self) -> None:
        """Stop the opening workers (blocking: call it off the event loop)."""
        self._opener.close()

    def on_stored(self, listener: ChunkStored) -> None:
        self._listeners.append(listener)

    # --- authentication ---------------------------------------------------------------------

    async def authenticate(self, token: str | None, device_id: str) -> registry.Device:
        """The device behind ``token``, which must be the one in the path; checked against
        the store on every request, so a revocation takes effect at once."""
        if not token:
            raise Unauthenticated(
                "missing bearer token (Authorization: Bearer ...)", code="missing_token"
            )
        by_token = self._stages.timed("chunk.auth", registry.by_token)
        device = await self._db.run(by_token, credentials.token_digest(token), write=False)
        if device is None:
            raise Unauthenticated("unknown ingest token")
        if device.revoked_at is not None:
            raise Forbidden(f"device {device.id} is revoked", code="device_revoked")
        if device.id != device_id:
            raise Forbidden(f"this token is device {device.id}'s, not {device_id}'s")
        return device

    # --- chunks -------------------------------------------------------------------------------

    async def receive_chunk(
        self, device_id: str, session_id: str, seq: int, blob: bytes
    ) -> ChunkReceipt:
        self._require_key()
        stages = self._stages
        with stages.stage("chunk.header"):
            header = _header_matching(blob, device_id, session_id, seq)
        try:
            sha256 = await self._opener.open(blob, header)
        except Rejected:
            # The store's answer first (another room's session, a repeat, a cancelled
            # session), as if it had been asked before the seal was opened.
            sha256 = hashlib.sha256(blob).hexdigest()
            precheck = stages.timed("chunk.precheck", _precheck)
            early = await self._db.run(precheck, device_id, header, sha256, write=False)
            if early is not None:
                return early
            raise
        chunk = StoredChunk(
            seq=seq,
            sha256=sha256,
            bytes=len(blob),
            start_s=header.start_s,
            duration_s=header.duration_s,
            file="",
            received_at=time.time(),
        )
        recorded = await self._db.run(
            self._record, device_id, session_id, chunk, blob, isolation="read_committed"
        )
        with stages.stage("chunk.answer"):
            if recorded.assemble:
                self._wake()
            if not recorded.receipt.duplicate:
                for listener in self._listeners:
                    listener(device_id, session_id, seq)
        return recorded.receipt

    def _record(
        self, conn: Connection, device_id: str, session_id: str, chunk: StoredChunk, blob: bytes
    ) -> _Recorded:
        """``_record_rows`` timed: its statements, then its commit: wall up to the commit's
        end (with a group commit's other members), CPU its share of the COMMIT."""
        with self._stages.stage("chunk.record"):
            recorded = self._record_rows(conn, device_id, session_id, chunk, blob)
        wall = time.perf_counter()
        conn.after_commit(
            lambda: self._stages.record(
                "chunk.commit", conn.commit_cpu_s, time.perf_counter() - wall
            )
        )
        return recorded

    def _record_rows(
        self, conn: Connection, device_id: str, session_id: str, chunk: StoredChunk, blob: bytes
    ) -> _Recorded:
        # A session's chunks and its manifest take turns (any replica may take any chunk).
        serialize_on(conn, f"ingest:{session_id}")
        started = sessions.get(conn, session_id)
        session = _owned_session(conn, device_id, session_id, started)
        if started is not None and started.state == "cancelled":
            # Taken without being kept: the device may delete its copy.
            return _Recorded(_taken(session_id, chunk.seq, chunk.sha256), False)
        if session is None:
            session = self._new_session(conn, device_id, session_id)
            if session.claimed:
                sessions.add_event(conn, session_id, "first_chunk_received")
                # Its audio is the surest sign the room records it, whatever became of
                # the start's confirmation.
                self._lifecycle.recording_started(conn, session_id, "audio received")
            else:
                logger.warning(
                    "device %s: chunks for session %s, which no partner session claims;"
                    " kept, not uploaded",
                    device_id,
                    session_id,
                )
        existing = records.get_chunk(conn, session_id, chunk.seq)
        if existing is not None:
            return _Recorded(_repeat(session_id, chunk.seq, existing, chunk.sha256), False)
        if session.state in ("assembling", "assembled"):
            raise Conflict(
                f"session {session_id} is already assembled; seq {chunk.seq} is new",
                code="session_assembled",
            )
        listed = _listed(session.manifest, chunk.seq)
        if listed is not None and (problem := _listed_unlike(listed, chunk)) is not None:
            raise Rejected(problem, code="manifest_mismatch")
        records.insert_chunk(conn, session_id, chunk, blob)
        receipt = ChunkReceipt(
            session_id=session_id, seq=chunk.seq, sha256=chunk.sha256, duplicate=False
        )
        if session.state == "waiting_for_chunks" and session.manifest is not None:
            return _Recorded(receipt, self._complete_if_ready(conn, session, session.manifest))
        return _Recorded(receipt, False)

    # --- manifests ----------------------------------------------------------------------------

    async def close(
        self, device_id: str, session_id: str, manifest: SessionManifest
    ) -> CloseReceipt:
        if (manifest.device_id, manifest.session_id) != (device_id, session_id):
            raise Rejected(
                "manifest device_id/session_id do not match the path", code="path_mismatch"
            )
        receipt, assemble = await self._db.run(
            self._close, device_id, manifest, isolation="read_committed"
        )
        if assemble:
            self._wake()
        return receipt

    def _close(
        self, conn: Connection, device_id: str, manifest: SessionManifest
    ) -> tuple[CloseReceipt, bool]:
        session_id = manifest.session_id
        serialize_on(conn, f"ingest:{session_id}")
        started = sessions.get(conn, session_id)
        session = _owned_session(conn, device_id, session_id, started)
        if started is not None and started.state == "cancelled":
            # Nothing to assemble: its audio is discarded. "assembled" tells the device
            # the gateway needs nothing more, so it may clear its spool of the session.
            return CloseReceipt(session_id=session_id, complete=True, state="assembled"), False
        if session is None:
            session = self._new_session(conn, device_id, session_id)
        if session.state in ("assembling", "assembled", "failed"):
            state = "assembled" if session.state != "assembling" else "assembling"
            return CloseReceipt(session_id=session_id, complete=True, state=state), False
        stored = records.chunks(conn, session_id)
        for listed in manifest.chunks:
            held = stored.get(listed.seq)
            if held is not None and held.sha256 != listed.sha256:
                raise Conflict(f"chunk {listed.seq} stored here differs from the manifest's")
            if held is not None and (problem := _listed_unlike(listed, held)) is not None:
                raise Rejected(problem, code="manifest_mismatch")
        first_close = session.manifest is None
        below = manifest.records_lost_below
        if below is not None:
            manifest = _with_chunks_held_below(manifest, stored)
            if session.claimed and first_close:
                kept = sum(1 for seq in stored if seq < below)
                sessions.add_event(
                    conn,
                    session_id,
                    "device_records_lost",
                    f"the device lost its records of seqs below {below} (its spool);"
                    f" the {kept} chunk(s) held here below it are kept",
                )
        records.set_manifest(conn, manifest)
        if session.claimed and first_close:
            sessions.add_event(
                conn,
                session_id,
                "audio_closed",
                f"{len(manifest.chunks)} chunks, {manifest.speech_s:.2f} s of speech,"
                f" {manifest.reason}",
            )
        missing = [c.seq for c in manifest.chunks if c.seq not in stored]
        if missing:
            records.set_state(conn, session_id, "waiting_for_chunks")
            receipt = CloseReceipt(
                session_id=session_id, complete=False, missing=missing, state="waiting_for_chunks"
            )
            return receipt, False
        self._start_assembly(conn, session)
        return CloseReceipt(session_id=session_id, complete=True, state="assembling"), True

    # --- helpers ------------------------------------------------------------------------------

    def _new_session(self, conn: Connection, device_id: str, session_id: str) -> IngestSession:
        """The ingest record of a session's first chunk (or manifest). Unclaimed ones are
        kept for ever (never uploaded, so retention never deletes them): one device may
        hold only ``max_unclaimed`` of them, or it could fill the gateway's store."""
        claimed = _claims(conn, device_id, session_id)
        if not claimed:
            serialize_on(conn, f"unclaimed:{device_id}")  # replicas count one at a time
            held = records.unclaimed_count(conn, device_id)
            if held >= self._max_unclaimed:
                raise OverQuota(
                    f"device {device_id} already has {held} unclaimed sessions here (sessions"
                    f" no partner started; ingest.max_unclaimed_sessions); session {session_id}"
                    f" waits on the device until the operator frees some (--export DIR"
                    f" first to keep their audio): room-gateway device unclaimed {device_id}"
                    " --delete SESSION_ID"
                )
        return records.create_session(conn, session_id, device_id, claimed=claimed)

    def _complete_if_ready(
        self, conn: Connection, session: IngestSession, manifest: SessionManifest
    ) -> bool:
        stored = records.chunks(conn, session.session_id)
        if any(c.seq not in stored for c in manifest.chunks):
            return False
        self._start_assembly(conn, session)
        return True

    def _start_assembly(self, conn: Connection, session: IngestSession) -> None:
        records.set_state(conn, session.session_id, "assembling")
        self._lifecycle.enqueue(
            conn,
            JobKind.ASSEMBLE_AUDIO,
            {"session_id": session.session_id},
            session_id=session.session_id if session.claimed else None,
            key=f"{JobKind.ASSEMBLE_AUDIO}:{session.session_id}",
        )

    def _require_key(self) -> None:
        if self._keys.current() is None:
            raise Unavailable(
                "the gateway has no sealing key yet (room-gateway keygen)", code="no_sealing_key"
            )


def _header_matching(blob: bytes, device_id: str, session_id: str, seq: int) -> ChunkHeader:
    try:
        header = read_header(blob)
    except EnvelopeError as exc:
        raise Rejected(str(exc)) from None
    if (header.device_id, header.session_id, header.seq) != (device_id, session_id, seq):
        raise Rejected(
            "chunk header device_id/session_id/seq do not match the path", code="path_mismatch"
        )
    return header


def _with_chunks_held_below(
    manifest: SessionManifest, stored: dict[int, StoredChunk]
) -> SessionManifest:
    """A device that lost its spool (protocol/manifest.py's records_lost_below) lists only
    the chunks after the loss; those it sent before are here, and are its audio too."""
    below = manifest.records_lost_below or 0
    held = [
        ManifestChunk(
            seq=seq,
            sha256=chunk.sha256,
            bytes=chunk.bytes,
            start_s=chunk.start_s,
            duration_s=chunk.duration_s,
        )
        for seq, chunk in sorted(stored.items())
        if seq < below
    ]
    # Complete now: kept as an ordinary manifest (its chunks are below the mark too).
    return manifest.model_copy(
        update={"chunks": held + list(manifest.chunks), "records_lost_below": None}
    )


def _listed(manifest: SessionManifest | None, seq: int) -> ManifestChunk | None:
    if manifest is None:
        return None
    return next((listed for listed in manifest.chunks if listed.seq == seq), None)


def _listed_unlike(listed: ManifestChunk, held: StoredChunk) -> str | None:
    """How the manifest's entry differs from the chunk (its header) the gateway holds."""
    if listed.bytes != held.bytes:
        return f"manifest lists chunk {listed.seq} as {listed.bytes} bytes; it is {held.bytes}"
    for name in ("start_s", "duration_s"):
        said, header = getattr(listed, name), getattr(held, name)
        if abs(said - header) > TIME_SLACK_S:
            return f"manifest lists chunk {listed.seq} {name} {said:.3f}; its header {header:.3f}"
    return None


def _precheck(
    conn: Connection, device_id: str, header: ChunkHeader, sha256: str
) -> ChunkReceipt | None:
    """Refuse another room's session before any work; answer a repeat without any; take a
    cancelled session's chunk without keeping it (the device may delete its copy)."""
    started = sessions.get(conn, header.session_id)
    _owned_session(conn, device_id, header.session_id, started)
    if started is not None and started.state == "cancelled":
        return _taken(header.session_id, header.seq, sha256)
    existing = records.get_chunk(conn, header.session_id, header.seq)
    if existing is None:
        return None
    return _repeat(header.session_id, header.seq, existing, sha256)


def _repeat(session_id: str, seq: int, existing: StoredChunk, sha256: str) -> ChunkReceipt:
    if existing.sha256 != sha256:
        raise Conflict(f"a different chunk is stored under seq {seq}")
    return ChunkReceipt(session_id=session_id, seq=seq, sha256=sha256, duplicate=True)


def _taken(session_id: str, seq: int, sha256: str) -> ChunkReceipt:
    """A cancelled session's chunk: answered as stored, not kept."""
    return ChunkReceipt(session_id=session_id, seq=seq, sha256=sha256, duplicate=False)


def _owned_session(
    conn: Connection, device_id: str, session_id: str, started: sessions.Session | None
) -> IngestSession | None:
    """This device's ingest record of the session (None: first chunk); 403 if the session
    is another room's, by the partner's session (``started``, as the caller read it) or by
    the device that sent it first."""
    if started is not None and started.room_id != device_id:
        raise Forbidden(
            f"session {session_id} was not started in room {device_id}", code="foreign_session"
        )
    session = records.get_session(conn, session_id)
    if session is not None and session.device_id != device_id:
        raise Forbidden(f"session {session_id} belongs to another device", code="foreign_session")
    return session


def _claims(conn: Connection, device_id: str, session_id: str) -> bool:
    started = sessions.get(conn, session_id)
    return started is not None and started.room_id == device_id
