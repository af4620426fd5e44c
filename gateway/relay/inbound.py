"""What room devices publish, as the gateway takes it: state, heartbeats and events.

Payloads are parsed with the protocol's models (extra fields forbidden) and must name the
device whose topic they came on; anything else is dropped with a log line naming the topic
and the problem's type, never the payload. Messages from rooms the gateway does not know
are ignored. Each message is one short transaction.

Besides keeping room status, the device's reports are reconciled with the room's desired
state (commands.py: confirmed when the report shows it done, the command sent again when
not), and with the sessions: a device recording a session the gateway has stopped (its
stop expired while it was away, or it resumed after a restart) is sent a stop again, at
most once per command expiry. A device that says it records a session still ``starting``
has started it, whatever became of its confirmation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pydantic import ValidationError

from gateway import rooms
from gateway.relay import room_status
from gateway.relay.commands import Commands, last_for_session
from gateway.sessions import desired
from gateway.sessions import states as sessions
from gateway.store import Connection, Database
from protocol import topics
from protocol.messages import (
    CommandResult,
    DeviceState,
    Heartbeat,
    SessionClosed,
    SessionPaused,
    SessionResumed,
    SessionStarted,
    device_events,
)

logger = logging.getLogger(__name__)


class DeviceMessages:
    def __init__(
        self, db: Database, commands: Commands, command_expiry_s: int, wake: Callable[[], None]
    ) -> None:
        self._db = db
        self._commands = commands
        self._expiry_s = command_expiry_s
        self._wake = wake

    async def handle(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        if parsed is None:
            return
        device_id, kind = parsed
        try:
            if kind == "state":
                message: object = DeviceState.model_validate_json(payload)
            elif kind == "events":
                message = device_events.validate_json(payload)
            else:
                return  # cmd and notify: our own messages
        except ValidationError as exc:
            logger.warning("relay: invalid message on %s (%d errors)", topic, exc.error_count())
            return
        if isinstance(message, DeviceState) and message.device_id != device_id:
            logger.warning("relay: state on %s names another device; ignored", topic)
            return
        queued = await self._db.run(self._apply, device_id, message)
        if queued:
            self._wake()

    def _apply(self, conn: Connection, device_id: str, message: object) -> bool:
        """One message in one transaction; True when it queued a command."""
        if not rooms.exists(conn, device_id):
            return False
        if isinstance(message, DeviceState):
            before = room_status.get(conn, device_id)
            came_online = message.online and (before is None or not before.online)
            room_status.record_state(conn, device_id, message)
            return self._reconcile(conn, device_id, message, came_online)
        if isinstance(message, Heartbeat):
            room_status.record_heartbeat(conn, device_id, message)
        elif isinstance(message, CommandResult):
            self._commands.result(conn, device_id, message)
        elif isinstance(message, SessionStarted):
            if self._session_event(
                conn, device_id, message.session_id, "device_recording",
                "resumed" if message.resumed else None,
            ):  # fmt: skip
                self._commands.started(conn, message.session_id)
        elif isinstance(message, SessionPaused | SessionResumed):
            self._paused(conn, device_id, message)
        elif isinstance(message, SessionClosed):
            detail = f"{message.chunks} chunks, {message.speech_s:.2f} s, {message.reason}"
            if self._session_event(conn, device_id, message.session_id, "device_closed", detail):
                self._commands.room_stopped(conn, message.session_id, message.reason)
        return False

    def _paused(
        self, conn: Connection, device_id: str, message: SessionPaused | SessionResumed
    ) -> None:
        """The device closed (or opened) the microphone to a session, at its time: on the
        timeline; and when the room did it by itself, the session follows."""
        pause = isinstance(message, SessionPaused)
        detail = (
            f"{message.source}, at {message.offset_s:.2f} s"
            if isinstance(message, SessionPaused)
            else message.source
        )
        step = "microphone_closed" if pause else "microphone_opened"
        at = message.at.timestamp()
        session = sessions.get(conn, message.session_id)
        if session is None or session.room_id != device_id:
            return
        sessions.add_event(conn, session.id, step, detail, at=at)
        if message.source != "command":
            self._commands.room_paused(conn, session.id, pause=pause, at=at, source=message.source)

    def _session_event(
        self,
        conn: Connection,
        device_id: str,
        session_id: str,
        step: str,
        detail: str | None,
    ) -> bool:
        """Add the step to the session's timeline if it is this room's; True if it was."""
        session = sessions.get(conn, session_id)
        if session is None or session.room_id != device_id:
            return False
        sessions.add_event(conn, session_id, step, detail)
        return True

    def _reconcile(
        self, conn: Connection, device_id: str, state: DeviceState, came_online: bool
    ) -> bool:
        queued = self._commands.reported(conn, device_id, state, force=came_online)
        if not state.online or state.recorder != "recording" or state.session_id is None:
            return queued
        session = sessions.get(conn, state.session_id)
        if session is None or session.room_id != device_id:
            return queued  # not a partner session (e.g. room-agent record)
        if session.state in ("starting", "recording", "paused"):
            if session.state == "starting":
                self._commands.started(conn, session.id)
            return queued  # as it should be (pause and resume are the desired state's)
        last = last_for_session(conn, session.id, "stop")
        if last is not None and time.time() - last.created_at < self._expiry_s:
            return queued  # a stop is on its way, or was just sent
        sessions.add_event(conn, session.id, "device_still_recording", session.state)
        want = desired.get(conn, device_id)
        mine = want is None or want.session_id == session.id
        self._commands.queue(conn, device_id, session.id, "stop", shadow=mine)
        return True
