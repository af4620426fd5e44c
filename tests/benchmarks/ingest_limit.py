"""Our ingest as a share of its stack's limit, measured in the same run, on both stores.

The limit is ``bare_endpoint.py``: the same uvicorn/FastAPI, the same PUT path and sealed
bodies, one fsync per body before the 200, nothing else. Ours is `room-gateway serve`
(simulator, mosquitto from broker-config's files; on PostgreSQL a real server with fsync on):
every chunk authenticated, checked, opened, its audio decoded, committed before its 200.
For each store and each ``--concurrency`` (devices PUTting at once, one keep-alive
connection each, a session of its own per run), bare -> ours -> bare: the ratio is
ours over the mean of the two bare runs, so a neighbour's load hits both. Also the CPU-ms
per chunk each process used (gateway, bare server, database, the benchmark's client) and,
from the gateway's own stage counters (gateway_stage_*{stage="chunk.*"}), where a chunk's time goes.
Goal: ours >= 50% of bare with 4 and 16 devices on SQLite and PostgreSQL.

    nice -n 5 .venv/bin/python tests/benchmarks/ingest_limit.py [--chunks 600]
        [--concurrency 4 16] [--engines sqlite postgresql]
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

GOAL_SHARE = 0.5
WARM_UP_ROOM = "room-warm-up"
REPO = Path(__file__).resolve().parents[2]


class BareServer:
    """bare_endpoint.py in its own process, on a free port."""

    def __init__(self, root: Path) -> None:
        from tests.support.processes import Service, free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "bodies").mkdir(parents=True, mode=0o700)
        argv = [sys.executable, str(REPO / "tests/benchmarks/bare_endpoint.py"), str(self.port)]
        self.service = Service(argv, root / "bare.log", env={"BARE_DIR": str(root / "bodies")})

    def start(self) -> BareServer:
        from tests.support.processes import wait_for_http

        self.service.start()
        wait_for_http(f"{self.url}/healthz", timeout=20)
        return self

    def stop(self) -> None:
        self.service.stop()


def put_all(port: int, devices: list[tuple[dict[str, str], list[tuple[str, bytes]]]]) -> float:
    """Seconds for each device (its headers, its (path, body) requests) to PUT its requests
    in turn on its own keep-alive connection, all devices at once, every answer a 200
    (http.client: a light client, so the benchmark's own CPU does not set the pace)."""
    failures: list[str] = []

    def device(headers: dict[str, str], requests: list[tuple[str, bytes]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for path, body in requests:
                conn.request("PUT", path, body=body, headers=headers)
                answer = conn.getresponse()
                text = answer.read()
                if answer.status != 200:
                    failures.append(f"{path}: HTTP {answer.status} {text[:200]!r}")
                    return
        finally:
            conn.close()

    threads = [threading.Thread(target=device, args=pair) for pair in devices]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(failures[0])
    return elapsed


def device_requests(
    deployment, room: str, chunks: list, count: int
) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """A device's headers and ``count`` chunks of a new session in its room, sealed as the
    agent seals them."""
    from agent.pipeline.seal import ChunkSealer
    from protocol.ingest import SEALED_CHUNK_CONTENT_TYPE, chunk_path

    session_id = deployment.gateway.start_session(room, *deployment.people)
    sealer = ChunkSealer(room, deployment.key.public_key())
    headers = {
        "Authorization": f"Bearer {deployment.devices[room].token}",
        "Content-Type": SEALED_CHUNK_CONTENT_TYPE,
    }
    requests = [
        (
            chunk_path(room, session_id, seq),
            sealer.seal(session_id, seq, seq * 10.0, chunks[seq % len(chunks)].pcm),
        )
        for seq in range(count)
    ]
    return headers, requests


def warm_up(deployment, chunks: list, port: int) -> None:
    """A few chunks before the measured runs: the gateway's ingest workers start with its
    first chunk (a second or two of CPU), which is not the steady state measured."""
    put_all(port, [device_requests(deployment, WARM_UP_ROOM, chunks, 40)])


def stage_totals(url: str) -> dict[str, tuple[float, float, float]]:
    """The gateway's ingest stage counters: {stage: (count, cpu_s, wall_s)}."""
    import httpx

    from tests.benchmarks.stages import parse_stages

    found = parse_stages(httpx.get(f"{url}/metrics", timeout=30).text, "gateway_stage")
    return {name: totals for name, totals in found.items() if name.startswith("chunk.")}


def compare(
    label: str,
    deployment,
    bare: BareServer,
    rooms: list[str],
    chunks: list,
    count: int,
    devices: int,
    pids: dict[str, int | None],
    port: int,
    metrics: list[str],
) -> float:
    """Bare, ours, bare again; prints the figures; returns ours / mean(bare)."""
    from tests.benchmarks.cpu import CpuMeter
    from tests.benchmarks.stages import stage_report

    each = -(-count // devices)
    plan = [device_requests(deployment, room, chunks, each) for room in rooms[:devices]]
    count = each * devices
    meter = CpuMeter({"bare": bare.service.pid}).start()
    first = count / put_all(bare.port, plan)
    bare_cpu = meter.stop()
    before = _summed(stage_totals(url) for url in metrics)
    meter = CpuMeter(pids, alone=tuple(name for name in pids if name.startswith("gateway")))
    meter.start()
    ours = count / put_all(port, plan)
    ours_cpu = meter.stop()
    after = _summed(stage_totals(url) for url in metrics)
    second = count / put_all(bare.port, plan)
    limit = (first + second) / 2
    share = ours / limit
    verdict = "" if share >= GOAL_SHARE else f"  (under the {GOAL_SHARE:.0%} goal)"
    print(f"{label}, {devices} devices: ours {ours:.0f} chunks/s, bare {first:.0f}/{second:.0f}"
          f" chunks/s: ours is {share:.0%} of the limit{verdict}")  # fmt: skip
    print(f"  CPU-ms per chunk: ours: {_per_chunk(ours_cpu, count)};"
          f" bare: {_per_chunk(bare_cpu, count)}")  # fmt: skip
    stages = {
        name: tuple(a - b for a, b in zip(totals, before.get(name, (0.0, 0.0, 0.0)), strict=True))
        for name, totals in after.items()
    }
    if stages:
        print(stage_report(stages, "  "))
        staged_cpu = sum(cpu for _, cpu, _ in stages.values())
        rest = sum(
            used for name, used in ours_cpu.items()
            if name.startswith("gateway") and not name.endswith(" alone")
        ) - staged_cpu  # fmt: skip
        print(f"  rest of the gateway's CPU (HTTP parse/route/answer, thread hops, MQTT):"
              f" {rest * 1000 / count:.2f} ms per chunk")  # fmt: skip
    return share


def _summed(
    totals: Iterable[dict[str, tuple[float, float, float]]],
) -> dict[str, tuple[float, float, float]]:
    """Stage counters added up over the replicas."""
    out: dict[str, tuple[float, float, float]] = {}
    for each in totals:
        for name, values in each.items():
            held = out.get(name, (0.0, 0.0, 0.0))
            out[name] = tuple(a + b for a, b in zip(held, values, strict=True))  # type: ignore[assignment]
    return out


def _per_chunk(used: dict[str, float], count: int) -> str:
    return ", ".join(f"{name} {seconds * 1000 / count:.1f}" for name, seconds in used.items())


def main() -> None:
    from tests.benchmarks.gateway_ingest import speech_chunks
    from tests.gateway.conftest import ROOM_GATEWAY, SIMULATOR_FLAGS, SimulatorProcess
    from tests.support.processes import Service, free_port, wait_for_http

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=600)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--engines", nargs="+", default=["sqlite", "postgresql"],
                        choices=["sqlite", "postgresql"])  # fmt: skip
    parser.add_argument(
        "--replicas", type=int, default=1, help="PostgreSQL: replicas on this host behind HAProxy"
    )
    parser.add_argument(
        "--pool-size", type=int, default=None, help="PostgreSQL: the gateway's store.pool_size"
    )
    parser.add_argument(
        "--open-workers", type=int, default=None,
        help="the gateway's ingest.open_workers (0: chunks opened on its threads)",
    )  # fmt: skip
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start,"
          f" nice {os.nice(0)}")  # fmt: skip
    chunks = speech_chunks()
    mean_kb = sum(len(c.pcm) for c in chunks) * 2 / len(chunks) / 1024
    print(f"bodies: real VAD chunks of a synthetic session, {mean_kb:.0f} KiB PCM each on"
          " average, FLAC, sealed")  # fmt: skip
    shares: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        argv = [ROOM_GATEWAY, "simulator", "--port", str(port), *SIMULATOR_FLAGS]
        with Service(argv, root / "simulator.log", env={"PYTHONUNBUFFERED": "1"}) as service:
            sim = SimulatorProcess(service, f"http://127.0.0.1:{port}")
            wait_for_http(f"{sim.url}/_sim/state")
            bare = BareServer(root / "bare").start()
            try:
                for engine in ["postgresql"] if args.replicas > 1 else args.engines:
                    shares += _engine(root / engine, sim, bare, engine, chunks, args)
            finally:
                bare.stop()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if min(shares) < GOAL_SHARE:
        print(f"lowest share {min(shares):.0%}: under the {GOAL_SHARE:.0%} goal")


def _engine(root: Path, sim, bare: BareServer, engine: str, chunks: list, args) -> list[float]:
    from tests.gateway.deployment import Deployment
    from tests.support.postgres import PostgresServer

    # One room (device) per connection, a session each, as in a clinic; fresh ones per run.
    rooms = {n: [f"room-c{n}-{d}" for d in range(n)] for n in args.concurrency}
    rooms[0] = [WARM_UP_ROOM]
    if args.replicas > 1:
        return _replicated(root, sim, bare, chunks, rooms, args)
    env = {"ROOM_GATEWAY_LOG_LEVEL": "warning"}
    if args.open_workers is not None:
        env["ROOM_GATEWAY_INGEST__OPEN_WORKERS"] = str(args.open_workers)
    server = None
    if engine == "postgresql":
        server = PostgresServer(durable=True).start()
        (root / "gateway").mkdir(parents=True)
        env |= {
            "ROOM_GATEWAY_STORE__URL": server.url(server.database()),
            "ROOM_GATEWAY_STORE__PASSWORD_FILE": str(server.password_file(root / "gateway")),
        }
        if args.pool_size is not None:
            env["ROOM_GATEWAY_STORE__POOL_SIZE"] = str(args.pool_size)
    try:
        every = tuple(room for group in rooms.values() for room in group)
        deployment = Deployment(root, sim.url, every, **env).start()
        try:
            sim.set_callback(deployment.gateway.webhook_url)
            deployment.gateway.put_people(*deployment.people)
            assert deployment.gateway.service is not None
            pids = {"gateway": deployment.gateway.service.pid}
            if server is not None:
                pids["postgres"] = int((server.data / "postmaster.pid").read_text().split()[0])
            metrics = [deployment.gateway.url]
            port = deployment.gateway.port
            warm_up(deployment, chunks, port)
            return [
                compare(
                    engine, deployment, bare, rooms[n], chunks, args.chunks, n, pids, port, metrics
                )
                for n in args.concurrency
            ]
        finally:
            deployment.stop()
    finally:
        if server is not None:
            server.destroy()


def _replicated(
    root: Path, sim, bare: BareServer, chunks: list, rooms: dict[int, list[str]], args
) -> list[float]:
    """PostgreSQL, ``--replicas`` gateways on this host, HAProxy in front (replicas.py's
    deployment): what one process per core buys against the one-process limit."""
    from tests.benchmarks.replicas import deploy

    every = tuple(room for group in rooms.values() for room in group)
    deployment, gateways, proxy, server = deploy(
        root, sim, "postgresql", args.replicas, every, 30.0
    )
    try:
        deployment.gateway = deployment.gateway.behind(proxy.url)
        sim.set_callback(deployment.gateway.webhook_url)
        deployment.gateway.put_people(*deployment.people)
        pids: dict[str, int | None] = {
            f"gateway-{name}": gateway.service.pid for name, gateway in gateways.items()
        }
        pids["haproxy"] = proxy._service.pid if proxy._service is not None else None
        pids["postgres"] = int((server.data / "postmaster.pid").read_text().split()[0])
        label = f"postgresql x{args.replicas} replicas"
        metrics = [gateway.url for gateway in gateways.values()]
        warm_up(deployment, chunks, proxy.port)
        return [
            compare(
                label, deployment, bare, rooms[n], chunks, args.chunks, n, pids, proxy.port, metrics
            )
            for n in args.concurrency
        ]
    finally:
        proxy.stop()
        for gateway in gateways.values():
            gateway.stop()
        deployment.broker.kill()
        server.destroy()


if __name__ == "__main__":
    main()
