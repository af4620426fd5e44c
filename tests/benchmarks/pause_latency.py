"""Partner's ``POST /v1/sessions/{id}/pause`` -> the room's microphone closed to the pipeline.

A real deployment (simulator, mosquitto from broker-config's files, `room-gateway serve`)
and a real `room-agent run` capturing through PortAudio from the ALSA file plugin (a FIFO
of live silence). One session records; ``--tries`` times: the time before the POST is
sent, then the agent's ``session_paused`` event, whose ``at`` is the instant the recorder
stopped letting microphone blocks through (set before anything else is done), read on the
broker; then a resume. Same host, same clock. The baseline, side by side: a message's
round trip through the same broker (publish -> a subscriber), the transport's floor.
Target: p99 < 300 ms on loopback.

Then ``--sessions`` short sessions (speech played, stopped) for the room's feedback: the
gateway's ``notes_ready`` (its timeline's time) -> the room's indicator showing it (a
sysfs LED under a temporary directory, polled every 2 ms, switched to the notes_ready
blink by the agent's feedback hub). Same host, same clock.

    .venv/bin/python tests/benchmarks/pause_latency.py [--tries 100] [--sessions 5]
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


NOTES_READY_BLINK = ("timer", "1900")  # agent/feedback/states.py: notes_ready (0.1 s, 1.9 s)


def _led(led: Path) -> tuple[str, str]:
    try:
        return (led / "trigger").read_text().strip(), (led / "delay_off").read_text().strip()
    except OSError:
        return "", ""


def notes_to_indicator(deployment, feeder, speech, led: Path, sessions: int) -> list[float]:
    """ms from the gateway's notes_ready to the room's LED showing it, one per session."""
    from tests.integration.test_room_to_blueprint import ROOM, play

    gateway = deployment.gateway
    latencies: list[float] = []
    for n in range(sessions):
        session_id = gateway.start_session(ROOM, *deployment.people)
        gateway.wait_for_state(session_id, "recording", timeout=20)
        play(feeder, speech)
        if gateway.http.post(f"/v1/sessions/{session_id}/stop").status_code != 200:
            raise SystemExit(f"session {n}: the stop was refused")
        deadline = time.monotonic() + 60
        while _led(led) != NOTES_READY_BLINK:
            if time.monotonic() > deadline:
                raise SystemExit(f"session {n}: the indicator never showed notes_ready")
            time.sleep(0.002)
        shown = time.time()
        done = gateway.wait_for_state(session_id, "notes_ready", timeout=10)
        ready = [e for e in done["timeline"] if e["step"] == "notes_ready"][-1]
        latencies.append((shown - datetime.fromisoformat(ready["at"]).timestamp()) * 1000)
    return latencies


def main() -> None:
    from tests.gateway.conftest import ROOM_GATEWAY, SIMULATOR_FLAGS, SimulatorProcess
    from tests.gateway.deployment import Deployment
    from tests.integration.test_lost_commands import watch
    from tests.integration.test_room_to_blueprint import ROOM, STATE, start_agent
    from tests.support.alsa import PERIOD_FRAMES, FifoFeeder
    from tests.support.processes import Service, free_port, wait_for_http

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=5, help="for notes_ready -> LED")
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
            led = root / "leds" / "bench"
            led.mkdir(parents=True)
            (led / "max_brightness").write_text("1\n")
            for name in ("trigger", "brightness", "delay_on", "delay_off"):
                (led / name).write_text("\n")
            speech = _speech(root)
            try:
                deployment.with_people(sim, "bench")
                with (
                    FifoFeeder(root / "mic.fifo", period_frames=PERIOD_FRAMES, speed=1) as feeder,
                    watch(deployment) as probe,
                ):
                    agent = start_agent(
                        root,
                        deployment,
                        feeder.path,
                        ROOM_AGENT_FEEDBACK__SYSFS_ROOT=str(led.parent),
                        ROOM_AGENT_FEEDBACK__SYSFS_LEDS='["bench"]',
                        # faded before the next session ends: each change is the new one
                        ROOM_AGENT_FEEDBACK__NOTES_READY_S="2",
                    )
                    probe.wait_for(probe.on(STATE, online=True), timeout=20)
                    session_id = deployment.gateway.start_session(ROOM, *deployment.people)
                    deployment.gateway.wait_for_state(session_id, "recording", timeout=20)
                    try:
                        pauses, baseline = measure(deployment, probe, session_id, args.tries)
                    except AssertionError:
                        print(agent.log()[-6000:], file=sys.stderr)
                        raise
                    deployment.gateway.http.post(f"/v1/sessions/{session_id}/stop")
                    deployment.gateway.wait_for_session(  # silence only: it fails, no speech
                        session_id, lambda s: s["state"] in ("failed", "notes_ready"), 60
                    )
                    shown = notes_to_indicator(deployment, feeder, speech, led, args.sessions)
            finally:
                if agent is not None:
                    agent.stop()
                deployment.stop()
    print(summary("POST pause -> microphone closed", pauses))
    print(summary("baseline: broker round trip", baseline))
    ratio = percentile(pauses, 99) / max(percentile(baseline, 99), 1e-6)
    verdict = "within" if percentile(pauses, 99) < TARGET_P99_MS else "OVER"
    print(f"p99 ratio to the baseline: {ratio:.1f}x; {verdict} the {TARGET_P99_MS:.0f} ms target")
    print(summary("gateway notes_ready -> room indicator", shown))


def _speech(root: Path):
    """6 s of espeak-ng speech over room noise at 20 dB SNR (the integration tests' generator)."""
    import soundfile

    from tests.support.speech import make_session

    truth = make_session(root / "speech.wav", 6, 20, seed=5)
    pcm, _ = soundfile.read(truth.path, dtype="int16")
    return pcm


if __name__ == "__main__":
    main()
