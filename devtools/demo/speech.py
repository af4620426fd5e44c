"""Synthetic speech from espeak-ng: one utterance at a time, rendered once and cached.

The demo speaks through it, and the tests' synthetic sessions (tests/support/speech.py) are
built from it, so both hear exactly the same utterances. espeak-ng renders at 22 kHz with
silence around the words; sox resamples to 16 kHz mono int16 *without dither* (``-D``:
dithered "silence" is flagged as speech by webrtcvad mode 0) and with 10% headroom so the
resampling never clips. The render is cached on disk by (text, voice, speed) because a
minute of speech takes espeak a second or two and tests need hundreds of utterances.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000
TRIM_RATIO = 0.01  # -40 dB of the utterance's peak: where an utterance starts and ends


class SpeechError(Exception):
    """espeak-ng or sox is missing or failed; the message says which, for a person."""


def synthesize_many(keys: Iterable[tuple[str, str, int]]) -> dict[tuple[str, str, int], np.ndarray]:
    """Render (text, voice, speed) utterances, the uncached ones two at a time."""
    unique = list(dict.fromkeys(keys))
    with ThreadPoolExecutor(max_workers=2) as pool:
        clips = pool.map(lambda key: synthesize(*key), unique)
        return dict(zip(unique, clips, strict=True))


def synthesize(text: str, voice: str, speed: int) -> np.ndarray:
    """One utterance as float32 16 kHz samples, trimmed to its true speech span."""
    path = _cached_render(text, voice, speed)
    pcm, rate = sf.read(path, dtype="float32")
    assert rate == SAMPLE_RATE, f"{path}: {rate} Hz"
    return trim_to_speech(pcm)


def trim_to_speech(pcm: np.ndarray) -> np.ndarray:
    """Cut espeak's leading and trailing silence at TRIM_RATIO of the peak."""
    loud = np.flatnonzero(np.abs(pcm) >= TRIM_RATIO * np.max(np.abs(pcm)))
    return pcm[loud[0] : loud[-1] + 1] if len(loud) else pcm[:0]


def speech_cache_dir() -> Path:
    """$ROOM_AUDIO_SPEECH_CACHE, else a directory under the system temp dir."""
    env = os.environ.get("ROOM_AUDIO_SPEECH_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / "room-audio-speech"


def _cached_render(text: str, voice: str, speed: int) -> Path:
    """espeak-ng -> sox to 16 kHz mono int16 without dither, once per key."""
    cache = speech_cache_dir()
    key = hashlib.sha256(f"{voice}\n{speed}\n{text}".encode()).hexdigest()[:24]
    path = cache / f"{key}.wav"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        raw, out = Path(tmp) / "raw.wav", Path(tmp) / "out.wav"
        _run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text])
        # -v 0.9: headroom, so resampling never clips; levels are set later anyway.
        sox = ["sox", "-v", "0.9", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16"]
        _run([*sox, "-D", str(out)])
        os.replace(out, path)  # atomic: concurrent runs never see half a file
    return path


def _run(argv: list[str]) -> None:
    """Run a tool; its absence or failure becomes a SpeechError naming the tool."""
    try:
        subprocess.run(argv, check=True, capture_output=True)
    except FileNotFoundError:
        raise SpeechError(f"{argv[0]} is not installed (apt-get install {argv[0]})") from None
    except subprocess.CalledProcessError as exc:
        reason = exc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise SpeechError(f"{argv[0]} failed (exit {exc.returncode}): {reason[0]}") from None
