"""The one audio format inside the agent, and the interface every audio source offers.

Whatever the device delivers (any rate, any channel count), sources hand the pipeline
16 kHz mono int16 blocks: the rate webrtcvad and the transcription service both want.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

SAMPLE_RATE = 16_000
FRAME_MS = 30
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000


class AudioInputError(Exception):
    """An input that cannot be used (missing, unreadable, unsupported); one-line message."""


@dataclass
class CaptureStats:
    """Counters a technician needs to see; losses are counted, never silent."""

    device_name: str = ""
    device_rate: int = 0
    overruns: int = 0
    dropped_blocks: int = 0
    dropped_s: float = 0.0
    reopens: int = 0
    samples: int = 0


class AudioSource(Protocol):
    """A stream of 16 kHz mono int16 blocks (numpy arrays of any length)."""

    stats: CaptureStats

    def read(self, timeout: float | None = None) -> np.ndarray | None:
        """The next block; an empty array if none arrived within ``timeout``; None at the end."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class TimedSource(Protocol):
    """A source that knows when what it hands out was captured: a pause can then keep what
    was captured before it but read after it (a live source reads late, by design)."""

    captured_at: float  # time.monotonic() when the last sample read() returned was captured

    def split_at(self, at: float) -> None:
        """No read() from now on joins audio captured by ``at`` with audio captured after."""
        ...


@runtime_checkable
class WakeableSource(Protocol):
    """A source whose read() may wait long for audio (a live source reads about once a
    second, by design): wake() makes a read that waits return at once, so that a stop is
    acted on now and not at the next look."""

    def wake(self) -> None:
        """The read waiting now (or the next one to wait) returns an empty block at once.
        Safe from a signal handler: it only sets an event."""
        ...
