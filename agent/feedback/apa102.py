"""The APA102 ("DotStar") LED ring of the ReSpeaker 2-/4-mic HATs, written over SPI.

An APA102 frame is a start frame (32 zero bits), one 32-bit word per LED (0b111 and a
5-bit global brightness, then blue, green, red) and an end frame (at least n/2 bits of
ones). The Linux spidev device takes a plain write() as one SPI transfer at its default
speed, so no ioctl is needed. (The 4-mic array powers its LEDs from GPIO5: set it high,
e.g. with a gpio-hog overlay.)
"""

from __future__ import annotations

from pathlib import Path

from agent.feedback.states import COLOURS, RoomState


def frame(colours: list[tuple[int, int, int]], brightness: int) -> bytes:
    """The bytes that set each LED to its (r, g, b) at ``brightness`` (0-31)."""
    level = 0xE0 | (brightness & 0x1F)
    body = b"".join(bytes((level, b, g, r)) for r, g, b in colours)
    end = b"\xff" * max(4, (len(colours) + 15) // 16)
    return b"\x00\x00\x00\x00" + body + end


class Apa102Ring:
    def __init__(self, device: str, leds: int, brightness: int) -> None:
        self.path = Path(device)
        self.leds = leds
        self.brightness = brightness
        self.name = f"apa102:{device}"
        if not self.path.exists():
            raise FileNotFoundError(f"feedback.apa102.device: {device}: no such device")

    def show(self, state: RoomState) -> None:
        self._write([COLOURS[state]] * self.leds)

    def close(self) -> None:
        self._write([(0, 0, 0)] * self.leds)

    def _write(self, colours: list[tuple[int, int, int]]) -> None:
        with self.path.open("wb", buffering=0) as spi:
            spi.write(frame(colours, self.brightness))
