"""Therapy-room sessions built from recorded human voices, seeded, with known speech spans.

Two talkers (two different recorded voices, tests/support/voices.py) take turns: turns of
one to four clips 0.3-0.9 s apart, now and then a monologue of 15-35 s with almost no
pause, and silences of 0.3-20 s between turns. Each talker speaks at the level its
profile gives (the active level: RMS over speech only), +/- 3 dB per turn and 1.5 dB per
clip. Room noise is one of six kinds; door knocks and chair creaks sit in the silences
(1.2 s or more from speech, so inside the "far from speech" audio), sparse in every
session and dense in the "knocks" and "creaks" ones.

SNR is the QUIETER talker's active level over the noise bed's mean power (for "hvac", the
bed once the HVAC is on): every voice in the room stands at least that far above the
noise. In a "mixed" session at 5 dB the loud talker is at 26 dB.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give the
same samples on every machine that has the same packages installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import numpy as np

from tests.support.speech import (
    FULL_SCALE,
    PIECE,
    SAMPLE_RATE,
    _complement,
    _dilate,
    _length,
    _overlap,
    _to_samples,
    coloured_noise,
    knock_sound,
)
from tests.support.voices import Clip, clips, require_voices

# Each talker's active speech level, dBFS.
PROFILES: dict[str, tuple[float, float]] = {
    "normal": (-26.0, -28.0),
    "loud": (-12.0, -14.0),
    "quiet": (-38.0, -40.0),
    "mixed": (-12.0, -33.0),
    "whisper": (-50.0, -50.0),
}
NOISES = ("pink", "brown", "hvac", "hum", "knocks", "creaks")
EVENT_CLEARANCE_S = 1.2
FAR_S = 1.0
ONSET_S = 0.050
LONG_UTTERANCE_S = 0.300
# Silences between turns, drawn in shuffled groups: mostly turn-taking, some thinking
# pauses, a few of the long silences of a session.
TURN_GAPS = (*[(0.3, 2.0)] * 6, *[(2.0, 8.0)] * 3, (8.0, 20.0))


@dataclass(frozen=True)
class RoomTruth:
    """What is in a session: utterance spans (samples, half-open), who spoke each, events."""

    samples: int
    spans: tuple[tuple[int, int], ...]
    talkers: tuple[int, ...]
    events: tuple[tuple[int, int], ...]  # knocks and creaks
    profile: str
    noise: str
    snr_db: float
    seed: int
    voices: tuple[str, str]

    @property
    def speech_s(self) -> float:
        return _length(list(self.spans)) / SAMPLE_RATE

    def score(self, kept_s: Iterable[tuple[float, float]], talker: int | None = None) -> RoomScore:
        """Judge kept spans (seconds, as merge_spans gives them); ``talker`` picks one voice."""
        kept = _to_samples(kept_s, SAMPLE_RATE, self.samples)
        spans = [
            span
            for span, who in zip(self.spans, self.talkers, strict=True)
            if talker is None or who == talker
        ]
        onset = int(ONSET_S * SAMPLE_RATE)
        long = int(LONG_UTTERANCE_S * SAMPLE_RATE)
        kept_each = [_overlap([span], kept) for span in spans]
        missed = [span for span, k in zip(spans, kept_each, strict=True) if k == 0]
        onsets_cut = sum(
            1 for s, e in spans if _overlap([(s, min(e, s + onset))], kept) < min(e - s, onset)
        )
        far = _complement(
            _dilate(list(self.spans), int(FAR_S * SAMPLE_RATE), self.samples), self.samples
        )
        return RoomScore(
            sessions=1,
            speech_s=_length(spans) / SAMPLE_RATE,
            speech_kept_s=sum(kept_each) / SAMPLE_RATE,
            utterances=len(spans),
            missed=len(missed),
            missed_long=sum(1 for s, e in missed if e - s > long),
            onsets_cut=onsets_cut,
            far_s=_length(far) / SAMPLE_RATE,
            far_kept_s=_overlap(far, kept) / SAMPLE_RATE,
            total_s=self.samples / SAMPLE_RATE,
            kept_s=_length(kept) / SAMPLE_RATE,
            events=len(self.events),
            events_kept=sum(1 for event in self.events if _overlap([event], kept) > 0),
        )


@dataclass(frozen=True)
class RoomScore:
    """Sums over sessions (add them with +); the shares are properties."""

    sessions: int = 0
    speech_s: float = 0.0
    speech_kept_s: float = 0.0
    utterances: int = 0
    missed: int = 0  # utterances of which nothing was kept
    missed_long: int = 0  # ... that were longer than 300 ms
    onsets_cut: int = 0  # utterances whose first 50 ms were not all kept
    far_s: float = 0.0  # audio farther than 1 s from any speech
    far_kept_s: float = 0.0
    total_s: float = 0.0
    kept_s: float = 0.0
    events: int = 0
    events_kept: int = 0

    def __add__(self, other: RoomScore) -> RoomScore:
        return RoomScore(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    @property
    def speech_kept(self) -> float:
        return self.speech_kept_s / self.speech_s if self.speech_s else 1.0

    @property
    def far_removed(self) -> float:
        return 1.0 - self.far_kept_s / self.far_s if self.far_s else 1.0

    @property
    def onsets_kept(self) -> float:
        return 1.0 - self.onsets_cut / self.utterances if self.utterances else 1.0

    @property
    def kept_share(self) -> float:
        return self.kept_s / self.total_s if self.total_s else 0.0


def make_room_session(
    seconds: float, snr_db: float, profile: str, noise: str, seed: int
) -> tuple[np.ndarray, RoomTruth]:
    """int16 samples at 16 kHz and the truth of one session."""
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: one of {', '.join(PROFILES)}")
    if noise not in NOISES:
        raise ValueError(f"noise {noise!r}: one of {', '.join(NOISES)}")
    rng = np.random.default_rng(seed)
    voices = require_voices()
    picked = rng.choice(len(voices), 2, replace=False)
    names = (voices[picked[0]].name, voices[picked[1]].name)
    pools = [clips(name) for name in names]
    total = int(seconds * SAMPLE_RATE)
    speech = np.zeros(total, dtype=np.float32)
    spans, talkers = _place_turns(speech, pools, PROFILES[profile], rng)
    bed = room_bed(noise, total, rng)
    quieter = min(PROFILES[profile])
    speech += bed * np.float32(10 ** ((quieter - snr_db) / 20) * FULL_SCALE)
    del bed
    dense = noise in ("knocks", "creaks")
    kinds = (
        ("knock",) if noise == "knocks" else ("creak",) if noise == "creaks" else ("knock", "creak")
    )
    events = _add_events(speech, spans, rng, 0.9 if dense else 0.25, kinds)
    pcm = np.empty(total, dtype=np.int16)
    for lo in range(0, total, PIECE):
        piece = speech[lo : lo + PIECE]
        pcm[lo : lo + PIECE] = np.clip(np.rint(piece), -FULL_SCALE - 1, FULL_SCALE)
    truth = RoomTruth(
        total, tuple(spans), tuple(talkers), tuple(events), profile, noise, snr_db, seed, names
    )
    return pcm, truth


@dataclass(frozen=True)
class Line:
    """One talker's turn in a scripted session: whole clips until ``speech_s`` is reached."""

    talker: int  # 0 or 1
    dbfs: float  # active level
    speech_s: float
    gap_s: float = 0.5  # silence after it
    joined: bool = False  # clips trimmed to their speech and butted together: no pause at all


def scripted_session(
    lines: list[Line],
    noise: str,
    noise_dbfs: float,
    seed: int,
    lead_s: float = 4.0,
    voices: tuple[str, str] | None = None,
    keep_clip: Callable[[Clip], bool] | None = None,
) -> tuple[np.ndarray, RoomTruth]:
    """A session for one failure mode: these lines in this order over a ``noise`` bed whose
    RMS is ``noise_dbfs``; the talkers' voices drawn from ``seed`` unless given, their
    clips only those ``keep_clip`` accepts when it is given."""
    rng = np.random.default_rng(seed)
    if voices is None:
        found = require_voices()
        picked = rng.choice(len(found), 2, replace=False)
        voices = (found[picked[0]].name, found[picked[1]].name)
    pools = [tuple(filter(keep_clip, clips(name))) if keep_clip else clips(name) for name in voices]
    if not all(pools):
        raise ValueError(f"no clip of {voices} is kept")
    pieces: list[tuple[int, np.ndarray, tuple[tuple[int, int], ...], int]] = []
    at = int(lead_s * SAMPLE_RATE)
    for line in lines:
        spoken = 0
        pool = pools[line.talker]
        while spoken < line.speech_s * SAMPLE_RATE:
            clip = pool[int(rng.integers(len(pool)))]
            pcm, spans = clip.pcm, clip.spans
            if line.joined:
                lo, hi = spans[0][0], spans[-1][1]
                pcm, spans = pcm[lo:hi], tuple((s - lo, e - lo) for s, e in spans)
            pieces.append((at, pcm * _gain(clip, line.dbfs), spans, line.talker))
            at += len(pcm)
            spoken += sum(e - s for s, e in spans)
            if not line.joined and spoken < line.speech_s * SAMPLE_RATE:
                at += int(rng.uniform(0.3, 0.6) * SAMPLE_RATE)
        at += int(line.gap_s * SAMPLE_RATE)
    total = at + int(lead_s * SAMPLE_RATE)
    mix = room_bed(noise, total, rng) * np.float32(10 ** (noise_dbfs / 20) * FULL_SCALE)
    spans_out, talkers = [], []
    for start, pcm, spans, talker in pieces:
        mix[start : start + len(pcm)] += pcm
        spans_out += [(start + s, start + e) for s, e in spans]
        talkers += [talker] * len(spans)
    snr = min(line.dbfs for line in lines) - noise_dbfs
    pcm16 = np.clip(np.rint(mix), -FULL_SCALE - 1, FULL_SCALE).astype(np.int16)
    truth = RoomTruth(
        total, tuple(spans_out), tuple(talkers), (), "scripted", noise, snr, seed, voices
    )
    return pcm16, truth


def _place_turns(
    speech: np.ndarray,
    pools: list[tuple[Clip, ...]],
    levels: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[list[tuple[int, int]], list[int]]:
    total = len(speech)
    spans: list[tuple[int, int]] = []
    talkers: list[int] = []
    at = int(rng.uniform(1.0, 3.0) * SAMPLE_RATE)
    talker = int(rng.integers(2))
    gaps: list[tuple[float, float]] = []
    while at < total - SAMPLE_RATE:
        monologue = rng.random() < 0.08
        turn_level = levels[talker] + rng.uniform(-3.0, 3.0)
        budget = rng.uniform(15.0, 35.0) * SAMPLE_RATE if monologue else 0
        count = 64 if monologue else int(rng.choice([1, 1, 2, 2, 3, 4]))
        spoken = 0
        for _ in range(count):
            pool = pools[talker]
            clip = pool[int(rng.integers(len(pool)))]
            gain = _gain(clip, turn_level + rng.uniform(-1.5, 1.5))
            piece = clip.pcm[: total - at] * gain
            speech[at : at + len(piece)] += piece
            for s, e in clip.spans:
                if at + s < total:
                    spans.append((at + s, min(total, at + e)))
                    talkers.append(talker)
            at += len(clip.pcm)
            spoken += clip.speech_samples
            if at >= total - SAMPLE_RATE or (monologue and spoken >= budget):
                break
            at += int(rng.uniform(0.03, 0.25 if monologue else 0.9) * SAMPLE_RATE)
        if not gaps:
            gaps = [TURN_GAPS[i] for i in rng.permutation(len(TURN_GAPS))]
        low, high = gaps.pop()
        at += int(rng.uniform(low, high) * SAMPLE_RATE)
        if rng.random() < 0.75:
            talker = 1 - talker
    return spans, talkers


def _gain(clip: Clip, dbfs: float) -> np.float32:
    """The factor that puts the clip's active level (RMS over its spans) at ``dbfs``."""
    active = np.concatenate([clip.pcm[s:e] for s, e in clip.spans]).astype(np.float64)
    rms = float(np.sqrt(np.mean(active**2))) or 1e-9
    return np.float32(10 ** (dbfs / 20) * FULL_SCALE / rms)


def room_bed(noise: str, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise bed (float32) of one kind; "hvac" switches on somewhere mid-session."""
    if noise in ("pink", "knocks"):
        bed = coloured_noise(samples, rng, lambda f: 1 / f)
    elif noise in ("brown", "creaks"):
        bed = coloured_noise(samples, rng, lambda f: 1 / f**2 * (f > 20))
    elif noise == "hum":
        bed = _hum(samples, rng)
    else:
        return _hvac(samples, rng)
    bed /= np.sqrt(np.mean(bed.astype(np.float64) ** 2))
    return bed


def _hum(samples: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum and buzz: 50 or 60 Hz and odd-heavy harmonics, over a faint pink floor."""
    mains = float(rng.choice([50.0, 60.0]))
    bed = coloured_noise(samples, rng, lambda f: 1 / f)
    bed *= np.float32(0.1 / np.sqrt(np.mean(bed.astype(np.float64) ** 2)))
    harmonics = [(k, amp, rng.uniform(0, 2 * np.pi)) for k, amp in HUM_SERIES]
    for lo in range(0, samples, PIECE):
        t = np.arange(lo, min(lo + PIECE, samples)) / SAMPLE_RATE
        bed[lo : lo + PIECE] += sum(
            amp * np.sin(2 * np.pi * mains * k * t + ph) for k, amp, ph in harmonics
        ).astype(np.float32)
    return bed


HUM_SERIES = ((1, 1.0), (2, 0.35), (3, 0.5), (5, 0.25), (7, 0.12), (9, 0.06), (11, 0.03))


def _hvac(samples: int, rng: np.random.Generator) -> np.ndarray:
    """A quiet room (pink, 15 dB down) until the HVAC switches on over 2 s, between 30% and
    60% of the session: rumble, airflow hiss, a hump at 150-250 Hz and a blade tone."""
    hump = rng.uniform(150.0, 250.0)

    def spectrum(f: np.ndarray) -> np.ndarray:
        rumble = 30.0 / f**2 * (f > 20)
        airflow = 1 / f / (1 + (f / 2500.0) ** 2) + 2e-5
        return rumble + airflow + 0.01 * np.exp(-0.5 * ((f - hump) / 50.0) ** 2)

    on = coloured_noise(samples, rng, spectrum)
    blade = rng.uniform(80.0, 130.0)
    for lo in range(0, samples, PIECE):
        t = np.arange(lo, min(lo + PIECE, samples)) / SAMPLE_RATE
        on[lo : lo + PIECE] += (0.3 * np.sin(2 * np.pi * blade * t)).astype(np.float32)
    on_power = float(np.mean(on.astype(np.float64) ** 2))
    off = coloured_noise(samples, rng, lambda f: 1 / f)
    off *= np.float32(10 ** (-15 / 20) / np.sqrt(np.mean(off.astype(np.float64) ** 2)))
    start = int(rng.uniform(0.3, 0.6) * samples)
    ramp = np.clip((np.arange(samples) - start) / (2.0 * SAMPLE_RATE), 0.0, 1.0).astype(np.float32)
    bed = off * (1 - ramp) + on / np.float32(np.sqrt(on_power)) * ramp
    return bed.astype(np.float32)


def creak_sound(rng: np.random.Generator) -> np.ndarray:
    """A chair or floor creak: 0.15-0.6 s of stick-slip pulses (40-200 a second, the rate
    sliding) ringing a wooden resonance of 500-2500 Hz; peak -35..-15 dBFS."""
    duration = rng.uniform(0.15, 0.6)
    n = int(duration * SAMPLE_RATE)
    rate = np.linspace(rng.uniform(40, 200), rng.uniform(40, 200), n)
    phase = np.cumsum(rate / SAMPLE_RATE * (1 + 0.2 * rng.standard_normal(n)))
    pulses = np.diff(np.floor(phase), prepend=0.0) > 0
    excitation = pulses * rng.uniform(0.5, 1.0, n)
    ring_t = np.arange(int(0.01 * SAMPLE_RATE)) / SAMPLE_RATE
    ring = np.sin(2 * np.pi * rng.uniform(500, 2500) * ring_t) * np.exp(-ring_t / 0.002)
    sound = np.convolve(excitation, ring)[:n] * np.hanning(n)
    peak = 10 ** (rng.uniform(-35.0, -15.0) / 20) * FULL_SCALE
    return (sound / (np.max(np.abs(sound)) or 1.0) * peak).astype(np.float32)


def _add_events(
    mix: np.ndarray,
    spans: list[tuple[int, int]],
    rng: np.random.Generator,
    chance: float,
    kinds: tuple[str, ...],
) -> list[tuple[int, int]]:
    """Knocks (alone or 2-3 in a row) and creaks in the silences, well away from speech."""
    clearance = int(EVENT_CLEARANCE_S * SAMPLE_RATE)
    free = _complement(_dilate(spans, clearance, len(mix)), len(mix))
    placed = []
    for lo, hi in free:
        if hi - lo < SAMPLE_RATE or rng.random() > chance:
            continue
        at = int(rng.uniform(lo, hi - SAMPLE_RATE))
        kind = kinds[int(rng.integers(len(kinds)))]
        for _ in range(int(rng.choice([1, 2, 3])) if kind == "knock" else 1):
            sound = knock_sound(rng) if kind == "knock" else creak_sound(rng)
            end = min(at + len(sound), hi)
            mix[at:end] += sound[: end - at]
            placed.append((at, end))
            at = end + int(rng.uniform(0.10, 0.30) * SAMPLE_RATE)
            if at >= hi - SAMPLE_RATE // 2:
                break
    return placed
