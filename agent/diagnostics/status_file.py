"""state_dir/status.json: what the running agent knows, for `room-agent status` to read.

Much of what a technician needs (is MQTT connected, when did the last heartbeat go, why is
the uplink failing, what did the recorder last complain about) lives only in the daemon's
memory. The daemon therefore keeps a small snapshot of it on disk: written by a thread of
its own (so a slow or failing disk can never hold up recording), whenever something
changed and at least every REFRESH_S, atomically (tmp + rename: a reader never sees half a
file). No fsync: a snapshot torn by a power cut is simply unreadable, and the next one
replaces it; sparing the SD card a sync every few seconds matters more.

Ids, codes, counts and times only: no names, no secrets, no free text. The daemon's
writer is agent/diagnostics/status_writer.py; this module is what `room-agent status`
needs to read it (no numpy, no PortAudio: status starts fast).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from protocol.ids import DeviceId, SessionId
from protocol.messages import (
    ChunkRefusal,
    MicrophoneState,
    RecorderState,
    SealingKeyState,
)
from runtime.files import write_atomically

STATUS_FILE = "status.json"
CHECK_S = 2.0  # how often the writer looks for a change
SETTLE_S = 0.2  # after a wake-up: a burst of changes (start, state, event) makes one write
REFRESH_S = 30.0  # written at least this often, so its age shows the agent is not hung


class UplinkSnapshot(BaseModel):
    """The audio path's codes and counts (see agent.link.uplink.UplinkStatus)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = None
    failures: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0
    sessions_delivered: int = 0
    held: int = 0
    set_aside: int = 0
    refused: ChunkRefusal | None = None  # the gateway's latest refusal and its reason code


class NotificationSnapshot(BaseModel):
    """The newest notification from the gateway: its kind and session, never its text."""

    model_config = ConfigDict(extra="forbid")

    type: str
    session_id: SessionId
    reason: str | None = None
    at: datetime


class StatusSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    pid: int
    version: str
    device_id: DeviceId
    started_at: datetime
    written_at: datetime
    recorder: RecorderState
    session_id: SessionId | None = None
    recorder_error: str | None = None
    overruns: int = 0
    dropped_s: float = 0.0
    mqtt_enabled: bool
    mqtt_connected: bool = False
    last_heartbeat_at: datetime | None = None
    uplink: UplinkSnapshot | None = None  # None: no gateway configured (record only)
    last_error: str | None = None
    health: str | None = None  # the watchdog's problem code, if any
    last_notification: NotificationSnapshot | None = None
    microphone: MicrophoneState | None = None  # None: not looked at (yet)
    microphone_device: str | None = None
    sealing_key: SealingKeyState | None = None  # None: no gateway to compare with
    device_key_fingerprint: str | None = None
    gateway_key_fingerprint: str | None = None

    def same_as(self, other: StatusSnapshot | None) -> bool:
        """Equal apart from when it was written."""
        if other is None:
            return False
        ignore = {"written_at"}
        return self.model_dump(exclude=ignore) == other.model_dump(exclude=ignore)


def write_snapshot(path: Path, snapshot: StatusSnapshot) -> None:
    """Replace ``path`` atomically (mode 0600), unsynced (see the module's docstring);
    raises OSError."""
    write_atomically(path, (snapshot.model_dump_json() + "\n").encode(), durable=False)


def read_snapshot(path: Path) -> StatusSnapshot | None:
    """The snapshot, or None when there is none or it cannot be read as one."""
    try:
        return StatusSnapshot.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None
