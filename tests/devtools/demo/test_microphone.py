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


def test_periods_larger_than_pipe_buf_reach_a_reader_whole_even_through_a_full_fifo(
    tmp_path: Path,
) -> None:
    """The agent's 240 ms block is 7,680 bytes, over PIPE_BUF: a write that size into a
    FIFO with less room is cut short, the plugin's read of one period then comes back
    short, and it fills the rest of the block with stale samples. Every read of one
    period must get one whole period, of one value, in order."""
    frames = 3_840
    count = 60
    periods = np.repeat(np.arange(1, count + 1, dtype=np.int16), frames)
    with FifoFeeder(tmp_path / "mic.fifo", period_frames=frames, speed=SPEED) as feeder:
        time.sleep(1.0)  # no reader: the FIFO fills with silence, then the writer waits
        feeder.play(periods)
        fd = os.open(feeder.path, os.O_RDONLY)
        reads: list[bytes] = []
        try:
            while len(reads) < 200 and (not reads or reads[-1] != periods[-frames:].tobytes()):
                reads.append(os.read(fd, feeder.period_bytes))  # as the plugin reads: once
        finally:
            os.close(fd)
    assert {len(r) for r in reads} == {feeder.period_bytes}, "no read came back short"
    values = [set(np.frombuffer(r, dtype=np.int16).tolist()) for r in reads]
    played = [v.pop() for v in values if v != {0}]
    assert all(len(v) <= 1 for v in values), "no read mixes two periods"
    assert played == list(range(1, count + 1))
