"""A real capture device without a sound card: the ALSA `file` plugin, fed from a file or FIFO.

The demo's microphone, and the tests' (tests/support/alsa.py re-exports this module): one
implementation of what was learned the hard way about the plugin.

PortAudio (through pyaudio) opens an ALSA PCM named ``testmic`` whose samples are read from
a raw s16le file. Point ``ALSA_CONFIG_PATH`` at the config before ``pyaudio.PyAudio()`` is
created (in this process or a child); PortAudio re-reads it at each new PyAudio() once every
earlier instance has been terminated.

What the plugin does, and what these helpers take care of:
- the config replaces the system's, so it must define ``pcm.default`` (PortAudio 19.6 aborts
  otherwise) and the PCM needs a name PortAudio does not hide (null, file, hw, plug, ...);
- the infile is raw frames, nothing checks rate or format against it;
- a regular infile is read unpaced (a minute in milliseconds), and after its end the last
  period is handed out again and again: pad it with silence or stop at a known length;
- a FIFO infile gives real-time pacing if it is written in whole periods (FifoFeeder);
- when the infile is missing, PortAudio still lists the PCM but with 0 input channels:
  that is how an unplugged microphone looks;
- a reader blocked on a FIFO cannot be stopped (PortAudio's close waits for the read), and
  a FIFO whose writer has gone reads as end-of-file, which the plugin turns into an unpaced
  stream of its last period: FifoFeeder.unplug() therefore keeps the old writer open.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import termios
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType

import numpy as np

PCM_NAME = "testmic"
SAMPLE_BYTES = 2
# The agent's capture block (agent.audio.block_ms, 240 ms by default) at 16 kHz. A feeder's
# period must be a whole number of the reader's: a read of one ALSA period from a FIFO that
# holds less comes back short, and the plugin fills the rest with stale samples.
PERIOD_FRAMES = 3_840
# The kernel counts a pipe's room in pages: a period is written only when the FIFO has room
# for it and two pages more, so the write is never cut short and a reader never finds part
# of one (7,680 B is over PIPE_BUF, beyond which a write is not atomic by itself).
_PIPE_PAGE = 4_096
_SPARE_PAGES = 2
# How often a writer waiting for that room looks again.
_ROOM_POLL_S = 0.01


def write_asound_conf(
    config: Path, infile: Path, *, name: str = PCM_NAME, only_rate: int | None = None
) -> dict[str, str]:
    """Write an ALSA config whose PCM ``name`` captures raw s16le frames from ``infile``.

    With ``only_rate`` the PCM refuses every other rate, as a USB microphone that only does
    48 kHz would: PortAudio then reports ``only_rate`` as its default rate and
    ``is_format_supported(16000)`` fails. (A ``plug`` whose slave is fixed at that rate and
    whose rate converter does not exist: any other rate fails in hw_params.)

    Returns the environment to use it: ``{"ALSA_CONFIG_PATH": ...}``.
    """
    source = _file_pcm(infile)
    if only_rate is None:
        body = f"pcm.{name} {source}\n"
    else:
        # The inner PCM is named "file" because PortAudio hides that name from its list.
        body = (
            f"pcm.{name} {{\n"
            f"    type plug\n"
            f'    slave {{ pcm "file"; rate {only_rate} }}\n'
            f'    rate_converter "no_such_converter"\n'
            f"}}\n"
            f"pcm.file {source}\n"
        )
    config.write_text(body + "pcm.null { type null }\n" + f"pcm.default {name}\n")
    return {"ALSA_CONFIG_PATH": str(config)}


def _file_pcm(infile: Path) -> str:
    return (
        "{\n"
        "    type file\n"
        '    slave.pcm "null"\n'
        '    file "/dev/null"\n'
        f'    infile "{infile}"\n'
        '    format "raw"\n'
        "}"
    )


def pcm_bytes(samples: np.ndarray) -> bytes:
    """int16 samples (frames, or frames x channels) as the raw s16le the plugin reads."""
    if samples.dtype != np.int16:
        raise TypeError(f"expected int16 samples, got {samples.dtype}")
    return np.ascontiguousarray(samples).astype("<i2", copy=False).tobytes()


def write_raw(path: Path, samples: np.ndarray) -> Path:
    path.write_bytes(pcm_bytes(samples))
    return path


class FifoFeeder:
    """Plays samples into a FIFO as a sound card delivers them: whole periods, on a clock.

    Use the FIFO's path as the ALSA infile. ``speed`` > 1 plays faster than real time.
    With nothing queued it writes silence, as a live microphone keeps delivering; with
    ``idle_silence=False`` it writes nothing and the reader waits, as on a stalled device.
    Keep it running until the capture stream is closed: PortAudio cannot close a stream
    whose reader is blocked on an empty FIFO.
    """

    def __init__(
        self,
        path: Path,
        *,
        period_frames: int = PERIOD_FRAMES,
        rate: int = 16_000,
        channels: int = 1,
        speed: float = 1.0,
        idle_silence: bool = True,
    ) -> None:
        self.path = path
        self.rate = rate
        self.channels = channels
        self.speed = speed
        self.idle_silence = idle_silence
        self.period_frames = period_frames
        self.period_bytes = period_frames * channels * SAMPLE_BYTES
        self.frames_played = 0  # frames of played (queued) audio written into the FIFO
        self._frames_queued = 0
        self._periods: deque[bytes] = deque()
        self._wake = threading.Condition()
        self._paused = False
        self._stopping = False
        self._writing = False
        self._fd = self._make_fifo()
        self._capacity = fcntl.fcntl(self._fd, fcntl.F_GETPIPE_SZ)
        if self.period_bytes + _SPARE_PAGES * _PIPE_PAGE > self._capacity:
            os.close(self._fd)
            self.path.unlink()
            raise ValueError(
                f"a period of {self.period_bytes} bytes does not fit in the FIFO"
                f" ({self._capacity} bytes) with {_SPARE_PAGES} pages to spare"
            )
        self._unplugged_fd: int | None = None
        self._thread = threading.Thread(target=self._run, name="fifo-feeder", daemon=True)
        self._thread.start()

    def play(self, samples: np.ndarray) -> None:
        """Queue int16 samples (frames, or frames x channels); padded with zeros to a period."""
        data = pcm_bytes(samples)
        remainder = len(data) % self.period_bytes
        if remainder:
            data += bytes(self.period_bytes - remainder)
        with self._wake:
            for start in range(0, len(data), self.period_bytes):
                self._periods.append(data[start : start + self.period_bytes])
            self._frames_queued += len(data) // self.period_bytes * self.period_frames
            self._wake.notify_all()

    def wait_played(self, timeout: float) -> bool:
        """True once every queued period has been written into the FIFO. Counted, not
        inferred from an idle writer: with idle silence the writer is never idle."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self.frames_played < self._frames_queued:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.wait(remaining)
        return True

    def pause(self) -> None:
        with self._wake:
            self._paused = True

    def resume(self) -> None:
        with self._wake:
            self._paused = False
            self._wake.notify_all()

    def unplug(self) -> None:
        """The microphone goes away: writing stops and the FIFO leaves the file system.

        The old write end stays open, so the reader blocks as on a dead device rather than
        reading end-of-file; close_unplugged() or replug() closes it.
        """
        with self._wake:
            self._paused = True
            while self._writing:
                self._wake.wait(0.1)
            self.path.unlink()
            self._unplugged_fd, self._fd = self._fd, -1

    def close_unplugged(self) -> None:
        """Close the unplugged FIFO's write end: a reader still blocked on it gets EOF.

        Only once the reader has given up on it: the plugin turns EOF into an unpaced
        repetition of the last period.
        """
        with self._wake:
            if self._unplugged_fd is not None:
                os.close(self._unplugged_fd)
                self._unplugged_fd = None

    def replug(self) -> None:
        """A fresh FIFO at the same path, and writing resumes."""
        with self._wake:
            self._fd = self._make_fifo()
            self._paused = False
            self._wake.notify_all()
        self.close_unplugged()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout=5)
        self.close_unplugged()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.path.exists():
            self.path.unlink()

    def __enter__(self) -> FifoFeeder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _make_fifo(self) -> int:
        """Created under a temporary name, opened, then renamed: no reader ever finds a FIFO
        without a writer (its open() would block until one appears)."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        if tmp.exists():
            tmp.unlink()
        os.mkfifo(tmp)
        fd = os.open(tmp, os.O_RDWR | os.O_NONBLOCK)
        tmp.rename(self.path)
        return fd

    def _run(self) -> None:
        due = time.monotonic()
        interval = self.period_frames / self.rate / self.speed
        while True:
            with self._wake:
                while not self._stopping and (self._paused or not self._has_work()):
                    self._wake.wait(0.05)
                    due = time.monotonic()
                if self._stopping:
                    return
                queued = bool(self._periods)
                period = self._periods.popleft() if queued else bytes(self.period_bytes)
                self._writing = True
                fd = self._fd
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            written = self._write(fd, period)
            with self._wake:
                if written:
                    self.frames_played += self.period_frames if queued else 0
                    # No catching up after a wait on a full FIFO (no reader): a sound card
                    # does not hand over the time nobody read it in a burst.
                    due = max(due + interval, time.monotonic() - interval)
                elif queued:
                    self._periods.appendleft(period)
                self._writing = False
                self._wake.notify_all()

    def _has_work(self) -> bool:
        return bool(self._periods) or self.idle_silence

    def _write(self, fd: int, period: bytes) -> bool:
        """One whole period in one write, once the FIFO has room for it; False if paused or
        stopped while the FIFO was full."""
        while not (self._stopping or self._paused):
            if self._capacity - _bytes_queued(fd) >= len(period) + _SPARE_PAGES * _PIPE_PAGE:
                try:
                    written = os.write(fd, period)
                except BlockingIOError:
                    written = 0
                if written:
                    self._write_rest(fd, period[written:])
                    return True
            # Not select(): a FIFO is writable with a page free, long before a period fits.
            time.sleep(_ROOM_POLL_S)
        return False

    def _write_rest(self, fd: int, rest: bytes) -> None:
        """What a write cut short left (the room was misjudged): late rather than lost."""
        while rest and not self._stopping:
            try:
                rest = rest[os.write(fd, rest) :]
            except BlockingIOError:
                select.select([], [fd], [], 0.05)


def _bytes_queued(fd: int) -> int:
    """Bytes written into the pipe and not yet read."""
    answer = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", answer)[0])
