"""VAD quality and speed on synthetic sessions with exactly known speech spans.

Prints, per SNR and seed: share of true speech time kept, the worst loss within any
utterance's first 50 ms, share of the audio farther than 1 s from speech that was removed,
share of the session kept, knocks kept; then the same for a baseline, webrtcvad (mode 3)
with pre-roll and hangover only, and the Segmenter's CPU time per hour of audio.

    .venv/bin/python tests/benchmarks/vad_quality.py [--seeds 1,2,3] [--snr 30,20,10,5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import webrtcvad

from agent.pipeline.audio import FRAME_MS, FRAME_SAMPLES
from agent.pipeline.vad import Segmenter, SpeechChunk, merge_spans
from agent.settings import AudioSettings
from tests.support.speech import SAMPLE_RATE, Score, make_session_pcm


def segment(pcm: np.ndarray, settings: AudioSettings, block: int) -> list[SpeechChunk]:
    segmenter = Segmenter(settings)
    chunks = []
    for at in range(0, len(pcm), block):
        chunks.extend(segmenter.push(pcm[at : at + block]))
    return chunks + segmenter.flush()


def baseline_spans(pcm: np.ndarray, settings: AudioSettings) -> list[tuple[float, float]]:
    """Every frame webrtcvad calls speech, widened by pre-roll before and hangover after."""
    vad = webrtcvad.Vad(settings.vad_mode)
    frames = len(pcm) // FRAME_SAMPLES
    raw = pcm[: frames * FRAME_SAMPLES].tobytes()
    step = FRAME_SAMPLES * 2
    voiced = np.array(
        [vad.is_speech(raw[i * step : (i + 1) * step], SAMPLE_RATE) for i in range(frames)]
    )
    before, after = settings.pre_roll_ms // FRAME_MS, settings.hangover_ms // FRAME_MS
    starts = np.zeros(frames + 1, dtype=int)
    for index in np.flatnonzero(voiced):
        starts[max(0, index - before)] += 1
        starts[min(frames, index + after + 1)] -= 1
    kept = np.cumsum(starts)[:frames] > 0
    edges = np.flatnonzero(np.diff(np.concatenate(([0], kept.astype(int), [0]))))
    return [
        (a * FRAME_SAMPLES / SAMPLE_RATE, b * FRAME_SAMPLES / SAMPLE_RATE)
        for a, b in zip(edges[::2], edges[1::2], strict=True)
    ]


def row(snr: float, seed: int | str, score: Score) -> str:
    return (
        f"{snr:>5g} {seed!s:>5} {100 * score.speech_kept:>11.2f}% "
        f"{score.worst_onset_loss_ms:>13.1f} ms {100 * score.far_removed:>10.1f}% "
        f"{100 * score.kept_share:>9.1f}% {score.knocks_kept:>4}/{score.knocks:<4}"
    )


def quality(seeds: list[int], snrs: list[float], seconds: float, baseline: bool) -> None:
    settings = AudioSettings()
    print(
        f"{'SNR':>5} {'seed':>5} {'speech kept':>12} {'worst onset loss':>16} "
        f"{'far removed':>11} {'kept share':>10} knocks kept"
    )
    for snr in snrs:
        scores = []
        for seed in seeds:
            pcm, truth = make_session_pcm(seconds, snr, seed)
            if baseline:
                score = truth.score(baseline_spans(pcm, settings))
            else:
                score = truth.score(merge_spans(segment(pcm, settings, SAMPLE_RATE)))
            scores.append(score)
            print(row(snr, seed, score))
        worst = Score(
            speech_kept=min(s.speech_kept for s in scores),
            worst_onset_loss_ms=max(s.worst_onset_loss_ms for s in scores),
            far_removed=min(s.far_removed for s in scores),
            far_s=sum(s.far_s for s in scores),
            kept_share=max(s.kept_share for s in scores),
            knocks_kept=sum(s.knocks_kept for s in scores),
            knocks=sum(s.knocks for s in scores),
        )
        print(row(snr, "worst", worst))


def cpu_per_hour(snr: float, seed: int) -> None:
    pcm, truth = make_session_pcm(3600.0, snr, seed)
    hours = len(pcm) / SAMPLE_RATE / 3600
    settings = AudioSettings()
    for label, block in (("30 ms blocks (live capture)", 480), ("1 s blocks (file)", 16_000)):
        started = time.process_time()
        chunks = segment(pcm, settings, block)
        cpu = (time.process_time() - started) / hours
        print(
            f"Segmenter, one hour at {snr:g} dB SNR, {label}: {cpu:.2f} CPU s per hour of "
            f"audio ({3600 / cpu:.0f}x real time), {len(chunks)} chunks"
        )
    score = truth.score(merge_spans(chunks))
    print(f"  on that hour: {row(snr, seed, score).strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated session seeds")
    parser.add_argument("--snr", default="30,20,10,5", help="comma-separated SNRs, dB")
    parser.add_argument("--seconds", type=float, default=600.0, help="length of each session")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline table")
    parser.add_argument("--no-cpu", action="store_true", help="skip the one-hour CPU run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    snrs = [float(s) for s in args.snr.split(",")]
    print(f"Segmenter, default settings; sessions of {args.seconds:g} s")
    quality(seeds, snrs, args.seconds, baseline=False)
    if not args.no_baseline:
        print("\nBaseline: webrtcvad alone, widened by the same pre-roll and hangover")
        quality(seeds, snrs, args.seconds, baseline=True)
    if not args.no_cpu:
        print()
        cpu_per_hour(20.0, seeds[0])


if __name__ == "__main__":
    main()
