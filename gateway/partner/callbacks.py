"""The partner's optional callback: ``POST {event, session_id}`` when notes are ready.

Signed the Standard Webhooks way, so partners can verify it with any of that spec's
libraries: headers ``webhook-id`` (stable across retries, for de-duplication),
``webhook-timestamp`` (unix seconds of this attempt) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``). The secret is the
spec's ``whsec_`` + base64 key; any other string is used as the key bytes. Each
callback is a durable job, retried with backoff until the partner answers 2xx.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time

import httpx
from pydantic import SecretStr

from gateway.jobs.queue import Job
from gateway.jobs.worker import Permanent, Retryable
from gateway.sessions import states as sessions
from gateway.sessions.lifecycle import JobKind, SessionEvent, SessionLifecycle
from gateway.sessions.states import Session
from gateway.store import Connection, Database

SECRET_PREFIX = "whsec_"
PARTNER_EVENTS = {
    SessionEvent.NOTES_READY: "notes_ready",
    SessionEvent.NOTE_UPDATED: "note_updated",
    SessionEvent.FAILED: "session_failed",
}


def signing_key(secret: SecretStr) -> bytes:
    text = secret.get_secret_value()
    if text.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(text.removeprefix(SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            pass
    return text.encode("utf-8")


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


class PartnerCallbacks:
    def __init__(
        self,
        db: Database,
        lifecycle: SessionLifecycle,
        url: str,
        secret: SecretStr,
        timeout_s: float,
    ) -> None:
        self._db = db
        self._lifecycle = lifecycle
        self._url = url
        self._key = signing_key(secret)
        self._http = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    def notifier(self, conn: Connection, session: Session, event: SessionEvent) -> None:
        """Session notifier: queue one callback per event, with its message id."""
        if event not in PARTNER_EVENTS:
            return  # e.g. audio_uploaded: not something the partner is called about
        self._lifecycle.enqueue(
            conn,
            JobKind.NOTIFY_PARTNER,
            {
                "session_id": session.id,
                "event": PARTNER_EVENTS[event],
                "message_id": "msg_" + secrets.token_hex(12),
            },
            session_id=None,  # a failing callback must not fail the session
        )

    async def handle(self, job: Job) -> None:
        payload = job.payload
        body = json.dumps(
            {"event": payload["event"], "session_id": payload["session_id"]},
            separators=(",", ":"),
        ).encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": payload["message_id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, payload["message_id"], timestamp, body),
        }
        try:
            response = await self._http.post(self._url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise Retryable(f"partner callback: no response ({type(exc).__name__})") from None
        status = response.status_code
        if status == 410:
            raise Permanent("partner callback: endpoint answered 410 Gone")
        if not 200 <= status < 300:
            raise Retryable(f"partner callback: HTTP {status}")
        await self._db.run(
            sessions.add_event, payload["session_id"], "partner_notified", payload["event"]
        )
