"""The MQTT control plane (paho-mqtt, MQTT 5, QoS 1): commands in, state and events out.

The device is a broker client whose user name and client id are its device id, so the
broker's ACL (``rooms/%u/#``) confines it to its own topics. It keeps a persistent session
(clean start off, a session expiry), so a command sent while it is away (a restart, a
network outage) is delivered when it is back. Its last will is the retained
``rooms/<id>/state`` with online=False (its other fields are as of the connection: read
only ``online`` from it); the retained state is republished on every recorder change, at
every (re)connection and with every heartbeat, so it also carries the current backlog.

Recording never waits for the broker: while it is away, events are kept in a bounded
buffer and sent after reconnecting (the state is not buffered: the current one is sent at
reconnection), and the connection is kept up by runtime/mqtt_connection.py (backoff with
jitter, the will refreshed at each attempt, credentials re-read when refused). Only this
module's own threads touch the paho client while it is not running its network thread:
paho's socket is not safe for two writers.

Commands run one at a time on a thread of their own (a stop waits for the session to be
closed in the spool), and each gets a CommandResult on ``events``: a start while another
session records is refused ("already_recording"), a repeated start of the session being
recorded is fine (QoS 1 may deliver twice), a stop of anything but the current session is
refused ("not_recording"). Start, stop, pause and resume are applied once per command id
(agent/link/applied.py): the gateway re-sends its desired command until the device's
state names it as the last applied, and a repeat gets the first answer again. A command
older (by the gateway's ``generation``) than one already carried out is answered
"superseded" and not carried out: the room ends doing what the gateway decided last.
Notifications (chunk acked, uploaded, notes ready, failed) are kept, the last per session,
and logged by id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, SecretStr, ValidationError

from agent.link.applied import AppliedCommands
from agent.link.device_status import DeviceStatus
from agent.link.diagnosis import LogRing, recent_logs, room_check
from agent.pipeline.audio import AudioInputError
from agent.pipeline.recorder import Recorder, RecorderError, RecorderListener, RecorderSnapshot
from agent.privacy import PrivacySwitch
from agent.settings import MqttSettings
from agent.spool import SpoolError, SpoolFull
from protocol import topics
from protocol.manifest import SessionManifest
from protocol.messages import (
    SUPERSEDED,
    CheckCommand,
    ChunkSpooled,
    CommandResult,
    DeviceReason,
    LogsCommand,
    Notification,
    PauseCommand,
    PingCommand,
    ResumeCommand,
    SessionClosed,
    SessionPaused,
    SessionResumed,
    SessionStarted,
    StartCommand,
    StopCommand,
    commands,
    notifications,
)
from runtime.mqtt import new_client, persistent_session
from runtime.mqtt_connection import ConnectionSupervisor

log = logging.getLogger(__name__)

STOP_WAIT_S = 30.0  # how long a stop command waits for the session to be closed
GOODBYE_WAIT_S = 2.0  # how long stop() waits for the broker to take the offline state
EVENT_BUFFER = 1000  # events kept while the broker is away
NOTIFIED_KEPT = 256  # sessions whose last notification is remembered
SESSION_COMMANDS = (StartCommand, StopCommand, PauseCommand, ResumeCommand)


class ControlLink(RecorderListener):
    def __init__(
        self,
        settings: MqttSettings,
        device_id: str,
        recorder: Recorder,
        status: DeviceStatus,
        password: SecretStr | None = None,
        applied: AppliedCommands | None = None,
        privacy: PrivacySwitch | None = None,
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.recorder = recorder
        self.status = status
        self.applied = applied if applied is not None else AppliedCommands(None)
        status.applied = self.applied
        self.privacy = privacy
        # Told (on paho's thread: return fast) of each notification, and of the connection
        # coming and going: the room's feedback.
        self.on_notification: list[Callable[[Notification], None]] = []
        self.on_connection: list[Callable[[bool], None]] = []
        self._lock = threading.Lock()  # paho's client, _online, the buffer: short holds only
        self._state_order = threading.Lock()  # taken before _lock, never after it
        self._online = False
        self._buffer: deque[tuple[str, str]] = deque(maxlen=EVENT_BUFFER)
        self._notified: OrderedDict[str, Notification] = OrderedDict()
        self.log_ring: LogRing | None = None  # the lines a logs command may send
        status.control_problem = self.problem
        self._commands: queue.Queue[bytes | None] = queue.Queue()
        self._refusing = threading.Event()
        self._executing = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Reconnection is the supervisor's, not paho's.
        self.client = new_client(settings, device_id, device_id, password)
        self._connection = ConnectionSupervisor(
            self.client,
            settings,
            log,
            "control",
            clean_start=False,
            properties=lambda: persistent_session(settings),
            before_connect=self._refresh_will,
            while_connected=self._hold,
        )
        # Told when the broker refuses the credentials: re-read them (a rotation?); a new
        # password comes back through use_password().
        self.on_refused_credentials = self._connection.on_refused_credentials
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # -- lifecycle

    def start(self) -> None:
        self._connection.start()
        thread = threading.Thread(target=self._run_commands, name="commands", daemon=True)
        thread.start()
        self._threads.append(thread)

    def refuse_commands(self) -> None:
        """From now on commands are answered "shutting_down" (so the sender can try again
        later); returns once the command in progress, if any, is done."""
        self._refusing.set()
        with self._executing:
            pass

    def stop(self) -> None:
        """Say goodbye (the retained state goes offline) and disconnect. The broker keeps
        the session, so commands sent meanwhile arrive at the next start."""
        self.refuse_commands()
        self._connection.stop(STOP_WAIT_S)
        self._commands.put(None)
        for thread in self._threads:
            thread.join(STOP_WAIT_S)
        with self._lock:
            online, self._online = self._online, False
        if online:
            info = self.client.publish(
                self._topic("state"), self._state_json(online=False), qos=1, retain=True
            )
            # If the connection is already gone, the last will says offline instead.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(GOODBYE_WAIT_S)
        self._connection.close()

    def alive(self) -> bool:
        """The connection supervisor and the command thread are running (for the watchdog)."""
        threads = all(thread.is_alive() for thread in self._threads)
        return threads and self._connection.alive()

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._online

    def problem(self) -> DeviceReason | None:
        """broker_not_authorized while the broker refuses this device's credentials."""
        return DeviceReason.BROKER_NOT_AUTHORIZED if self._connection.not_authorized else None

    def use_password(self, password: SecretStr) -> None:
        """The next connection attempt logs in with ``password`` (a rotation)."""
        self.client.username_pw_set(self.device_id, password.get_secret_value())

    def notifications(self) -> dict[str, Notification]:
        """The last notification per session (newest sessions kept)."""
        with self._lock:
            return dict(self._notified)

    # -- recorder events (on the recorder's thread: never block)

    def session_started(self, event: SessionStarted) -> None:
        self._send_event(event)

    def chunk_spooled(self, event: ChunkSpooled) -> None:
        self._send_event(event)

    def session_closed(self, event: SessionClosed, manifest: SessionManifest) -> None:
        self._send_event(event)

    def session_paused(self, event: SessionPaused) -> None:
        self._send_event(event)

    def session_resumed(self, event: SessionResumed) -> None:
        self._send_event(event)

    def state_changed(self, snapshot: RecorderSnapshot) -> None:
        self.publish_state()

    def publish_state(self) -> None:
        """The retained state, now; skipped while offline (sent again on reconnection).

        Built under ``_state_order`` only (states go out in the order they were built), not
        under ``_lock``: building reads the spool and files, and the recorder's events,
        which must never wait, take ``_lock``."""
        with self._state_order:
            payload = self._state_json(online=True)
            with self._lock:
                if self._online:
                    self._publish("state", payload, retain=True)

    # -- publishing

    def _send_event(self, event: BaseModel) -> None:
        payload = event.model_dump_json()
        with self._lock:
            if self._online:
                self._publish("events", payload)
                return
            if len(self._buffer) == self._buffer.maxlen:
                log.warning("control: broker away; oldest buffered event dropped")
            self._buffer.append(("events", payload))

    def _publish(self, kind: topics.TopicKind, payload: str, retain: bool = False) -> None:
        """Caller holds ``_lock`` and the network thread is running."""
        info = self.client.publish(self._topic(kind), payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("control: %s not queued (%s)", kind, mqtt.error_string(info.rc))

    def _topic(self, kind: topics.TopicKind) -> str:
        return topics.topic(self.device_id, kind)

    def _state_json(self, online: bool) -> str:
        return self.status.state(online=online).model_dump_json()

    # -- connection (the supervisor's thread)

    def _refresh_will(self) -> None:
        """The will is the state as of this attempt, not of the first connection."""
        self.client.will_set(
            self._topic("state"), self._state_json(online=False), qos=1, retain=True
        )

    def _hold(self) -> None:
        """Heartbeats (with a state refresh) until the connection drops or stop()."""
        due = time.monotonic()
        while True:
            if time.monotonic() >= due:
                self._heartbeat()
                due += self.settings.heartbeat_s
            if self._connection.wait_lost(max(0.0, due - time.monotonic())):
                return

    def _heartbeat(self) -> None:
        try:
            beat = self.status.heartbeat().model_dump_json()
        except Exception:
            log.exception("control: heartbeat not built")
            return
        with self._lock:
            if self._online:
                self._publish("events", beat)
        self.publish_state()

    # -- paho callbacks (on paho's network thread)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._connection.answered(reason_code)
            return
        options = SubscribeOptions(qos=1)
        client.subscribe([(self._topic("cmd"), options), (self._topic("notify"), options)])
        with self._state_order:
            state = self._state_json(online=True)  # reads the spool: before taking _lock
            with self._lock:
                self._online = True
                self._publish("state", state, retain=True)
                while self._buffer:  # in order, before any event sent from now on
                    kind, payload = self._buffer.popleft()
                    self._publish(kind, payload)  # type: ignore[arg-type]
        self._connection.answered(reason_code)
        self._tell(self.on_connection, True)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._online = False
        self._connection.dropped(reason_code)
        self._tell(self.on_connection, False)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties,
    ) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            log.warning("control: subscription refused by the broker (%s)", ", ".join(refused))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        parsed = topics.parse(message.topic)
        if parsed is None or parsed[0] != self.device_id:
            return
        if parsed[1] == "cmd":
            self._commands.put(bytes(message.payload))
        elif parsed[1] == "notify":
            self._notified_of(bytes(message.payload))

    # -- commands (the commands thread)

    def _run_commands(self) -> None:
        while (payload := self._commands.get()) is not None:
            with self._executing:
                try:
                    self._execute(payload)
                except Exception:
                    log.exception("control: command failed")

    def _execute(self, payload: bytes) -> None:
        try:
            command = commands.validate_json(payload)
        except ValidationError:
            command_id = _command_id(payload)
            log.warning("control: invalid command %s ignored", command_id or "(no id)")
            if command_id is not None:
                self._result(command_id, False, "invalid_command")
            return
        session_command = isinstance(command, SESSION_COMMANDS)
        earlier = self.applied.answer(command.command_id) if session_command else None
        generation = command.generation if isinstance(command, SESSION_COMMANDS) else None
        if earlier is None and self.applied.stale(generation):
            # Overtaken on its way by a later decision already carried out: the room
            # does what the gateway decided last, never what it decided before.
            log.info("control: %s %s superseded: not carried out", command.type, command.command_id)
            self._result(command.command_id, False, SUPERSEDED)
            return
        if earlier is not None:
            # Sent again (the gateway did not see the answer, or the broker repeated it):
            # answered as the first time, not carried out twice.
            log.info("control: %s %s again: answered as before", command.type, command.command_id)
            self._result(command.command_id, earlier.ok, earlier.reason)
            self.publish_state()
            return
        reason: str | None
        if self._refusing.is_set():
            ok, reason = False, "shutting_down"
        elif isinstance(command, StartCommand):
            ok, reason = self._start(command.session_id, command.paused)
        elif isinstance(command, StopCommand):
            ok, reason = self._stop(command.session_id)
        elif isinstance(command, PauseCommand):
            ok, reason = self._pause(command.session_id, pause=True)
        elif isinstance(command, ResumeCommand):
            ok, reason = self._pause(command.session_id, pause=False)
        elif isinstance(command, PingCommand):
            ok, reason = True, None
        elif isinstance(command, CheckCommand | LogsCommand):
            self._diagnose(command)
            return
        else:
            ok, reason = False, "not_supported"
        log.info(
            "control: %s %s: %s",
            command.type,
            getattr(command, "session_id", command.command_id),
            "ok" if ok else reason,
        )
        if session_command and reason != "shutting_down":
            self.applied.applied(command.command_id, ok, reason, generation)
        self._result(command.command_id, ok, reason)
        if session_command:
            self.publish_state()  # with its last_command_id

    def _diagnose(self, command: CheckCommand | LogsCommand) -> None:
        """`room-gateway room check|logs`: numbers and the agent's own log lines only."""
        answer = CommandResult(command_id=command.command_id[:64], ok=True)
        if isinstance(command, LogsCommand):
            answer.logs = recent_logs(self.log_ring, command)
        elif self.recorder.state.state in ("recording", "closing"):
            answer.ok, answer.reason = False, "recording"  # never disturbed
        elif (refusal := self.status.start_refusal()) is not None:
            answer.ok, answer.reason = False, refusal
        else:
            answer.check, answer.reason = room_check(self.recorder.settings.audio, command)
            answer.ok = answer.check is not None
        log.info("control: %s %s: %s", command.type, command.command_id, answer.reason or "ok")
        self._send_event(answer)

    def _start(self, session_id: str, paused: bool = False) -> tuple[bool, str | None]:
        snapshot = self.recorder.state
        if snapshot.session_id == session_id and snapshot.state == "recording":
            # A new start of the session being recorded (a repeat of the same id was
            # answered before this): the partner paused or resumed it while the gateway
            # still waited for the room; this start says which, so follow it.
            if paused != snapshot.paused:
                return self._pause(session_id, pause=paused)
            return True, None
        if snapshot.session_id == session_id and snapshot.state in ("closing", "closed"):
            return False, "session_closed"
        if snapshot.state in ("recording", "closing"):
            return False, "already_recording"
        if self.privacy is not None and self.privacy.engaged:
            return False, "do_not_record"
        refusal = self.status.start_refusal()
        if refusal is not None:
            return False, refusal
        try:
            self.recorder.start(session_id, paused=paused)
        except RecorderError:
            return False, "already_recording"
        except SpoolFull:
            return False, "spool_full"
        except AudioInputError:
            presence = self.status.microphone_presence
            state = presence.failed_to_open() if presence is not None else "unavailable"
            return False, f"microphone_{state}"
        except SpoolError:
            return False, "spool_error"
        return True, None

    def _pause(self, session_id: str, pause: bool) -> tuple[bool, str | None]:
        """Pause or resume the session being recorded; repeating it is fine."""
        snapshot = self.recorder.state
        if snapshot.session_id != session_id or snapshot.state != "recording":
            return False, "not_recording"
        if not pause and self.privacy is not None and self.privacy.engaged:
            return False, "do_not_record"  # the room's switch wins over the partner
        try:
            if pause:
                self.recorder.pause("command")
            else:
                self.recorder.resume("command")
        except RecorderError:
            return False, "not_recording"
        return True, None

    def _stop(self, session_id: str) -> tuple[bool, str | None]:
        snapshot = self.recorder.state
        if snapshot.session_id == session_id and snapshot.state == "recording":
            self.recorder.stop(STOP_WAIT_S)
            return True, None
        if snapshot.session_id == session_id and snapshot.state in ("closing", "closed"):
            return True, None  # delivered twice
        if snapshot.state in ("idle", "closed") and self.recorder.interrupted_session == session_id:
            self.recorder.close_interrupted()  # interrupted and not resumed: close it now
            return True, None
        return False, "not_recording"

    def _result(self, command_id: str, ok: bool, reason: str | None) -> None:
        self._send_event(CommandResult(command_id=command_id[:64], ok=ok, reason=reason))

    # -- notifications

    def _notified_of(self, payload: bytes) -> None:
        try:
            notification = notifications.validate_json(payload)
        except ValidationError:
            log.warning("control: invalid notification ignored")
            return
        session_id = notification.session_id
        with self._lock:
            self._notified[session_id] = notification
            self._notified.move_to_end(session_id)
            while len(self._notified) > NOTIFIED_KEPT:
                self._notified.popitem(last=False)
        self._tell(self.on_notification, notification)
        if notification.type == "failed":
            log.warning(
                "control: session %s failed at the gateway (%s)", session_id, notification.reason
            )
        else:
            log.info("control: session %s: %s", session_id, notification.type)

    @staticmethod
    def _tell(listeners: list, value: object) -> None:
        for listener in list(listeners):
            try:
                listener(value)
            except Exception:
                log.exception("control: a listener failed")


def _command_id(payload: bytes) -> str | None:
    """The command id of a command that is otherwise invalid, to answer it."""
    try:
        value = json.loads(payload).get("command_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None
