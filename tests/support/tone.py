"""A distinctive tone to play into a microphone, and a detector that finds it in audio.

The tone is a pure sine at a frequency off speech's usual harmonics; the detector is one
DFT bin per quarter second (the Goertzel idea done with numpy), so speech, noise and
codecs barely register while the tone, even under speech, stands out by far.
"""

from __future__ import annotations

import numpy as np

RATE = 16_000
HZ = 2_731.0  # not a multiple of a speech fundamental one would expect to see held
WINDOW = RATE // 4


def tone(
    seconds: float, hz: float = HZ, amplitude: int = 6_000, burst_s: float = 0.4
) -> np.ndarray:
    """Beeps of ``burst_s`` with as much quiet between: a steady tone would raise the
    VAD's noise floor and be dropped as noise, beeps are kept like speech."""
    t = np.arange(int(seconds * RATE)) / RATE
    gate = (t // burst_s) % 2 == 0
    return (amplitude * np.sin(2 * np.pi * hz * t) * gate).astype(np.int16)


def tone_level(pcm: np.ndarray, hz: float = HZ) -> float:
    """The tone's amplitude in the loudest quarter second of ``pcm`` (0 for none)."""
    x = np.asarray(pcm, dtype=np.float64)
    if len(x) < WINDOW:
        x = np.pad(x, (0, WINDOW - len(x)))
    windows = x[: len(x) // WINDOW * WINDOW].reshape(-1, WINDOW)
    t = np.arange(WINDOW) / RATE
    basis = np.exp(-2j * np.pi * hz * t)
    return float(np.max(np.abs(windows @ basis)) * 2 / WINDOW)


def mixed(speech: np.ndarray, with_tone: np.ndarray) -> np.ndarray:
    """Speech with the tone over it (so the VAD keeps it when it is let through)."""
    n = min(len(speech), len(with_tone))
    total = speech[:n].astype(np.int32) + with_tone[:n]
    return np.clip(total, -32768, 32767).astype(np.int16)
