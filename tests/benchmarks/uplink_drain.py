"""The uplink draining a backlog: audio-seconds delivered per second over loopback.

After an outage the spool holds a backlog: here ``--minutes`` of recorded sessions (10 min
synthetic sessions of speech, pauses and room noise, cut by the real VAD into chunks of at
most 10 s, FLAC, sealed), spooled durably. The uplink then drains it to the stand-in ingest
server (tests/support/ingest_server.py, in its own process: it opens every chunk with the
private key, as the gateway does) through one httpx.Client at each concurrency. Reported:
session time and speech (chunk) time drained per second, chunks/s, MB/s. The design's
budget: 1 hour of audio in < 30 s, i.e. >= 120 audio-seconds per second.

    .venv/bin/python tests/benchmarks/uplink_drain.py [--minutes 60] [--concurrency 1 4 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SESSION_S = 600
TARGET = 120.0  # audio-seconds per second
DEVICE, TOKEN = "bench-room", "bench-token"


def speech_chunks() -> list:
    """One 10 min session through the real VAD: its speech chunks."""
    from agent.pipeline.vad import Segmenter
    from agent.settings import AudioSettings
    from tests.support.speech import make_session_pcm

    pcm, _ = make_session_pcm(SESSION_S, 20, seed=5)
    segmenter = Segmenter(AudioSettings())
    chunks = []
    for at in range(0, len(pcm), 16_000):
        chunks.extend(segmenter.push(pcm[at : at + 16_000]))
    return chunks + segmenter.flush()


def fill_spool(spool, key, chunks: list, sessions: int, run: str) -> tuple[float, int]:
    """``sessions`` closed sessions of those chunks; returns (speech seconds, bytes)."""
    from agent.pipeline.seal import ChunkSealer

    sealer = ChunkSealer(DEVICE, key.public_key())
    speech_s, size = 0.0, 0
    for number in range(sessions):
        session_id = f"backlog-{run}-{number:03d}"
        spool.create_session(session_id, DEVICE)
        for seq, chunk in enumerate(chunks):
            pending = spool.append(sealer.seal(session_id, seq, chunk.start_s, chunk.pcm))
            speech_s += pending.duration_s
            size += pending.bytes
        spool.close_session(session_id, "stopped")
    return speech_s, size


def drain(spool, url: str, concurrency: int, sessions: int) -> float:
    from pydantic import SecretStr

    from agent.link.uplink import Uplink, make_client
    from agent.settings import LinkSettings

    settings = LinkSettings(gateway_url=url, ingest_token=TOKEN, upload_concurrency=concurrency)
    uplink = Uplink(settings, DEVICE, spool, make_client(settings, SecretStr(TOKEN)))
    started = time.perf_counter()
    uplink.start()
    while uplink.status().sessions_delivered < sessions:
        status = uplink.status()
        if status.held or status.set_aside or time.perf_counter() - started > 600:
            uplink.stop()
            raise SystemExit(f"not drained: {status}")
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    uplink.stop()
    status = uplink.status()
    if status.reason is not None or spool.sessions():
        raise SystemExit(f"drain incomplete: {status}")
    return elapsed


def main() -> None:
    from agent.spool import Spool
    from protocol.envelope import generate_private_key, private_key_to_pem
    from tests.support.processes import Service, free_port, wait_for_port

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    sessions = max(1, round(args.minutes * 60 / SESSION_S))
    chunks = speech_chunks()
    key = generate_private_key()
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "key.pem"
        key_file.write_bytes(private_key_to_pem(key))
        port = free_port()
        argv = [sys.executable, "-m", "tests.support.ingest_server", "--port", str(port),
                "--key-file", str(key_file), "--token", f"{DEVICE}={TOKEN}"]  # fmt: skip
        root = Path(__file__).resolve().parents[2]
        with Service(argv, Path(tmp) / "server.log", cwd=root):
            wait_for_port(port)
            url = f"http://127.0.0.1:{port}"
            print(
                f"backlog: {sessions} sessions x {SESSION_S / 60:g} min "
                f"({len(chunks)} chunks each), drained to the stand-in ingest server\n"
            )
            print(f"{'concurrency':>11} {'drain s':>8} {'session s/s':>12} {'speech s/s':>11}"
                  f" {'chunks/s':>9} {'MB/s':>6}")  # fmt: skip
            for concurrency in args.concurrency:
                with Spool(Path(tmp) / f"spool-{concurrency}", 1 << 40, 0) as spool:
                    speech_s, size = fill_spool(spool, key, chunks, sessions, f"c{concurrency}")
                    elapsed = drain(spool, url, concurrency, sessions)
                rate = sessions * SESSION_S / elapsed
                print(
                    f"{concurrency:>11} {elapsed:>8.2f} {rate:>12.0f} {speech_s / elapsed:>11.0f}"
                    f" {sessions * len(chunks) / elapsed:>9.0f} {size / elapsed / 1e6:>6.1f}"
                    + ("" if speech_s / elapsed >= TARGET else f"   < {TARGET:g} speech s/s")
                )


if __name__ == "__main__":
    main()
