"""What the device says about itself: the retained DeviceState and the Heartbeat.

Both are built from the recorder, the spool and the uplink at the moment they are sent, as
protocol.messages models (ids, states, codes and numbers only: the models forbid anything
else). The backlog is what the spool still holds unacknowledged, so a technician sees an
outage's backlog grow and drain from the retained state alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from agent.link.applied import AppliedCommands
from agent.link.key_check import MISMATCH, SealingKeyWatch
from agent.link.uplink import Uplink
from agent.pipeline.presence import MicrophonePresence
from agent.pipeline.recorder import Recorder
from agent.privacy import PrivacySwitch
from agent.spool import Spool
from protocol.messages import (
    DeviceReason,
    DeviceState,
    Heartbeat,
    MicrophoneState,
    SealingKeyState,
)
from runtime.version import VERSION

# What a microphone that is not there (or not opening) makes the device's reason.
MICROPHONE_REASONS: dict[MicrophoneState, DeviceReason | None] = {
    "ok": None,
    "missing": DeviceReason.MICROPHONE_MISSING,
    "unavailable": DeviceReason.MICROPHONE_UNAVAILABLE,
}


class DeviceStatus:
    def __init__(
        self,
        device_id: str,
        recorder: Recorder,
        spool: Spool,
        uplink: Uplink | None = None,
        key: SealingKeyWatch | None = None,
        microphone: MicrophonePresence | None = None,
    ) -> None:
        self.device_id = device_id
        self.recorder = recorder
        self.spool = spool
        self.uplink = uplink
        self.key = key
        self.microphone_presence = microphone
        # An authentication problem of the control link (the broker refuses the
        # password), for the state's reason: set by the control link.
        self.control_problem: Callable[[], DeviceReason | None] = lambda: None
        self.started = time.monotonic()
        # When the last heartbeat was built (the control link sends it at once, while
        # connected), and who wants to know (the status file): for `room-agent status`.
        self.last_heartbeat_at: datetime | None = None
        self.on_heartbeat: list[Callable[[], None]] = []
        # The control link's record of applied commands: the state names the last one.
        self.applied: AppliedCommands | None = None
        self.privacy: PrivacySwitch | None = None  # the room's "do not record" switch

    def state(self, online: bool = True) -> DeviceState:
        snapshot = self.recorder.state
        usage = self.spool.usage()
        uplink = self.uplink.status() if self.uplink is not None else None
        return DeviceState(
            device_id=self.device_id,
            online=online,
            recorder=snapshot.state,
            session_id=snapshot.session_id,
            reason=self.reason(),
            backlog_chunks=usage.chunks,
            backlog_bytes=usage.bytes,
            spool_free_bytes=self.spool.free_bytes(),
            quarantined=usage.quarantined,
            version=VERSION,
            refused=uplink.refused if uplink is not None else None,
            microphone=self.microphone(),
            microphone_device=self._microphone_device(),
            sealing_key=self.sealing_key(),
            last_command_id=self.applied.last if self.applied is not None else None,
            paused=snapshot.paused,
            do_not_record=self.privacy.engaged if self.privacy is not None else False,
        )

    def heartbeat(self) -> Heartbeat:
        usage = self.spool.usage()
        capture = self.recorder.state.capture
        self.last_heartbeat_at = datetime.now(UTC)
        for hook in self.on_heartbeat:
            hook()
        return Heartbeat(
            backlog_chunks=usage.chunks,
            backlog_bytes=usage.bytes,
            spool_free_bytes=self.spool.free_bytes(),
            overruns=capture.overruns,
            dropped_s=round(capture.dropped_s, 3),
            uptime_s=round(time.monotonic() - self.started, 1),
            version=VERSION,
            microphone=self.microphone(),
        )

    def microphone(self) -> MicrophoneState | None:
        """ok while recording (the capture holds it; losing it is device_lost), else what
        the last look found; None when nobody looks (record-only tools)."""
        if self.microphone_presence is None:
            return None
        if self.recorder.state.state == "recording":
            return "ok"
        return self.microphone_presence.state

    def sealing_key(self) -> SealingKeyState | None:
        return self.key.state if self.key is not None else None

    def start_refusal(self) -> DeviceReason | None:
        """Why a start must be refused before the microphone is even opened."""
        if self.sealing_key() == "mismatch":
            return MISMATCH
        return None

    def reason(self) -> DeviceReason | None:
        """The recorder's problem (spool_full, device_lost, ...) first, then a sealing key
        that is not the gateway's, a missing microphone, the spool's own (spool_lost,
        spool_entry_skipped), the broker refusing the device,
        else the uplink's (unauthorized, gateway_unreachable, chunk_conflict, ...)."""
        reason = self.recorder.state.last_error
        if reason is None and self.sealing_key() == "mismatch":
            reason = MISMATCH
        microphone = self.microphone()
        if reason is None and microphone is not None:
            reason = MICROPHONE_REASONS[microphone]
        if reason is None:
            reason = self.spool.problem()
        if reason is None:
            reason = self.control_problem()
        if reason is None and self.uplink is not None:
            reason = self.uplink.status().reason
        return reason

    def _microphone_device(self) -> str | None:
        presence = self.microphone_presence
        return presence.device if presence is not None else None
