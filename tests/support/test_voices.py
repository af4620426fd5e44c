"""The recorded-voice cache is shared by pytest's worker processes and the benchmarks."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from tests.support.voices import SAMPLE_RATE, Clip, _from_cache, _to_cache, speech_spans

WRITERS = 4
ROUNDS = 25


def _write_many(path: str) -> None:
    clip = Clip("v", "a.wav", np.ones(1600, np.float32), ((0, 1600),))
    for _ in range(ROUNDS):
        _to_cache(Path(path), [clip])


def test_processes_building_one_voice_at_once_all_succeed(tmp_path: Path) -> None:
    """Two xdist workers that both miss the cache write it at the same moment."""
    path = tmp_path / "voices" / "v-0123.npz"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(path),)) for _ in range(WRITERS)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [w.exitcode for w in writers] == [0] * WRITERS
    (clip,) = _from_cache("v", path)
    assert clip.spans == ((0, 1600),) and len(clip.pcm) == 1600
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def _clip_with(rng: np.random.Generator, *parts: tuple[float, float, float]) -> np.ndarray:
    """A clean clip: a floor of -75 dBFS hiss, and (start s, length s, dBFS) of 300 Hz voice."""
    pcm = rng.standard_normal(3 * SAMPLE_RATE).astype(np.float32) * 10 ** (-75 / 20) * 32768
    for start, length, dbfs in parts:
        t = np.arange(int(length * SAMPLE_RATE)) / SAMPLE_RATE
        at = int(start * SAMPLE_RATE)
        tone = np.sin(2 * np.pi * 300 * t) * np.sqrt(2) * 10 ** (dbfs / 20) * 32768
        pcm[at : at + len(t)] += tone.astype(np.float32)
    return pcm


def test_a_lone_10_ms_click_is_not_an_utterance() -> None:
    """A lip smack or the click where a recording was cut counted as a missed word."""
    pcm = _clip_with(np.random.default_rng(1), (0.5, 0.8, -20.0), (2.5, 0.010, -25.0))
    assert _one_utterance(speech_spans(pcm)) == pytest.approx((0.5, 1.3), abs=0.03)


def test_a_tail_under_the_recordings_own_floor_is_not_speech() -> None:
    """Rumble below 100 Hz sets the recording's floor: a reverberant tail 40 dB under the
    peak but within 10 dB of that floor is not counted as speech (the high-passed clip's
    floor would have grown the utterance by the tail's 0.6 s)."""
    rng = np.random.default_rng(2)
    pcm = _clip_with(rng, (0.5, 0.8, -20.0), (1.3, 0.6, -58.0))
    t = np.arange(len(pcm)) / SAMPLE_RATE
    pcm += (np.sin(2 * np.pi * 40 * t) * 10 ** (-52 / 20) * 32768).astype(np.float32)
    assert _one_utterance(speech_spans(pcm)) == pytest.approx((0.5, 1.3), abs=0.03)


def _one_utterance(spans: tuple[tuple[int, int], ...]) -> tuple[float, float]:
    """The only span, in seconds."""
    ((start, end),) = spans
    return start / SAMPLE_RATE, end / SAMPLE_RATE
