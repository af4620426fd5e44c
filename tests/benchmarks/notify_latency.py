"""Blueprint's webhook received -> room device notified (``notes_ready`` on its notify topic).

A real deployment (simulator, mosquitto from broker-config's files, `room-gateway serve`)
runs ``--sessions`` sessions through the partner API, ``--rooms`` at a time: start, stop,
the session's audio (the testing endpoint), the simulator's processing and signed webhooks.
For each session, the latency is from the moment the gateway recorded the
``progress_note_generated`` webhook (its ``webhook_events.received_at``) to the moment a
subscriber on ``rooms/+/notify`` received ``notes_ready``: fetching the note from Blueprint,
two commits and the MQTT publish are all inside it. Same host, same clock.
The design's budget: p99 < 20 ms at every rate below saturation.

For each ``--rate`` (sessions started per second over all rooms; 0: flat out, which is the
saturation rate), the CPU seconds per session each process used (gateway, simulator,
broker, the benchmark's own client) and so the sessions/s one core of the gateway alone
sustains (goal: >= 30), the gateway's CPU per session as a multiple of a fixed reference
work measured beside each rate (cpu.reference_cpu_ms: it moves with the machine's speed,
the ratio much less), and the gateway's stage counters per session: the job kinds of
the flow from close to notes_ready (assembly, upload, artifact fetch, notify publish), how
long each waited to be claimed, the webhook's handling, claims and completions.

    nice -n 5 .venv/bin/python tests/benchmarks/notify_latency.py [--sessions 100]
        [--rooms 10] [--rate 5 10 20 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

TARGET_P99_MS = 20.0
TARGET_SESSIONS_PER_CORE = 30.0


class NotifyClock:
    """Receive time (wall clock) of each session's notes_ready, as a device would see it."""

    def __init__(self, host: str, port: int, password: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.received: dict[str, float] = {}
        self._subscribed = threading.Event()
        self._changed = threading.Condition()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="bench-notify-clock",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set("gateway-bench", password)  # a replica's (deployment.py)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("rooms/+/notify", qos=1)
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise SystemExit("notify clock: not subscribed")

    def _on_message(self, client, userdata, message) -> None:
        at = time.time()
        body = json.loads(message.payload)
        if body.get("type") == "notes_ready":
            with self._changed:
                self.received.setdefault(body["session_id"], at)
                self._changed.notify_all()

    def wait_for(self, session_id: str, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: session_id in self.received, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def webhook_times(gateway) -> dict[str, float]:
    """When the gateway recorded each session's first progress note webhook (any engine)."""
    rows = gateway.query(
        "SELECT session_id, MIN(received_at) FROM webhook_events"
        " WHERE event_type = 'progress_note_generated' AND session_id IS NOT NULL"
        " GROUP BY session_id"
    )
    return {row[0]: row[1] for row in rows}


def run_sessions(
    deployment,
    clock: NotifyClock,
    audio: Path,
    room: str,
    count: int,
    every_s: float,
    offset_s: float = 0.0,
) -> list[str]:
    """``count`` sessions one after another in ``room``, one started every ``every_s`` at
    most (the first after ``offset_s``, so rooms do not start in step), each until its
    device heard notes_ready (waited for on MQTT, not by polling the API, which would
    load the gateway)."""
    gateway = deployment.gateway
    done = []
    due = time.monotonic() + offset_s
    for _ in range(count):
        time.sleep(max(0.0, due - time.monotonic()))
        due = time.monotonic() + every_s
        session_id = gateway.start_session(room, *deployment.people)
        gateway.http.post(f"/v1/sessions/{session_id}/stop")
        answer = gateway.attach_audio(session_id, audio)
        assert answer.status_code == 202, answer.text
        if not clock.wait_for(session_id, timeout=60):
            raise SystemExit(f"session {session_id} never notified: {gateway.session(session_id)}")
        done.append(session_id)
    return done


def measure(
    deployment, sessions: int, rooms: list[str], audio: Path, rate: float = 0.0
) -> tuple[list[float], float]:
    """Latencies in ms, one per session (webhook received -> notes_ready at a subscriber),
    and the sessions per second achieved. ``rate``: sessions started per second over all
    rooms (0: as fast as they complete)."""
    every_s = len(rooms) / rate if rate > 0 else 0.0
    started = time.monotonic()
    clock = NotifyClock("127.0.0.1", deployment.broker_port, deployment.gateway_password)
    try:
        per_room = [sessions // len(rooms) + (i < sessions % len(rooms)) for i in range(len(rooms))]
        with ThreadPoolExecutor(len(rooms)) as pool:
            futures = [
                pool.submit(
                    run_sessions,
                    deployment,
                    clock,
                    audio,
                    room,
                    n,
                    every_s,
                    index * every_s / len(rooms),
                )
                for index, (room, n) in enumerate(zip(rooms, per_room, strict=True))
            ]
            ids = [sid for future in futures for sid in future.result()]
        achieved = len(ids) / (time.monotonic() - started)
    finally:
        clock.close()
    received = webhook_times(deployment.gateway)
    missing = [sid for sid in ids if sid not in clock.received or sid not in received]
    if missing:
        raise SystemExit(f"{len(missing)} sessions not notified: {missing[:3]}")
    return [(clock.received[sid] - received[sid]) * 1000 for sid in ids], achieved


def report(latencies: list[float], achieved: float) -> str:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return (
        f"webhook received -> device notified over {len(ordered)} sessions"
        f" ({achieved:.1f} sessions/s): "
        f"p50 {pct(50):.1f} ms, p90 {pct(90):.1f} ms, p99 {pct(99):.1f} ms, "
        f"max {ordered[-1]:.1f} ms, mean {statistics.fmean(ordered):.1f} ms"
    )


def main() -> None:
    from runtime.codec import encode
    from tests.benchmarks.cpu import CpuMeter, reference_cpu_ms
    from tests.benchmarks.stages import stage_report
    from tests.gateway.conftest import ROOM_GATEWAY, SIMULATOR_FLAGS, SimulatorProcess
    from tests.gateway.deployment import Deployment, tone
    from tests.support.processes import Service, free_port, wait_for_http

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument(
        "--rate",
        type=float,
        default=[5.0, 10.0, 0.0],
        nargs="+",
        help="sessions started per second, over all rooms; 0: flat out (a stress test)",
    )
    parser.add_argument("--job-concurrency", type=int, help="jobs.concurrency (default: its)")
    args = parser.parse_args()
    rooms = [f"room-{n}" for n in range(1, args.rooms + 1)]
    extra = {}
    if args.job_concurrency:
        extra["ROOM_GATEWAY_JOBS__CONCURRENCY"] = str(args.job_concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        argv = [ROOM_GATEWAY, "simulator", "--port", str(port), *SIMULATOR_FLAGS]
        with Service(argv, root / "simulator.log", env={"PYTHONUNBUFFERED": "1"}) as service:
            sim = SimulatorProcess(service, f"http://127.0.0.1:{port}")
            wait_for_http(f"{sim.url}/_sim/state")
            deployment = Deployment(
                root / "site",
                sim.url,
                tuple(rooms),
                ROOM_GATEWAY_LOG_LEVEL="warning",
                ROOM_GATEWAY_MQTT__COMMAND_EXPIRY_S="3600",
                **extra,
            ).start()
            try:
                sim.set_callback(deployment.gateway.webhook_url)
                deployment.gateway.put_people(*deployment.people)
                audio = root / "session.flac"
                audio.write_bytes(encode(tone(2.0), "flac"))
                pids = {"gateway": deployment.gateway.service.pid, "simulator": service.pid,
                        "broker": deployment.broker.pid}  # fmt: skip
                print(f"machine: {os.cpu_count()} cores, load average"
                      f" {os.getloadavg()[0]:.1f} at start, nice {os.nice(0)}")  # fmt: skip
                for rate in args.rate:
                    label = f"{rate:g} sessions/s offered" if rate else "flat out"
                    before = session_stages(deployment.gateway.url)
                    reference = reference_cpu_ms()
                    meter = CpuMeter(pids).start()
                    latencies, achieved = measure(deployment, args.sessions, rooms, audio, rate)
                    used = meter.stop()
                    reference = min(reference, reference_cpu_ms())
                    stages = _minus(session_stages(deployment.gateway.url), before)
                    print(f"{label}: " + report(latencies, achieved) + _verdict(latencies))
                    print("  " + cpu_report(used, len(latencies), achieved, reference))
                    print(stage_report(_per_session(stages, len(latencies)), "  "))
                print(f"load average at the end {os.getloadavg()[0]:.1f}")
            finally:
                deployment.stop()


def session_stages(url: str) -> dict[str, tuple[float, float, float]]:
    """The gateway's stage counters of the session flow (jobs, webhooks), not the chunks."""
    import httpx

    from tests.benchmarks.stages import parse_stages

    found = parse_stages(httpx.get(f"{url}/metrics", timeout=30).text, "gateway_stage")
    return {name: totals for name, totals in found.items() if not name.startswith("chunk.")}


def cpu_report(
    used: dict[str, float], sessions: int, achieved: float, reference_ms: float | None = None
) -> str:
    """CPU-ms per session by process, and what one gateway core would sustain; with
    ``reference_ms`` (cpu.reference_cpu_ms, measured beside the run), the gateway's
    CPU per session as a multiple of it: that ratio moves much less than the CPU-ms
    when the machine (or its neighbours' load) changes."""
    parts = ", ".join(f"{name} {seconds * 1000 / sessions:.1f}" for name, seconds in used.items())
    gateway = used.get("gateway", 0.0) / sessions
    per_core = 1 / gateway if gateway > 0 else float("inf")
    verdict = "" if per_core >= TARGET_SESSIONS_PER_CORE else "  (under the 30/s goal)"
    cores = achieved * gateway
    ratio = ""
    if reference_ms:
        ratio = (f"; gateway = {gateway * 1000 / reference_ms:.2f}x the reference work"
                 f" ({reference_ms:.1f} CPU-ms here now)")  # fmt: skip
    return (f"CPU-ms per session: {parts}; gateway alone: {per_core:.0f} sessions/s per"
            f" core ({cores:.2f} cores at {achieved:.1f} sessions/s){ratio}{verdict}")  # fmt: skip


def _minus(after: dict, before: dict) -> dict[str, tuple[float, float, float]]:
    zero = (0.0, 0.0, 0.0)
    return {k: tuple(a - b for a, b in zip(v, before.get(k, zero), strict=True))
            for k, v in after.items()}  # fmt: skip


def _per_session(stages: dict, sessions: int) -> dict[str, tuple[float, float, float]]:
    """Stages as they are: per call (a session has one of each job, a few webhooks)."""
    return {k: v for k, v in sorted(stages.items()) if v[0] > 0}


def _verdict(latencies: list[float]) -> str:
    p99 = sorted(latencies)[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return "" if p99 < TARGET_P99_MS else f"  (over the {TARGET_P99_MS:g} ms budget)"


if __name__ == "__main__":
    main()
