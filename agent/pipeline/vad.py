"""Voice activity detection: cut the room's audio down to speech chunks.

Audio is protected health information, so only speech leaves this stage, and it leaves
early: a chunk is emitted as soon as its speech region ends or reaches ``max_chunk_s``,
so upload can start during the session; memory stays at a few seconds of look-back plus
one chunk. But the first duty is to keep every word: a sentence dropped here is missing
from the clinical note for good, a knock kept costs a few bytes.

Two opinions on each 30 ms frame, both independent of the microphone's absolute level:
- "loud": its speech-band energy stands ``noise_margin_db`` above the noise floor (a
  sliding minimum of smoothed energy over ``noise_window_s``: steady noise, however
  loud, sits at the floor); "strong" when STRONG_MARGIN_DB above it.
- "speech": webrtcvad says so, on a copy of the frame raised by the detector gain.
  webrtcvad judges absolute levels (its models were trained on telephone speech at
  ordinary levels), so a whisper at -50 dBFS in a quiet room was "noise" to it. The
  gain lifts the room's full-band noise floor to DETECTOR_FLOOR_DB (at most
  MAX_DETECTOR_GAIN_DB, never below 0 dB): what webrtcvad sees then depends on the
  level above the noise, not on the microphone's sensitivity or the talker's distance.
  Only the detector's copy is raised; the spooled audio is the microphone's samples.
  webrtcvad sees every frame, so its own noise model follows the room.

A region opens on ``min_speech_ms`` of frames that are both loud and speech, or of
speech frames with STRONG_FRAMES strong ones in a row at a held level (a short word of
a quiet talker is loud for only three or four frames; a knock dies away within two);
it reaches back over the loud frames just before (a first word webrtcvad missed) plus the
pre-roll (onsets are quiet), and ends ``hangover`` after the last loud speech frame
(pauses inside sentences, quiet word endings). With trim "conservative" a second look,
webrtcvad at mode 0 on the same frames, may open a region the same way (held, strong
energy): at 5 dB SNR mode 2 hears nothing in some whole words that mode 0 catches.
``trim`` (agent/settings.py) sets webrtcvad's mode and the padding, or keeps everything.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import webrtcvad

from agent.pipeline.audio import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE
from agent.settings import AudioSettings

INT16_MIN, INT16_MAX = -32768, 32767

FLOOR_SMOOTHING = 0.3  # weight of a new frame in the smoothed energy the floor tracks
FLOOR_SUBWINDOWS = 8  # the floor window is kept as this many sub-window minima
LOOKBACK_S = 3.0  # how far before its opening run a region may reach back over loud frames
STRONG_MARGIN_DB = 6.0  # a frame this far above the floor is strong evidence
STRONG_FRAMES = 3  # strong speech frames within OPEN_WINDOW open a region
OPEN_WINDOW = 6
PLATEAU_DB = 12.0
DETECTOR_FLOOR_DB = 50.0  # full-band noise floor webrtcvad is shown (about -40 dBFS)
MAX_DETECTOR_GAIN_DB = 30.0
BAND_HZ = (150.0, 4000.0)  # where speech carries its energy and room noise does not
BAND_BINS = slice(
    math.ceil(BAND_HZ[0] * FRAME_SAMPLES / SAMPLE_RATE),
    math.floor(BAND_HZ[1] * FRAME_SAMPLES / SAMPLE_RATE) + 1,
)


@dataclass(frozen=True)
class SpeechChunk:
    """Consecutive speech samples; ``final`` is False when max_chunk_s split a region."""

    start_sample: int  # since the first sample pushed into the Segmenter, at 16 kHz
    pcm: np.ndarray  # int16 mono 16 kHz
    final: bool

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.pcm)

    @property
    def start_s(self) -> float:
        return self.start_sample / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end_sample / SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


class NoiseFloor:
    """A sliding minimum of smoothed frame energy (dB), over ``window_frames``.

    Speech has gaps (stops, breaths, pauses) every second or so, so within a window of a
    few seconds the minimum falls on noise alone; after the room gets louder the floor
    follows within one window, and a burst of noise or knocks never lifts it. The window
    is kept as a few sub-window minima: O(1) per frame, no per-frame array work.
    """

    def __init__(self, window_frames: int) -> None:
        self.sub_frames = max(1, math.ceil(window_frames / FLOOR_SUBWINDOWS))
        self.minima: deque[float] = deque(maxlen=FLOOR_SUBWINDOWS)
        self.current = math.inf
        self.count = 0
        self.smoothed: float | None = None
        self.level = math.inf

    def update(self, energy_db: float) -> float:
        """Take one frame's energy; return the floor as it stood before this frame."""
        floor = self.level
        smoothed = energy_db if self.smoothed is None else self.smoothed
        smoothed += FLOOR_SMOOTHING * (energy_db - smoothed)
        self.smoothed = smoothed
        if smoothed < self.current:
            self.current = smoothed
        self.count += 1
        if self.count == self.sub_frames:
            self.minima.append(self.current)
            self.current = math.inf
            self.count = 0
            self.level = min(self.minima)
        elif self.current < self.level:
            self.level = self.current
        return floor


class Segmenter:
    """Turns a stream of 16 kHz int16 blocks into speech chunks, as they complete."""

    def __init__(
        self,
        settings: AudioSettings,
        on_frame: Callable[[np.ndarray, bool], None] | None = None,
    ) -> None:
        """``on_frame(frame, voiced)`` sees each 30 ms frame with the decision recording
        makes about it, so `room-agent check` measures exactly what recording keeps."""
        self.on_frame = on_frame
        preset = settings.trim_preset
        self.keep_all = preset.keep_all
        self.vad = webrtcvad.Vad(preset.vad_mode)
        self.margin_db = settings.noise_margin_db
        window = _frames(settings.noise_window_s * 1000)
        self.floor = NoiseFloor(window)
        self.detector_floor = NoiseFloor(window)  # full band: the level webrtcvad hears
        self.pre_roll = _frames(preset.pre_roll_ms)
        self.hangover = _frames(preset.hangover_ms)
        self.min_run = max(1, _frames(settings.min_speech_ms))
        self.max_chunk = int(settings.max_chunk_s * SAMPLE_RATE)
        # Idle frames (with "loud": above the floor by the margin) kept for the pre-roll, and
        # for looking back along earlier loud frames (an utterance's first word) before the
        # run that opens the region.
        lookback = self.pre_roll + self.min_run + _frames(LOOKBACK_S * 1000)
        self.recent: deque[tuple[np.ndarray, bool]] = deque(maxlen=lookback)
        self.remainder = np.zeros(0, dtype=np.int16)
        self.frame_index = 0  # index of the next whole frame
        self.run = 0  # frames of the run that opens a region, up to the current one
        self.voiced_run = 0  # loud speech frames in a row
        self.speech_run = _SpeechRun(self.min_run)
        # The second look (trim conservative): webrtcvad at mode 0 on the same frames.
        self.second_vad = webrtcvad.Vad(0) if preset.second_look else None
        self.second_run = _SpeechRun(self.min_run)
        self.region_end = 0  # frame index where the last region ended (no overlap)
        self.open = False
        self.chunk: list[np.ndarray] = []
        self.chunk_start = 0  # sample offset of the open chunk
        self.chunk_len = 0
        self.since_voiced = 0
        self.finished = False

    def push(self, block: np.ndarray) -> list[SpeechChunk]:
        """Feed samples (any length); return the chunks completed by them."""
        if self.finished:
            raise RuntimeError("Segmenter.push after flush: a Segmenter serves one stream")
        samples = np.concatenate((self.remainder, np.asarray(block, dtype=np.int16)))
        whole = len(samples) // FRAME_SAMPLES * FRAME_SAMPLES
        self.remainder = samples[whole:]
        frames = samples[:whole].reshape(-1, FRAME_SAMPLES)
        return self._process(frames) if len(frames) else []

    def flush(self) -> list[SpeechChunk]:
        """End of stream: close an open region, with the trailing partial frame.

        A voiced run still shorter than min_speech_ms is dropped, as it would have been.
        """
        self.finished = True
        out: list[SpeechChunk] = []
        if self.open:
            self._append(self.remainder, out)
            self._close(out)
        self.remainder = np.zeros(0, dtype=np.int16)
        self.recent.clear()
        return out

    def _process(self, frames: np.ndarray) -> list[SpeechChunk]:
        out: list[SpeechChunk] = []
        if self.keep_all:
            for frame in frames:
                self._step(frame, True, True, False, math.inf, out)
                self.frame_index += 1
            return out
        energies = band_energy_db(frames).tolist()
        raw = self._detector_view(frames)
        step = FRAME_SAMPLES * 2
        for i, energy in enumerate(energies):
            floor = self.floor.update(energy)
            loud = energy > floor + self.margin_db
            above = energy - floor
            view = raw[i * step : (i + 1) * step]
            speech = self.vad.is_speech(view, SAMPLE_RATE)
            second = self.second_vad is not None and self.second_vad.is_speech(view, SAMPLE_RATE)
            self._step(frames[i], loud, speech, second, above, out)
            self.frame_index += 1
        return out

    def _detector_view(self, frames: np.ndarray) -> bytes:
        """The frames as webrtcvad gets them: raised so the room's floor sits at
        DETECTOR_FLOOR_DB (in whole dB, so a steady room gives a steady gain)."""
        f32 = frames.astype(np.float32)
        levels = 10 * np.log10(np.einsum("ij,ij->i", f32, f32) / FRAME_SAMPLES + 1)
        gains = np.empty(len(frames), dtype=np.float32)
        for i, level in enumerate(levels.tolist()):
            floor = self.detector_floor.update(level)
            if floor == math.inf:
                floor = level
            gains[i] = round(min(max(DETECTOR_FLOOR_DB - floor, 0.0), MAX_DETECTOR_GAIN_DB))
        if not gains.any():
            return frames.tobytes()
        raised = f32 * (10 ** (gains / 20))[:, None]
        return np.clip(raised, INT16_MIN, INT16_MAX).astype(np.int16).tobytes()

    def _step(
        self,
        frame: np.ndarray,
        loud: bool,
        speech: bool,
        second: bool,
        above: float,
        out: list[SpeechChunk],
    ) -> None:
        """``second``: the second look's opinion; ``above``: energy over the floor, dB."""
        voiced = loud and speech
        if self.on_frame is not None:
            self.on_frame(frame, voiced)
        self.voiced_run = self.voiced_run + 1 if voiced else 0
        self.speech_run.add(speech, above)
        self.second_run.add(second, above)
        if self.open:
            self.since_voiced = 0 if voiced else self.since_voiced + 1
            if self.since_voiced <= self.hangover:
                self._append(frame, out)
                return
            self._close(out)
        self.recent.append((frame, loud))
        if self.voiced_run >= self.min_run:
            self.run = self.voiced_run
            self._open(out)
        elif self.speech_run.sustained():
            self.run = self.speech_run.tail()
            self._open(out)
        elif self.second_run.sustained():
            self.run = self.second_run.tail()
            self._open(out)

    def _open(self, out: list[SpeechChunk]) -> None:
        """Start a region pre_roll before its first loud frame, never inside the last one.

        The region reaches back, as hangover reaches forward, over earlier loud frames no
        more than hangover apart: webrtcvad often misses a first word ("could", "if") that
        stands well above the noise, and the run that follows already proves speech.
        """
        recent = list(self.recent)
        first_loud = len(recent) - self.run  # position in recent of the run's first frame
        for position in range(first_loud - 1, -1, -1):
            if first_loud - position > self.hangover + 1:
                break
            if recent[position][1]:
                first_loud = position
        offset = self.frame_index + 1 - len(recent)  # frame index of recent[0]
        first = max(first_loud - self.pre_roll, self.region_end - offset, 0)
        self.open = True
        self.since_voiced = 0
        self.chunk, self.chunk_len = [], 0
        self.chunk_start = (offset + first) * FRAME_SAMPLES
        self.recent.clear()
        self._append(np.concatenate([frame for frame, _ in recent[first:]]), out)

    def _append(self, samples: np.ndarray, out: list[SpeechChunk]) -> None:
        """Add to the open chunk; emit max_chunk_s pieces once more audio follows them."""
        self.chunk.append(samples)
        self.chunk_len += len(samples)
        if self.chunk_len <= self.max_chunk:
            return
        pcm = np.concatenate(self.chunk)
        while len(pcm) > self.max_chunk:
            out.append(SpeechChunk(self.chunk_start, pcm[: self.max_chunk], final=False))
            pcm = pcm[self.max_chunk :]
            self.chunk_start += self.max_chunk
        self.chunk, self.chunk_len = [pcm], len(pcm)

    def _close(self, out: list[SpeechChunk]) -> None:
        pcm = np.concatenate(self.chunk) if self.chunk else np.zeros(0, dtype=np.int16)
        out.append(SpeechChunk(self.chunk_start, pcm, final=True))
        self.open = False
        self.chunk = []
        self.chunk_len = 0
        self.region_end = self.frame_index


class _SpeechRun:
    """A detector's current run of speech frames, and their energy over the floor."""

    def __init__(self, min_run: int) -> None:
        self.min_run = min_run
        self.length = 0
        self.above: deque[float] = deque(maxlen=OPEN_WINDOW)

    def add(self, speech: bool, above: float) -> None:
        if speech:
            self.length += 1
            self.above.append(above)
        else:
            self.length = 0
            self.above.clear()

    def tail(self) -> int:
        return len(self.above)

    def sustained(self) -> bool:
        """``min_run`` speech frames, with STRONG_FRAMES strong ones in a row within
        PLATEAU_DB of each other: a voice holds its level for a syllable; a knock is
        loudest in its first frame or two and has died away by the third (25 dB and more
        below), and knocks in a row are 100 ms apart."""
        if self.length < self.min_run:
            return False
        levels = list(self.above)
        for at in range(len(levels) - STRONG_FRAMES + 1):
            run = levels[at : at + STRONG_FRAMES]
            if min(run) > STRONG_MARGIN_DB and max(run) - min(run) <= PLATEAU_DB:
                return True
        return False


def band_energy_db(frames: np.ndarray) -> np.ndarray:
    """Each frame's mean-square level in the speech band, dB over one LSB squared.

    Room noise (HVAC rumble, traffic, mains hum) is mostly below the band and speech is
    mostly inside it, so measuring only the band raises the effective SNR by several dB.
    """
    spectrum = np.fft.rfft(frames.astype(np.float32), axis=1)[:, BAND_BINS]
    power = spectrum.real**2 + spectrum.imag**2
    return 10 * np.log10(power.sum(axis=1) * (2 / FRAME_SAMPLES**2) + 1)


def merge_spans(chunks: Iterable[SpeechChunk]) -> list[tuple[float, float]]:
    """Kept audio as (start_s, end_s) spans: chunks that touch are one span."""
    spans: list[tuple[int, int]] = []
    for chunk in sorted(chunks, key=lambda c: c.start_sample):
        if spans and chunk.start_sample <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], chunk.end_sample))
        else:
            spans.append((chunk.start_sample, chunk.end_sample))
    return [(start / SAMPLE_RATE, end / SAMPLE_RATE) for start, end in spans]


def _frames(ms: float) -> int:
    return round(ms / FRAME_MS)
