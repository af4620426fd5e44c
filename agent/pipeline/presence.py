"""Is the configured microphone there? For the device state, the heartbeat and `status`.

Without this, an agent whose microphone is unplugged (or named wrongly in audio.device)
starts silently, reports online and idle, and only a start command finds out. So the
agent looks at start and then every ``audio.presence_check_s`` while it is not recording
(PortAudio lists devices only in a fresh session, which must not be made while capturing);
while it records, the capture itself tells (a lost device is the recorder's device_lost).

- ok: a device matching audio.device is listed;
- missing: none is (unplugged, wrong name);
- unavailable: it is listed but would not open (busy, format), or PortAudio cannot start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.periodic import PeriodicCheck
from agent.pipeline.audio import AudioInputError
from agent.settings import AudioSettings
from protocol.messages import MicrophoneState

log = logging.getLogger(__name__)

DEVICE_NAME_MAX = 64  # what DeviceState.microphone_device takes


def look_for(settings: AudioSettings) -> tuple[MicrophoneState, str | None]:
    """One look: the state and, when not ok, why (one line, for the log)."""
    from agent.pipeline.capture import choose_device, list_input_devices

    try:
        found = list_input_devices()
    except AudioInputError as exc:
        return "unavailable", str(exc)
    try:
        choose_device(found, settings.device)
    except AudioInputError as exc:
        return "missing", str(exc)
    return "ok", None


class MicrophonePresence(PeriodicCheck):
    """The latest verdict, kept by a thread of its own; ``busy()`` says when the capture
    holds the device (then the recorder's own state is the truth)."""

    name = "microphone"

    def __init__(
        self,
        settings: AudioSettings,
        busy: Callable[[], bool],
        look: Callable[[AudioSettings], tuple[MicrophoneState, str | None]] = look_for,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.busy = busy
        self.look = look
        self._state: MicrophoneState | None = None

    @property
    def device(self) -> str:
        return self.settings.device[:DEVICE_NAME_MAX]

    @property
    def state(self) -> MicrophoneState | None:
        with self._lock:
            return self._state

    def check_now(self) -> MicrophoneState:
        state, why = self.look(self.settings)
        self._set(state, why)
        return state

    def failed_to_open(self) -> MicrophoneState:
        """A start could not open the device: look again to tell missing from unavailable."""
        state, why = self.look(self.settings)
        if state == "ok":
            state, why = "unavailable", "listed, but it would not open"
        self._set(state, why)
        return state

    def interval(self) -> float:
        return self.settings.presence_check_s

    def run_check(self) -> None:
        if not self.busy():
            self.check_now()

    def _set(self, state: MicrophoneState, why: str | None) -> None:
        with self._lock:
            before, self._state = self._state, state
        if state == before:
            return
        if state == "ok":
            if before is not None:
                log.info("microphone: %r is back", self.settings.device)
        else:
            log.warning("microphone: %s (audio.device %r): %s", state, self.settings.device, why)
        self.changed()
