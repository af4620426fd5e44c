"""Synthetic therapy-room sessions whose speech spans are known to the sample.

VAD quality can only be measured against an exact truth, which real recordings lack. So a
session is built from espeak-ng utterances (several voices and speeds) placed between
silences of known length (some of tens of seconds, like a session's pauses), over room
noise (pink + brown + an HVAC hump, mains hum, a slow level drift) and door knocks placed
in the silences. The utterances are rendered once per (text, voice, speed) and cached on
disk, so building a session is fast after the first run (devtools/demo/speech.py: the demo
speaks through the same renderer).

Speech truth: each utterance spans from the first to the last sample of the clean espeak
signal whose magnitude reaches 1% (-40 dB) of that utterance's peak; espeak's leading and
trailing silence is cut off there, pauses inside an utterance count as speech.

SNR: 10*log10(P_speech / P_noise), where P_speech is the mean power of the clean speech over
its true spans only (an "active" level, no silence in the average) and P_noise the mean
power of the noise bed (hum and drift included, knocks excluded) over the whole session.
Sentences are neutral on purpose: no test ever contains anything resembling a patient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

# The renderer ships with the demo; synthesize and speech_cache_dir are re-exported for tests.
from devtools.demo.speech import SAMPLE_RATE, synthesize_many
from devtools.demo.speech import speech_cache_dir as speech_cache_dir
from devtools.demo.speech import synthesize as synthesize

FULL_SCALE = 32_767

SENTENCES = (
    "The blue folder is on the second shelf, next to the window.",
    "Please close the door when you leave the room.",
    "The train to the coast leaves at half past nine every morning.",
    "We planted tomatoes, beans and a row of sunflowers along the fence.",
    "The library opens at ten on Saturdays and closes early on Sundays.",
    "Turn left at the bakery, then walk two blocks towards the river.",
    "The kettle takes about three minutes to boil.",
    "Yesterday it rained in the afternoon, but the evening was clear.",
    "There are seven chairs in the hall and four more in the storeroom.",
    "The bridge was painted green last summer.",
    "She bought apples, pears and a loaf of bread at the market.",
    "The meeting room on the third floor has a new projector.",
    "If the printer jams, open the side panel and remove the paper.",
    "Our neighbours have a small grey cat that sleeps on the wall.",
    "The museum has a collection of old maps and clocks.",
    "He walks the dog around the park before breakfast.",
    "The bus was ten minutes late because of the roadworks.",
    "Seventy two, eighty one, ninety, one hundred.",
    "The soup needs more salt, and perhaps a little pepper.",
    "Sunlight comes through the kitchen window in the morning.",
    "The garden path is made of flat stones and gravel.",
    "Could you pass me the red pencil, please?",
    "The lake freezes over in January most years.",
    "A parcel arrived for the office this morning.",
    "The orchestra will play in the town square on Friday evening.",
    "Fresh towels are in the cupboard under the stairs.",
    "The clock in the hallway is five minutes fast.",
    "Snow is expected in the hills later this week.",
    "Hmm, yes, I see.",
    "Okay.",
)
VOICES = (
    "en-us",
    "en-gb",
    "en+f3",
    "en+m3",
    "en-us+f2",
    "en+m7",
    "en-gb-scotland",
    "en+f5",
    "en-029",
)
SPEEDS = (130, 155, 180)

SPEECH_LEVEL_DBFS = -28.0
HUM_HARMONICS = ((1, 0.20), (2, 0.10), (3, 0.06))  # mains hum, amplitude per harmonic
DRIFT_DB = 2.0  # HVAC level drift, +/- dB over 40-120 s
PIECE = 1 << 20  # samples handled at once, to keep an hour-long session within memory
KNOCK_CLEARANCE_S = 1.2  # knocks sit this far from speech, inside the "far from speech" audio

# Silences between utterances, drawn in shuffled groups of ten so that even a few minutes
# hold every kind: turn-taking gaps, thinking pauses, and long silences of a session.
GAP_GROUP = (
    *[(0.4, 2.0)] * 6,
    *[(2.0, 8.0)] * 3,
    (12.0, 40.0),
)


@dataclass(frozen=True)
class Truth:
    """What is really in a synthetic session; spans are half-open sample ranges."""

    path: Path | None
    samples: int
    spans: tuple[tuple[int, int], ...]
    knocks: tuple[tuple[int, int], ...]
    snr_db: float
    seed: int
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate

    @property
    def spans_s(self) -> list[tuple[float, float]]:
        return [(s / self.sample_rate, e / self.sample_rate) for s, e in self.spans]

    @property
    def speech_s(self) -> float:
        return sum(e - s for s, e in self.spans) / self.sample_rate

    def score(self, kept_s: Iterable[tuple[float, float]]) -> Score:
        """Judge kept spans (seconds, as merge_spans returns them) against the truth."""
        kept = _to_samples(kept_s, self.sample_rate, self.samples)
        speech = list(self.spans)
        far = _complement(_dilate(speech, int(1.0 * self.sample_rate), self.samples), self.samples)
        onset = int(0.050 * self.sample_rate)
        onset_lost = [
            (onset - _overlap([(s, min(s + onset, e))], kept)) / self.sample_rate * 1000
            for s, e in speech
        ]
        knocks_kept = sum(1 for k in self.knocks if _overlap([k], kept) > 0)
        return Score(
            speech_kept=_overlap(speech, kept) / max(1, _length(speech)),
            worst_onset_loss_ms=max(onset_lost, default=0.0),
            far_removed=1.0 - _overlap(far, kept) / max(1, _length(far)),
            far_s=_length(far) / self.sample_rate,
            kept_share=_length(kept) / max(1, self.samples),
            knocks_kept=knocks_kept,
            knocks=len(self.knocks),
        )


@dataclass(frozen=True)
class Score:
    speech_kept: float  # share of true speech time inside kept spans
    worst_onset_loss_ms: float  # most of any utterance's first 50 ms not kept
    far_removed: float  # share of audio farther than 1 s from speech that was not kept
    far_s: float
    kept_share: float  # kept time / session time
    knocks_kept: int  # knocks overlapping a kept span (knocks are all far from speech)
    knocks: int


def make_session(
    path: Path,
    seconds: float,
    snr_db: float,
    seed: int,
    knocks: bool = True,
    voices: Sequence[str] = VOICES,
    speeds: Sequence[int] = SPEEDS,
    mains_hz: float = 50.0,
) -> Truth:
    """Write a 16 kHz mono int16 WAV session to ``path`` and return its truth."""
    pcm, truth = make_session_pcm(seconds, snr_db, seed, knocks, voices, speeds, mains_hz)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")
    return Truth(path, truth.samples, truth.spans, truth.knocks, snr_db, seed)


def make_session_pcm(
    seconds: float,
    snr_db: float,
    seed: int,
    knocks: bool = True,
    voices: Sequence[str] = VOICES,
    speeds: Sequence[int] = SPEEDS,
    mains_hz: float = 50.0,
) -> tuple[np.ndarray, Truth]:
    """The same session in memory: int16 samples and truth (its path is None)."""
    rng = np.random.default_rng(seed)
    total = int(seconds * SAMPLE_RATE)
    plan = _plan_utterances(rng, total, voices, speeds)
    clips = synthesize_many([(text, voice, speed) for _, text, voice, speed in plan])
    speech = np.zeros(total, dtype=np.float32)
    spans = []
    gains = 10 ** (rng.uniform(-3.0, 3.0, len(plan)) / 20)
    for (start, text, voice, speed), gain in zip(plan, gains, strict=True):
        clip = clips[(text, voice, speed)][: total - start]
        speech[start : start + len(clip)] = clip * gain
        spans.append((start, start + len(clip)))
    spans = [(s, e) for s, e in spans if e > s]
    active = sum(_energy(speech[s:e]) for s, e in spans) / max(1, _length(spans))
    level = 10 ** (SPEECH_LEVEL_DBFS / 20) * FULL_SCALE
    speech *= level / np.sqrt(active) if active > 0 else 1.0
    noise = room_noise(total, rng, mains_hz)
    noise *= np.sqrt(level**2 / 10 ** (snr_db / 10) / (_energy(noise) / max(1, total)))
    mix = np.add(speech, noise, out=speech)
    del noise
    knock_spans = _add_knocks(mix, spans, rng) if knocks else []
    pcm = np.empty(total, dtype=np.int16)
    for lo in range(0, total, PIECE):
        pcm[lo : lo + PIECE] = np.clip(np.rint(mix[lo : lo + PIECE]), -FULL_SCALE - 1, FULL_SCALE)
    truth = Truth(None, total, tuple(spans), tuple(knock_spans), snr_db, seed)
    return pcm, truth


def _plan_utterances(
    rng: np.random.Generator, total: int, voices: Sequence[str], speeds: Sequence[int]
) -> list[tuple[int, str, str, int]]:
    """Start sample, text, voice and speed of each utterance, with gaps from GAP_GROUP.

    Utterances are drawn in batches and rendered in parallel: their lengths decide where
    the next one starts.
    """
    plan = []
    at = int(rng.uniform(1.0, 3.0) * SAMPLE_RATE)
    gaps: list[tuple[float, float]] = []
    while at < total - SAMPLE_RATE:
        batch = [
            (
                SENTENCES[int(rng.integers(len(SENTENCES)))],
                voices[int(rng.integers(len(voices)))],
                int(speeds[int(rng.integers(len(speeds)))]),
            )
            for _ in range(16)
        ]
        clips = synthesize_many(batch)
        for key in batch:
            if at >= total - SAMPLE_RATE:
                break
            plan.append((at, *key))
            if not gaps:
                gaps = [GAP_GROUP[i] for i in rng.permutation(len(GAP_GROUP))]
            low, high = gaps.pop()
            at += len(clips[key]) + int(rng.uniform(low, high) * SAMPLE_RATE)
    return plan


def room_noise(samples: int, rng: np.random.Generator, mains_hz: float = 50.0) -> np.ndarray:
    """Unit-less room noise: coloured noise bed, mains hum, and a slow HVAC level drift."""
    noise = coloured_noise(samples, rng)
    noise /= np.sqrt(_energy(noise) / max(1, samples))
    hum = [(mains_hz * k, amp, rng.uniform(0, 2 * np.pi)) for k, amp in HUM_HARMONICS]
    period, phase = rng.uniform(40.0, 120.0), rng.uniform(0, 2 * np.pi)
    for lo in range(0, samples, PIECE):
        t = np.arange(lo, min(lo + PIECE, samples)) / SAMPLE_RATE
        tone = sum(amp * np.sin(2 * np.pi * hz * t + ph) for hz, amp, ph in hum)
        drift_db = DRIFT_DB * np.sin(2 * np.pi * t / period + phase)
        noise[lo : lo + PIECE] = (noise[lo : lo + PIECE] + tone) * 10 ** (drift_db / 20)
    return noise


def room_spectrum(f: np.ndarray) -> np.ndarray:
    """Power per Hz of the synthetic room: pink, brown rumble and an HVAC hump at 180 Hz."""
    pink = 1 / f
    brown = 40.0 / f**2 * (f > 20)
    hvac = 0.004 * np.exp(-0.5 * ((f - 180.0) / 60.0) ** 2)
    return pink + brown + hvac


def coloured_noise(
    samples: int,
    rng: np.random.Generator,
    spectrum: Callable[[np.ndarray], np.ndarray] = room_spectrum,
    segment: int = 1 << 16,
) -> np.ndarray:
    """Gaussian noise with the power ``spectrum(f)`` (f in Hz, >= 1), made by FFT-shaping
    overlapping segments.

    Segments overlap by half under a sine window, whose squares sum to one, so the level
    is steady across segment joins and memory stays bounded for an hour of audio.
    """
    freqs = np.fft.rfftfreq(segment, 1 / SAMPLE_RATE)
    shape = np.sqrt(spectrum(np.maximum(freqs, 1.0)))
    shape[freqs < 15] = 0
    window = np.sin(np.pi * (np.arange(segment) + 0.5) / segment)
    hop = segment // 2
    out = np.zeros(samples + segment, dtype=np.float32)
    for at in range(-hop, samples, hop):
        white = rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))
        piece = np.fft.irfft(white * shape, n=segment) * window
        lo = max(at, 0)
        out[lo : at + segment] += piece[lo - at :]
    return out[:samples]


def _energy(x: np.ndarray) -> float:
    """Sum of squares in float64, a piece at a time (an hour of float32 is 230 MB)."""
    return sum(
        float(np.dot(piece, piece))
        for piece in (x[lo : lo + PIECE].astype(np.float64) for lo in range(0, len(x), PIECE))
    )


def _add_knocks(mix: np.ndarray, spans: list[tuple[int, int]], rng: np.random.Generator):
    """Door knocks (single, or clusters of 2-3) in the silences, well away from speech."""
    clearance = int(KNOCK_CLEARANCE_S * SAMPLE_RATE)
    free = _complement(_dilate(spans, clearance, len(mix)), len(mix))
    placed = []
    for lo, hi in free:
        if hi - lo < SAMPLE_RATE or rng.random() > 0.6:
            continue
        at = int(rng.uniform(lo, hi - SAMPLE_RATE))
        for _ in range(int(rng.choice([1, 2, 2, 3, 3]))):
            knock = knock_sound(rng)
            end = min(at + len(knock), hi)
            mix[at:end] += knock[: end - at]
            placed.append((at, end))
            at = end + int(rng.uniform(0.10, 0.30) * SAMPLE_RATE)
            if at >= hi - SAMPLE_RATE // 2:
                break
    return placed


def knock_sound(rng: np.random.Generator) -> np.ndarray:
    """One knock: a loud 20-60 ms thud of wood resonances and a click, peak -12..-3 dBFS."""
    duration = rng.uniform(0.020, 0.060)
    t = np.arange(int(duration * SAMPLE_RATE)) / SAMPLE_RATE
    tau = duration / rng.uniform(2.5, 4.0)
    body = sum(
        amp * np.sin(2 * np.pi * rng.uniform(lo, hi) * t) * np.exp(-t / (tau * decay))
        for amp, lo, hi, decay in (
            (1.0, 90, 250, 1.0),
            (0.6, 400, 900, 0.6),
            (0.3, 1500, 3000, 0.3),
        )
    )
    click = rng.standard_normal(len(t)) * np.exp(-t / 0.002) * 0.8
    sound = body + click
    peak = 10 ** (rng.uniform(-12.0, -3.0) / 20) * FULL_SCALE
    return (sound / np.max(np.abs(sound)) * peak).astype(np.float32)


def _to_samples(spans_s: Iterable[tuple[float, float]], rate: int, limit: int):
    spans = [(max(0, round(s * rate)), min(limit, round(e * rate))) for s, e in spans_s]
    return _union([(s, e) for s, e in spans if e > s])


def _union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _dilate(spans: list[tuple[int, int]], by: int, limit: int) -> list[tuple[int, int]]:
    return _union([(max(0, s - by), min(limit, e + by)) for s, e in spans])


def _complement(spans: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    gaps, at = [], 0
    for s, e in _union(spans):
        if s > at:
            gaps.append((at, s))
        at = max(at, e)
    if at < limit:
        gaps.append((at, limit))
    return gaps


def _length(spans: list[tuple[int, int]]) -> int:
    return sum(e - s for s, e in spans)


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    """Samples in both of two sorted lists of disjoint spans."""
    total, i, j = 0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total
