"""The feedback hub: the agent's state and events in, indicator, cues and hooks out.

It listens to the recorder (start, pause, resume, close, state), the control link
(connected or not, the gateway's notifications: ``notes_ready`` lights the indicator for
``notes_ready_s``), the device status (its problem code) and the privacy switch, and
turns the button's presses into pause/resume, stop or "do not record". Everything it
drives is optional and each failure is logged: feedback never stops a recording.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Unpack

from agent.feedback.cues import Cue, CuePlayer
from agent.feedback.hooks import Hooks
from agent.feedback.indicator import Indicator, Indicators
from agent.feedback.states import Facts, FactsChange, RoomState, problem_of, room_state
from agent.pipeline.recorder import Recorder, RecorderError, RecorderListener, RecorderSnapshot
from agent.privacy import PrivacySwitch
from agent.settings import AgentSettings, ButtonAction, FeedbackEvent
from protocol.manifest import SessionManifest
from protocol.messages import (
    Notification,
    SessionClosed,
    SessionPaused,
    SessionResumed,
    SessionStarted,
)

log = logging.getLogger(__name__)

STOP_WAIT_S = 30.0


class FeedbackHub(RecorderListener):
    def __init__(
        self,
        settings: AgentSettings,
        recorder: Recorder,
        indicators: Indicators,
        cues: CuePlayer,
        hooks: Hooks,
        privacy: PrivacySwitch | None = None,
    ) -> None:
        self.settings = settings
        self.recorder = recorder
        self.indicators = indicators
        self.cues = cues
        self.hooks = hooks
        self.privacy = privacy
        self._lock = threading.Lock()
        self._facts = Facts(connected=not settings.mqtt.broker_url)
        self._notes_until = 0.0
        self._timer: threading.Timer | None = None
        self.shown: RoomState | None = None
        self.shown_at: float | None = None  # wall clock of the last indicator change
        self._session: str | None = None
        self._reason: Callable[[], str | None] | None = None

    def watch(self, reason: Callable[[], str | None]) -> None:
        """Follow the device's reason (no microphone, the wrong key, a full spool...) at
        each ``look``: the room sees a problem also while the broker is away (heartbeats
        only go out while connected) and when it clears."""
        self._reason = reason

    def start(self) -> None:
        self.hooks.start()
        self._refresh()
        self.look()

    def look(self) -> None:
        """Show the device's reason as it is now; the agent's ticker calls it every tick
        (agent/ticker.py)."""
        if self._reason is None:
            return
        try:
            self.problem(self._reason())
        except Exception:  # feedback never stops the agent
            log.exception("feedback: the device's state could not be read")

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.hooks.stop()
        self.indicators.close()

    # -- the recorder (its thread: return fast)

    def session_started(self, event: SessionStarted) -> None:
        self._session = event.session_id
        self._event("recording_started", event.session_id, "start")

    def session_paused(self, event: SessionPaused) -> None:
        self._event("paused", event.session_id, "pause")

    def session_resumed(self, event: SessionResumed) -> None:
        self._event("resumed", event.session_id, "resume")

    def session_closed(self, event: SessionClosed, manifest: SessionManifest) -> None:
        self._event("stopped", event.session_id, "stop")

    def state_changed(self, snapshot: RecorderSnapshot) -> None:
        if snapshot.last_error:  # e.g. spool_full, device_lost: shown now, not at a heartbeat
            self.problem(snapshot.last_error)
        self._update(recorder=snapshot.state, paused=snapshot.paused)

    # -- the control link and the device status

    def connection(self, connected: bool) -> None:
        if connected != self._facts.connected:
            self.hooks.fire("online" if connected else "offline", self._session)
        self._update(connected=connected)

    def notified(self, notification: Notification) -> None:
        if notification.type == "notes_ready":
            with self._lock:
                self._notes_until = time.monotonic() + self.settings.feedback.notes_ready_s
            self._schedule_notes_end()
            self.hooks.fire("notes_ready", notification.session_id)
            self._update(notes_ready=True)
        elif notification.type == "failed":
            self.hooks.fire("failed", notification.session_id)

    def problem(self, code: str | None) -> None:
        code = problem_of(code)
        if code and code != self._facts.problem:
            self.hooks.fire("problem", self._session)
        self._update(problem=code)

    def privacy_changed(self, engaged: bool) -> None:
        self.hooks.fire("do_not_record_on" if engaged else "do_not_record_off", self._session)

    # -- the button

    def button(self, action: ButtonAction) -> None:
        if action == "do_not_record":
            if self.privacy is not None:
                self.privacy.toggle()
            return
        state = self.recorder.state
        if state.state != "recording":
            return  # nothing to pause or stop: sessions start from the partner
        try:
            if action == "pause_resume":
                if state.paused:
                    self.recorder.resume("button")
                else:
                    self.recorder.pause("button")
            elif action == "stop":
                threading.Thread(
                    target=self.recorder.stop, args=(STOP_WAIT_S,), name="button-stop",
                    daemon=True,
                ).start()  # fmt: skip
        except RecorderError:
            pass  # the session ended meanwhile

    # -- state

    def _event(self, event: FeedbackEvent, session_id: str, cue: Cue) -> None:
        self.cues.play(cue)
        self.hooks.fire(event, session_id)

    def _update(self, **changes: Unpack[FactsChange]) -> None:
        with self._lock:
            self._facts = replace(self._facts, **changes)
        self._refresh()

    def _refresh(self) -> None:
        with self._lock:
            if self._facts.notes_ready and time.monotonic() >= self._notes_until:
                self._facts = replace(self._facts, notes_ready=False)
            state = room_state(self._facts)
            if state == self.shown:
                return
            self.shown, self.shown_at = state, time.time()
        log.info("feedback: %s", state)
        self.indicators.show(state)

    def _schedule_notes_end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(self.settings.feedback.notes_ready_s + 0.01, self._refresh)
        self._timer.daemon = True
        self._timer.start()


def build_indicators(settings: AgentSettings, pin_factory: object | None = None) -> list[Indicator]:
    """The configured drivers; one that cannot start is logged and left out."""
    from agent.feedback.apa102 import Apa102Ring
    from agent.feedback.gpio import GpioLeds
    from agent.feedback.sysfs_leds import SysfsLed

    feedback = settings.feedback
    drivers: list[Indicator] = []
    makers: list[Callable[[], Indicator]] = [
        partial(SysfsLed, feedback.sysfs_root, name) for name in feedback.sysfs_leds
    ]
    if feedback.gpio.led_pins:
        makers.append(partial(GpioLeds, feedback.gpio.led_pins, pin_factory))
    if feedback.apa102.device:
        apa = feedback.apa102
        makers.append(partial(Apa102Ring, apa.device, apa.leds, apa.brightness))
    for make in makers:
        try:
            drivers.append(make())
        except Exception as exc:
            log.error("feedback: an indicator is not available (%s)", exc)
    return drivers
