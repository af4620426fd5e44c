"""GPIO LEDs and a button through gpiozero (its mock pin factory stands in for pins in tests).

LEDs blink by gpiozero's own background thread. The button: a press shorter than
``long_press_s`` is a short press, one held that long a long press (each configurable:
pause/resume, stop, "do not record", or nothing); contact bounce shorter than
``bounce_s`` is ignored. Actions run on gpiozero's thread and must return fast.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agent.feedback.states import PATTERNS, RoomState
from agent.settings import ButtonAction, GpioSettings

log = logging.getLogger(__name__)

Action = Callable[[ButtonAction], None]


class GpioLeds:
    def __init__(self, pins: list[int], pin_factory: object | None = None) -> None:
        from gpiozero import LED  # type: ignore[import-untyped]

        self.name = "gpio-leds"
        self.leds = [LED(pin, pin_factory=pin_factory) for pin in pins]

    def show(self, state: RoomState) -> None:
        pattern = PATTERNS[state]
        for led in self.leds:
            if pattern == "on":
                led.on()
            elif pattern == "off":
                led.off()
            else:
                led.blink(on_time=pattern[0], off_time=pattern[1], background=True)

    def close(self) -> None:
        for led in self.leds:
            led.close()


class GpioButton:
    """A debounced button: an edge counts once the pin has kept its level for
    ``bounce_s`` (so a contact's chatter is one press, whatever the pin driver does);
    a press kept for ``long_press_s`` is a long press, a shorter one a short press."""

    def __init__(
        self, settings: GpioSettings, act: Action, pin_factory: object | None = None
    ) -> None:
        from gpiozero import Button

        assert settings.button_pin is not None
        self.settings = settings
        self._act = act
        self._lock = threading.Lock()
        self._stable = False  # the debounced level: pressed or not
        self._held = False
        self._settle: threading.Timer | None = None
        self._hold: threading.Timer | None = None
        self.button = Button(
            settings.button_pin, pull_up=settings.button_pull_up, pin_factory=pin_factory
        )
        self.button.when_pressed = self._edge
        self.button.when_released = self._edge

    def close(self) -> None:
        with self._lock:
            for timer in (self._settle, self._hold):
                if timer is not None:
                    timer.cancel()
        self.button.close()

    def _edge(self) -> None:
        with self._lock:
            if self._settle is not None:
                self._settle.cancel()
            self._settle = _timer(self.settings.bounce_s, self._settled)

    def _settled(self) -> None:
        pressed = bool(self.button.is_pressed)
        with self._lock:
            if pressed == self._stable:
                return  # chatter that came back to where it was
            self._stable = pressed
            if pressed:
                self._held = False
                self._hold = _timer(self.settings.long_press_s, self._long)
                return
            if self._hold is not None:
                self._hold.cancel()
            held = self._held
        if not held:
            self._run(self.settings.short_press, "short")

    def _long(self) -> None:
        with self._lock:
            if not self._stable:
                return
            self._held = True
        self._run(self.settings.long_press, "long")

    def _run(self, action: ButtonAction, press: str) -> None:
        if action == "none":
            return
        log.info("feedback: button %s press: %s", press, action)
        try:
            self._act(action)
        except Exception:
            log.exception("feedback: button action %s failed", action)


def _timer(seconds: float, then: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(seconds, then)
    timer.daemon = True
    timer.start()
    return timer
