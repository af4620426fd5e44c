"""The gateway's ingest under load, on loopback, every part real (`room-gateway serve`, the
simulator, mosquitto from broker-config's files), on this machine's cores.

1. Throughput: ``--chunks`` sealed chunks (the real VAD's chunks of a synthetic session,
   FLAC, sealed as the agent seals them) PUT by ``--concurrency`` keep-alive clients into one
   session; each is authenticated, checked, opened and fsynced before its 200. Chunks/s.
   Budget: >= 200 chunks/s on 2 cores.
2. Backlog drain: ``--minutes`` of one session's audio waiting in a real agent spool (as
   after an outage) drained by the agent's own uplink; then the session's close, assembly
   into one file and its upload. Audio-seconds per second. Budget: an hour in < 30 s
   (>= 120 audio-s/s).

    .venv/bin/python tests/benchmarks/gateway_ingest.py [--chunks 1000] [--concurrency 4 8]
                                                        [--minutes 60]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DRAIN_ROOM = "room-drain"
SESSION_S = 600
TARGET_CHUNKS_PER_S = 200.0
TARGET_AUDIO_S_PER_S = 120.0


def speech_chunks() -> list:
    """One 10 min session through the real VAD (chunks of at most 10 s)."""
    from tests.benchmarks.uplink_drain import speech_chunks as ten_minutes

    return ten_minutes()


def throughput(deployment, room: str, chunks: list, count: int, concurrency: int) -> float:
    """Chunks/s for ``count`` PUTs (distinct seqs, one session) from ``concurrency`` clients."""
    import httpx

    from agent.pipeline.seal import ChunkSealer
    from protocol.ingest import SEALED_CHUNK_CONTENT_TYPE, chunk_path

    session_id = deployment.gateway.start_session(room, *deployment.people)
    sealer = ChunkSealer(room, deployment.key.public_key())
    blobs = [
        sealer.seal(session_id, seq, seq * 10.0, chunks[seq % len(chunks)].pcm)
        for seq in range(count)
    ]
    url = deployment.gateway.url
    headers = {
        "Authorization": f"Bearer {deployment.devices[room].token}",
        "Content-Type": SEALED_CHUNK_CONTENT_TYPE,
    }
    clients = [httpx.Client(base_url=url, headers=headers, timeout=60) for _ in range(concurrency)]

    def send(worker: int) -> None:
        client = clients[worker]
        for seq in range(worker, count, concurrency):
            answer = client.put(chunk_path(room, session_id, seq), content=blobs[seq])
            if answer.status_code != 200:
                raise SystemExit(f"chunk {seq}: HTTP {answer.status_code} {answer.text}")

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, range(concurrency)))
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    return count / elapsed


def drain(deployment, chunks: list, minutes: float, root: Path) -> dict[str, float]:
    """An hour (say) of one session in the agent's spool, drained by the agent's uplink."""
    from pydantic import SecretStr

    from agent.link.uplink import Uplink, make_client
    from agent.pipeline.seal import ChunkSealer
    from agent.settings import LinkSettings
    from agent.spool import Spool

    gateway = deployment.gateway
    session_id = gateway.start_session(DRAIN_ROOM, *deployment.people)
    gateway.http.post(f"/v1/sessions/{session_id}/stop")
    sealer = ChunkSealer(DRAIN_ROOM, deployment.key.public_key())
    speech_s = 0.0
    with Spool(root / "spool", 1 << 40, 0) as spool:
        spool.create_session(session_id, DRAIN_ROOM)
        seq = 0
        for part in range(max(1, round(minutes * 60 / SESSION_S))):
            for chunk in chunks:
                pending = spool.append(
                    sealer.seal(session_id, seq, part * SESSION_S + chunk.start_s, chunk.pcm)
                )
                speech_s += pending.duration_s
                seq += 1
        spool.close_session(session_id, "stopped")
        token = deployment.devices[DRAIN_ROOM].token
        settings = LinkSettings(gateway_url=gateway.url, ingest_token=token, upload_concurrency=4)
        uplink = Uplink(settings, DRAIN_ROOM, spool, make_client(settings, SecretStr(token)))
        started = time.perf_counter()
        uplink.start()
        while uplink.status().sessions_delivered < 1:
            if time.perf_counter() - started > 600:
                raise SystemExit(f"not drained after 600 s: {uplink.status()}")
            time.sleep(0.01)
        drained_s = time.perf_counter() - started
        uplink.stop()
    ready = gateway.wait_for_session(
        session_id, lambda s: any(e["step"] == "audio_ready" for e in s["timeline"]), 120
    )
    closed_at = _at(ready, "audio_closed")
    return {
        "chunks": seq,
        "speech_s": speech_s,
        "session_s": max(1, round(minutes * 60 / SESSION_S)) * SESSION_S,
        "drain_s": drained_s,
        "assemble_s": _at(ready, "audio_ready") - closed_at,
    }


def _at(session: dict, step: str) -> float:
    from datetime import datetime

    entry = next(e for e in session["timeline"] if e["step"] == step)
    return datetime.fromisoformat(entry["at"]).timestamp()


def main() -> None:
    from tests.gateway.conftest import ROOM_GATEWAY, SIMULATOR_FLAGS, SimulatorProcess
    from tests.gateway.deployment import Deployment
    from tests.support.processes import Service, free_port, wait_for_http

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--minutes", type=float, default=60)
    args = parser.parse_args()
    chunks = speech_chunks()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        argv = [ROOM_GATEWAY, "simulator", "--port", str(port), *SIMULATOR_FLAGS]
        with Service(argv, root / "simulator.log", env={"PYTHONUNBUFFERED": "1"}) as service:
            sim = SimulatorProcess(service, f"http://127.0.0.1:{port}")
            wait_for_http(f"{sim.url}/_sim/state")
            rooms = [f"room-c{concurrency}" for concurrency in args.concurrency]
            deployment = Deployment(
                root / "site", sim.url, (*rooms, DRAIN_ROOM), ROOM_GATEWAY_LOG_LEVEL="warning"
            ).start()
            try:
                sim.set_callback(deployment.gateway.webhook_url)
                deployment.gateway.put_people(*deployment.people)
                mean_kb = sum(len(c.pcm) for c in chunks) * 2 / len(chunks) / 1024
                print(f"chunks: real VAD chunks of a synthetic session, {mean_kb:.0f} KiB PCM"
                      f" each on average (FLAC, sealed)")  # fmt: skip
                for room, concurrency in zip(rooms, args.concurrency, strict=True):
                    rate = throughput(deployment, room, chunks, args.chunks, concurrency)
                    verdict = "" if rate >= TARGET_CHUNKS_PER_S else "  (under budget)"
                    print(f"ingest: {args.chunks} chunks, {concurrency} clients:"
                          f" {rate:.0f} chunks/s{verdict}")  # fmt: skip
                result = drain(deployment, chunks, args.minutes, root)
            finally:
                deployment.stop()
    rate = result["speech_s"] / result["drain_s"]
    print(
        f"backlog drain: {result['session_s'] / 60:.0f} min session ({result['chunks']} chunks,"
        f" {result['speech_s']:.0f} s of speech) in {result['drain_s']:.1f} s:"
        f" {rate:.0f} audio-s/s (speech), {result['session_s'] / result['drain_s']:.0f}"
        f" session-s/s" + ("" if rate >= TARGET_AUDIO_S_PER_S else "  (under budget)")
    )
    print(f"close -> assembled file for that session: {result['assemble_s'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
