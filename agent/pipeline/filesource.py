"""A WAV or FLAC file as an audio source: the demo, the tests and `room-agent segment`.

It hands the pipeline exactly what a microphone would (16 kHz mono int16 blocks), so the
file path and the live path run the same VAD, encoder and sealing code. A file that cannot
be used is refused when the source is made, with one line naming the file; nothing is
half-read silently.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import soundfile

from agent.pipeline.audio import AudioInputError, CaptureStats
from agent.pipeline.resample import Resampler

DEFAULT_BLOCK_S = 0.25
NO_SAMPLES = np.zeros(0, dtype=np.int16)


class FileSource:
    """Blocks of a WAV/FLAC file (any rate libsndfile reads, any channel count) at 16 kHz.

    ``realtime=True`` hands out each block no sooner than a microphone would have, so
    demos and live-behaviour tests see the timing of a real session.
    """

    def __init__(
        self, path: Path | str, *, block_s: float = DEFAULT_BLOCK_S, realtime: bool = False
    ) -> None:
        if block_s <= 0:
            raise ValueError(f"block_s must be > 0 (got {block_s})")
        self.path = Path(path)
        self.realtime = realtime
        self._fh, self._sound = _open_sound(self.path)
        self.rate = self._sound.samplerate
        self.channels = self._sound.channels
        self._block_frames = max(1, round(block_s * self.rate))
        self._resampler = Resampler(self.rate, self.channels)
        self._frames_read = 0
        self._started: float | None = None
        self._ended = False
        self._closed = False
        self.stats = CaptureStats(device_name=self.path.name, device_rate=self.rate)

    def read(self, timeout: float | None = None) -> np.ndarray | None:
        """The next block; None at the end; empty if ``realtime`` and not due within timeout."""
        if self._closed or self._ended:
            return None
        if self.realtime and not self._wait_until_due(timeout):
            return NO_SAMPLES
        while True:
            frames = self._read_frames()
            if frames is None:
                self._ended = True
                tail = self._resampler.flush()
                self.stats.samples += tail.size
                return tail if tail.size else None
            block = self._resampler.process(frames)
            if block.size:
                self.stats.samples += block.size
                return block

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sound.close()
        self._fh.close()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _read_frames(self) -> np.ndarray | None:
        try:
            frames = self._sound.read(self._block_frames, dtype="int16", always_2d=True)
        except soundfile.LibsndfileError as exc:
            at = self._frames_read / self.rate
            reason = exc.error_string.removeprefix("Error : ").rstrip(".")
            message = f"{self.path}: corrupt audio after {at:.2f} s ({reason})"
            raise AudioInputError(message) from None
        if not len(frames):
            return None
        self._frames_read += len(frames)
        return frames

    def _wait_until_due(self, timeout: float | None) -> bool:
        """Sleep until the next block would have been captured; False if that is past timeout."""
        now = time.monotonic()
        if self._started is None:
            self._started = now
        due = self._started + (self._frames_read + self._block_frames) / self.rate
        delay = due - now
        if timeout is not None and delay > timeout:
            time.sleep(max(0.0, timeout))
            return False
        if delay > 0:
            time.sleep(delay)
        return True


def _open_sound(path: Path) -> tuple[BinaryIO, soundfile.SoundFile]:
    """Open ``path`` or raise AudioInputError saying, in one line, why it cannot be used.

    libsndfile gets the descriptor, not the Python file object: a file object needs cffi
    callbacks (write+execute memory), which the unit's MemoryDenyWriteExecute= forbids.
    """
    fh = _open_regular_file(path)
    try:
        sound = soundfile.SoundFile(fh.fileno(), closefd=False)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        fh.close()
        raise AudioInputError(
            f"{path}: not an audio file libsndfile can read (expected WAV or FLAC)"
        ) from None
    if sound.frames == 0:
        sound.close()
        fh.close()
        raise AudioInputError(f"{path}: contains no audio frames")
    return fh, sound


def _open_regular_file(path: Path) -> BinaryIO:
    """Checked with stat() first: opening a FIFO or a device node could block forever."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise AudioInputError(f"{path}: no such file") from None
    except PermissionError:
        raise AudioInputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise AudioInputError(f"{path}: cannot open ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioInputError(f"{path}: is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise AudioInputError(f"{path}: not a regular file")
    if info.st_size == 0:
        raise AudioInputError(f"{path}: empty file (0 bytes)")
    try:
        return path.open("rb")
    except PermissionError:
        raise AudioInputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise AudioInputError(f"{path}: cannot open ({exc.strerror})") from None
