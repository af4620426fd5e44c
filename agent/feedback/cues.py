"""Short sounds on start, pause, resume and stop through the device's output (PortAudio).

The shipped cue files (agent/feedback/cues/*.wav, 16 kHz mono) are made by ``make_cue``;
``cues.directory`` may point at a technician's own files with the same names. Off by
default (``cues.enabled``); ``cues.volume`` scales them. Each plays on a thread of its own
so a cue never holds up recording; a missing output device is logged once per cue.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Literal

import numpy as np

from agent.settings import CueSettings

log = logging.getLogger(__name__)

Cue = Literal["start", "pause", "resume", "stop"]
CUES: tuple[Cue, ...] = ("start", "pause", "resume", "stop")
RATE = 16_000
SHIPPED = Path(__file__).parent / "cues"
# Notes (Hz) of each cue: rising for start and resume, falling for stop and pause.
NOTES: dict[Cue, tuple[float, ...]] = {
    "start": (660.0, 880.0),
    "pause": (660.0, 440.0),
    "resume": (440.0, 660.0),
    "stop": (880.0, 660.0, 440.0),
}
NOTE_S = 0.12


def make_cue(cue: Cue) -> np.ndarray:
    """The cue's samples (int16): its notes, each with a 10 ms fade in and out."""
    n = int(NOTE_S * RATE)
    t = np.arange(n) / RATE
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * RATE))
    notes = [np.sin(2 * np.pi * hz * t) * fade for hz in NOTES[cue]]
    return (np.concatenate(notes) * 0.6 * 32767).astype(np.int16)


def load_cue(cue: Cue, directory: Path | None = None) -> np.ndarray:
    import soundfile

    path = (directory or SHIPPED) / f"{cue}.wav"
    pcm, rate = soundfile.read(path, dtype="int16", always_2d=False)
    if rate != RATE or pcm.ndim != 1:
        raise ValueError(f"{path}: must be {RATE} Hz mono")
    return pcm


class CuePlayer:
    def __init__(self, settings: CueSettings) -> None:
        self.settings = settings
        self.name = "cues"
        self._lock = threading.Lock()  # one cue at a time
        self.samples = {cue: self._scaled(cue) for cue in CUES} if settings.enabled else {}

    def play(self, cue: Cue, wait: bool = False) -> None:
        if cue not in self.samples:
            return
        thread = threading.Thread(target=self._play, args=(cue,), name=f"cue-{cue}", daemon=True)
        thread.start()
        if wait:
            thread.join(5)

    def _scaled(self, cue: Cue) -> np.ndarray:
        pcm = load_cue(cue, self.settings.directory).astype(np.float64) * self.settings.volume
        return np.clip(pcm, -32768, 32767).astype(np.int16)

    def _play(self, cue: Cue) -> None:
        with self._lock:
            try:
                play_pcm(self.samples[cue], self.settings.device)
            except Exception as exc:
                log.warning("feedback: cue %s not played (%s)", cue, exc)


def play_pcm(pcm: np.ndarray, device: str) -> None:
    """Play 16 kHz mono int16 samples on the output device whose name contains ``device``."""
    import pyaudio

    from agent.pipeline.capture import _start_portaudio, _stop_portaudio

    pa = _start_portaudio()
    try:
        index = _output_index(pa, device)
        stream = pa.open(
            format=pyaudio.paInt16, channels=1, rate=RATE, output=True,
            output_device_index=index,
        )  # fmt: skip
        try:
            stream.write(pcm.tobytes())
        finally:
            stream.stop_stream()
            stream.close()
    finally:
        _stop_portaudio(pa)


def _output_index(pa: object, wanted: str) -> int:
    devices = [pa.get_device_info_by_index(i) for i in range(pa.get_device_count())]  # type: ignore[attr-defined]
    outputs = [d for d in devices if int(d["maxOutputChannels"]) > 0]
    needle = wanted.casefold()
    for match in (lambda name: name == needle, lambda name: needle in name):
        for device in outputs:
            if match(str(device["name"]).casefold()):
                return int(device["index"])
    names = ", ".join(repr(d["name"]) for d in outputs) or "none"
    raise OSError(f"no output device matches {wanted!r} (output devices: {names})")
