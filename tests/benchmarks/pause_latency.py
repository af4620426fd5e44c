"""Partner's ``POST /v1/sessions/{id}/pause`` -> the room's microphone closed to the pipeline.

A real deployment (simulator, mosquitto from broker-config's files, `room-gateway serve`)
and a real `room-agent run` capturing through PortAudio from the ALSA file plugin (a FIFO
of live silence). One session records; ``--tries`` times: the time before the POST is
sent, then the agent's ``session_paused`` event, whose ``at`` is the instant the recorder
stopped letting microphone blocks through (set before anything else is done), read on the
broker; then a resume. Same host, same clock. The baseline, side by side: a message's
round trip through the same broker (publish -> a subscriber), the transport's floor.
Target: p99 < 300 ms on loopback.

    .venv/bin/python tests/benchmarks/pause_latency.py [--tries 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

TARGET_P99_MS = 300.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name}: n={len(values)} p50={percentile(values, 50):.1f} ms"
        f" p99={percentile(values, 99):.1f} ms max={max(values):.1f} ms"
        f" mean={statistics.fmean(values):.1f} ms"
    )


def measure(deployment, probe, session_id: str, tries: int) -> tuple[list[float], list[float]]:
    """(pause latencies, baseline broker round trips), in ms."""
    from tests.integration.test_room_to_blueprint import EVENTS

    http = deployment.gateway.http
    pauses: list[float] = []
    baseline: list[float] = []
    for n in range(tries):
        mark = probe.count()
        sent = time.time()
        answer = http.post(f"/v1/sessions/{session_id}/pause")
        if answer.status_code != 200:
            raise SystemExit(f"pause {n}: {answer.status_code} {answer.text}")
        closed = probe.wait_for(probe.on(EVENTS, type="session_paused"), 10, mark)
        pauses.append((datetime.fromisoformat(closed.json()["at"]).timestamp() - sent) * 1000)
        mark = probe.count()
        http.post(f"/v1/sessions/{session_id}/resume")
        probe.wait_for(probe.on(EVENTS, type="session_resumed"), 10, mark)
        mark = probe.count()
        echo = time.time()
        probe.publish("rooms/bench/echo", {"n": n})
        probe.wait_for(lambda m: m.topic == "rooms/bench/echo", 10, mark)
        baseline.append((time.time() - echo) * 1000)
    return pauses, baseline


def main() -> None:
    from tests.gateway.conftest import ROOM_GATEWAY, SIMULATOR_FLAGS, SimulatorProcess
    from tests.gateway.deployment import Deployment
    from tests.integration.test_lost_commands import watch
    from tests.integration.test_room_to_blueprint import ROOM, STATE, start_agent
    from tests.support.alsa import PERIOD_FRAMES, FifoFeeder
    from tests.support.processes import Service, free_port, wait_for_http

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=100)
    args = parser.parse_args()
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
                (ROOM,),
                ROOM_GATEWAY_LOG_LEVEL="warning",
                ROOM_GATEWAY_MQTT__COMMAND_EXPIRY_S="3600",
            ).start()
            agent = None
            try:
                deployment.with_people(sim, "bench")
                with (
                    FifoFeeder(root / "mic.fifo", period_frames=PERIOD_FRAMES, speed=1) as feeder,
                    watch(deployment) as probe,
                ):
                    agent = start_agent(root, deployment, feeder.path)
                    probe.wait_for(probe.on(STATE, online=True), timeout=20)
                    session_id = deployment.gateway.start_session(ROOM, *deployment.people)
                    deployment.gateway.wait_for_state(session_id, "recording", timeout=20)
                    try:
                        pauses, baseline = measure(deployment, probe, session_id, args.tries)
                    except AssertionError:
                        print(agent.log()[-6000:], file=sys.stderr)
                        raise
                    deployment.gateway.http.post(f"/v1/sessions/{session_id}/stop")
            finally:
                if agent is not None:
                    agent.stop()
                deployment.stop()
    print(summary("POST pause -> microphone closed", pauses))
    print(summary("baseline: broker round trip", baseline))
    ratio = percentile(pauses, 99) / max(percentile(baseline, 99), 1e-6)
    verdict = "within" if percentile(pauses, 99) < TARGET_P99_MS else "OVER"
    print(f"p99 ratio to the baseline: {ratio:.1f}x; {verdict} the {TARGET_P99_MS:.0f} ms target")


if __name__ == "__main__":
    main()
