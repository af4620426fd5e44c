"""The running agent's side of state_dir/status.json (agent/diagnostics/status_file.py):
the snapshot built from the objects the daemon runs, and the thread that keeps it written.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from agent.diagnostics.status_file import (
    CHECK_S,
    REFRESH_S,
    SETTLE_S,
    NotificationSnapshot,
    StatusSnapshot,
    UplinkSnapshot,
    write_snapshot,
)
from agent.link.device_status import DeviceStatus
from agent.link.uplink import UplinkStatus
from agent.pipeline.recorder import RecorderListener, RecorderSnapshot
from protocol.manifest import SessionManifest
from protocol.messages import Notification, SessionClosed, SessionStarted
from runtime.version import VERSION

log = logging.getLogger(__name__)


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
        version=VERSION,
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
