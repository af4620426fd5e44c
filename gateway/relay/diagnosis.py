"""Ping, level check and logs of a room's device, for a technician at the gateway.

``room-gateway room ping|check|logs`` asks the running gateway (an HTTP request, never a
second MQTT login as the gateway's user: the broker makes the client id the user name, so
that login would knock the relay off). The request handler publishes the command on the
room's ``cmd`` topic itself (no job queue: somebody is waiting, and a late check is of no
use, so its MQTT message expiry is the wait) after recording it in ``device_commands``.

The device answers with a ``command_result`` on its ``events`` topic. With replicas, that
topic is a shared subscription: the broker gives the answer to any one replica, not
necessarily the asking one. So the answer travels through the shared store: whichever
replica receives it writes it on the command's row (:func:`record_answer`, called from
``Commands.result``), and the asking replica watches that row until it is answered or its
deadline passes. The row is deleted once the asker has read it (or given up): a logs
answer is up to the protocol's limit and need not be kept. Ids, numbers and the agent's
own log lines only (the agent logs no names).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from gateway.relay.link import MqttLink, PublishRefused
from gateway.store import Connection, Database
from protocol import topics
from protocol.messages import CheckCommand, CommandResult, LogsCommand, PingCommand
from runtime.mqtt import BrokerUnavailable

logger = logging.getLogger(__name__)

DiagnosticKind = Literal["ping", "check", "logs"]
DIAGNOSTIC_KINDS: tuple[DiagnosticKind, ...] = ("ping", "check", "logs")
DiagnosticCommand = PingCommand | CheckCommand | LogsCommand
POLL_FIRST_S = 0.02  # the asker looks at the row this soon, then less and less often
POLL_MAX_S = 0.2
FORGET_AFTER_S = 3600.0  # rows a killed asker left behind are removed after this


class NoAnswer(Exception):
    """The device did not answer within the wait (offline, or too busy)."""


class NotSent(Exception):
    """The broker did not take the command (the relay is not connected, or it refused)."""


@dataclass(frozen=True)
class Answer:
    ok: bool
    reason: str | None
    round_trip_s: float  # the command's publish to the answer's arrival at a gateway
    result: CommandResult


class RoomDiagnosis:
    def __init__(self, db: Database, link: MqttLink) -> None:
        self._db = db
        self._link = link

    async def ask(self, room_id: str, command: DiagnosticCommand, wait_s: float) -> Answer:
        """Send ``command`` to the room and wait up to ``wait_s`` for its answer."""
        await self._db.run(_insert, command.command_id, room_id, command.type, wait_s)
        try:
            try:
                await self._link.publish(
                    topics.topic(room_id, "cmd"), command.model_dump_json(), int(wait_s) + 1
                )
            except (BrokerUnavailable, PublishRefused) as exc:
                raise NotSent(str(exc)) from None
            return await self._answer(command.command_id, wait_s)
        finally:
            await self._db.run(_forget, command.command_id)

    async def _answer(self, command_id: str, wait_s: float) -> Answer:
        deadline = time.monotonic() + wait_s
        pause = POLL_FIRST_S
        while True:
            found = await self._db.run(_answered, command_id, write=False)
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoAnswer(f"no answer within {wait_s:g} s")
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, POLL_MAX_S)

    @staticmethod
    def new_id() -> str:
        return "diag_" + secrets.token_hex(8)


def record_answer(conn: Connection, command_id: str, answer: CommandResult) -> None:
    """A device's answer to a diagnostic command, as any replica received it."""
    conn.execute(
        "UPDATE device_commands SET state = ?, reason = ?, answered_at = ?, result = ?"
        " WHERE id = ? AND state = 'sent'",
        (
            "ok" if answer.ok else "refused",
            answer.reason,
            time.time(),
            answer.model_dump_json(),
            command_id,
        ),
    )


def _insert(conn: Connection, command_id: str, room_id: str, kind: str, wait_s: float) -> None:
    now = time.time()
    conn.execute(
        "DELETE FROM device_commands WHERE session_id IS NULL AND created_at < ?"
        " AND kind IN ('ping', 'check', 'logs')",
        (now - FORGET_AFTER_S,),
    )
    # 'sent' from the start: the answer may arrive before this request looks again.
    conn.execute(
        "INSERT INTO device_commands (id, room_id, session_id, kind, state, created_at,"
        " expires_at, sent_at) VALUES (?, ?, NULL, ?, 'sent', ?, ?, ?)",
        (command_id, room_id, kind, now, now + wait_s, now),
    )


def _answered(conn: Connection, command_id: str) -> Answer | None:
    row = conn.execute(
        "SELECT state, reason, sent_at, answered_at, result FROM device_commands WHERE id = ?",
        (command_id,),
    ).fetchone()
    if row is None or row["state"] not in ("ok", "refused") or row["result"] is None:
        return None
    return Answer(
        ok=row["state"] == "ok",
        reason=row["reason"],
        round_trip_s=max(0.0, row["answered_at"] - row["sent_at"]),
        result=CommandResult.model_validate_json(row["result"]),
    )


def _forget(conn: Connection, command_id: str) -> None:
    conn.execute("DELETE FROM device_commands WHERE id = ?", (command_id,))
