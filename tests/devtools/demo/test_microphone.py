"""The demo's and the tests' microphone: a FIFO fed on a clock, as a sound card delivers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from devtools.demo.microphone import FifoFeeder

SPEED = 8.0
PERIOD_FRAMES = 1_920
PERIOD_S = PERIOD_FRAMES / 16_000 / SPEED  # 15 ms of wall time per period


def read_periods(fd: int, count: int, period_bytes: int) -> None:
    for _ in range(count):
        got = 0
        while got < period_bytes:
            got += len(os.read(fd, period_bytes - got))


def test_a_reader_that_comes_late_is_fed_in_real_time_not_in_a_flood(tmp_path: Path) -> None:
    """A microphone nobody read for a while does not hand over the missed time at once:
    the room agent started 30 s late was given 30 s of audio in a burst, and its capture
    queue dropped the speech played just after (test_lost_commands, 0 chunks)."""
    with FifoFeeder(tmp_path / "mic.fifo", period_frames=PERIOD_FRAMES, speed=SPEED) as feeder:
        time.sleep(2.0)  # no reader: the FIFO fills, then the writer waits
        fd = os.open(feeder.path, os.O_RDONLY)
        try:
            buffered = 65_536 // feeder.period_bytes + 1
            read_periods(fd, buffered, feeder.period_bytes)  # what the pipe held
            feeder.play(np.full(PERIOD_FRAMES * 40, 1000, dtype=np.int16))
            began = time.monotonic()
            read_periods(fd, 40, feeder.period_bytes)
            took = time.monotonic() - began
        finally:
            os.close(fd)
    assert took > 0.5 * 40 * PERIOD_S, f"40 periods read in {took * 1000:.0f} ms"
