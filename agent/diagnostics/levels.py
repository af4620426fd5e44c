"""What `room-agent check` measures: levels, clipping, and what the VAD makes of the audio.

The check must see what recording sees, so the speech share, the speech level and the noise
floor come from the recording's own Segmenter (agent.pipeline.vad) fed with the same 16 kHz mono
blocks MicrophoneSource hands the recorder, with the same settings. Nothing here keeps any
audio: only sums, counts and extremes, so the check cannot leak what was said.

dBFS here is RMS relative to a full-scale square wave (20*log10(rms / 32768)), as the
synthetic test sessions use it; a full-scale sine reads -3 dBFS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from agent.pipeline.audio import FRAME_SAMPLES, SAMPLE_RATE
from agent.pipeline.vad import Segmenter, SpeechChunk, band_energy_db
from agent.settings import AudioSettings

FULL_SCALE = 32_768.0
FULL_SCALE_DB = 20 * math.log10(FULL_SCALE)  # band_energy_db's unit (LSB) -> dBFS
MIN_DBFS = -120.0  # what digital silence reads as (JSON has no -infinity)
# A sample this close to full scale (99%, -0.09 dBFS) is taken as clipped: an ADC or a
# digital gain stage that saturates leaves runs of samples at +-32767, and a resampler after
# it leaves them within a fraction of a dB of it. Clean speech at any sane gain stays at
# least a few dB below.
CLIP_LEVEL = 32_440
# A frame 10 dB above the noise floor is a sound (a voice, a knock), whatever the VAD says
# of it: a steady noise's frames wander only a few dB around the floor (its smoothed minimum).
SOUND_MARGIN_DB = 10.0


def dbfs(mean_square: float) -> float:
    """A mean square in LSB^2 as dBFS, never below MIN_DBFS."""
    if mean_square <= 0:
        return MIN_DBFS
    return max(MIN_DBFS, 10 * math.log10(mean_square) - FULL_SCALE_DB)


@dataclass
class Stretch:
    """Sample statistics of a stretch of audio: cheap to update for every block."""

    samples: int = 0
    sum_squares: float = 0.0
    peak: int = 0
    low: int = 0
    high: int = 0
    clipped: int = 0

    def add(self, block: np.ndarray) -> None:
        if not block.size:
            return
        wide = block.astype(np.int32)
        low, high = int(wide.min()), int(wide.max())
        self.low = low if self.samples == 0 else min(self.low, low)
        self.high = high if self.samples == 0 else max(self.high, high)
        self.peak = max(self.peak, abs(low), abs(high))
        self.clipped += int(np.count_nonzero(np.abs(wide) >= CLIP_LEVEL))
        as_float = wide.astype(np.float64)  # an int32 sum of squares overflows in 2 ms
        self.sum_squares += float(np.dot(as_float, as_float))
        self.samples += block.size

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    @property
    def rms_dbfs(self) -> float:
        return dbfs(self.sum_squares / self.samples) if self.samples else MIN_DBFS

    @property
    def peak_dbfs(self) -> float:
        return dbfs(float(self.peak) ** 2)

    @property
    def span(self) -> int:
        """Highest minus lowest sample: 0 when every sample was the same (a dead input)."""
        return self.high - self.low


class Measurements(BaseModel):
    """What the check measured over the whole run; the verdict is judged from these."""

    seconds: float  # audio captured and measured
    rms_dbfs: float  # overall level, speech and pauses together
    peak_dbfs: float
    span_lsb: int  # highest minus lowest sample
    clipped_samples: int  # samples within CLIP_LEVEL of full scale
    clipped_share: float
    voiced_s: float  # frames the VAD calls speech (above the floor AND webrtcvad agrees)
    voiced_share: float
    speech_dbfs: float | None  # level of the voiced frames; None without any
    sound_s: float  # frames SOUND_MARGIN_DB or more above the noise floor
    sound_dbfs: float | None  # level of those frames; None without any
    kept_s: float  # what recording would keep: speech chunks with pre-roll and hangover
    kept_share: float
    noise_floor_dbfs: float | None  # the room's quiet moments, speech band only (150-4000 Hz)
    snr_db: float | None  # voiced frames' speech-band level over the noise floor


@dataclass(frozen=True)
class Reading:
    """One redraw of the live meter: the latest window plus running totals."""

    seconds: float
    rms_dbfs: float
    peak_dbfs: float
    clipped: int
    voiced_share: float
    noise_floor_dbfs: float | None


class LevelMeter:
    """Takes the captured blocks; offers live readings and the final Measurements."""

    def __init__(self, settings: AudioSettings) -> None:
        self.total = Stretch()
        self._window = Stretch()
        self._voiced = Stretch()
        self._sound = Stretch()
        self._voiced_band_power = 0.0  # sum over voiced frames, LSB^2
        self._kept = 0
        self._segmenter = Segmenter(settings, on_frame=self._on_frame)

    @property
    def samples(self) -> int:
        return self.total.samples

    def push(self, block: np.ndarray) -> None:
        self.total.add(block)
        self._window.add(block)
        self._keep(self._segmenter.push(block))

    def reading(self) -> Reading:
        """The window since the last reading (then started afresh) and the totals so far."""
        window, self._window = self._window, Stretch()
        return Reading(
            seconds=self.total.seconds,
            rms_dbfs=window.rms_dbfs,
            peak_dbfs=window.peak_dbfs,
            clipped=self.total.clipped,
            voiced_share=self._voiced.samples / max(1, self.total.samples),
            noise_floor_dbfs=self._floor_dbfs(),
        )

    def finish(self) -> Measurements:
        """End of the run: the VAD closes its open region, and everything is summed up."""
        self._keep(self._segmenter.flush())
        total, seconds = self.total, self.total.seconds
        share = 1 / max(1, total.samples)
        floor = self._floor_dbfs()
        return Measurements(
            seconds=round(seconds, 3),
            rms_dbfs=round(total.rms_dbfs, 1),
            peak_dbfs=round(total.peak_dbfs, 1),
            span_lsb=total.span,
            clipped_samples=total.clipped,
            clipped_share=round(total.clipped * share, 6),
            voiced_s=round(self._voiced.seconds, 3),
            voiced_share=round(self._voiced.samples * share, 3),
            speech_dbfs=round(self._voiced.rms_dbfs, 1) if self._voiced.samples else None,
            sound_s=round(self._sound.seconds, 3),
            sound_dbfs=round(self._sound.rms_dbfs, 1) if self._sound.samples else None,
            kept_s=round(self._kept / SAMPLE_RATE, 3),
            kept_share=round(self._kept * share, 3),
            noise_floor_dbfs=None if floor is None else round(floor, 1),
            snr_db=self._snr_db(),
        )

    def _on_frame(self, frame: np.ndarray, voiced: bool) -> None:
        energy = float(band_energy_db(frame[None])[0])
        if energy > self._segmenter.floor.level + SOUND_MARGIN_DB:
            self._sound.add(frame)
        if voiced:
            self._voiced.add(frame)
            self._voiced_band_power += 10 ** (energy / 10)

    def _keep(self, chunks: list[SpeechChunk]) -> None:
        """Count the kept samples and let the audio go at once."""
        self._kept += sum(len(chunk.pcm) for chunk in chunks)

    def _floor_dbfs(self) -> float | None:
        level = self._segmenter.floor.level
        return None if math.isinf(level) else level - FULL_SCALE_DB

    def _snr_db(self) -> float | None:
        frames = self._voiced.samples // FRAME_SAMPLES
        floor = self._segmenter.floor.level
        if not frames or math.isinf(floor):
            return None
        return round(10 * math.log10(self._voiced_band_power / frames) - floor, 1)
