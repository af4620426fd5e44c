"""Notifications to a room's device on ``rooms/<room>/notify``: ids and codes, never text.

``notes_ready``, ``failed`` and ``session_uploaded`` are durable: a session notifier queues
a ``notify_device`` job in the transaction of the session event, which the worker starts
as soon as that transaction commits, so the device hears of it within milliseconds, and
later if the broker is away (retried; on reconnection at once). Delivery is at least once
(a retry after a lost PUBACK repeats it); the device keeps the last notification per
session. ``chunk_acked`` is best effort: the HTTP 200 is the acknowledgement that counts,
the notification only mirrors it.
"""

from __future__ import annotations

import functools
import logging

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
        """Ingest listener: mirror a stored chunk on notify (best effort)."""
        message = ChunkAcked(session_id=session_id, seq=seq)
        self._link.publish_nowait(topics.topic(device_id, "notify"), message.model_dump_json())


def _message(payload: dict) -> NotesReady | SessionFailed | SessionUploaded:
    session_id = payload["session_id"]
    if payload["type"] == "notes_ready":
        return NotesReady(session_id=session_id)
    if payload["type"] == "failed":
        return SessionFailed(session_id=session_id, reason=payload.get("reason", "failed"))
    return SessionUploaded(session_id=session_id)
