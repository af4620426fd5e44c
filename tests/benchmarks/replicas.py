"""Gateways side by side through HAProxy: what replicas cost and buy on this machine.

For each layout (one replica on SQLite, one on PostgreSQL, three on PostgreSQL), a real
deployment (simulator, mosquitto from broker-config's files, `room-gateway serve` x N on
one store, HAProxy in front; PostgreSQL with fsync on) measures, through HAProxy:

1. ingest: ``--chunks`` sealed real-VAD chunks PUT by ``--concurrency`` clients, chunks/s
   (gateway_ingest.py's measurement);
2. webhook -> notify: ``--sessions`` sessions over ``--rooms`` rooms, the time from the
   gateway recording Blueprint's progress-note webhook to a subscriber hearing notes_ready
   (notify_latency.py's measurement), p50/p99;
3. with three replicas, failover: a client PUTting chunks back to back while one replica
   is SIGKILLed: the time from the kill to the next chunk accepted; and, with every
   Blueprint call slowed, the time from killing the replica holding an upload job's lease
   to another replica claiming it (bounded by ``--lease`` seconds, jobs.lease_s).

    .venv/bin/python tests/benchmarks/replicas.py [--chunks 600] [--concurrency 8]
                                                  [--sessions 40] [--rooms 4] [--lease 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

LAYOUTS = (("sqlite", 1), ("postgresql", 1), ("postgresql", 3))


def deploy(root: Path, sim, engine: str, replicas: int, rooms: tuple[str, ...], lease_s: float):
    """The deployment, its replicas started, HAProxy in front: (deployment, replicas, proxy)."""
    from tests.gateway.deployment import Deployment
    from tests.support.haproxy import HaProxy
    from tests.support.postgres import PostgresServer
    from tests.support.processes import free_port

    env = {"ROOM_GATEWAY_LOG_LEVEL": "warning", "ROOM_GATEWAY_MQTT__COMMAND_EXPIRY_S": "3600",
           "ROOM_GATEWAY_JOBS__LEASE_S": str(lease_s), "ROOM_GATEWAY_REPLICA": "r1"}  # fmt: skip
    server = None
    if engine == "postgresql":
        server = PostgresServer(durable=True).start()
        name = server.database()
        (root / "gateway").mkdir(parents=True)
        password = server.password_file(root / "gateway")
        env |= {"ROOM_GATEWAY_STORE__URL": server.url(name),
                "ROOM_GATEWAY_STORE__PASSWORD_FILE": str(password)}  # fmt: skip
    proxy_port = free_port()
    names = tuple(f"r{n}" for n in range(1, replicas + 1))
    deployment = Deployment(root, sim.url, rooms, None, f"http://127.0.0.1:{proxy_port}",
                            names, **env)  # fmt: skip
    gateways = {"r1": deployment.gateway}
    gateways |= {f"r{n}": deployment.gateway.replica(f"r{n}") for n in range(2, replicas + 1)}
    deployment.broker.start()
    for gateway in gateways.values():
        gateway.start()
    proxy = HaProxy(root / "haproxy", {n: g.port for n, g in gateways.items()}, port=proxy_port)
    proxy.start()
    return deployment, gateways, proxy, server


def next_chunk_after_kill(deployment, room: str, chunks: list, victim) -> float:
    """Seconds from SIGKILL of ``victim`` to the next chunk accepted through the proxy."""
    import httpx

    from agent.pipeline.seal import ChunkSealer
    from protocol.ingest import SEALED_CHUNK_CONTENT_TYPE, chunk_path

    session_id = deployment.gateway.start_session(room, *deployment.people)
    sealer = ChunkSealer(room, deployment.key.public_key())
    headers = {"Authorization": f"Bearer {deployment.devices[room].token}",
               "Content-Type": SEALED_CHUNK_CONTENT_TYPE}  # fmt: skip
    accepted: list[float] = []
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=deployment.gateway.url, headers=headers, timeout=10) as http:
            seq = 0
            while not stop.is_set():
                blob = sealer.seal(session_id, seq, seq * 10.0, chunks[seq % len(chunks)].pcm)
                try:
                    if http.put(chunk_path(room, session_id, seq), content=blob).status_code == 200:
                        accepted.append(time.monotonic())
                        seq += 1
                except httpx.HTTPError:
                    time.sleep(0.01)

    sender = threading.Thread(target=send)
    sender.start()
    while len(accepted) < 20:
        time.sleep(0.01)
    killed_at = time.monotonic()
    victim.kill()
    while not [t for t in accepted if t > killed_at]:
        time.sleep(0.001)
    stop.set()
    sender.join()
    return min(t for t in accepted if t > killed_at) - killed_at


def job_takeover_after_kill(deployment, gateways, sim, audio: Path, room: str) -> float:
    """Seconds from SIGKILL of the replica running an upload to another claiming it."""
    front = deployment.gateway
    sim.faults(latency_ms=10_000)
    session_id = front.start_session(room, *deployment.people)
    front.http.post(f"/v1/sessions/{session_id}/stop")
    assert front.attach_audio(session_id, audio).status_code == 202
    sql = ("SELECT lease_owner FROM jobs WHERE kind = 'upload_audio' AND state = 'running'"
           " AND session_id = ?")  # fmt: skip
    while not (rows := front.query(sql, session_id)) or not rows[0][0]:
        time.sleep(0.01)
    owner = rows[0][0]
    killed_at = time.monotonic()
    gateways[owner.split("/")[0]].kill()
    while ((rows := front.query(sql, session_id)) and rows[0][0] == owner) or not rows:
        time.sleep(0.02)
    taken = time.monotonic() - killed_at
    sim.faults(latency_ms=0)
    return taken


def main() -> None:
    from runtime.codec import encode
    from tests.benchmarks.gateway_ingest import speech_chunks, throughput
    from tests.benchmarks.notify_latency import measure, report
    from tests.gateway.conftest import ROOM_GATEWAY, SIMULATOR_FLAGS, SimulatorProcess
    from tests.gateway.deployment import tone
    from tests.support.processes import Service, free_port, wait_for_http

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--failover-only", action="store_true", help="three replicas, 3. only")
    args = parser.parse_args()
    chunks = speech_chunks()
    # rooms[0]: ingest, [1]: the kill during ingest, [2]: the upload's kill, then notify's.
    rooms = tuple(f"room-{n}" for n in range(1, args.rooms + 4))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        audio = root / "session.flac"
        audio.write_bytes(encode(tone(2.0), "flac"))
        port = free_port()
        argv = [ROOM_GATEWAY, "simulator", "--port", str(port), *SIMULATOR_FLAGS]
        with Service(argv, root / "simulator.log", env={"PYTHONUNBUFFERED": "1"}) as service:
            sim = SimulatorProcess(service, f"http://127.0.0.1:{port}")
            wait_for_http(f"{sim.url}/_sim/state")
            for engine, replicas in LAYOUTS[-1:] if args.failover_only else LAYOUTS:
                site = root / f"{engine}-{replicas}"
                deployment, gateways, proxy, server = deploy(
                    site, sim, engine, replicas, rooms, args.lease
                )
                try:
                    deployment.gateway = deployment.gateway.behind(proxy.url)
                    sim.set_callback(deployment.gateway.webhook_url)
                    deployment.gateway.put_people(*deployment.people)
                    label = f"{replicas} replica{'s' if replicas > 1 else ''} on {engine}"
                    if not args.failover_only:
                        rate = throughput(
                            deployment, rooms[0], chunks, args.chunks, args.concurrency
                        )
                        print(f"{label}: ingest {rate:.0f} chunks/s ({args.chunks} chunks,"
                              f" {args.concurrency} clients, through HAProxy)")  # fmt: skip
                        latencies, achieved = measure(
                            deployment, args.sessions, list(rooms[3:]), audio, 0.0
                        )
                        print(f"{label}: webhook -> notify {report(latencies, achieved)}")
                    if replicas > 1:
                        victim = gateways[f"r{replicas}"]
                        gap = next_chunk_after_kill(deployment, rooms[1], chunks, victim)
                        print(f"{label}: SIGKILL of a replica -> next chunk accepted"
                              f" {gap * 1000:.0f} ms")  # fmt: skip
                        taken = job_takeover_after_kill(deployment, gateways, sim, audio, rooms[2])
                        print(f"{label}: SIGKILL of an upload's replica -> job taken over"
                              f" {taken:.1f} s (lease {args.lease:g} s)")  # fmt: skip
                finally:
                    proxy.stop()
                    for gateway in gateways.values():
                        gateway.stop()
                    deployment.broker.kill()
                    if server is not None:
                        server.destroy()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
