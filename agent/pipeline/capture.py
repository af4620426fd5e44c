"""Live capture from a PortAudio input device: the therapy room's microphone.

Callback mode: PortAudio's thread only puts each block into a bounded queue, so a slow
consumer costs counted, logged drops and never stalls the driver. The device is found by
name (indexes change when USB devices come and go). When it vanishes (stream stopped, or
no audio for a while) it is reopened with backoff in the background while read() goes on
returning empty blocks: a session must not end because a cable was knocked.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import pyaudio
from pydantic import BaseModel, ConfigDict

from agent.pipeline.audio import SAMPLE_RATE, AudioInputError, CaptureStats
from agent.pipeline.resample import Resampler
from agent.settings import AudioSettings
from runtime.retry import log_retry, thread_retrying, wait_backoff

log = logging.getLogger(__name__)

NO_SAMPLES = np.zeros(0, dtype=np.int16)
SAMPLE_BYTES = 2  # paInt16
# How often a waiting reader takes what was captured meanwhile, as one block. Waking once
# per device period would cost more than the work: a woken thread runs on cold caches, and
# the segmenter's work on 4 frames costs 4x on them what it costs warm (430 vs 105 us here).
LOOK_EVERY_S = 0.96
# How long close() waits for the device to let go (a stalled driver may never).
CLOSE_WAIT_S = 3.0
# libjack's complaints at every PortAudio start when no JACK server runs (there never is).
JACK_NOISE = (b"Cannot connect to server", b"jack server is not running", b"JackShmReadWritePtr")
# alsa-lib's, as PortAudio probes every PCM of the system config: ~50 lines with no sound
# card ("cannot find card '0'", "Unknown PCM cards.pcm.rear", ...). Logged at debug level
# (room-agent --verbose) rather than printed: the device list or the error says what counts.
ALSA_NOISE = b"ALSA lib "
# PortAudio's global state (Pa_Initialize / Pa_Terminate) is not thread-safe.
_PORTAUDIO_LOCK = threading.Lock()


class InputDevice(BaseModel):
    """An input device as PortAudio lists it; ``index`` is only valid until the next start."""

    model_config = ConfigDict(frozen=True)

    index: int
    name: str
    default_rate: int
    max_input_channels: int


@dataclass(frozen=True)
class ReopenPolicy:
    """When a device counts as lost, and how eagerly it is looked for again."""

    stall_s: float = 2.0
    first_wait_s: float = 0.25
    max_wait_s: float = 5.0
    check_every_s: float = 1.0


def list_input_devices() -> list[InputDevice]:
    """The input devices present now (a fresh PortAudio session, so re-plugged ones show)."""
    pa = _start_portaudio()
    try:
        return _input_devices(pa)
    finally:
        _stop_portaudio(pa)


def choose_device(devices: list[InputDevice], wanted: str) -> InputDevice:
    """The first device whose name contains ``wanted`` (any case); an index only as fallback.

    Names, because an index moves whenever a USB device is added or removed. A name equal
    to ``wanted`` comes first, so "default" means ALSA's default and not "sysdefault".
    """
    needle = wanted.casefold()
    for device in devices:
        if needle == device.name.casefold():
            return device
    for device in devices:
        if needle in device.name.casefold():
            return device
    if wanted.strip().isdigit():
        for device in devices:
            if device.index == int(wanted):
                return device
    names = ", ".join(repr(device.name) for device in devices) or "none"
    raise AudioInputError(f"no input device matches {wanted!r} (input devices: {names})")


def choose_rate(
    device: InputDevice, configured_rate: int, channels: int, supports: Callable[[int], bool]
) -> int:
    """The configured rate, else 16 kHz if offered (no resampling), else the device's own."""
    if configured_rate:
        if not supports(configured_rate):
            raise AudioInputError(
                f"{device.name}: cannot capture {channels} channel(s) at {configured_rate} Hz"
                " (audio.device_rate)"
            )
        return configured_rate
    if supports(SAMPLE_RATE):
        return SAMPLE_RATE
    if not supports(device.default_rate):
        raise AudioInputError(
            f"{device.name}: offers neither {SAMPLE_RATE} Hz nor its default"
            f" {device.default_rate} Hz with {channels} channel(s)"
        )
    return device.default_rate


@dataclass(frozen=True)
class _Block:
    """Raw frames as the device delivered them; ``opening`` tells device sessions apart.

    Its moments are the callback's: ``captured_at`` when the device handed it over, and
    ``started_at`` a block's length before that, but never before the previous block's
    ``captured_at`` (callbacks come late and in bursts, and a device or a test feeder may
    deliver faster than real time: the spans of one opening never overlap)."""

    opening: int
    rate: int
    channels: int
    data: bytes
    started_at: float  # time.monotonic() when its first frame is taken to have come
    captured_at: float  # time.monotonic() as the device handed it over

    @property
    def frames(self) -> int:
        return len(self.data) // (SAMPLE_BYTES * self.channels)


class MicrophoneSource:
    """16 kHz mono int16 blocks from the input device ``settings.device`` names.

    The device is opened here (AudioInputError if it cannot be); if it is lost later it is
    reopened in the background, counted in ``stats.reopens``. After close(), read() hands
    out what is still queued and then None: audio captured is never thrown away at stop.
    """

    def __init__(self, settings: AudioSettings, *, reopen: ReopenPolicy | None = None) -> None:
        self.stats = CaptureStats()
        self._settings = settings
        self._policy = reopen or ReopenPolicy()
        self._stall_s = max(self._policy.stall_s, 4 * settings.block_ms / 1000)
        # Filled by PortAudio's thread, which never wakes the reader: the reader looks every
        # LOOK_EVERY_S (see _next_block). A queue's wake-up would cost the reader three
        # switches per block (the wake-up, then the GIL the callback still holds, then its
        # mutex), and each costs a Pi-class core more than the block's own processing.
        self._blocks: deque[_Block] = deque()
        self._max_blocks = max(1, math.ceil(settings.queue_max_s * 1000 / settings.block_ms))
        self._look_every_s = max(LOOK_EVERY_S, settings.block_ms / 1000)
        self.captured_at = 0.0  # see TimedSource
        self._splits: list[float] = []  # pauses' and resumes' moments not yet read past
        self._splits_lock = threading.Lock()  # split_at's append against the reader's prune
        self._losses = _LossLog()
        self._closing = threading.Event()
        # Set once the stream is shut: a waiting reader takes what is left at once.
        self._closed = threading.Event()
        # What a waiting reader waits on: set by wake() (cleared as the reader wakes) and
        # for good by close().
        self._woken = threading.Event()
        self._openings = 0
        self._resampler: Resampler | None = None
        self._resampler_opening = 0
        self._stream: _DeviceStream | None = self._open()
        self._supervisor = threading.Thread(
            target=self._supervise, name="capture-supervisor", daemon=True
        )
        self._supervisor.start()

    def read(self, timeout: float | None = None) -> np.ndarray | None:
        """What was captured since the last read, at least a block, as one array; empty if
        nothing came within ``timeout``; None once closed and drained."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            block = self._next_block(deadline)
            if block is None:
                return self._end() if self._closed.is_set() else NO_SAMPLES
            samples = self._to_16k(self._with_queued(block))
            if samples.size:
                self.stats.samples += samples.size
                return samples

    def close(self) -> None:
        """Stop capturing; blocks already captured stay readable."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._supervisor.join(timeout=CLOSE_WAIT_S)
        if self._supervisor.is_alive():
            log.warning(
                "capture: %s did not let go within %.0f s (driver blocked); abandoned",
                self.stats.device_name,
                CLOSE_WAIT_S,
            )
        # Only now: a reader in another thread keeps taking blocks until the device is shut.
        self._closed.set()
        self._woken.set()
        self._losses.summary(self.stats)

    def wake(self) -> None:
        """See WakeableSource: a read waiting for the next look returns an empty block now."""
        self._woken.set()

    def __enter__(self) -> MicrophoneSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- consumer side ------------------------------------------------------------------

    def _next_block(self, deadline: float | None) -> _Block | None:
        """A queued block, or None when the deadline passed or the source is closed and empty.

        Waits by looking every LOOK_EVERY_S: the reader then wakes that often, at a moment
        PortAudio's thread rarely holds the GIL, and takes every block captured meanwhile."""
        while True:
            if self._blocks:
                return self._blocks.popleft()
            if self._closed.is_set():  # no block is added after this: the stream is shut
                return self._blocks.popleft() if self._blocks else None
            wait = self._look_every_s
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return None
            if self._woken.wait(wait) and not self._closed.is_set():
                self._woken.clear()  # wake(): the reader has something else to do first
                return self._blocks.popleft() if self._blocks else None

    def split_at(self, at: float) -> None:
        """See TimedSource: a pause (or its resume) at ``at`` keeps what was captured
        before it apart from what was captured after, down to the frame the moment falls
        on inside a block (a whole block would keep up to ``block_ms`` of what was said
        while paused, or drop as much said before); a pause and its resume may both fall
        within one look, or within one block."""
        with self._splits_lock:
            self._splits = [*self._splits, at]  # a new list: the reader's thread reads it

    def _with_queued(self, first: _Block) -> _Block:
        """``first`` and the blocks queued behind it from the same opening, as one; never
        across a split (split_at): a block a split falls in is cut there, and what it holds
        after the split goes back to the front of the queue for the next read."""
        splits = self._splits
        head, rest = _cut_at_split(first, splits)
        parts, last = [head.data], head
        while rest is None and self._blocks and self._blocks[0].opening == first.opening:
            following = self._blocks[0]
            if any(last.captured_at <= at <= following.started_at for at in splits):
                break
            head, rest = _cut_at_split(self._blocks.popleft(), splits)
            if not head.data:  # the split falls on its first frame
                break
            parts.append(head.data)
            last = head
        if rest is not None:
            self._blocks.appendleft(rest)  # the callback only appends: safe for a deque
        self.captured_at = last.captured_at
        if any(at < last.captured_at for at in splits):
            with self._splits_lock:
                self._splits = [at for at in self._splits if at >= last.captured_at]
        return dataclasses.replace(first, data=b"".join(parts), captured_at=last.captured_at)

    def _to_16k(self, block: _Block) -> np.ndarray:
        frames = np.frombuffer(block.data, dtype=np.int16).reshape(-1, block.channels).copy()
        if self._resampler is not None and block.opening == self._resampler_opening:
            return self._resampler.process(frames)
        # A new device session: what the old resampler still holds belongs before it.
        tail = self._resampler.flush() if self._resampler is not None else NO_SAMPLES
        self._resampler = Resampler(block.rate, block.channels)
        self._resampler_opening = block.opening
        return np.concatenate([tail, self._resampler.process(frames)])

    def _end(self) -> np.ndarray | None:
        if self._resampler is None:
            return None
        tail = self._resampler.flush()
        self._resampler = None
        if not tail.size:
            return None
        self.stats.samples += tail.size
        return tail

    # -- device side ----------------------------------------------------------------------

    def _open(self) -> _DeviceStream:
        settings = self._settings
        pa = _start_portaudio()
        try:
            device = choose_device(_input_devices(pa), settings.device)
            rate = choose_rate(
                device,
                settings.device_rate,
                settings.channels,
                lambda r: _supports(pa, device, r, settings.channels),
            )
            self._openings += 1
            stream = _DeviceStream(
                pa,
                device,
                rate,
                settings.channels,
                round(rate * settings.block_ms / 1000),
                self._openings,
                self._accept,
            )
        except BaseException:
            _stop_portaudio(pa)
            raise
        self.stats.device_name = device.name
        self.stats.device_rate = rate
        log.info("capture: %s open at %d Hz, %d channel(s)", device.name, rate, settings.channels)
        return stream

    def _accept(self, block: _Block, frames: int, status: int) -> None:
        """Runs on PortAudio's thread: count, queue, never wait."""
        if status & pyaudio.paInputOverflow:
            self.stats.overruns += 1
            self._losses.report("overrun", self.stats)
        if len(self._blocks) < self._max_blocks:
            self._blocks.append(block)  # one thread appends, one pops: deque is safe for that
        else:
            if self._closing.is_set():
                return  # past close(): audio after the stop, which nobody reads; no loss
            self.stats.dropped_blocks += 1
            self.stats.dropped_s += frames / block.rate
            self._losses.report("dropped", self.stats)

    def _supervise(self) -> None:
        try:
            while not self._closing.is_set():
                stream = self._stream
                if stream is None:
                    self._stream = self._reopen()
                    continue
                problem = stream.problem(self._stall_s)
                if problem is None:
                    # A stall is noticed within stall_s + this; a look costs a wake-up.
                    self._closing.wait(min(self._policy.check_every_s, self._stall_s / 2))
                    continue
                log.warning("capture: %s lost (%s); reopening", stream.device.name, problem)
                self._stream = None
                stream.close()
        finally:
            if self._stream is not None:
                self._stream.close()
                self._stream = None

    def _reopen(self) -> _DeviceStream | None:
        policy = self._policy
        retrying = thread_retrying(
            self._closing,
            AudioInputError,
            wait_backoff(policy.first_wait_s, policy.max_wait_s),
            before_sleep=log_retry(log, "capture: device not back yet", every=12),
        )
        try:
            stream = retrying(self._open)
        except AudioInputError:
            return None  # closing
        self.stats.reopens += 1
        log.info("capture: %s back (reopen %d)", stream.device.name, self.stats.reopens)
        return stream


class _DeviceStream:
    """One opening of the device: its own PortAudio session, stream and callback."""

    def __init__(
        self,
        pa: pyaudio.PyAudio,
        device: InputDevice,
        rate: int,
        channels: int,
        block_frames: int,
        opening: int,
        deliver: Callable[[_Block, int, int], None],
    ) -> None:
        self.device = device
        self.rate = rate
        self.channels = channels
        self.opening = opening
        self.abandoned = False
        self.last_audio = time.monotonic()  # also where the first block may start, at most
        self._pa = pa
        self._deliver = deliver
        try:
            with _PORTAUDIO_LOCK:
                self._stream = pa.open(
                    rate=rate,
                    channels=channels,
                    format=pyaudio.paInt16,
                    input=True,
                    input_device_index=device.index,
                    frames_per_buffer=block_frames,
                    stream_callback=self._on_audio,
                )
        except (OSError, ValueError) as exc:
            raise AudioInputError(
                f"{device.name}: cannot open at {rate} Hz, {channels} channel(s): {exc}"
            ) from None

    def problem(self, stall_s: float) -> str | None:
        """Why this stream is no use any more, or None while audio flows."""
        try:
            active = self._stream.is_active()
        except OSError as exc:
            return f"stream error: {exc}"
        if not active:
            return "stream stopped"
        silent_s = time.monotonic() - self.last_audio
        if silent_s > stall_s:
            return f"no audio for {silent_s:.1f} s"
        return None

    def close(self) -> None:
        """May block while the driver is stuck in a read; the consumer is not held up."""
        self.abandoned = True
        try:
            self._stream.close()
        except OSError as exc:
            log.warning("capture: closing %s: %s", self.device.name, exc)
        _stop_portaudio(self._pa)

    def _on_audio(
        self, data: bytes | None, frame_count: int, time_info: object, status: int
    ) -> tuple[None, int]:
        if self.abandoned or data is None:
            return None, pyaudio.paAbort
        now = time.monotonic()
        started = max(now - frame_count / self.rate, self.last_audio)
        self.last_audio = now
        block = _Block(self.opening, self.rate, self.channels, data, started, now)
        self._deliver(block, frame_count, status)
        return None, pyaudio.paContinue


def _cut_at_split(block: _Block, splits: list[float]) -> tuple[_Block, _Block | None]:
    """``block`` up to the earliest split that falls inside it, and what it holds after
    that split (None if no split falls inside it).

    The split's frame is placed in proportion to the block's span: the span is the one
    measure of when its frames came that holds for a device delivering late, early or
    fast."""
    inside = [at for at in splits if block.started_at < at < block.captured_at]
    if not inside:
        return block, None
    at = min(inside)
    share = (at - block.started_at) / (block.captured_at - block.started_at)
    cut = round(block.frames * share) * block.channels * SAMPLE_BYTES
    before = dataclasses.replace(block, data=block.data[:cut], captured_at=at)
    if cut == len(block.data):
        return before, None
    return before, dataclasses.replace(block, data=block.data[cut:], started_at=at)


class _LossLog:
    """Logs overruns and drops at once, then at most every ``every_s`` with the totals.

    A full queue drops a block every few tens of milliseconds; one line per block would
    bury everything else in the journal, none at all would hide lost audio.
    """

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def report(self, kind: str, stats: CaptureStats) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -math.inf) < self.every_s:
            return
        self._last[kind] = now
        if kind == "overrun":
            log.warning("capture: input overrun at the device (%d so far)", stats.overruns)
        else:
            log.warning(
                "capture: queue full, %d block(s) (%.2f s of audio) dropped so far",
                stats.dropped_blocks,
                stats.dropped_s,
            )

    def summary(self, stats: CaptureStats) -> None:
        if stats.overruns or stats.dropped_blocks:
            log.warning(
                "capture: closed with %d overrun(s), %d block(s) (%.2f s) dropped",
                stats.overruns,
                stats.dropped_blocks,
                stats.dropped_s,
            )


def _input_devices(pa: pyaudio.PyAudio) -> list[InputDevice]:
    found = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        channels = int(info["maxInputChannels"])
        if channels > 0:
            found.append(
                InputDevice(
                    index=index,
                    name=str(info["name"]),
                    default_rate=round(float(info["defaultSampleRate"])),
                    max_input_channels=channels,
                )
            )
    return found


def _supports(pa: pyaudio.PyAudio, device: InputDevice, rate: int, channels: int) -> bool:
    try:
        return bool(
            pa.is_format_supported(
                rate,
                input_device=device.index,
                input_channels=channels,
                input_format=pyaudio.paInt16,
            )
        )
    except ValueError:
        return False


def _start_portaudio() -> pyaudio.PyAudio:
    """A new PortAudio session: only a new one sees devices plugged in since the last.

    (PortAudio enumerates devices once per session, and only if no other session is alive
    in this process; ALSA re-reads ALSA_CONFIG_PATH then too.)
    """
    with _PORTAUDIO_LOCK, _jack_noise_filtered():
        try:
            return pyaudio.PyAudio()
        except OSError as exc:
            raise AudioInputError(f"PortAudio cannot start: {exc}") from None


def _stop_portaudio(pa: pyaudio.PyAudio) -> None:
    with _PORTAUDIO_LOCK:
        pa.terminate()


@contextmanager
def _jack_noise_filtered() -> Iterator[None]:
    """Drops libjack's stderr lines at PortAudio start, and turns alsa-lib's into debug log
    lines; everything else still gets through.

    stderr (fd 2, which C libraries write to) is diverted to a file for the moment and then
    replayed without those lines, so other threads' messages are delayed, not lost.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = []
            for line in captured.read().splitlines(keepends=True):
                if line.startswith(ALSA_NOISE):
                    log.debug("alsa: %s", line.decode(errors="replace").rstrip())
                elif not line.startswith(JACK_NOISE):
                    kept.append(line)
            if kept:
                os.write(2, b"".join(kept))
