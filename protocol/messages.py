"""MQTT payloads between room devices and the gateway: ids, states and numbers only.

No names, no note text, no audio ever travel over MQTT; the models forbid extra fields so
nothing else can be slipped in. Each topic carries one discriminated union on ``type``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from protocol.ids import DeviceId, SessionId
from protocol.manifest import CloseReason

RecorderState = Literal["idle", "recording", "closing", "closed"]
# The configured input device: there and opening, not found (unplugged, wrong name), or
# there but not opening (busy, unsupported format). None: not known yet.
MicrophoneState = Literal["ok", "missing", "unavailable"]
# Is the key the device seals to the gateway's? verified (the gateway's fingerprint
# matches), mismatch (it does not: recording is refused), unverified (not asked yet).
SealingKeyState = Literal["verified", "mismatch", "unverified"]
Code = Annotated[str, Field(max_length=64, pattern=r"^[a-z0-9_.:-]*$")]
CommandId = Annotated[str, Field(max_length=64)]
# Who paused or resumed a session: the gateway's command (the partner), a button in the
# room, or the room's "do not record" switch.
PauseSource = Literal["command", "button", "do_not_record"]


class DeviceReason(StrEnum):
    """Every problem code a device reports: the state's ``reason`` (the recorder's first,
    then the sealing key, the microphone, the broker, the uplink) and the watchdog's
    health codes. One list, so the device that produces a code and the diagnostics that
    explain it (agent/diagnostics/findings.py has a fix for each) cannot drift apart; on
    the wire ``reason`` stays a plain code, so a gateway reads older devices' codes too."""

    # the recorder: why the session stopped recording
    SPOOL_FULL = "spool_full"
    DEVICE_LOST = "device_lost"  # the microphone went away mid-session
    RECORDER_FAILED = "recorder_failed"  # a bug or an unexpected error: see the log
    CLOSE_FAILED = "close_failed"  # the session could not be closed in the spool
    # the spool: an entry it cannot read nor move aside; audio lost with a deleted spool
    SPOOL_ENTRY_SKIPPED = "spool_entry_skipped"
    SPOOL_LOST = "spool_lost"
    # what refuses a start
    SEALING_KEY_MISMATCH = "sealing_key_mismatch"
    MICROPHONE_MISSING = "microphone_missing"
    MICROPHONE_UNAVAILABLE = "microphone_unavailable"
    # the MQTT link
    BROKER_NOT_AUTHORIZED = "broker_not_authorized"
    # the uplink: the gateway not taking audio
    UNAUTHORIZED = "unauthorized"  # the gateway does not know the device's token
    DEVICE_REVOKED = "device_revoked"
    NOT_THE_GATEWAY = "not_the_gateway"  # a 401/403 without the gateway's problem code
    GATEWAY_UNREACHABLE = "gateway_unreachable"
    GATEWAY_ERROR = "gateway_error"  # 5xx
    GATEWAY_REFUSED = "gateway_refused"  # another 4xx (or 3xx) the uplink does not expect
    BAD_RECEIPT = "bad_receipt"  # a 2xx whose receipt is not for what was sent
    CHUNK_CONFLICT = "chunk_conflict"
    CHUNK_TOO_LARGE = "chunk_too_large"
    CHUNK_FOREIGN = "chunk_foreign"  # the gateway says the session is another device's
    CHUNK_REJECTED = "chunk_rejected"  # set aside: the gateway cannot use it
    CHUNK_CORRUPT = "chunk_corrupt"  # set aside: the spool's copy is damaged
    MANIFEST_REFUSED = "manifest_refused"
    # the watchdog (the status file's ``health``)
    SPOOL_UNUSABLE = "spool_unusable"
    SPOOL_READ_ONLY = "spool_read_only"
    RECORDER_THREAD_GONE = "recorder_thread_gone"
    UPLINK_THREAD_GONE = "uplink_thread_gone"
    CONTROL_THREAD_GONE = "control_thread_gone"


def now() -> datetime:
    return datetime.now(UTC)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: datetime = Field(default_factory=now)


class ChunkRefusal(BaseModel):
    """The gateway's latest refusal of this device's audio: which chunk, and its reason."""

    model_config = ConfigDict(extra="forbid")

    session_id: SessionId
    seq: int | None = Field(default=None, description="None: the session's manifest")
    status: int = Field(ge=100, le=599, description="the gateway's HTTP status")
    code: Code = Field(description="the gateway's stable reason code, e.g. wrong_key")


# rooms/{device}/state — retained; the last will publishes online=False.
class DeviceState(_Message):
    type: Literal["state"] = "state"
    device_id: DeviceId
    online: bool
    recorder: RecorderState = "idle"
    session_id: SessionId | None = None
    reason: str | None = Field(default=None, max_length=64, description="a code, e.g. spool_full")
    backlog_chunks: int = 0
    backlog_bytes: int = 0
    spool_free_bytes: int | None = None
    quarantined: int = 0
    version: str = ""
    microphone: MicrophoneState | None = None
    microphone_device: str | None = Field(
        default=None, max_length=64, description="audio.device as configured (a name part)"
    )
    sealing_key: SealingKeyState | None = None
    refused: ChunkRefusal | None = None
    # The session is open but its microphone is closed to the pipeline (recorder stays
    # "recording": the session goes on, no audio enters it).
    paused: bool = False
    # The room's "do not record" switch: starts are refused until it is released.
    do_not_record: bool = False
    # The id of the last command the device applied (or refused): the gateway compares it
    # with the command that expresses what it wants, to tell a lost command from a change
    # made in the room after it.
    last_command_id: CommandId | None = None


# rooms/{device}/events — not retained.
class Heartbeat(_Message):
    type: Literal["heartbeat"] = "heartbeat"
    backlog_chunks: int
    backlog_bytes: int
    spool_free_bytes: int
    overruns: int
    dropped_s: float
    uptime_s: float
    version: str
    microphone: MicrophoneState | None = None


class SessionStarted(_Message):
    type: Literal["session_started"] = "session_started"
    session_id: SessionId
    resumed: bool = False


class ChunkSpooled(_Message):
    type: Literal["chunk_spooled"] = "chunk_spooled"
    session_id: SessionId
    seq: int
    duration_s: float


class SessionClosed(_Message):
    type: Literal["session_closed"] = "session_closed"
    session_id: SessionId
    reason: CloseReason
    chunks: int
    speech_s: float


class RoomCheck(BaseModel):
    """What ``room check`` measured in the room: numbers and a verdict code, no audio."""

    model_config = ConfigDict(extra="forbid")

    seconds: float
    rms_dbfs: float
    peak_dbfs: float
    speech_dbfs: float | None
    noise_floor_dbfs: float | None
    snr_db: float | None
    speech_share: float = Field(ge=0, le=1, description="share of the time the VAD kept")
    clipped_share: float = Field(ge=0, le=1)
    verdict: Code = Field(description="good, no_signal, clipping, too_quiet, no_speech, ...")


class LogLine(BaseModel):
    """One line of the agent's own log (ids and codes only, as it logs them)."""

    model_config = ConfigDict(extra="forbid")

    at: datetime
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    logger: str = Field(max_length=64)
    message: str = Field(max_length=500)


class SessionPaused(_Message):
    """The microphone was closed to the session's pipeline at ``at`` (device time)."""

    type: Literal["session_paused"] = "session_paused"
    session_id: SessionId
    source: PauseSource = "command"
    offset_s: float = Field(default=0.0, ge=0, description="position in the session's audio")


class SessionResumed(_Message):
    type: Literal["session_resumed"] = "session_resumed"
    session_id: SessionId
    source: PauseSource = "command"


class CommandResult(_Message):
    type: Literal["command_result"] = "command_result"
    command_id: CommandId
    ok: bool
    reason: str | None = Field(default=None, max_length=64, description="a code when refused")
    check: RoomCheck | None = None  # the answer to a check command
    logs: list[LogLine] | None = Field(default=None, max_length=500)  # to a logs command


DeviceEvent = Annotated[
    Heartbeat
    | SessionStarted
    | ChunkSpooled
    | SessionClosed
    | SessionPaused
    | SessionResumed
    | CommandResult,
    Field(discriminator="type"),
]


# rooms/{device}/cmd — to the device. The gateway may send the same command (same id)
# again until the device's state shows it applied; the device applies each id once.
class _Command(_Message):
    command_id: CommandId


# The answer to a session command older than one the device has already carried out.
SUPERSEDED = "superseded"


class _SessionCommand(_Command):
    session_id: SessionId
    # The order of the gateway's decisions for the room (it only grows): a command that
    # reaches the device after a later one (two replicas, or a send overtaken on its way)
    # is not carried out ("superseded"). None: a gateway that does not order its commands.
    generation: int | None = Field(default=None, ge=0)


class StartCommand(_SessionCommand):
    type: Literal["start"] = "start"
    # Start with the microphone closed: the partner paused before the room had started.
    paused: bool = False


class PauseCommand(_SessionCommand):
    type: Literal["pause"] = "pause"


class ResumeCommand(_SessionCommand):
    type: Literal["resume"] = "resume"


class StopCommand(_SessionCommand):
    type: Literal["stop"] = "stop"


class PingCommand(_Command):
    type: Literal["ping"] = "ping"


class CheckCommand(_Command):
    """Run the level check on the room's microphone (not while recording) and report."""

    type: Literal["check"] = "check"
    seconds: float = Field(default=5.0, ge=1, le=30)


class LogsCommand(_Command):
    """Send the agent's recent log lines."""

    type: Literal["logs"] = "logs"
    since_s: float = Field(default=600.0, gt=0, le=7 * 86_400)
    max_lines: int = Field(default=200, ge=1, le=500)


Command = Annotated[
    StartCommand
    | PauseCommand
    | ResumeCommand
    | StopCommand
    | PingCommand
    | CheckCommand
    | LogsCommand,
    Field(discriminator="type"),
]


# rooms/{device}/notify — to the device.
class ChunkAcked(_Message):
    """A mirror of a chunk's HTTP 200, best effort: at most one a second per device, for
    the newest chunk stored then (the chunks before it may have no mirror of their own)."""

    type: Literal["chunk_acked"] = "chunk_acked"
    session_id: SessionId
    seq: int


class SessionUploaded(_Message):
    type: Literal["session_uploaded"] = "session_uploaded"
    session_id: SessionId


class NotesReady(_Message):
    type: Literal["notes_ready"] = "notes_ready"
    session_id: SessionId


class SessionFailed(_Message):
    type: Literal["failed"] = "failed"
    session_id: SessionId
    reason: str = Field(max_length=64, description="a code, never free text from Blueprint")


Notification = Annotated[
    ChunkAcked | SessionUploaded | NotesReady | SessionFailed, Field(discriminator="type")
]

device_events: TypeAdapter[DeviceEvent] = TypeAdapter(DeviceEvent)
commands: TypeAdapter[Command] = TypeAdapter(Command)
notifications: TypeAdapter[Notification] = TypeAdapter(Notification)
