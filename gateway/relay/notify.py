"""Notifications to a room's device on ``rooms/<room>/notify``: ids and codes, never text.

``notes_ready``, ``failed`` and ``session_uploaded`` are durable: a session notifier queues
a ``notify_device`` job in the transaction of the session event, which the worker starts
as soon as that transaction commits, so the device hears of it within milliseconds, and
later if the broker is away (retried; on reconnection at once). Delivery is at least once
(a retry after a lost PUBACK repeats it); the device keeps the last notification per
session. ``chunk_acked`` is best effort: the HTTP 200 is the acknowledgement that counts,
the notification only mirrors it, at most once a second per device (the newest chunk
stored by then): a backlog drain stores tens of chunks a second per device, and a
notification for each cost the gateway about a millisecond of CPU per chunk, a fifth of
its ingest rate, and the device a message and a log line each.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from gateway.jobs.queue import Job
from gateway.jobs.worker import Finish, Retryable
from gateway.relay.link import MqttLink, PublishRefused
from gateway.sessions import states as sessions
from gateway.sessions.lifecycle import JobKind, SessionEvent, SessionLifecycle
from gateway.sessions.states import Session
from gateway.store import Connection
from protocol import topics
from protocol.messages import ChunkAcked, NotesReady, SessionFailed, SessionUploaded
from runtime.mqtt import BrokerUnavailable

logger = logging.getLogger(__name__)
CHUNK_ACK_EVERY_S = 1.0

NOTIFIED_EVENTS = {
    SessionEvent.NOTES_READY: "notes_ready",
    SessionEvent.FAILED: "failed",
    SessionEvent.AUDIO_UPLOADED: "session_uploaded",
}
RETRY_AFTER_S = 1.0
# Session errors as codes for the device: the error text may quote Blueprint.
FAILURE_CODES = (
    ("Blueprint could not transcribe", "transcription_failed"),
    ("no speech", "no_speech"),
    ("the room device refused", "start_refused"),
    ("the room device did not confirm", "device_unreachable"),
    ("the room device was offline", "device_offline"),
    ("stopped before the room device started", "nothing_recorded"),
)


def failure_code(error: str | None) -> str:
    """A short code for why a session failed, e.g. ``upload_audio_failed``."""
    if not error:
        return "failed"
    for prefix, code in FAILURE_CODES:
        if error.startswith(prefix):
            return code
    kind = error.split(" ", 1)[0]
    if kind in {str(job_kind) for job_kind in JobKind}:
        return f"{kind}_failed"
    return "failed"


class DeviceNotifier:
    def __init__(self, link: MqttLink, lifecycle: SessionLifecycle) -> None:
        self._link = link
        self._lifecycle = lifecycle
        self._chunk_acks = ChunkAckMirror(self._publish_chunk_acked, CHUNK_ACK_EVERY_S)

    def notifier(self, conn: Connection, session: Session, event: SessionEvent) -> None:
        """Session notifier (on the database thread, inside the event's transaction)."""
        kind = NOTIFIED_EVENTS.get(event)
        if kind is None:
            return
        payload = {"room_id": session.room_id, "session_id": session.id, "type": kind}
        if kind == "failed":
            payload["reason"] = failure_code(session.error)
        self._lifecycle.enqueue(conn, JobKind.NOTIFY_DEVICE, payload)  # runs once committed

    async def handle(self, job: Job) -> Finish:
        payload = job.payload
        message = _message(payload)
        try:
            await self._link.publish(
                topics.topic(payload["room_id"], "notify"), message.model_dump_json()
            )
        except (BrokerUnavailable, PublishRefused) as exc:
            raise Retryable(f"notify {payload['type']}: {exc}", RETRY_AFTER_S) from None
        logger.info("relay: room %s notified: %s %s", payload["room_id"], payload["type"],
                    payload["session_id"])  # fmt: skip
        return functools.partial(  # recorded in the transaction that ends the job
            sessions.add_event,
            session_id=payload["session_id"],
            step="device_notified",
            detail=payload["type"],
        )

    def chunk_acked(self, device_id: str, session_id: str, seq: int) -> None:
        """Ingest listener (on the event loop): mirror a stored chunk on notify."""
        self._chunk_acks.stored(device_id, ChunkAcked(session_id=session_id, seq=seq))

    def _publish_chunk_acked(self, device_id: str, message: ChunkAcked) -> None:
        self._link.publish_nowait(topics.topic(device_id, "notify"), message.model_dump_json())


class ChunkAckMirror:
    """Each device's stored chunks, passed on at most once every ``every_s``: the first at
    once, the newest of those stored meanwhile when the interval ends (so the last chunk
    of a burst is always mirrored). Called on the event loop, which times the flushes."""

    def __init__(self, publish: Callable[[str, ChunkAcked], None], every_s: float) -> None:
        self._publish = publish
        self._every_s = every_s
        self._sent_at: dict[str, float] = {}  # device -> when its last mirror went
        self._waiting: dict[str, ChunkAcked] = {}  # device -> newest not yet mirrored

    def stored(self, device_id: str, message: ChunkAcked) -> None:
        if device_id in self._waiting:  # a flush is due: it takes this one instead
            self._waiting[device_id] = message
            return
        last = self._sent_at.get(device_id)
        wait_s = 0.0 if last is None else last + self._every_s - time.monotonic()
        if wait_s <= 0:
            self._send(device_id, message)
            return
        self._waiting[device_id] = message
        asyncio.get_running_loop().call_later(wait_s, self._flush, device_id)

    def _flush(self, device_id: str) -> None:
        self._send(device_id, self._waiting.pop(device_id))

    def _send(self, device_id: str, message: ChunkAcked) -> None:
        # One entry per device that sent audio: a few hundred.
        self._sent_at[device_id] = time.monotonic()
        self._publish(device_id, message)


def _message(payload: dict) -> NotesReady | SessionFailed | SessionUploaded:
    session_id = payload["session_id"]
    if payload["type"] == "notes_ready":
        return NotesReady(session_id=session_id)
    if payload["type"] == "failed":
        return SessionFailed(session_id=session_id, reason=payload.get("reason", "failed"))
    return SessionUploaded(session_id=session_id)
