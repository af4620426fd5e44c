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

from agent import __version__
from agent.link.uplink import Uplink
from agent.pipeline.recorder import Recorder
from agent.spool import Spool
from protocol.messages import DeviceState, Heartbeat

REASON_MAX = 64


class DeviceStatus:
    def __init__(
        self, device_id: str, recorder: Recorder, spool: Spool, uplink: Uplink | None = None
    ) -> None:
        self.device_id = device_id
        self.recorder = recorder
        self.spool = spool
        self.uplink = uplink
        self.started = time.monotonic()
        # When the last heartbeat was built (the control link sends it at once, while
        # connected), and who wants to know (the status file): for `room-agent status`.
        self.last_heartbeat_at: datetime | None = None
        self.on_heartbeat: list[Callable[[], None]] = []

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
            version=__version__,
            refused=uplink.refused if uplink is not None else None,
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
            version=__version__,
        )

    def reason(self) -> str | None:
        """The recorder's problem (spool_full, device_lost, ...) first, else the uplink's
        (unauthorized, gateway_unreachable, chunk_conflict, ...)."""
        reason = self.recorder.state.last_error
        if reason is None and self.uplink is not None:
            reason = self.uplink.status().reason
        return reason[:REASON_MAX] if reason else None
