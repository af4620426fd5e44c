"""MQTT payloads between room devices and the gateway: ids, states and numbers only.

No names, no note text, no audio ever travel over MQTT; the models forbid extra fields so
nothing else can be slipped in. Each topic carries one discriminated union on ``type``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from protocol.ids import DeviceId, SessionId
from protocol.manifest import CloseReason

RecorderState = Literal["idle", "recording", "closing", "closed"]


def now() -> datetime:
    return datetime.now(UTC)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: datetime = Field(default_factory=now)


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


class CommandResult(_Message):
    type: Literal["command_result"] = "command_result"
    command_id: str = Field(max_length=64)
    ok: bool
    reason: str | None = Field(default=None, max_length=64, description="a code when refused")


DeviceEvent = Annotated[
    Heartbeat | SessionStarted | ChunkSpooled | SessionClosed | CommandResult,
    Field(discriminator="type"),
]


# rooms/{device}/cmd — to the device.
class _Command(_Message):
    command_id: str = Field(max_length=64)


class StartCommand(_Command):
    type: Literal["start"] = "start"
    session_id: SessionId


class StopCommand(_Command):
    type: Literal["stop"] = "stop"
    session_id: SessionId


class PingCommand(_Command):
    type: Literal["ping"] = "ping"


Command = Annotated[StartCommand | StopCommand | PingCommand, Field(discriminator="type")]


# rooms/{device}/notify — to the device.
class ChunkAcked(_Message):
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
