"""Linux LEDs under /sys/class/leds: a Pi's own ACT/PWR LEDs and any gpio-led overlay.

Steady states write ``trigger`` none and ``brightness``; blinking uses the kernel's
``timer`` trigger (``delay_on``/``delay_off`` in ms), so the kernel blinks and no thread
of ours does. The agent needs write access to these files (a udev rule or root).
"""

from __future__ import annotations

from pathlib import Path

from agent.feedback.states import PATTERNS, RoomState


class SysfsLed:
    def __init__(self, root: Path, name: str) -> None:
        self.directory = root / name
        self.name = f"sysfs:{name}"
        if not self.directory.is_dir():
            raise FileNotFoundError(f"feedback.sysfs_leds: {self.directory}: no such LED")
        self.max = self._max_brightness()

    def show(self, state: RoomState) -> None:
        pattern = PATTERNS[state]
        if pattern == "on" or pattern == "off":
            self._write("trigger", "none")
            self._write("brightness", str(self.max if pattern == "on" else 0))
            return
        on_s, off_s = pattern
        self._write("trigger", "timer")
        self._write("delay_on", str(round(on_s * 1000)))
        self._write("delay_off", str(round(off_s * 1000)))

    def close(self) -> None:
        self._write("trigger", "none")
        self._write("brightness", "0")

    def _max_brightness(self) -> int:
        try:
            return int((self.directory / "max_brightness").read_text().strip() or 1)
        except (OSError, ValueError):
            return 1

    def _write(self, name: str, value: str) -> None:
        (self.directory / name).write_text(value + "\n")
