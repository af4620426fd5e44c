"""`make bench`: the agent pipeline on one hour of speech and silence, against sox.

The input is a generated session (espeak-ng voices, room noise at 20 dB SNR, knocks,
pauses from 0.4 s to 40 s) written at 48 kHz, as a USB microphone without 16 kHz would
deliver it, so resampling is part of the run. The pipeline (read -> resample -> VAD ->
FLAC -> seal) runs in a child process pinned to one core, so its peak RSS is its own.
The baseline is sox doing the same job in one command: resample, drop silence with its
`silence` effect, encode FLAC.

    .venv/bin/python tests/benchmarks/pipeline.py [--minutes 60] [--snr 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

RAW_BYTES_PER_S = 16_000 * 2
TARGET_SPEED = 500
TARGET_RSS_MB = 80


def make_input(minutes: float, snr_db: float) -> Path:
    """The 48 kHz session, generated once and cached with the espeak renders.

    Generation runs in its own process: Linux hands a parent's peak RSS down to the
    children it execs, and generating an hour of audio takes ~600 MB.
    """
    from tests.support.speech import speech_cache_dir

    folder = speech_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    wav48 = folder / f"bench-{minutes:g}min-{snr_db:g}db-48k.wav"
    if not wav48.exists():
        wav16 = folder / f"bench-{minutes:g}min-{snr_db:g}db-16k.wav"
        print(f"generating {minutes:g} min of speech and silence (cached in {folder}) ...")
        code = (
            "import sys; from pathlib import Path; from tests.support.speech import make_session;"
            f"make_session(Path({str(wav16)!r}), {minutes * 60}, {snr_db}, seed=7)"
        )
        root = Path(__file__).resolve().parents[2]
        subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
        partial = wav48.with_suffix(".tmp.wav")
        subprocess.run(["sox", str(wav16), "-r", "48000", str(partial)], check=True)
        partial.rename(wav48)
        wav16.unlink()
    return wav48


def peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM), not one inherited across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_pipeline(path: Path, codec: str) -> dict:
    """In this (child) process: the whole pipeline on one core, measured."""
    from agent.pipeline.filesource import FileSource
    from agent.pipeline.seal import ChunkSealer
    from agent.pipeline.vad import Segmenter
    from agent.settings import AudioSettings
    from protocol.envelope import generate_private_key

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    settings = AudioSettings(codec=codec)
    sealer = ChunkSealer("bench", generate_private_key().public_key(), settings.codec)
    segmenter = Segmenter(settings)
    sealed_bytes = chunks = kept = seq = 0
    wall, cpu = time.perf_counter(), time.process_time()
    with FileSource(path) as source:
        while (block := source.read()) is not None:
            for chunk in segmenter.push(block):
                sealed_bytes += len(sealer.seal("s", seq, chunk.start_s, chunk.pcm))
                kept += len(chunk.pcm)
                seq += 1
        for chunk in segmenter.flush():
            sealed_bytes += len(sealer.seal("s", seq, chunk.start_s, chunk.pcm))
            kept += len(chunk.pcm)
            seq += 1
        audio_s = source.stats.samples / 16_000
    chunks = seq
    return {
        "audio_s": audio_s,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "peak_rss_mb": peak_rss_mb(),
        "out_bytes": sealed_bytes,
        "kept_s": kept / 16_000,
        "chunks": chunks,
    }


def measure_pipeline(path: Path, codec: str) -> dict:
    child = subprocess.run(
        [sys.executable, __file__, "--child", str(path), "--codec", codec],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def measure_sox(path: Path, audio_s: float, out: Path) -> dict:
    """sox: 48k -> 16k mono, its silence effect (drop pauses > 0.6 s below 1%), FLAC."""
    wall = time.perf_counter()
    sox = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            "sox",
            str(path),
            "-r",
            "16000",
            "-c",
            "1",
            str(out),
            "silence",
            "-l",
            "1",
            "0.1",
            "1%",
            "-1",
            "0.6",
            "1%",
        ],
    )
    _, status, usage = os.wait4(sox.pid, 0)
    sox.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - wall
    if sox.returncode:
        raise SystemExit(f"sox failed with status {sox.returncode}")
    kept = float(
        subprocess.run(["soxi", "-D", str(out)], capture_output=True, text=True, check=True).stdout
    )
    return {
        "audio_s": audio_s,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "out_bytes": out.stat().st_size,
        "kept_s": kept,
        "chunks": 1,
    }


def report(name: str, r: dict) -> str:
    speed = r["audio_s"] / r["cpu_s"]
    of_pcm = 100 * r["out_bytes"] / (r["audio_s"] * RAW_BYTES_PER_S)
    kept = 100 * r["kept_s"] / r["audio_s"]
    return (
        f"{name:<22} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} {speed:>8.0f}x"
        f" {r['peak_rss_mb']:>8.1f} {r['out_bytes'] / 1e6:>9.1f} {of_pcm:>6.1f}% {kept:>6.1f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--snr", type=float, default=20)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--codec", default="flac", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_pipeline(args.child, args.codec)))
        return

    path = make_input(args.minutes, args.snr)
    flac = measure_pipeline(path, "flac")
    opus = measure_pipeline(path, "opus")
    sox = measure_sox(path, flac["audio_s"], path.with_name("bench-sox-out.flac"))
    print(
        f"\ninput: {path.name}: {flac['audio_s'] / 3600:.2f} h at 48 kHz, "
        f"{args.snr:g} dB SNR; one core each\n"
    )
    print(
        f"{'':<22} {'wall s':>7} {'cpu s':>7} {'speed':>9} {'RSS MB':>8} {'out MB':>9}"
        f" {'/ PCM':>7} {'kept':>7}"
    )
    print(report("agent (FLAC, sealed)", flac))
    print(report("agent (Opus, sealed)", opus))
    print(report("sox silence + FLAC", sox))
    speed = flac["audio_s"] / flac["cpu_s"]
    print(
        f"\ntargets: >= {TARGET_SPEED}x real time on one core: "
        f"{'met' if speed >= TARGET_SPEED else 'MISSED'} ({speed:.0f}x); "
        f"peak RSS < {TARGET_RSS_MB} MB: "
        f"{'met' if flac['peak_rss_mb'] < TARGET_RSS_MB else 'MISSED'} "
        f"({flac['peak_rss_mb']:.1f} MB)"
    )


if __name__ == "__main__":
    main()
