"""state_dir/status.json: what the running agent knows, for `room-agent status` to read.

Much of what a technician needs (is MQTT connected, when did the last heartbeat go, why is
the uplink failing, what did the recorder last complain about) lives only in the daemon's
memory. The daemon therefore keeps a small snapshot of it on disk: written by a thread of
its own (so a slow or failing disk can never hold up recording), whenever something
changed and at least every REFRESH_S, atomically (tmp + rename: a reader never sees half a
file). No fsync: a snapshot torn by a power cut is simply unreadable, and the next one
replaces it; sparing the SD card a sync every few seconds matters more.

Ids, codes, counts and times only: no names, no secrets, no free text.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from agent import __version__
from agent.link.device_status import DeviceStatus
from agent.link.uplink import UplinkStatus
from agent.pipeline.recorder import RecorderListener, RecorderSnapshot
from protocol.ids import DeviceId, SessionId
from protocol.manifest import SessionManifest
from protocol.messages import (
    ChunkRefusal,
    MicrophoneState,
    Notification,
    RecorderState,
    SealingKeyState,
    SessionClosed,
    SessionStarted,
)

log = logging.getLogger(__name__)

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


class ControlView(Protocol):
    """What the snapshot needs from the MQTT control link (agent.link.control.ControlLink)."""

    @property
    def connected(self) -> bool: ...

    def notifications(self) -> dict[str, Notification]: ...


def build_snapshot(
    status: DeviceStatus,
    control: ControlView | None,
    health: Callable[[], str | None],
    started_at: datetime,
) -> StatusSnapshot:
    """The snapshot as of now, from the objects the daemon runs."""
    recorder = status.recorder.state
    uplink = status.uplink.status() if status.uplink is not None else None
    key = status.key.last if status.key is not None else None
    return StatusSnapshot(
        pid=os.getpid(),
        version=__version__,
        device_id=status.device_id,
        started_at=started_at,
        written_at=datetime.now(UTC),
        recorder=recorder.state,
        session_id=recorder.session_id,
        recorder_error=recorder.last_error,
        overruns=recorder.capture.overruns,
        dropped_s=round(recorder.capture.dropped_s, 3),
        mqtt_enabled=control is not None,
        mqtt_connected=control is not None and control.connected,
        last_heartbeat_at=status.last_heartbeat_at,
        uplink=_uplink(uplink) if uplink is not None else None,
        last_error=status.reason(),
        health=health(),
        last_notification=_newest(control.notifications()) if control is not None else None,
        microphone=status.microphone(),
        microphone_device=status.microphone_presence.device
        if status.microphone_presence is not None
        else None,
        sealing_key=key.state if key is not None else None,
        device_key_fingerprint=key.device_fingerprint if key is not None else None,
        gateway_key_fingerprint=key.gateway_fingerprint if key is not None else None,
    )


def _uplink(uplink: UplinkStatus) -> UplinkSnapshot:
    return UplinkSnapshot(
        reason=uplink.reason,
        failures=uplink.failures,
        chunks_sent=uplink.chunks_sent,
        bytes_sent=uplink.bytes_sent,
        sessions_delivered=uplink.sessions_delivered,
        held=len(uplink.held),
        set_aside=len(uplink.set_aside),
        refused=uplink.refused,
    )


def _newest(notified: dict[str, Notification]) -> NotificationSnapshot | None:
    """The control link keeps the newest session last."""
    if not notified:
        return None
    last = list(notified.values())[-1]
    return NotificationSnapshot(
        type=last.type,
        session_id=last.session_id,
        reason=getattr(last, "reason", None),
        at=last.at,
    )


def write_snapshot(path: Path, snapshot: StatusSnapshot) -> None:
    """Replace ``path`` atomically; raises OSError."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(snapshot.model_dump_json() + "\n")
    os.replace(tmp, path)


def read_snapshot(path: Path) -> StatusSnapshot | None:
    """The snapshot, or None when there is none or it cannot be read as one."""
    try:
        return StatusSnapshot.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


class StatusWriter(RecorderListener):
    """Keeps the snapshot current from a thread of its own; recorder events only wake it.

    Every failure (building or writing) is logged once per kind and otherwise ignored:
    the snapshot is a convenience, the recording is not.
    """

    def __init__(self, path: Path, build: Callable[[], StatusSnapshot]) -> None:
        self.path = path
        self.build = build
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: StatusSnapshot | None = None
        self._failures: set[str] = set()  # kinds logged since the last good write

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="status-file", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop, writing the current state: the agent's last word until it runs again
        (call it while the parts it reports on are still up)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self.refresh(force=True)

    def poke(self) -> None:
        """Something changed: write soon. Never blocks."""
        self._wake.set()

    def state_changed(self, snapshot: RecorderSnapshot) -> None:
        self.poke()

    def session_started(self, event: SessionStarted) -> None:
        self.poke()

    def session_closed(self, event: SessionClosed, manifest: SessionManifest) -> None:
        self.poke()

    def refresh(self, force: bool = False) -> None:
        """Write the snapshot if it changed or REFRESH_S passed (or ``force``)."""
        try:
            snapshot = self.build()
        except Exception as exc:  # a bug in building must not stop the agent
            self._failure("not built", exc)
            return
        last = self._last
        fresh = last is not None and (
            (snapshot.written_at - last.written_at).total_seconds() < REFRESH_S
        )
        if not force and fresh and snapshot.same_as(last):
            return
        try:
            write_snapshot(self.path, snapshot)
        except OSError as exc:
            self._failure("not written", exc)
            return
        self._last = snapshot
        self._failures.clear()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.refresh()
            if self._wake.wait(CHECK_S):
                self._stopping.wait(SETTLE_S)
            self._wake.clear()

    def _failure(self, what: str, exc: Exception) -> None:
        """Logged once per kind until a write succeeds again: a full disk is not news
        every two seconds."""
        kind = f"{what}: {type(exc).__name__}"
        if kind not in self._failures:
            why = getattr(exc, "strerror", None) or type(exc).__name__
            log.warning("status: %s %s (%s); recording is not affected", self.path, what, why)
        self._failures.add(kind)
