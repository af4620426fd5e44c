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
a quiet talker is loud for only three or four frames; a knock dies away within two), or
of OPEN_WINDOW frames loud ``min_speech_ms`` in all, held as one stretch, webrtcvad
hearing some of them (that word at 5 dB SNR: its energy dips under the margin for a
frame, and webrtcvad hears three frames of five);
it reaches back over the strong frames just before (a first word webrtcvad missed) plus
the pre-roll (onsets are quiet), and ends ``hangover`` after the last loud speech frame
(pauses inside sentences, quiet word endings). The pre-roll grows where the room's speech
stands little over its floor (at 5 dB SNR a soft onset lies under the noise and a region
opens late), and a region that would start less than a pre-roll after the last one ends
starts where it ended instead (the gap between them held the onset). With trim
"conservative" a second look, webrtcvad at mode 0 on the same frames, may open a region
the same way (held, strong energy): at 5 dB SNR mode 2 hears nothing in some whole words
that mode 0 catches. Last, a region opens on 300 ms of held evidence where each opinion
alone is weak (_HeldVoice): webrtcvad hearing a word whole while its energy crosses the
margin only now and then (a deep voice at 5 dB SNR), or energy held over the margin that
webrtcvad hears only in part; either only from a detector that does not hear the bare
room as speech. And on energy alone, a word's syllables after a pause (_Syllables): two
stretches of loud frames within 600 ms, where webrtcvad calls all of pink noise speech or
hears nothing of a quiet deep voice.
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
# A region reaches back over frames more than REACH_BACK_DB over the floor, at most
# REACH_BACK_GAP_MS apart: a first word and the run after it. Merely loud frames, or gaps
# as long as the hangover, let fluctuating room noise chain the look-back over its full
# LOOKBACK_S (an HVAC's beats put a 4-5 dB frame every ~180 ms: 2-3 s of far silence
# before every region).
REACH_BACK_GAP_MS = 450
REACH_BACK_DB = 6.0
LOOKBACK_S = 3.0  # how far before its opening run a region may reach back
STRONG_MARGIN_DB = 6.0  # a frame this far above the floor is strong evidence
STRONG_FRAMES = 3  # strong speech frames within OPEN_WINDOW open a region
OPEN_WINDOW = 6
PLATEAU_DB = 12.0
# _HeldVoice: HELD_SPEECH of HELD_WINDOW frames heard as speech (a held voice) or loud
# (a held sound, with HELD_HEARD heard), none over HELD_MAX_DB; floor frames (under
# HELD_FLOOR_DB over it) tell how often a detector calls the bare room speech (a running
# share of this weight), and over HELD_MAX_FLOOR_SPEECH its opinion is not used.
HELD_WINDOW = 10
HELD_SPEECH = 8
HELD_HEARD = 4
HELD_MAX_DB = 16.0
HELD_FLOOR_DB = 1.5
HELD_FLOOR_SMOOTHING = 1 / 256
HELD_MAX_FLOOR_SPEECH = 0.2
# _Syllables: within SYLLABLE_WINDOW frames (600 ms) after SYLLABLE_QUIET frames with none
# loud, two or more stretches of at least SYLLABLE_FRAMES loud frames in a row,
# SYLLABLE_LOUD loud frames in them, none over HELD_MAX_DB, one of them strong, and one
# that starts with a rise of SYLLABLE_ONSET_DB over the frame before it: a word's
# syllables, on energy alone.
SYLLABLE_WINDOW = 20
SYLLABLE_QUIET = 5
SYLLABLE_FRAMES = 2
SYLLABLE_LOUD = 5
SYLLABLE_ONSET_DB = 4.0
SYLLABLE_SPAN = SYLLABLE_QUIET + SYLLABLE_WINDOW
# The pre-roll grows to LOW_SNR_PRE_ROLL_MS while the room's speech stands less than
# LOW_SNR_DB over its floor (a running mean over loud speech frames, of this weight).
LOW_SNR_DB = 16.0
LOW_SNR_PRE_ROLL_MS = 600
SPEECH_LEVEL_SMOOTHING = 0.02
DETECTOR_FLOOR_DB = 50.0  # full-band noise floor webrtcvad is shown (about -40 dBFS)
MAX_DETECTOR_GAIN_DB = 30.0
BAND_HZ = (150.0, 4000.0)  # where speech carries its energy and room noise does not
# Mains hum (see HumModel): candidate mains frequencies, harmonics modelled up to HUM_MAX_HZ,
# the weight of a quiet frame in the lines' running estimate, and the share of the room's
# quiet-frame power that subtracting the modelled hum must remove before the Segmenter
# does it (and below which it stops).
HUM_MAINS_HZ = (50.0, 60.0)
HUM_MAX_HZ = 1000.0
HUM_SMOOTHING = 1 / 8
HUM_QUIET_DB = 3.0  # frames within this of the full-band floor, as heard, update the estimate
HUM_LEARN_FRAMES = 8  # the estimate learns from one block every this many frames
# Products of at most this many frames: larger ones make OpenBLAS start threads that spin
# (twice the CPU time on two cores for 1 s blocks), for no gain at these sizes.
HUM_PRODUCT_FRAMES = 8
# Following the grid's frequency: from the lowest harmonics, once they hold a share of the
# quiet frames' power (how far they turned is unambiguous under half a cycle between two
# updates: 0.5 Hz off for the fundamental, 0.17 Hz for the third, over HUM_TRACK_GAP_S).
HUM_TRACK_ORDERS = 3
HUM_TRACK_AFTER = 32  # quiet frames learnt before
HUM_TRACK_SHARE = 0.15
HUM_TRACK_GAIN = 0.6
HUM_TRACK_RANGE_HZ = 0.5
HUM_TRACK_STEP_HZ = 0.02  # at most, per update
HUM_TRACK_GAP_S = 1.0  # no update across a longer gap between quiet frames
HUM_BASIS_TOLERANCE_HZ = 0.01
HUM_ON_SHARE = 0.75  # 6 dB
HUM_OFF_SHARE = 0.5  # 3 dB
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


class HumModel:
    """Mains hum: stationary lines at every harmonic of 50 or 60 Hz, measured and removed
    from what the detectors judge (never from the spooled audio).

    A hum bed puts its third, fifth, seventh ... harmonics inside the speech band at a level
    that does not move, and webrtcvad hears the buzz as voice: under hum at 5 dB SNR the
    energy test and webrtcvad misjudged a quiet talker's words. For each candidate mains
    frequency the model keeps each harmonic's complex amplitude (phase referred to the
    stream's first sample), a running mean of the frames' projections on that harmonic,
    taken over quiet frames only (full-band level within HUM_QUIET_DB of its floor), so a
    voice, whose harmonics come and go at any phase, averages away and the hum, at one
    phase for good, stays. A 30 ms frame holds 1.5 periods of 50 Hz and 1.8 of 60 Hz:
    the harmonics are not orthogonal within one frame, but their cross terms cancel over
    2 (50 Hz) or 5 (60 Hz) frames, well inside the average.

    The grid is never exactly at 50 or 60 Hz (a few hundredths of a hertz off, wandering):
    a line's phase then turns by k times the offset, so the model follows the frequency by
    how far its lowest harmonics' amplitudes turned between updates (_HumLines._track).

    Each time the estimate learns, it first predicts the quiet frames' hum and measures
    what subtracting it would leave: only when that removes HUM_ON_SHARE of their power
    is the model's hum subtracted from the frames the detectors see, until it removes less
    than HUM_OFF_SHARE or adds power; a model that lost the grid is not used, and the
    frames are judged as they are, as without it. Cost: a few small products every
    HUM_LEARN_FRAMES, two more per block while hum is removed.
    """

    def __init__(self) -> None:
        self.candidates = [_HumLines(mains) for mains in HUM_MAINS_HZ]
        self.active: _HumLines | None = None
        self.next_learn = 0  # frame index from which the estimate learns again

    def remove(self, frames: np.ndarray, first_frame: int) -> np.ndarray:
        """The frames (float32) less the hum as estimated so far, or the frames themselves
        while there is no hum; ``first_frame``: the stream index of frames[0]."""
        if self.active is None:
            return frames
        return frames - self.active.hum(len(frames), first_frame)

    def learn(self, frames: np.ndarray, first_frame: int, quiet: np.ndarray) -> None:
        """Take the microphone's ``quiet`` frames (float32) into the estimate, from a block
        every HUM_LEARN_FRAMES (the room's hum does not move): the lines found, or else
        every candidate."""
        if first_frame + len(frames) < self.next_learn:
            return
        at = np.flatnonzero(quiet)
        if not len(at):
            return
        self.next_learn = first_frame + len(frames) + HUM_LEARN_FRAMES
        at = at[-HUM_PRODUCT_FRAMES:]
        still = frames[at]
        power = float(np.einsum("ij,ij->", still, still)) / still.size
        active = self.active
        if active is not None:
            active.learn(still, first_frame + at, power)
            if active.share < HUM_OFF_SHARE or active.worse:
                self.active = None
            return
        for lines in self.candidates:
            lines.learn(still, first_frame + at, power)
            if lines.share >= HUM_ON_SHARE:
                self.active = lines


class _HumLines:
    """One candidate mains frequency's harmonics: their amplitudes, the mains frequency as
    tracked, and the share of the quiet frames' power that subtracting them removes."""

    def __init__(self, mains: float) -> None:
        self.mains = mains
        self.orders = np.arange(1, int(HUM_MAX_HZ // mains) + 1)
        self.freq = mains
        self.anchor_frame = 0  # the fundamental's phase is anchor_phase at this frame's start
        self.anchor_phase = 0.0
        self._basis(mains)
        self.amplitude = np.zeros(len(self.orders), dtype=np.complex64)
        self.count = 0  # quiet frames learnt from (a running mean until 1 / HUM_SMOOTHING)
        self.power = 0.0  # smoothed mean-square level of quiet frames
        self.residual = 0.0  # ... and of what subtracting the predicted hum leaves of them
        self.share = 0.0  # 1 - residual / power
        self.worse = False
        self.last_frame = 0.0  # mean stream index of the frames last learnt from

    def _basis(self, freq: float) -> None:
        """Real products (one BLAS call each), in the layout of complex64 numbers seen as
        float32 pairs: a frame's projections on cos and -sin of each harmonic (real and
        imaginary part of its line), and the lines back to samples."""
        angle = np.outer(np.arange(FRAME_SAMPLES), 2 * np.pi * freq * self.orders / SAMPLE_RATE)
        pairs = np.stack((np.cos(angle), -np.sin(angle)), axis=2).reshape(FRAME_SAMPLES, -1)
        self.project = (pairs * (2 / FRAME_SAMPLES)).astype(np.float32)
        self.synthesis = np.ascontiguousarray(pairs.T, dtype=np.float32)
        self.basis_freq = freq

    def _phases(self, indices: np.ndarray) -> np.ndarray:
        """Each harmonic's phase at the start of these frames, as e^(j phase)."""
        step = 2 * np.pi * self.freq * FRAME_SAMPLES / SAMPLE_RATE
        fundamental = (self.anchor_phase + step * (indices - self.anchor_frame)) % (2 * np.pi)
        return np.exp(1j * np.outer(fundamental, self.orders)).astype(np.complex64)

    def _samples(self, lines: np.ndarray) -> np.ndarray:
        """Frames of samples from each frame's lines (complex64, phase at the frame's start)."""
        parts = lines.view(np.float32)
        if len(parts) <= HUM_PRODUCT_FRAMES:
            result: np.ndarray = parts @ self.synthesis
            return result
        return np.vstack(
            [
                parts[at : at + HUM_PRODUCT_FRAMES] @ self.synthesis
                for at in range(0, len(parts), HUM_PRODUCT_FRAMES)
            ]
        )

    def hum(self, count: int, first_frame: int) -> np.ndarray:
        """The modelled hum over ``count`` frames from ``first_frame`` (float32)."""
        return self._samples(self._phases(first_frame + np.arange(count)) * self.amplitude)

    def learn(self, frames: np.ndarray, indices: np.ndarray, power: float) -> None:
        """Take frames (float32) at these stream indices, of mean-square level ``power``."""
        phases = self._phases(indices)
        left = frames - self._samples(phases * self.amplitude)
        residual = float(np.einsum("ij,ij->", left, left)) / left.size
        seen = (frames @ self.project).view(np.complex64) * np.conj(phases)
        count = len(indices)
        weight = max(HUM_SMOOTHING, 1 / (self.count + count))
        self.count += count
        mean = 1 - (1 - weight) ** count  # ``count`` frames of ``weight`` each, at once
        before = self.amplitude.copy()
        self.amplitude += np.complex64(mean) * (seen.sum(axis=0) / count - self.amplitude)
        self.power += mean * (power - self.power)
        self.residual += mean * (residual - self.residual)
        self.share = 1 - self.residual / self.power if self.power > 0 else 0.0
        self.worse = residual > power  # the prediction added hum to these frames
        now = float(indices.mean())
        self._track(before, now, indices[-1])
        self.last_frame = now

    def _track(self, before: np.ndarray, now: float, frame: int) -> None:
        """Follow the grid: a mains frequency off the model's turns the lowest harmonics'
        amplitudes at k times the offset; move the model's frequency a part of the way."""
        low = slice(0, HUM_TRACK_ORDERS)
        lines = float(np.vdot(self.amplitude[low], self.amplitude[low]).real) / 2
        elapsed = (now - self.last_frame) * FRAME_SAMPLES / SAMPLE_RATE
        if self.count < HUM_TRACK_AFTER or lines <= HUM_TRACK_SHARE * self.power:
            return
        if not 0 < elapsed <= HUM_TRACK_GAP_S:  # a long gap may have turned them too far
            return
        turn = self.amplitude[low] * np.conj(before[low])
        weights = np.abs(turn)
        total = float(weights.sum())
        if total <= 0:
            return
        offset = float(np.sum(weights * np.angle(turn) / self.orders[low]))
        offset /= total * 2 * np.pi * elapsed
        step_hz = min(max(HUM_TRACK_GAIN * offset, -HUM_TRACK_STEP_HZ), HUM_TRACK_STEP_HZ)
        freq = self.freq + step_hz
        freq = min(max(freq, self.mains - HUM_TRACK_RANGE_HZ), self.mains + HUM_TRACK_RANGE_HZ)
        # Keep the phase continuous from the next frame on, then change the frequency.
        start = frame + 1
        step = 2 * np.pi * self.freq * FRAME_SAMPLES / SAMPLE_RATE
        self.anchor_phase = (self.anchor_phase + step * (start - self.anchor_frame)) % (2 * np.pi)
        self.anchor_frame = start
        self.freq = freq
        if abs(freq - self.basis_freq) > HUM_BASIS_TOLERANCE_HZ:
            self._basis(freq)


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
        self.hum = HumModel()
        self.heard_floor = NoiseFloor(window)  # full band, as heard: hum and all
        self.pre_roll = _frames(preset.pre_roll_ms)
        self.hangover = _frames(preset.hangover_ms)
        self.min_run = max(1, _frames(settings.min_speech_ms))
        self.max_chunk = int(settings.max_chunk_s * SAMPLE_RATE)
        # Idle frames (with their energy over the floor, dB) kept for the pre-roll, and for
        # looking back along earlier strong frames (an utterance's first word) before the
        # run that opens the region.
        self.low_snr_pre_roll = max(self.pre_roll, _frames(LOW_SNR_PRE_ROLL_MS))
        self.speech_above = math.inf  # loud speech over the floor, dB (running mean)
        lookback = self.low_snr_pre_roll + self.min_run + _frames(LOOKBACK_S * 1000)
        self.recent: deque[tuple[np.ndarray, float]] = deque(maxlen=lookback)
        self.remainder = np.zeros(0, dtype=np.int16)
        self.frame_index = 0  # index of the next whole frame
        self.run = 0  # frames of the run that opens a region, up to the current one
        self.voiced_run = 0  # loud speech frames in a row
        self.speech_run = _SpeechRun(self.min_run)
        # The second look (trim conservative): webrtcvad at mode 0 on the same frames.
        self.second_vad = webrtcvad.Vad(0) if preset.second_look else None
        self.second_run = _SpeechRun(self.min_run)
        self.window = _LoudWindow(self.min_run, self.margin_db)
        self.held = _HeldVoice()
        self.syllables = _Syllables()
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
        heard = frames.astype(np.float32)
        heard_levels = _levels_db(heard)
        quiet = heard_levels <= self.heard_floor.level + HUM_QUIET_DB
        for level in heard_levels.tolist():
            self.heard_floor.update(level)
        judged = self.hum.remove(heard, self.frame_index)
        levels = heard_levels if judged is heard else _levels_db(judged)
        energies = band_energy_db(judged).tolist()
        raw = self._detector_view(judged, levels)
        self.hum.learn(heard, self.frame_index, quiet)
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

    def _detector_view(self, frames: np.ndarray, levels: np.ndarray) -> bytes:
        """The frames (float32, their full-band ``levels``) as webrtcvad gets them: raised so
        the room's floor sits at DETECTOR_FLOOR_DB (in whole dB, so a steady room gives a
        steady gain)."""
        gains = np.empty(len(frames), dtype=np.float32)
        for i, level in enumerate(levels.tolist()):
            floor = self.detector_floor.update(level)
            if floor == math.inf:
                floor = level
            gains[i] = round(min(max(DETECTOR_FLOOR_DB - floor, 0.0), MAX_DETECTOR_GAIN_DB))
        raised = frames * (10 ** (gains / 20))[:, None] if gains.any() else frames
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
        self.window.add(loud, speech, second, above)
        self.held.add(loud, speech, second, above)
        self.syllables.add(loud, speech, second, above)
        if voiced:
            self._hear_speech_level(above)
        if self.open:
            self.since_voiced = 0 if voiced else self.since_voiced + 1
            if self.since_voiced <= self.hangover:
                self._append(frame, out)
                return
            self._close(out)
        self.recent.append((frame, above))
        if self.voiced_run >= self.min_run:
            self.run = self.voiced_run
            self._open(out)
        elif self.speech_run.sustained():
            self.run = self.speech_run.tail()
            self._open(out)
        elif self.second_run.sustained():
            self.run = self.second_run.tail()
            self._open(out)
        elif self.window.word():
            self.run = OPEN_WINDOW
            self._open(out)
        elif self.held.voice() or self.held.sound():
            self.run = HELD_WINDOW
            self._open(out)
        elif (run := self.syllables.word()) is not None:
            self.run = run
            self._open(out)

    def _hear_speech_level(self, above: float) -> None:
        """Follow how far the room's speech stands over its floor: in a noisy room (5 dB
        SNR) an utterance's soft onset lies under the noise, and a region opens up to half
        a second after it began, so the pre-roll grows there (LOW_SNR_PRE_ROLL_MS); in a
        quiet room 300 ms holds every onset and far silence stays removed."""
        if self.speech_above == math.inf:
            self.speech_above = above
        self.speech_above += SPEECH_LEVEL_SMOOTHING * (above - self.speech_above)

    def _open(self, out: list[SpeechChunk]) -> None:
        """Start a region pre_roll before its first frame, never inside the last one.

        The region reaches back over earlier strong frames no more than REACH_BACK_GAP_MS
        apart: webrtcvad often misses a first word ("could", "if") that stands well above
        the noise, and the run that follows already proves speech.
        """
        recent = list(self.recent)
        first_loud = len(recent) - self.run  # position in recent of the run's first frame
        for position in range(first_loud - 1, -1, -1):
            if first_loud - position > _frames(REACH_BACK_GAP_MS) + 1:
                break
            if recent[position][1] > REACH_BACK_DB:
                first_loud = position
        offset = self.frame_index + 1 - len(recent)  # frame index of recent[0]
        pre_roll = self.low_snr_pre_roll if self.speech_above < LOW_SNR_DB else self.pre_roll
        last_end = max(self.region_end - offset, 0)
        first = max(first_loud - pre_roll, last_end)
        if first - last_end <= pre_roll:
            first = last_end  # a gap shorter than the pre-roll holds the onset it missed
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


class _FrameWindow:
    """The last ``size`` frames' opinions (loud, speech by webrtcvad, speech by either
    look, energy over the floor in dB), with running counts: O(1) per frame."""

    def __init__(self, size: int) -> None:
        self.frames: deque[tuple[bool, bool, bool, float]] = deque(maxlen=size)
        self.loud = self.speech = self.heard = 0

    def add(self, loud: bool, speech: bool, second: bool, above: float) -> None:
        heard = speech or second
        if len(self.frames) == self.frames.maxlen:
            gone_loud, gone_speech, gone_heard, _ = self.frames[0]
            self.loud -= gone_loud
            self.speech -= gone_speech
            self.heard -= gone_heard
        self.frames.append((loud, speech, heard, above))
        self.loud += loud
        self.speech += speech
        self.heard += heard


class _LoudWindow(_FrameWindow):
    """The last OPEN_WINDOW frames, loud or not: a quiet talker's short word at 5 dB SNR
    is loud for four or five frames, but webrtcvad hears only three of them and its
    energy dips under the margin for a frame, so neither run above opens on it."""

    def __init__(self, min_run: int, margin_db: float) -> None:
        super().__init__(OPEN_WINDOW)
        self.min_run = min_run
        self.margin_db = margin_db

    def word(self) -> bool:
        """``min_run`` loud frames held as one stretch (no frame between the first and the
        last of them under half the margin) with two strong ones within PLATEAU_DB of
        each other (a deep voice at 5 dB SNR stands 8-9 dB over the floor at most), and
        STRONG_FRAMES speech frames in the window, by either look (a short word of the
        deep voice at 5 dB SNR that webrtcvad at mode 2 does not hear, mode 0 does): a
        voice holds its level through a syllable; knocks fall to the floor within two
        frames, so a cluster of them is loud in pairs with the floor between."""
        if self.loud < self.min_run or self.heard < STRONG_FRAMES:
            return False
        loud_at = [at for at, (loud, *_) in enumerate(self.frames) if loud]
        held = [above for *_, above in list(self.frames)[loud_at[0] : loud_at[-1] + 1]]
        if min(held) < self.margin_db / 2:
            return False
        strong = [above for above in held if above > STRONG_MARGIN_DB]
        return len(strong) >= STRONG_FRAMES - 1 and max(strong) - min(strong) <= PLATEAU_DB


class _HeldVoice(_FrameWindow):
    """The last HELD_WINDOW frames (300 ms), for words that stand only a few dB over the
    room's floor (5 dB SNR) and that none of the runs above opens on:

    - a *held voice*: webrtcvad hears HELD_SPEECH of the frames (a deep voice's word: 8-22
      frames of speech in a row) while its band energy crosses the margin in only a few
      of them, never STRONG_FRAMES strong ones in a row;
    - a *held sound*: the energy stands over the margin in HELD_SPEECH of the frames, and
      webrtcvad (either look) hears some of them (a word webrtcvad at mode 2 is deaf to).

    Either needs a loud stretch shaped like a voice (_voice_shaped), never over
    HELD_MAX_DB (a word that loud over the floor is heard by the rules above: what is
    left is a knock), and a detector that is not calling the room's bare floor speech
    (webrtcvad hears loud brown noise as speech in every frame; a raised HVAC hum, at
    mode 0): the share of floor frames it calls speech is followed, and over
    HELD_MAX_FLOOR_SPEECH its opinion tells nothing here."""

    def __init__(self) -> None:
        super().__init__(HELD_WINDOW)
        self.floor_speech = 0.0  # share of floor frames webrtcvad calls speech
        self.floor_heard = 0.0  # ... that either look calls speech

    def add(self, loud: bool, speech: bool, second: bool, above: float) -> None:
        super().add(loud, speech, second, above)
        if above < HELD_FLOOR_DB:
            self.floor_speech += HELD_FLOOR_SMOOTHING * (speech - self.floor_speech)
            self.floor_heard += HELD_FLOOR_SMOOTHING * ((speech or second) - self.floor_heard)

    def voice(self) -> bool:
        if self.speech < HELD_SPEECH or self.loud < STRONG_FRAMES or not self.frames[-1][1]:
            return False
        return self.floor_speech < HELD_MAX_FLOOR_SPEECH and self._voice_shaped()

    def sound(self) -> bool:
        if self.loud < HELD_SPEECH or self.heard < HELD_HEARD or not self.frames[-1][0]:
            return False
        if self.floor_heard >= HELD_MAX_FLOOR_SPEECH:
            return False
        strong = sum(1 for *_, above in self.frames if above > STRONG_MARGIN_DB)
        return strong >= STRONG_FRAMES - 1 and self._voice_shaped()

    def _voice_shaped(self) -> bool:
        """A stretch of loud frames that holds: three within PLATEAU_DB, or two rising by
        no more than it (a syllable's onset). A knock is loudest in its first frame, or
        rises across a frame boundary by more than that, and has died away by the third."""
        if max(above for *_, above in self.frames) > HELD_MAX_DB:
            return False
        stretch: list[float] = []
        for loud, _, _, above in (*self.frames, (False, False, False, 0.0)):
            if loud:
                stretch.append(above)
            elif _holds(stretch):
                return True
            else:
                stretch = []
        return False


class _Syllables(_FrameWindow):
    """The last SYLLABLE_WINDOW frames (600 ms) and the SYLLABLE_QUIET before them, for a
    short word at 5 dB SNR that no detector helps with: webrtcvad calls every frame of
    pink noise speech, or hears none of a quiet deep voice, and the word's energy crosses
    the margin in two syllables of two to five frames with a dip between them, so no run
    or window above holds enough of it.

    A knock at that SNR stands 17-30 dB over the floor (HELD_MAX_DB keeps it out) and
    lasts one to three frames: two of them close together make at most four loud frames.
    An HVAC's swell (7 dB over half a second) is loud as long, but rises by a dB a frame,
    where a syllable starts within one; its beats (loud for three or four frames in every
    six) are never quiet for 150 ms, where a word that opens a region follows a pause."""

    def __init__(self) -> None:
        super().__init__(SYLLABLE_SPAN)

    def word(self) -> int | None:
        """Frames back to the first syllable's start, when the window holds a word."""
        frames = self.frames
        if self.loud < SYLLABLE_LOUD or not frames[-1][0] or len(frames) < SYLLABLE_SPAN:
            return None
        if any(frames[at][0] for at in range(SYLLABLE_QUIET)):
            return None  # not after a pause: an HVAC's beats, loud every 180 ms
        stretches: list[tuple[int, list[float]]] = []
        current: list[float] = []
        for at, (loud, _, _, above) in enumerate(frames):
            if loud:
                current.append(above)
                continue
            if len(current) >= SYLLABLE_FRAMES:
                stretches.append((at - len(current), current))
            current = []
        if len(current) >= SYLLABLE_FRAMES:
            stretches.append((len(frames) - len(current), current))
        if len(stretches) < 2:
            return None
        levels = [above for _, stretch in stretches for above in stretch]
        if len(levels) < SYLLABLE_LOUD or max(levels) > HELD_MAX_DB:
            return None
        if max(levels) <= STRONG_MARGIN_DB:
            return None
        if not any(
            start > 0 and stretch[0] - frames[start - 1][3] >= SYLLABLE_ONSET_DB
            for start, stretch in stretches
        ):
            return None
        return len(frames) - stretches[0][0]


def _holds(stretch: list[float]) -> bool:
    for at in range(len(stretch) - 1):
        first, second = stretch[at], stretch[at + 1]
        if first < second <= first + PLATEAU_DB:
            return True
        three = stretch[at : at + 3]
        if len(three) == 3 and max(three) - min(three) <= PLATEAU_DB:
            return True
    return False


def _levels_db(frames: np.ndarray) -> np.ndarray:
    """Each frame's full-band mean-square level (float32 frames), dB over one LSB squared."""
    return 10 * np.log10(np.einsum("ij,ij->i", frames, frames) / FRAME_SAMPLES + 1)


def band_energy_db(frames: np.ndarray) -> np.ndarray:
    """Each frame's mean-square level in the speech band, dB over one LSB squared.

    Room noise (HVAC rumble, traffic, mains hum) is mostly below the band and speech is
    mostly inside it, so measuring only the band raises the effective SNR by several dB.
    """
    spectrum = np.fft.rfft(np.asarray(frames, dtype=np.float32), axis=1)[:, BAND_BINS]
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
