"""The room's "do not record" switch: a privacy control people in the room can touch.

Engaged by the setting ``privacy.do_not_record`` (for good), or at run time by a flag file
``<state_dir>/do-not-record`` that ``room-agent privacy on|off`` and a button write and
remove (so the switch survives a restart, and a technician's command and the running
agent agree without any socket). While engaged, starts are refused ("do_not_record"),
the session being recorded is paused (source ``do_not_record``) and a partner's resume
is refused; when released, a session it paused is resumed. The device's state shows it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from agent.pipeline.recorder import Recorder, RecorderError
from runtime.files import write_atomically

log = logging.getLogger(__name__)

FLAG = "do-not-record"


def flag_path(state_dir: Path) -> Path:
    return state_dir / FLAG


def set_flag(state_dir: Path, engaged: bool) -> None:
    """What `room-agent privacy on|off` does (the running agent follows within a tick,
    agent/ticker.py; a button acts at once)."""
    path = flag_path(state_dir)
    if engaged:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, b"on\n")
    else:
        path.unlink(missing_ok=True)


class PrivacySwitch:
    def __init__(self, state_dir: Path, always: bool = False) -> None:
        self.path = flag_path(state_dir)
        self.always = always
        self.recorder: Recorder | None = None
        self.on_change: list[Callable[[bool], None]] = []
        self._engaged = self._read()
        self._lock = threading.Lock()

    @property
    def engaged(self) -> bool:
        return self._engaged

    def toggle(self) -> bool:
        """A button: engage if released, release if engaged (not the setting)."""
        engaged = not self._engaged
        self.set(engaged)
        return engaged

    def set(self, engaged: bool) -> None:
        try:
            set_flag(self.path.parent, engaged)
        except OSError as exc:
            log.error("privacy: %s not written (%s)", self.path.name, type(exc).__name__)
        self.poll()

    def poll(self) -> None:
        """Follow the flag file (and the setting); act on a change."""
        engaged = self._read()
        with self._lock:
            if engaged == self._engaged:
                return
            self._engaged = engaged
        log.info("privacy: do not record %s", "on" if engaged else "off")
        self._apply(engaged)
        for listener in list(self.on_change):
            try:
                listener(engaged)
            except Exception:
                log.exception("privacy: a listener failed")

    def start(self) -> None:
        """Act on the switch as it is now (the ticker's ``poll`` follows it from here)."""
        if self._engaged:
            self._apply(True)  # e.g. a session resumed after a restart while it was on

    def _read(self) -> bool:
        return self.always or self.path.exists()

    def _apply(self, engaged: bool) -> None:
        recorder = self.recorder
        if recorder is None or recorder.state.state != "recording":
            return
        with contextlib.suppress(RecorderError):  # the session ended meanwhile
            if engaged:
                recorder.pause("do_not_record")
            elif recorder.paused_by == "do_not_record":
                recorder.resume("do_not_record")
