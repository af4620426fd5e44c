"""What the demo's room hears: a short, neutral, obviously fictional check-in between a
clinician and a client, in two espeak-ng voices, with the pauses of a real conversation.

Synthesised at start rather than shipped as a recording: the repository stays free of
binary audio, nothing in it could ever be mistaken for a real session, and the renderer is
the one the tests already depend on (cached, so a second demo starts at once). About 35 s,
so that the whole demo takes about a minute.

The turns are plain text with no names. Between them: a faint room tone (a real microphone
never delivers digital silence) and pauses of 1.3-2.5 s, longer than the agent's VAD
hangover and pre-roll together, so each turn becomes its own chunk and chunks reach the
gateway while the session is still recording.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from devtools.demo.speech import SAMPLE_RATE, synthesize_many

CLINICIAN_VOICE = ("en-gb+m3", 165)
CLIENT_VOICE = ("en-us+f2", 175)
TURNS = (
    ("clinician", "Good morning, and welcome back. How has the past week been?"),
    ("client", "Better, I think. I kept the sleep diary we talked about."),
    ("clinician", "Good. What did you notice when you looked back at it?"),
    ("client", "On the days I went for a walk in the morning, I slept better."),
    ("clinician", "A useful pattern. What got in the way on the other days?"),
    ("client", "Mostly work. On busy days I skipped the walk and answered emails late."),
    ("clinician", "Let us try a short walk at lunchtime on those days, and look again next week."),
)
PAUSES_S = (1.4, 1.3, 1.6, 1.3, 2.5, 1.4)  # after each turn but the last
LEAD_IN_S = 1.0
TAIL_S = 1.5
SPEECH_RMS_DBFS = -24.0
ROOM_TONE_DBFS = -66.0
FULL_SCALE = 32_767


@dataclass(frozen=True)
class Conversation:
    """The session's audio as int16 16 kHz mono samples, and what is in it."""

    pcm: np.ndarray
    turns: int
    speech_s: float

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


def build_conversation(seed: int = 5) -> Conversation:
    """Render the turns (cached) and lay them out with pauses over a faint room tone."""
    keys = [(text, *_voice(speaker)) for speaker, text in TURNS]
    clips = synthesize_many(keys)
    pieces = [np.zeros(_samples(LEAD_IN_S), dtype=np.float32)]
    speech = 0
    for index, key in enumerate(keys):
        clip = _at_level(clips[key], SPEECH_RMS_DBFS)
        pieces.append(clip)
        speech += len(clip)
        pause = PAUSES_S[index] if index < len(PAUSES_S) else TAIL_S
        pieces.append(np.zeros(_samples(pause), dtype=np.float32))
    mix = np.concatenate(pieces)
    rng = np.random.default_rng(seed)
    mix += rng.standard_normal(len(mix)).astype(np.float32) * _amplitude(ROOM_TONE_DBFS)
    pcm = np.clip(np.rint(mix), -FULL_SCALE - 1, FULL_SCALE).astype(np.int16)
    return Conversation(pcm=pcm, turns=len(TURNS), speech_s=speech / SAMPLE_RATE)


def _voice(speaker: str) -> tuple[str, int]:
    return CLINICIAN_VOICE if speaker == "clinician" else CLIENT_VOICE


def _at_level(clip: np.ndarray, rms_dbfs: float) -> np.ndarray:
    """The clip (float, -1..1) scaled to int16 units at an RMS of ``rms_dbfs``: both voices
    equally loud, as from one well-placed room microphone."""
    rms = float(np.sqrt(np.mean(np.square(clip, dtype=np.float64)))) or 1.0
    return (clip * (_amplitude(rms_dbfs) / rms)).astype(np.float32)


def _amplitude(dbfs: float) -> float:
    return 10 ** (dbfs / 20) * FULL_SCALE


def _samples(seconds: float) -> int:
    return int(seconds * SAMPLE_RATE)
