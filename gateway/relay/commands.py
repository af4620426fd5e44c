"""Start and stop commands to a room's device: durable, confirmed, or visibly expired.

``POST /v1/sessions`` and ``.../stop`` queue a command in the same transaction as the
session's state change: a row in ``device_commands`` and a ``device_command`` job, which
publishes it on ``rooms/<room>/cmd`` (QoS 1, ids only, MQTT 5 message expiry) as soon as
the broker is reachable. A device that is offline gets it when it reconnects (its session
is persistent), unless ``mqtt.command_expiry_s`` passes first: then the broker drops it
and a ``command_expiry`` job marks it expired on the session's timeline; an unconfirmed
start also fails the session ("the room device did not confirm the start"), since
nothing is being recorded. The device's ``command_result`` event settles the command.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from gateway.jobs.queue import Job
from gateway.jobs.worker import Retryable
from gateway.relay.link import MqttLink, PublishRefused
from gateway.sessions import states as sessions
from gateway.sessions.lifecycle import JobKind, SessionLifecycle
from gateway.store import Connection, Database
from protocol import topics
from protocol.messages import CommandResult, StartCommand, StopCommand
from runtime.mqtt import BrokerUnavailable

logger = logging.getLogger(__name__)

CommandKind = Literal["start", "stop"]
CommandState = Literal["queued", "sent", "ok", "refused", "expired"]
EXPIRY_MARGIN_S = 1.0  # the expiry job runs just after the broker would have dropped it
RETRY_AFTER_S = 1.0  # broker away: try again soon, the command is waited for


@dataclass(frozen=True)
class DeviceCommand:
    id: str
    room_id: str
    session_id: str | None
    kind: CommandKind
    state: CommandState
    reason: str | None
    created_at: float
    expires_at: float
    sent_at: float | None
    answered_at: float | None
    result: str | None = None  # JSON: what a diagnostic command (check, logs) answered


def get(conn: Connection, command_id: str) -> DeviceCommand | None:
    row = conn.execute("SELECT * FROM device_commands WHERE id = ?", (command_id,)).fetchone()
    return DeviceCommand(**dict(row)) if row is not None else None


def last_for_session(conn: Connection, session_id: str, kind: CommandKind) -> DeviceCommand | None:
    row = conn.execute(
        "SELECT * FROM device_commands WHERE session_id = ? AND kind = ?"
        " ORDER BY created_at DESC LIMIT 1",
        (session_id, kind),
    ).fetchone()
    return DeviceCommand(**dict(row)) if row is not None else None


def _set_state(
    conn: Connection, command_id: str, state: CommandState, reason: str | None = None
) -> None:
    now = time.time()
    column = "sent_at" if state == "sent" else "answered_at"
    conn.execute(
        f"UPDATE device_commands SET state = ?, reason = ?, {column} = ? WHERE id = ?",
        (state, reason, now, command_id),
    )


class Commands:
    def __init__(
        self, db: Database, link: MqttLink, lifecycle: SessionLifecycle, expiry_s: int
    ) -> None:
        self._db = db
        self._link = link
        self._lifecycle = lifecycle
        self._expiry_s = expiry_s

    # --- queueing (inside the caller's transaction) -------------------------------------

    def queue(self, conn: Connection, room_id: str, session_id: str, kind: CommandKind) -> str:
        now = time.time()
        command_id = "cmd_" + secrets.token_hex(8)
        conn.execute(
            "INSERT INTO device_commands (id, room_id, session_id, kind, state, created_at,"
            " expires_at) VALUES (?, ?, ?, ?, 'queued', ?, ?)",
            (command_id, room_id, session_id, kind, now, now + self._expiry_s),
        )
        self._lifecycle.enqueue(conn, JobKind.DEVICE_COMMAND, {"command_id": command_id})
        self._lifecycle.enqueue(
            conn,
            JobKind.COMMAND_EXPIRY,
            {"command_id": command_id},
            delay_s=self._expiry_s + EXPIRY_MARGIN_S,
        )
        return command_id

    # --- job handlers -------------------------------------------------------------------

    async def send(self, job: Job) -> None:
        command = await self._db.run(get, job.payload["command_id"], write=False)
        if command is None or command.state != "queued":
            return
        remaining = command.expires_at - time.time()
        if remaining <= 0:
            return  # the expiry job reports it
        message = _message(command)
        try:
            await self._link.publish(
                topics.topic(command.room_id, "cmd"), message.model_dump_json(), int(remaining)
            )
        except BrokerUnavailable as exc:
            raise Retryable(f"{command.kind} command: {exc}", RETRY_AFTER_S) from None
        except PublishRefused as exc:
            raise Retryable(f"{command.kind} command: {exc}") from None
        await self._db.run(self._sent, command)
        logger.info(
            "relay: %s %s sent to room %s", command.kind, command.session_id, command.room_id
        )

    async def expire(self, job: Job) -> None:
        await self._db.run(self._expire, job.payload["command_id"])

    # --- the device's answer (from the relay's inbound messages) ------------------------

    def result(self, conn: Connection, room_id: str, answer: CommandResult) -> None:
        command = get(conn, answer.command_id)
        if command is None or command.room_id != room_id:
            return  # not ours (e.g. a test or a technician pinging the device)
        if command.state in ("ok", "refused"):
            return  # QoS 1 may deliver the answer twice
        _set_state(conn, command.id, "ok" if answer.ok else "refused", answer.reason)
        if command.session_id is None:
            return
        if command.state == "queued":  # answered before the sender recorded its send
            sessions.add_event(conn, command.session_id, f"{command.kind}_sent", command.id)
        if answer.ok:
            sessions.add_event(conn, command.session_id, f"{command.kind}_confirmed")
            return
        reason = answer.reason or "refused"
        sessions.add_event(conn, command.session_id, f"{command.kind}_refused", reason)
        session = sessions.get(conn, command.session_id)
        if command.kind == "start" and session is not None and session.state == "recording":
            self._lifecycle.failed(
                conn, command.session_id, f"the room device refused to start ({reason})"
            )

    # --- transactions -------------------------------------------------------------------

    def _sent(self, conn: Connection, command: DeviceCommand) -> None:
        current = get(conn, command.id)
        if current is None or current.state != "queued":
            return  # answered before we recorded the send
        _set_state(conn, command.id, "sent")
        if command.session_id is not None:
            sessions.add_event(conn, command.session_id, f"{command.kind}_sent", command.id)

    def _expire(self, conn: Connection, command_id: str) -> None:
        command = get(conn, command_id)
        if command is None or command.state not in ("queued", "sent"):
            return
        _set_state(conn, command_id, "expired")
        if command.session_id is None:
            return
        detail = f"no answer from room {command.room_id} within {self._expiry_s} s"
        sessions.add_event(conn, command.session_id, f"{command.kind}_expired", detail)
        session = sessions.get(conn, command.session_id)
        if command.kind == "start" and session is not None and session.state == "recording":
            self._lifecycle.failed(
                conn,
                command.session_id,
                f"the room device did not confirm the start within {self._expiry_s} s",
            )
        logger.warning(
            "relay: %s %s to room %s expired unanswered",
            command.kind,
            command.session_id,
            command.room_id,
        )


def _message(command: DeviceCommand) -> StartCommand | StopCommand:
    assert command.session_id is not None
    if command.kind == "start":
        return StartCommand(command_id=command.id, session_id=command.session_id)
    return StopCommand(command_id=command.id, session_id=command.session_id)
