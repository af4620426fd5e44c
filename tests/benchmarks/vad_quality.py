"""VAD quality on recorded human voices (and on the synthetic corpus), and its speed.

First table, recorded voices (tests/support/room_sessions.py: real recordings from Debian
packages, two talkers, room noise, knocks, level profiles): per SNR, per level profile and
overall, the share of speech time kept, utterances wholly missed (and those > 300 ms),
utterances whose first 50 ms were cut, far silence (> 1 s from speech) removed and the
share of the session kept, for the Segmenter (trim conservative, the default, and
balanced) and for webrtcvad alone (modes 3 and 2)
widened by 300 ms pre-roll and 600 ms hangover. Then the synthetic (espeak-ng) table, and
the Segmenter's CPU time per hour of audio.

    .venv/bin/python tests/benchmarks/vad_quality.py [--sessions 2] [--no-synthetic]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import webrtcvad

from agent.pipeline.audio import FRAME_MS, FRAME_SAMPLES
from agent.pipeline.vad import Segmenter, SpeechChunk, merge_spans
from agent.settings import AudioSettings
from tests.support.room_sessions import NOISES, PROFILES, RoomScore, make_room_session
from tests.support.speech import SAMPLE_RATE, Score, make_session_pcm

SNRS = (30.0, 20.0, 10.0, 5.0)
WHISPER_SNR = 10.0
BASELINE_MODES = (3, 2)


def segment(pcm: np.ndarray, settings: AudioSettings, block: int) -> list[SpeechChunk]:
    segmenter = Segmenter(settings)
    chunks = []
    for at in range(0, len(pcm), block):
        chunks.extend(segmenter.push(pcm[at : at + block]))
    return chunks + segmenter.flush()


def baseline_spans(pcm: np.ndarray, settings: AudioSettings) -> list[tuple[float, float]]:
    """Every frame webrtcvad calls speech, widened by pre-roll before and hangover after."""
    preset = settings.trim_preset  # the settings' own fields may be unset (None)
    vad = webrtcvad.Vad(preset.vad_mode)
    frames = len(pcm) // FRAME_SAMPLES
    raw = pcm[: frames * FRAME_SAMPLES].tobytes()
    step = FRAME_SAMPLES * 2
    voiced = np.array(
        [vad.is_speech(raw[i * step : (i + 1) * step], SAMPLE_RATE) for i in range(frames)]
    )
    before, after = preset.pre_roll_ms // FRAME_MS, preset.hangover_ms // FRAME_MS
    starts = np.zeros(frames + 1, dtype=int)
    for index in map(int, np.flatnonzero(voiced)):
        starts[max(0, index - before)] += 1
        starts[min(frames, index + after + 1)] -= 1
    kept = np.cumsum(starts)[:frames] > 0
    edges = np.flatnonzero(np.diff(np.concatenate(([0], kept.astype(int), [0]))))
    return [
        (a * FRAME_SAMPLES / SAMPLE_RATE, b * FRAME_SAMPLES / SAMPLE_RATE)
        for a, b in zip(edges[::2], edges[1::2], strict=True)
    ]


Methods = dict[str, Callable[[np.ndarray], list[tuple[float, float]]]]
Cell = tuple[str, float, str, int, float]


def recorded_cells(sessions: int, seed_base: int = 8000) -> list[Cell]:
    """(profile, SNR, noise, seed, seconds) of every recorded session: each level profile
    at each SNR (whisper at 10 dB only, twice as many), noise kinds in rotation. The
    default seeds are the development set; another ``seed_base`` gives held-out sessions."""
    cells = []
    index = 0
    for profile in PROFILES:
        snrs = (WHISPER_SNR,) if profile == "whisper" else SNRS
        count = 2 * sessions if profile == "whisper" else sessions
        for snr in snrs:
            for _ in range(count):
                seed = seed_base + index
                seconds = float(np.random.default_rng(seed).uniform(180.0, 600.0))
                cells.append((profile, snr, NOISES[index % len(NOISES)], seed, seconds))
                index += 1
    return cells


def score_cell(
    methods: Methods, cell: Cell
) -> tuple[int, dict[str, dict[tuple[str, str], RoomScore]]]:
    """Build one session and score every method on it: (utterances, scores by case)."""
    profile, snr, noise, seed, seconds = cell
    pcm, truth = make_room_session(seconds, snr, profile, noise, seed)
    out: dict[str, dict[tuple[str, str], RoomScore]] = {}
    for name, method in methods.items():
        kept = method(pcm)
        score = truth.score(kept)
        cases = {("all", "all"): score, ("profile", profile): score, ("seed", str(seed)): score}
        if profile != "whisper":
            cases[("snr", f"{snr:g} dB")] = score
        if profile == "mixed":
            cases[("talker", "mixed, quiet talker")] = truth.score(kept, talker=1)
        out[name] = cases
    return len(truth.spans), out


def recorded_quality(methods: Methods, sessions: int, seed_base: int, jobs: int) -> None:
    """The issue's table, one block of rows per method, then the weakest sessions."""
    scores: dict[str, dict[tuple[str, str], RoomScore]] = {name: {} for name in methods}
    cells = recorded_cells(sessions, seed_base)
    started = time.monotonic()
    utterances = 0
    with ProcessPoolExecutor(jobs) as pool:
        for count, by_method in pool.map(functools.partial(score_cell, methods), cells):
            utterances += count
            for name, cases in by_method.items():
                for key, add in cases.items():
                    scores[name][key] = scores[name].get(key, RoomScore()) + add
    hours = sum(c[4] for c in cells) / 3600
    print(
        f"Recorded voices: {len(cells)} sessions (seeds {seed_base}-{seed_base + len(cells) - 1}),"
        f" {hours:.1f} h, {utterances} utterances"
        f" (built and scored in {time.monotonic() - started:.0f} s)"
    )
    header = (
        f"{'method':<16} {'case':<22} {'speech kept':>11} {'missed':>10} {'>300ms':>6}"
        f" {'onset cut':>9} {'far removed':>11} {'kept':>6}"
    )
    print(header)
    order = [("all", "all")]
    order += [("snr", f"{snr:g} dB") for snr in SNRS]
    order += [("profile", p) for p in PROFILES] + [("talker", "mixed, quiet talker")]
    for name in methods:
        for key in order:
            if key in scores[name]:
                print(recorded_row(name, key, scores[name][key]))
        print()
    weak_sessions(scores, cells)


def weak_sessions(scores: dict[str, dict[tuple[str, str], RoomScore]], cells: list[Cell]) -> None:
    """The sessions where the default segmenter kept less than 99.9% or cut an onset."""
    print("Sessions where the segmenter (default) kept < 99.9% of speech or cut an onset:")
    weak = 0
    for profile, snr, noise, seed, _ in cells:
        s = scores["segmenter"][("seed", str(seed))]
        if s.speech_kept < 0.999 or s.onsets_cut:
            weak += 1
            case = ("seed", f"{seed} {profile}/{snr:g}/{noise}")
            print(f"  {recorded_row('segmenter', case, s)}")
    print(f"  {weak} of {len(cells)} sessions\n")


def recorded_row(method: str, key: tuple[str, str], s: RoomScore) -> str:
    case = key[1] if key[0] != "snr" else f"SNR {key[1]} (4 profiles)"
    if key[0] == "profile":
        case = f"level: {key[1]}"
    return (
        f"{method:<16} {case:<22} {100 * s.speech_kept:>10.2f}% "
        f"{s.missed:>4}/{s.utterances:<5} {s.missed_long:>6} {s.onsets_cut:>9} "
        f"{100 * s.far_removed:>10.1f}% {100 * s.kept_share:>5.1f}%"
    )


def segmented_spans(settings: AudioSettings, pcm: np.ndarray) -> list[tuple[float, float]]:
    return merge_spans(segment(pcm, settings, 4800))


def padded_spans(settings: AudioSettings, pcm: np.ndarray) -> list[tuple[float, float]]:
    return baseline_spans(pcm, settings)


def segmenter_method(settings: AudioSettings) -> Callable[[np.ndarray], list[tuple[float, float]]]:
    """Picklable, so that sessions are scored in worker processes."""
    return functools.partial(segmented_spans, settings)


def baseline_method(mode: int) -> Callable[[np.ndarray], list[tuple[float, float]]]:
    settings = AudioSettings(vad_mode=mode, pre_roll_ms=300, hangover_ms=600)
    return functools.partial(padded_spans, settings)


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
    live = settings.block_ms * SAMPLE_RATE // 1000
    blocks = (
        (f"{settings.block_ms} ms blocks (live capture)", live),
        ("30 ms blocks", 480),
        ("1 s blocks (file)", 16_000),
    )
    for label, block in blocks:
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
    parser.add_argument(
        "--sessions", type=int, default=2, help="recorded sessions per profile and SNR"
    )
    parser.add_argument(
        "--seed-base", type=int, default=8000, help="first recorded seed (8000: development set)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="processes scoring sessions")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the espeak-ng table")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated session seeds")
    parser.add_argument("--snr", default="30,20,10,5", help="comma-separated SNRs, dB")
    parser.add_argument("--seconds", type=float, default=600.0, help="length of each session")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline table")
    parser.add_argument("--no-cpu", action="store_true", help="skip the one-hour CPU run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    snrs = [float(s) for s in args.snr.split(",")]
    methods = {
        "segmenter": segmenter_method(AudioSettings()),
        "seg-balanced": segmenter_method(AudioSettings(trim="balanced")),
    }
    if not args.no_baseline:
        methods.update({f"webrtcvad-{m}+pad": baseline_method(m) for m in BASELINE_MODES})
    recorded_quality(methods, args.sessions, args.seed_base, args.jobs)
    if args.no_synthetic:
        return
    print(f"Synthetic (espeak-ng): Segmenter, default settings; sessions of {args.seconds:g} s")
    quality(seeds, snrs, args.seconds, baseline=False)
    if not args.no_baseline:
        print("\nBaseline: webrtcvad alone, widened by the same pre-roll and hangover")
        quality(seeds, snrs, args.seconds, baseline=True)
    if not args.no_cpu:
        print()
        cpu_per_hour(20.0, seeds[0])


if __name__ == "__main__":
    main()
