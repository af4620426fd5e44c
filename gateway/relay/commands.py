"""Session commands to a room's device: durable, re-sent until confirmed, or visibly expired.

``POST /v1/sessions`` (and stop, pause, resume) change the room's desired state
(gateway/sessions/desired.py) in the same transaction as the session: a row in
``device_commands`` with a fresh command id, a ``device_command`` job that publishes it on
``rooms/<room>/cmd`` (QoS 1, ids only, MQTT 5 message expiry), and a ``command_expiry``
job at its deadline. The broker may lose it (restarted without persistence, the device's
session gone), the gateway may die before it went out, the device may die before it
answered: so whenever the device's reported state does not match the desired one (each
state message, every reconnection of the gateway, its start) the same command, same id,
is sent again, at most every ``RESEND_AFTER_S``. The device applies each id once and
answers again. The gap is closed by the device's ``command_result``, by its state showing
what was wanted (recording the session, its last command id), or, for a start, by audio of
the session reaching the gateway. A start still unconfirmed at its deadline fails the
session with what it waited for (an offline room, or a room that did not answer).

Order. Each session command has a ``generation`` above every earlier one of its room
(assigned in the transaction that decides it), and the device does not carry out one older
than a command it already carried out (answered "superseded"): however sends from two
replicas or a retry interleave, the room ends doing what was decided last. Within one
gateway the decision and its send are also ordered per room (``ordered``): a send holds the
room's lock from its last look at the desired state to the broker's PUBACK, and a request
that changes the room's commands takes it around its transaction, so a start the partner
overtook is either out before the partner's answer, or never sent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from gateway.ingest import records as ingest_records
from gateway.jobs.queue import Job
from gateway.jobs.worker import Retryable
from gateway.relay import room_status
from gateway.relay.diagnosis import DIAGNOSTIC_KINDS, DiagnosticKind, record_answer
from gateway.relay.link import MqttLink, PublishRefused
from gateway.sessions import desired
from gateway.sessions import states as sessions
from gateway.sessions.desired import Desired, DesiredState
from gateway.sessions.lifecycle import STOPPABLE_FROM, JobKind, SessionLifecycle
from gateway.store import Connection, Database
from protocol import topics
from protocol.messages import (
    SUPERSEDED,
    CommandResult,
    DeviceState,
    PauseCommand,
    ResumeCommand,
    StartCommand,
    StopCommand,
)
from runtime.mqtt import BrokerUnavailable

logger = logging.getLogger(__name__)

CommandKind = Literal["start", "stop", "pause", "resume"]
CommandState = Literal["queued", "sent", "ok", "refused", "expired"]
EXPIRY_MARGIN_S = 1.0  # the expiry job runs just after the broker would have dropped it
RETRY_AFTER_S = 1.0  # broker away: try again soon, the command is waited for
RESEND_AFTER_S = 2.0  # a gap seen again this soon after a send is not sent again yet
DESIRED_BY_KIND: dict[CommandKind, DesiredState] = {
    "start": "recording",
    "resume": "recording",
    "pause": "paused",
    "stop": "stopped",
}
# What a session failed at its start's deadline says it waited for (notify.py maps these
# prefixes to codes for the device).
OFFLINE_AT_DEADLINE = "the room device was offline and did not come online within"
UNANSWERED_AT_DEADLINE = "the room device did not confirm the start within"


@dataclass(frozen=True)
class DeviceCommand:
    id: str
    room_id: str
    session_id: str | None
    kind: CommandKind | DiagnosticKind
    state: CommandState
    reason: str | None
    created_at: float
    expires_at: float
    sent_at: float | None
    answered_at: float | None
    result: str | None = None  # JSON: what a diagnostic command (check, logs) answered
    generation: int | None = None  # its place in the order of the room's decisions


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


def _next_generation(conn: Connection, room_id: str) -> int:
    """Above every earlier command of the room, and at least the clock in microseconds:
    a store started afresh (restored, replaced) still orders above what the device saw.
    Serializable transactions (PostgreSQL) or the one writer (SQLite) make it unique."""
    row = conn.execute(
        "SELECT MAX(generation) AS last FROM device_commands WHERE room_id = ?", (room_id,)
    ).fetchone()
    last = row["last"] if row is not None and row["last"] is not None else 0
    return max(int(last) + 1, time.time_ns() // 1000)


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
        self._room_locks: dict[str, asyncio.Lock] = {}

    def ordered(self, room_id: str) -> asyncio.Lock:
        """The room's order within this gateway: held by a send from its last look at the
        desired state to the broker's answer, and by a request around the transaction that
        changes the room's commands (``async with commands.ordered(room):``)."""
        return self._room_locks.setdefault(room_id, asyncio.Lock())

    # --- queueing (inside the caller's transaction) -------------------------------------

    def queue(
        self,
        conn: Connection,
        room_id: str,
        session_id: str,
        kind: CommandKind,
        *,
        shadow: bool = True,
        wanted: DesiredState | None = None,
    ) -> str:
        """A command for the room, sent as soon as the broker takes it. With ``shadow`` it
        also becomes what the room should do (re-sent until confirmed); without, it is a
        one-off correction (a stop for a session the device should not be recording)."""
        now = time.time()
        command_id = "cmd_" + secrets.token_hex(8)
        if shadow:
            state = wanted or DESIRED_BY_KIND[kind]
            desired.want(conn, room_id, session_id, state, command_id, now + self._expiry_s)
        conn.execute(
            "INSERT INTO device_commands (id, room_id, session_id, kind, state, created_at,"
            " expires_at, generation) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
            (
                command_id, room_id, session_id, kind, now, now + self._expiry_s,
                _next_generation(conn, room_id),
            ),
        )  # fmt: skip
        self._send_job(conn, command_id, room_id)
        self._lifecycle.enqueue(
            conn,
            JobKind.COMMAND_EXPIRY,
            {"command_id": command_id},
            delay_s=self._expiry_s + EXPIRY_MARGIN_S,
        )
        return command_id

    def pause(self, conn: Connection, session: sessions.Session, *, pause: bool) -> bool:
        """The partner paused or resumed ``session`` (already moved by the lifecycle): ask
        the room for it. A session still starting gets a new start that begins paused (or
        not), overtaking the first. Nothing when the room is already asked for that."""
        target: DesiredState = "paused" if pause else "recording"
        want = desired.get(conn, session.room_id)
        if want is not None and want.session_id == session.id and want.state == target:
            return False
        if session.state == "starting":
            self.queue(conn, session.room_id, session.id, "start", wanted=target)
        else:
            self.queue(conn, session.room_id, session.id, "pause" if pause else "resume")
        return True

    def room_paused(self, conn: Connection, session_id: str, *, pause: bool, at: float,
                    source: str) -> None:  # fmt: skip
        """The room paused or resumed by itself (a button, its privacy switch): that is now
        what the room should do, nothing to send."""
        session = sessions.get(conn, session_id)
        if session is None:
            return
        moved = self._lifecycle.room_paused(conn, session_id, pause=pause, source=source, at=at)
        if moved is not None:
            target: DesiredState = "paused" if pause else "recording"
            desired.want(conn, session.room_id, session_id, target, None, None, origin="room")

    def room_stopped(self, conn: Connection, session_id: str, reason: str) -> None:
        """The room closed the session by itself (its button, a full spool, a lost
        microphone): it is stopping, its audio on its way; nothing to send."""
        moved = sessions.transition(
            conn, session_id, "stopping", STOPPABLE_FROM, step="stopped",
            detail=f"in the room ({reason})",
        )  # fmt: skip
        if moved is not None:
            desired.want(conn, moved.room_id, session_id, "stopped", None, None, origin="room")

    def reissue(self, conn: Connection, room_id: str, force: bool = False) -> bool:
        """Send the room's desired command again if the gap is still open (same id: the
        device applies it once). Not within ``RESEND_AFTER_S`` of the last send unless
        ``force`` (the broker or the gateway has just come back). True when queued."""
        want = desired.get(conn, room_id)
        if want is None or want.command_id is None or not want.open:
            return False
        if (
            not force
            and want.last_sent_at is not None
            and time.time() - want.last_sent_at < RESEND_AFTER_S
        ):
            return False
        command = get(conn, want.command_id)
        if command is None or command.state not in ("queued", "sent"):
            return False
        self._send_job(conn, command.id, room_id)
        return True

    def reissue_all(self, conn: Connection) -> int:
        """Every open gap, at once: after the gateway (re)connected to the broker."""
        return sum(self.reissue(conn, want.room_id, force=True) for want in desired.open_gaps(conn))

    def _send_job(self, conn: Connection, command_id: str, room_id: str) -> None:
        self._lifecycle.enqueue(
            conn,
            JobKind.DEVICE_COMMAND,
            {"command_id": command_id, "room_id": room_id},
            key=f"{JobKind.DEVICE_COMMAND}:{command_id}",
        )

    # --- job handlers -------------------------------------------------------------------

    async def send(self, job: Job) -> None:
        command_id = job.payload["command_id"]
        room_id = job.payload.get("room_id")
        if room_id is None:  # a job queued before commands named their room
            queued = await self._db.run(get, command_id, write=False)
            if queued is None:
                return
            room_id = queued.room_id
        async with self.ordered(room_id):
            found = await self._db.run(_to_send, command_id, write=False)
            if found is None:
                return
            command, want = found
            remaining = command.expires_at - time.time()
            if remaining <= 0:
                return  # the expiry job reports it
            message = _message(command, want)
            try:
                await self._link.publish(
                    topics.topic(command.room_id, "cmd"), message.model_dump_json(), int(remaining)
                )
            except BrokerUnavailable as exc:
                raise Retryable(f"{command.kind} command: {exc}", RETRY_AFTER_S) from None
            except PublishRefused as exc:
                raise Retryable(f"{command.kind} command: {exc}") from None
        sends = await self._db.run(self._sent, command)
        logger.info(
            "relay: %s %s (%s) sent to room %s (%s)",
            command.kind,
            command.session_id,
            command.id,
            command.room_id,
            "first" if sends <= 1 else f"again, {sends}",
        )

    async def expire(self, job: Job) -> None:
        await self._db.run(self._expire, job.payload["command_id"])

    # --- the device's answer and reports (from the relay's inbound messages) ------------

    def result(self, conn: Connection, room_id: str, answer: CommandResult) -> None:
        command = get(conn, answer.command_id)
        if command is None or command.room_id != room_id:
            return  # not ours (e.g. a test or a technician pinging the device)
        if command.kind in DIAGNOSTIC_KINDS:
            record_answer(conn, command.id, answer)  # for the replica that asked
            return
        if command.state in ("ok", "refused"):
            return  # QoS 1 may deliver the answer twice; a re-sent command is answered again
        if not answer.ok and answer.reason == SUPERSEDED:
            # It reached the room after a later decision: nothing to do, nothing failed.
            self._settled(conn, command, "refused", SUPERSEDED)
            return
        desired.confirm(conn, room_id, command.id)
        if answer.ok:
            self._settled(conn, command, "ok", None)
            return
        reason = answer.reason or "refused"
        self._settled(conn, command, "refused", reason)
        if command.session_id is None:
            return
        session = sessions.get(conn, command.session_id)
        if session is None:
            return
        if command.kind == "start" and session.state in ("starting", "recording", "paused"):
            self._lifecycle.failed(
                conn, command.session_id, f"the room device refused to start ({reason})"
            )
        elif command.kind == "resume" and session.state == "recording":
            # e.g. the room's "do not record" switch is on: it stays paused, visibly.
            self.room_paused(
                conn, session.id, pause=True, at=time.time(), source=f"resume_refused:{reason}"
            )
        elif (
            command.kind == "stop"
            and session.state == "stopping"
            and reason == "not_recording"
            and ingest_records.received(conn, command.session_id) is None
        ):
            self._lifecycle.failed(
                conn,
                command.session_id,
                "stopped before the room device started recording: nothing was recorded",
            )

    def reported(
        self, conn: Connection, room_id: str, state: DeviceState, force: bool = False
    ) -> bool:
        """The device's state against the desired one: confirm what it shows done, ask
        again for what it does not (if online; at once with ``force``: it has just come
        online, so what was sent before may never have reached it). True when queued."""
        want = desired.get(conn, room_id)
        if want is None or want.command_id is None or want.confirmed_at is not None:
            return False
        if _satisfied(want, state) and not _reported_before(conn, want, state):
            desired.confirm(conn, room_id, want.command_id)
            command = get(conn, want.command_id)
            if command is not None and command.state in ("queued", "sent"):
                self._settled(conn, command, "ok", None, how="the device reports it")
            return False
        if not state.online:
            return False
        return self.reissue(conn, room_id, force=force)

    def started(self, conn: Connection, session_id: str) -> None:
        """The device says it records the session (an event or its state): its start is
        done, even if the answer to it was lost."""
        session = sessions.get(conn, session_id)
        if session is None:
            return
        want = desired.get(conn, session.room_id)
        if (
            want is not None
            and want.session_id == session_id
            and want.command_id is not None
            and want.confirmed_at is None
            and want.state == "recording"
        ):
            command = get(conn, want.command_id)
            if command is not None and command.kind == "start":
                desired.confirm(conn, session.room_id, command.id)
                if command.state in ("queued", "sent"):
                    self._settled(conn, command, "ok", None, how="the device reports it")
        self._lifecycle.recording_started(conn, session_id, "the device reports it")

    def _settled(
        self,
        conn: Connection,
        command: DeviceCommand,
        state: CommandState,
        reason: str | None,
        how: str | None = None,
    ) -> None:
        _set_state(conn, command.id, state, reason)
        if command.session_id is None:
            return
        if command.state == "queued":
            # The device answered (or showed it done) before the sender recorded its send.
            sessions.add_event(conn, command.session_id, f"{command.kind}_sent", command.id)
        if reason == SUPERSEDED:
            sessions.add_event(conn, command.session_id, f"{command.kind}_superseded", command.id)
            return
        if state == "refused":
            sessions.add_event(conn, command.session_id, f"{command.kind}_refused", reason)
            return
        sessions.add_event(conn, command.session_id, f"{command.kind}_confirmed", how)
        if command.kind == "start":
            self._lifecycle.recording_started(conn, command.session_id, "start confirmed")

    # --- transactions -------------------------------------------------------------------

    def _sent(self, conn: Connection, command: DeviceCommand) -> int:
        """Record a send; the number of sends of this command so far."""
        desired.mark_sent(conn, command.room_id, command.id)
        want = desired.get(conn, command.room_id)
        sends = want.sends if want is not None and want.command_id == command.id else 1
        current = get(conn, command.id)
        if current is None or current.state != "queued":
            if current is not None and current.state == "sent" and command.session_id:
                sessions.add_event(
                    conn, command.session_id, f"{command.kind}_resent", f"{command.id} #{sends}"
                )
            return sends
        _set_state(conn, command.id, "sent")
        if command.session_id is not None:
            sessions.add_event(conn, command.session_id, f"{command.kind}_sent", command.id)
        return sends

    def _expire(self, conn: Connection, command_id: str) -> None:
        command = get(conn, command_id)
        if command is None or command.state not in ("queued", "sent"):
            return
        _set_state(conn, command_id, "expired")
        if command.session_id is None:
            return
        detail = f"no answer from room {command.room_id} within {self._expiry_s} s"
        sessions.add_event(conn, command.session_id, f"{command.kind}_expired", detail)
        want = desired.get(conn, command.room_id)
        current = want is None or want.command_id == command.id
        session = sessions.get(conn, command.session_id)
        # No confirmation and no audio: nothing is recorded; say what was waited for.
        if command.kind == "start" and current and session and session.state == "starting":
            status = room_status.get(conn, command.room_id)
            online = status is not None and status.online
            waited = UNANSWERED_AT_DEADLINE if online else OFFLINE_AT_DEADLINE
            self._lifecycle.failed(conn, command.session_id, f"{waited} {self._expiry_s} s")
        logger.warning(
            "relay: %s %s to room %s expired unanswered",
            command.kind,
            command.session_id,
            command.room_id,
        )


def _to_send(conn: Connection, command_id: str) -> tuple[DeviceCommand, Desired | None] | None:
    """The command, if it is still to be sent: not answered, and not a start that a later
    command for its session overtook (a stop, or a start that begins paused: the room
    must not record even briefly what the partner no longer wants recorded)."""
    command = get(conn, command_id)
    if command is None or command.state not in ("queued", "sent"):
        return None
    want = desired.get(conn, command.room_id)
    if (
        command.kind == "start"
        and want is not None
        and want.session_id == command.session_id
        and want.command_id != command.id
    ):
        return None
    return command, want


def _reported_before(conn: Connection, want: Desired, state: DeviceState) -> bool:
    """Does the state name a command decided before the wanted one? Then it was sent
    before the device could carry the wanted one out (a late report: seen under load, a
    "recording" from before a pause arriving after the resume was decided), and what it
    shows says nothing of the wanted command."""
    if state.last_command_id is None or state.last_command_id == want.command_id:
        return False
    named = get(conn, state.last_command_id)
    wanted = get(conn, want.command_id) if want.command_id is not None else None
    if named is None or wanted is None or named.room_id != wanted.room_id:
        return False  # not one of ours (another store, a technician's ping): look only
    if named.generation is not None and wanted.generation is not None:
        return named.generation < wanted.generation
    return named.created_at < wanted.created_at


def _satisfied(want: Desired, state: DeviceState) -> bool:
    """Does the device's report show the desired state done?"""
    if state.last_command_id == want.command_id and state.online:
        return _matches(want, state) or want.state == "stopped"
    return state.online and _matches(want, state)


def _matches(want: Desired, state: DeviceState) -> bool:
    recording_it = state.recorder == "recording" and state.session_id == want.session_id
    if want.state == "recording":
        return recording_it and not state.paused
    if want.state == "paused":
        return recording_it and state.paused
    return not recording_it and state.session_id == want.session_id


def _message(
    command: DeviceCommand, want: Desired | None
) -> StartCommand | StopCommand | PauseCommand | ResumeCommand:
    assert command.session_id is not None
    session_id = command.session_id
    ids = {"command_id": command.id, "session_id": session_id, "generation": command.generation}
    if command.kind == "start":
        paused = want is not None and want.command_id == command.id and want.state == "paused"
        return StartCommand(**ids, paused=paused)
    if command.kind == "pause":
        return PauseCommand(**ids)
    if command.kind == "resume":
        return ResumeCommand(**ids)
    return StopCommand(**ids)
