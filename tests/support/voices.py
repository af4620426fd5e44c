"""Recorded human voices from Debian packages, with speech spans derived from each clip.

Synthetic speech (espeak-ng) is too regular to judge a VAD by: every onset is crisp, every
level steady. These clips are real people reading IVR prompts (whole sentences) and
saying single words for a children's game, in six languages, men and women, recorded
at 8 to 44.1 kHz. Every clip comes from an installed Debian package (scripts/setup-system.sh
installs them); nothing is downloaded at run time and no audio is committed.

voice       package (Debian)                speaker (as credited)  lang   rate     licence
allison-en  asterisk-core-sounds-en-wav     Allison Smith (f)      en-US  8k       CC-BY-SA-3.0
june-fr     asterisk-core-sounds-fr-wav     June Wallack (f)       fr-CA  8k       CC-BY-SA-3.0
paola-it    asterisk-prompt-it-menardi-wav  Paola Dal Zot (f)      it     8k       CC-BY-SA-3.0
july-es     asterisk-prompt-es-co           July E. Jimenez (f)    es-CO  8k GSM   GPL-2
armelle-fr  asterisk-prompt-fr-armelle      Armelle Desjardins (f) fr     8k GSM   GPL-2+
kt-<lang>   ktuberling-data, sounds/<lang>  KDE volunteers (m, f)  11     22-44k   GPL-2+

(ktuberling's Walloon and Catalan sets are men's voices, median F0 about 130 Hz; the IVR
voices are women's, 180-235 Hz.)

Truth, from the clean clip (its own SNR is 40-70 dB): 10 ms frames whose voice (the clip
above TRUTH_HIGHPASS_HZ) reaches both 40 dB below the clip's loudest frame and 10 dB above
the recording's own quietest 50 ms are active. The high-pass is there because several
ktuberling clips open with half a second of rumble below 100 Hz (microphone handling, 25 dB
over the rest of the room, no voice: no talker has energy that low), which counted as speech
put "onsets" where there is nothing to hear. The floor is the whole recording's, rumble
included, as it was before the high-pass: the voice's reverberant tail under that floor is
not verifiable as speech (measured on the floor of the filtered clip instead, the truth grew
0.3-1.1 s tails 40 dB under the peak onto 40 of the 72 kt-da clips, 25 dB under a 5 dB SNR
room). Active runs less than 300 ms apart are one utterance (a word's stop closure or a
breath inside a sentence stays speech), and an utterance reaches from its first to its last
active frame. A clip with a longer pause inside holds several utterances. An utterance
shorter than TRUTH_MIN_UTTERANCE_S is not one: 177 of the corpus's 4,147 were 10-40 ms lone
bursts (35 of them a clip's first or last 10 ms, where the recording was cut on a breath or
a click; the rest lip smacks and clicks between words). No syllable is that short, and
counted as words they made "missed utterances" and "onsets cut" out of clicks 25 dB under
the room's noise.

Clips are decoded once (sox for GSM, soundfile for WAV/Ogg), resampled to 16 kHz with soxr
and cached, one file per voice, under the speech cache directory.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import io
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from tests.support.speech import SAMPLE_RATE, speech_cache_dir

TRUTH_FRAME = SAMPLE_RATE // 100  # 10 ms
TRUTH_BELOW_PEAK_DB = 40.0
TRUTH_ABOVE_FLOOR_DB = 10.0
TRUTH_JOIN_S = 0.300
TRUTH_HIGHPASS_HZ = 100.0
TRUTH_MIN_UTTERANCE_S = 0.050
CACHE_VERSION = 4


@dataclass(frozen=True)
class Voice:
    name: str
    package: str
    pattern: str  # a glob of the package's files
    speaker: str
    language: str
    licence: str


_KT = "/usr/share/ktuberling/sounds"
_AST = "/usr/share/asterisk/sounds"
VOICES: tuple[Voice, ...] = (
    Voice(
        "allison-en",
        "asterisk-core-sounds-en-wav",
        f"{_AST}/en_US_f_Allison/**/*.wav",
        "Allison Smith",
        "en-US",
        "CC-BY-SA-3.0",
    ),
    Voice(
        "june-fr",
        "asterisk-core-sounds-fr-wav",
        f"{_AST}/fr_CA_f_June/**/*.wav",
        "June Wallack",
        "fr-CA",
        "CC-BY-SA-3.0",
    ),
    Voice(
        "paola-it",
        "asterisk-prompt-it-menardi-wav",
        f"{_AST}/it_IT_f_Menardi/**/*.wav",
        "Paola Dal Zot",
        "it",
        "CC-BY-SA-3.0",
    ),
    Voice(
        "july-es",
        "asterisk-prompt-es-co",
        f"{_AST}/es/**/*.gsm",
        "July E. Jimenez",
        "es-CO",
        "GPL-2",
    ),
    Voice(
        "armelle-fr",
        "asterisk-prompt-fr-armelle",
        f"{_AST}/fr/**/*.gsm",
        "Armelle Desjardins",
        "fr",
        "GPL-2+",
    ),
    *(
        Voice(f"kt-{lang}", "ktuberling-data", f"{_KT}/{lang}/*.{ext}", "KDE", lang, "GPL-2+")
        for lang, ext in (
            *(
                (lang, "ogg")
                for lang in ("wa", "ca", "de", "en", "lt", "ru", "sl", "uk", "da", "el")
            ),
            ("fr", "wav"),
        )
    ),
)
PACKAGES = tuple(sorted({voice.package for voice in VOICES}))


@dataclass(frozen=True)
class Clip:
    """One recording at 16 kHz (float32, full scale 1.0) and its utterances (sample spans)."""

    voice: str
    source: str  # file name inside the package
    pcm: np.ndarray
    spans: tuple[tuple[int, int], ...]

    @property
    def speech_samples(self) -> int:
        return sum(e - s for s, e in self.spans)


class VoicesMissing(RuntimeError):
    """The Debian packages holding the recordings are not installed."""


def available_voices() -> list[Voice]:
    return [voice for voice in VOICES if glob.glob(voice.pattern, recursive=True)]


def require_voices() -> list[Voice]:
    found = available_voices()
    if len(found) < 2:
        raise VoicesMissing(
            "recorded voices missing: install "
            + " ".join(PACKAGES)
            + " (scripts/setup-system.sh does)"
        )
    return found


@functools.cache
def clips(voice_name: str) -> tuple[Clip, ...]:
    """All usable clips of one voice (at least 0.25 s of speech), decoded once and cached."""
    voice = next(v for v in VOICES if v.name == voice_name)
    files = sorted(glob.glob(voice.pattern, recursive=True))
    digest = hashlib.sha256("\n".join([str(CACHE_VERSION), *files]).encode()).hexdigest()[:16]
    cache = speech_cache_dir() / "voices" / f"{voice.name}-{digest}.npz"
    if cache.exists():
        return _from_cache(voice.name, cache)
    out = []
    for path in files:
        pcm = _decode(path)
        if pcm is None or len(pcm) < TRUTH_FRAME * 10:
            continue
        spans = speech_spans(pcm)
        if sum(e - s for s, e in spans) >= SAMPLE_RATE // 4:
            out.append(Clip(voice.name, Path(path).name, pcm, spans))
    _to_cache(cache, out)
    return tuple(out)


def speech_spans(pcm: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Utterances of a clean clip, by frame energy (see the module docstring)."""
    frames = len(pcm) // TRUTH_FRAME
    samples = pcm[: frames * TRUTH_FRAME].astype(np.float64)
    level = _frame_levels(_highpass(samples))
    quietest = np.convolve(_frame_levels(samples), np.ones(5) / 5, mode="valid").min()
    threshold = max(level.max() - TRUTH_BELOW_PEAK_DB, quietest + TRUTH_ABOVE_FLOOR_DB)
    active = np.flatnonzero(level >= threshold)
    if not len(active):
        return ()
    join = TRUTH_JOIN_S * SAMPLE_RATE / TRUTH_FRAME
    spans = []
    start = prev = int(active[0])
    for index in active[1:].tolist():
        if index - prev > join:
            spans.append((start * TRUTH_FRAME, (prev + 1) * TRUTH_FRAME))
            start = index
        prev = index
    spans.append((start * TRUTH_FRAME, (prev + 1) * TRUTH_FRAME))
    shortest = TRUTH_MIN_UTTERANCE_S * SAMPLE_RATE
    return tuple((s, e) for s, e in spans if e - s >= shortest)


def _frame_levels(samples: np.ndarray) -> np.ndarray:
    power = (samples.reshape(-1, TRUTH_FRAME) ** 2).mean(1)
    return 10 * np.log10(power + 1e-12)


def _highpass(pcm: np.ndarray) -> np.ndarray:
    """The clip without what lies below TRUTH_HIGHPASS_HZ (a 20 Hz raised-cosine edge)."""
    spectrum = np.fft.rfft(pcm)
    freqs = np.fft.rfftfreq(len(pcm), 1 / SAMPLE_RATE)
    edge = np.clip((freqs - (TRUTH_HIGHPASS_HZ - 20.0)) / 20.0, 0.0, 1.0)
    return np.fft.irfft(spectrum * (0.5 - 0.5 * np.cos(np.pi * edge)), len(pcm))


def _decode(path: str) -> np.ndarray | None:
    try:
        if path.endswith(".gsm"):
            wav = subprocess.run(
                ["sox", "-q", path, "-t", "wav", "-e", "signed", "-b", "16", "-"],
                capture_output=True,
                check=True,
            ).stdout
            data, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
        else:
            data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, subprocess.CalledProcessError, RuntimeError):
        return None
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return mono.astype(np.float32)


def _to_cache(path: Path, items: list[Clip]) -> None:
    """Written aside and renamed: pytest's workers may build the same voice at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(c.pcm) for c in items], dtype=np.int64)
    spans = [np.array(c.spans, dtype=np.int64).reshape(-1, 2) for c in items]
    with tempfile.TemporaryDirectory(dir=path.parent) as aside:
        tmp = Path(aside) / path.name
        np.savez(
            tmp,
            pcm=np.concatenate([c.pcm for c in items]) if items else np.zeros(0, np.float32),
            lengths=lengths,
            span_counts=np.array([len(s) for s in spans], dtype=np.int64),
            spans=np.concatenate(spans) if spans else np.zeros((0, 2), np.int64),
            sources=np.array([c.source for c in items]),
        )
        os.replace(tmp, path)


def _from_cache(voice: str, path: Path) -> tuple[Clip, ...]:
    with np.load(path) as data:
        pcm, lengths, counts = data["pcm"], data["lengths"], data["span_counts"]
        spans, sources = data["spans"], data["sources"]
    out, at, span_at = [], 0, 0
    for length, count, source in zip(lengths.tolist(), counts.tolist(), sources, strict=True):
        clip_spans = tuple((int(s), int(e)) for s, e in spans[span_at : span_at + count])
        out.append(Clip(voice, str(source), pcm[at : at + length], clip_spans))
        at += length
        span_at += count
    return tuple(out)
