"""The Segmenter against synthetic sessions whose speech spans are known exactly.

Targets (from the issue): >= 99.5% of true speech time kept, no utterance loses any of its
first 50 ms, >= 90% of the audio farther than 1 s from any speech removed; speech still
kept at 5 dB SNR. The sessions use seeds the defaults were not tuned on (tuning used 1-3
and 11-16), espeak-ng voices and speeds drawn at random, long pauses and door knocks.
"""

from __future__ import annotations

import functools
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.pipeline.audio import FRAME_SAMPLES, SAMPLE_RATE
from agent.pipeline.vad import Segmenter, SpeechChunk, merge_spans
from agent.settings import AudioSettings
from tests.support.speech import (
    FULL_SCALE,
    Truth,
    knock_sound,
    make_session,
    make_session_pcm,
    room_noise,
)

SESSION_S = 240.0
SEEDS = (101, 102)
ROOM_AGENT = Path(sys.executable).parent / "room-agent"


@functools.cache
def session(snr_db: float, seed: int) -> tuple[np.ndarray, Truth]:
    return make_session_pcm(SESSION_S, snr_db, seed)


def segment(pcm: np.ndarray, block: int = 4000, **settings: float) -> list[SpeechChunk]:
    segmenter = Segmenter(AudioSettings(**settings))
    chunks = []
    for at in range(0, len(pcm), block):
        chunks.extend(segmenter.push(pcm[at : at + block]))
    return chunks + segmenter.flush()


def level(dbfs: float) -> float:
    return 10 ** (dbfs / 20) * FULL_SCALE


def as_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -FULL_SCALE - 1, FULL_SCALE).astype(np.int16)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("snr_db", [30, 20, 10])
def test_quality_targets_in_room_noise(snr_db, seed):
    pcm, truth = session(snr_db, seed)
    score = truth.score(merge_spans(segment(pcm)))
    assert score.speech_kept >= 0.995, score
    assert score.far_removed >= 0.90, score
    assert score.knocks and score.knocks_kept == 0, score


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("snr_db", [30, 20, 10, 5])
def test_no_utterance_loses_its_first_50_ms(snr_db, seed):
    pcm, truth = session(snr_db, seed)
    score = truth.score(merge_spans(segment(pcm)))
    assert len(truth.spans) > 20
    assert score.worst_onset_loss_ms == 0.0, score


@pytest.mark.parametrize("seed", SEEDS)
def test_speech_still_kept_at_5_db_snr(seed):
    pcm, truth = session(5, seed)
    score = truth.score(merge_spans(segment(pcm)))
    assert score.speech_kept >= 0.995, score
    assert score.far_removed >= 0.90, score


def test_without_floor_and_minimum_run_noise_and_knocks_get_through():
    """The quality tests can fail: without the floor margin and the minimum run, they do."""
    pcm, truth = session(5, SEEDS[0])
    baseline = truth.score(merge_spans(segment(pcm, noise_margin_db=0, min_speech_ms=0)))
    assert baseline.far_removed < 0.90
    assert baseline.knocks_kept > 0


def test_corpus_has_long_pauses_and_knock_clusters():
    _, truth = session(20, SEEDS[0])
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(truth.spans)]
    assert max(gaps) >= 12 * SAMPLE_RATE
    knock_gaps = [b[0] - a[1] for a, b in itertools.pairwise(truth.knocks)]
    assert min(knock_gaps) < 0.35 * SAMPLE_RATE, "no knock cluster"


@pytest.mark.parametrize("knocks", [1, 2, 3])
@pytest.mark.parametrize("background_dbfs", [None, -60.0, -45.0])
def test_knocks_in_silence_are_dropped(knocks, background_dbfs):
    rng = np.random.default_rng(knocks)
    seconds = 6 * SAMPLE_RATE
    if background_dbfs is None:
        audio = np.zeros(seconds, dtype=np.float32)
    else:
        audio = room_noise(seconds, rng) * level(background_dbfs)
    at = 3 * SAMPLE_RATE
    for _ in range(knocks):
        sound = knock_sound(rng)
        audio[at : at + len(sound)] += sound
        at += len(sound) + int(0.15 * SAMPLE_RATE)
    assert segment(as_int16(audio)) == []


@pytest.mark.parametrize("dbfs", [-70.0, -45.0, -20.0])
def test_steady_noise_never_opens_a_region(dbfs):
    noise = room_noise(60 * SAMPLE_RATE, np.random.default_rng(7)) * level(dbfs)
    assert segment(as_int16(noise)) == []


def test_floor_follows_a_room_getting_louder():
    """An HVAC switching on (+15 dB): kept for at most about one floor window, then dropped."""
    noise = room_noise(60 * SAMPLE_RATE, np.random.default_rng(8))
    step = 20 * SAMPLE_RATE
    noise[:step] *= level(-55.0)
    noise[step:] *= level(-40.0)
    spans = merge_spans(segment(as_int16(noise)))
    settings = AudioSettings()
    preset = settings.trim_preset
    bound = settings.noise_window_s + (preset.pre_roll_ms + preset.hangover_ms) / 1000 + 1
    assert sum(end - start for start, end in spans) <= bound
    assert all(end <= 20 + bound for _, end in spans)


@pytest.mark.parametrize("max_chunk_s", [1.0, 2.5])
def test_long_speech_is_split_into_contiguous_chunks(max_chunk_s):
    pcm, _ = session(20, SEEDS[0])
    limit = int(max_chunk_s * SAMPLE_RATE)
    chunks = segment(pcm, max_chunk_s=max_chunk_s)
    assert any(not chunk.final for chunk in chunks), "no region was long enough to split"
    assert chunks[-1].final
    for chunk, following in itertools.pairwise(chunks):
        assert following.start_sample >= chunk.end_sample
        if not chunk.final:
            assert len(chunk.pcm) == limit
            assert following.start_sample == chunk.end_sample
    for chunk in chunks:
        assert 0 < len(chunk.pcm) <= limit
        assert chunk.duration_s <= max_chunk_s
        assert chunk.pcm.dtype == np.int16
        assert np.array_equal(chunk.pcm, pcm[chunk.start_sample : chunk.end_sample])
    # Splitting changes how speech is packed, never what is kept.
    assert merge_spans(chunks) == merge_spans(segment(pcm, max_chunk_s=600))


def test_chunks_do_not_depend_on_block_sizes():
    pcm, _ = session(10, SEEDS[1])
    pcm = pcm[: 90 * SAMPLE_RATE]
    whole = segment(pcm, block=len(pcm))
    segmenter = Segmenter(AudioSettings())
    rng = np.random.default_rng(3)
    pieces, at = [], 0
    while at < len(pcm):
        size = int(rng.integers(1, 3 * FRAME_SAMPLES))
        pieces.extend(segmenter.push(pcm[at : at + size]))
        at += size
    pieces.extend(segmenter.flush())
    assert [(c.start_sample, c.final) for c in pieces] == [(c.start_sample, c.final) for c in whole]
    assert all(np.array_equal(a.pcm, b.pcm) for a, b in zip(pieces, whole, strict=True))


def test_chunks_are_emitted_as_soon_as_complete():
    """Upload starts during the session: no chunk waits for more audio than it needs."""
    pcm, _ = session(20, SEEDS[1])
    settings = AudioSettings(max_chunk_s=3.0)
    segmenter = Segmenter(settings)
    emitted = []
    for at in range(0, len(pcm), FRAME_SAMPLES):
        for chunk in segmenter.push(pcm[at : at + FRAME_SAMPLES]):
            emitted.append((chunk, at + FRAME_SAMPLES))
    assert len(emitted) > 10
    for chunk, position in emitted:
        # A region closes on the first frame after its hangover; a split on the next frame.
        assert position - chunk.end_sample <= 2 * FRAME_SAMPLES


def test_flush_emits_the_open_region_with_the_trailing_partial_frame():
    pcm, truth = session(20, SEEDS[0])
    start, end = truth.spans[0]
    cut = (start + end) // 2 + 7  # mid-utterance, not on a frame boundary
    chunks = segment(pcm[:cut], block=len(pcm))
    assert chunks and chunks[-1].final
    assert chunks[-1].end_sample == cut


def test_push_after_flush_is_refused():
    segmenter = Segmenter(AudioSettings())
    segmenter.flush()
    with pytest.raises(RuntimeError):
        segmenter.push(np.zeros(FRAME_SAMPLES, dtype=np.int16))


def test_merge_spans_joins_touching_chunks_only():
    def chunk(start: int, length: int) -> SpeechChunk:
        return SpeechChunk(start, np.zeros(length, dtype=np.int16), final=True)

    spans = merge_spans([chunk(32_000, 8_000), chunk(0, 16_000), chunk(16_000, 8_000)])
    assert spans == [(0.0, 1.5), (2.0, 2.5)]
    assert chunk(16_000, 8_000).start_s == 1.0
    assert chunk(16_000, 8_000).end_s == 1.5
    assert chunk(16_000, 8_000).duration_s == 0.5


def test_segment_command_prints_one_json_object(tmp_path):
    truth = make_session(tmp_path / "room.wav", 60.0, 20, SEEDS[0])
    result = subprocess.run(
        [str(ROOM_AGENT), "segment", str(truth.path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert set(report) == {"file", "sample_rate", "duration_s", "kept_s", "segments"}
    assert report["file"] == str(truth.path)
    assert report["sample_rate"] == 16000
    assert report["duration_s"] == 60.0
    spans = [(s["start"], s["end"]) for s in report["segments"]]
    assert report["kept_s"] == pytest.approx(sum(e - s for s, e in spans), abs=0.01)
    score = truth.score(spans)
    assert score.speech_kept >= 0.995 and score.worst_onset_loss_ms == 0.0
    assert 0 < report["kept_s"] < 60.0
