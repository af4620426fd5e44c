"""End to end, every part real: the partner starts a session through the gateway's API, the
room agent (PortAudio through the ALSA file plugin) records on the gateway's MQTT command,
its sealed chunks reach the gateway over HTTP during the session, the stop makes one file
that the simulator receives, its webhooks come back, the device hears ``notes_ready`` on
its notify topic and the partner reads the note.

The outage test kills the gateway (SIGKILL) and restarts the broker mid-session: nothing
is lost or doubled, the device's state shows the backlog while it lasts, and it drains.
Every message the broker carried is scanned for the clinician's and client's names.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.gateway.conftest import PHI_STRINGS, SECRETS, SimulatorProcess, steps
from tests.gateway.deployment import Deployment
from tests.support.alsa import PERIOD_FRAMES, FifoFeeder, write_asound_conf
from tests.support.eventually import eventually
from tests.support.mqtt_probe import Probe, Received
from tests.support.processes import Service

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

ROOM = "room-1"
ROOM_AGENT = str(Path(sys.executable).parent / "room-agent")
STATE, EVENTS, NOTIFY = (f"rooms/{ROOM}/{kind}" for kind in ("state", "events", "notify"))
PERIOD = PERIOD_FRAMES


def cut(seconds: float) -> int:
    return int(seconds * 16_000) // PERIOD * PERIOD


def play(feeder: FifoFeeder, pcm: np.ndarray, timeout: float = 30.0) -> None:
    """Play ``pcm`` and return once all of it is in the FIFO."""
    feeder.play(pcm)
    assert feeder.wait_played(timeout), "the FIFO was not read"


class Gateway:
    """Read-only looks into the gateway's store (WAL: safe while it runs)."""

    def __init__(self, deployment: Deployment) -> None:
        self.path = deployment.gateway.state_dir / "gateway.db"

    def query(self, sql: str, *args: object) -> list[sqlite3.Row]:
        with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql, args).fetchall()

    def chunks(self, session_id: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM chunks WHERE session_id = ? ORDER BY seq", session_id)


@pytest.fixture
def deployment(tmp_path: Path, sim: SimulatorProcess) -> Iterator[Deployment]:
    deployed = Deployment(
        tmp_path / "site",
        sim.url,
        (ROOM,),
        ROOM_GATEWAY_INGEST__RETENTION_S="0",
        ROOM_GATEWAY_MQTT__COMMAND_EXPIRY_S="60",
    ).start()
    sim.set_callback(deployed.gateway.webhook_url)
    deployed.people = ("clin-e2e", "client-e2e")
    deployed.gateway.put_people(*deployed.people)
    yield deployed
    deployed.stop()


@pytest.fixture
def everything(deployment: Deployment) -> Iterator[Probe]:
    """Every message the broker carries on rooms/#, recorded as the gateway user sees it."""
    with Probe(deployment.broker, deployment.observer, deployment.gateway_password) as probe:
        yield probe


def start_agent(
    tmp_path: Path, deployment: Deployment, fifo: Path, room: str = ROOM, **extra: str
) -> Service:
    """`room-agent run` with the agent.toml and credential files `device add` wrote; the
    environment adds only what is test-specific (the ALSA test microphone, a state dir,
    short timings, and ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_AGENT_")}
    env.update(write_asound_conf(tmp_path / "asound.conf", fifo))
    env.update(
        ROOM_AGENT_CONFIG=str(deployment.devices[room].directory / "agent.toml"),
        # The secrets as systemd's LoadCredential= provides them.
        CREDENTIALS_DIRECTORY=str(deployment.devices[room].directory),
        ROOM_AGENT_STATE_DIR=str(tmp_path / "agent-state"),
        ROOM_AGENT_SPOOL__MIN_FREE_BYTES="0",
        ROOM_AGENT_AUDIO__DEVICE="testmic",
        ROOM_AGENT_AUDIO__MAX_CHUNK_S="4",
        ROOM_AGENT_MQTT__RECONNECT_MIN_S="0.2",
        ROOM_AGENT_MQTT__RECONNECT_MAX_S="1",
        ROOM_AGENT_MQTT__HEARTBEAT_S="0.5",
        ROOM_AGENT_LINK__BACKOFF_BASE_S="0.1",
        ROOM_AGENT_LINK__BACKOFF_MAX_S="1",
        **extra,
    )
    return Service([ROOM_AGENT, "run"], tmp_path / "agent.log", env=env).start()


def mosquitto_sub(deployment: Deployment, out: Path) -> subprocess.Popen:
    """The device's notify topic read with mosquitto's own client. Not as the device user:
    the broker makes the client id the user name, so a second connection as room-1 would
    knock the agent off (tests/gateway/devices/test_identity.py); as a gateway replica."""
    argv = [
        "mosquitto_sub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(deployment.broker_port),
        "-u", deployment.watcher("sub"), "-P", deployment.gateway_password, "-t", NOTIFY, "-q", "1",
        "-v",
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=out.open("wb"), stderr=subprocess.STDOUT)


def sim_session(sim: SimulatorProcess, session_id: str) -> dict[str, Any]:
    details = sim.state()["session_details"].values()
    return next(s for s in details if s["session_external_id"] == session_id)


def assert_no_phi(messages: list[Received], *logs: str) -> None:
    carried = b"\n".join(message.payload + message.topic.encode() for message in messages)
    assert carried, "the probe recorded nothing"
    for name in PHI_STRINGS:
        assert name.encode() not in carried, f"{name!r} went over MQTT"
        for log in logs:
            assert name not in log, f"{name!r} in a log"
    for secret in SECRETS:
        assert secret.encode() not in carried


def timeline_at(session: dict[str, Any], step: str) -> float:
    entry = next(e for e in session["timeline"] if e["step"] == step)
    return datetime.fromisoformat(entry["at"]).timestamp()


def test_partner_to_room_to_blueprint_and_back(
    tmp_path: Path,
    deployment: Deployment,
    everything: Probe,
    feeder: FifoFeeder,
    speech: np.ndarray,
    sim: SimulatorProcess,
) -> None:
    gateway = deployment.gateway
    sub_out = tmp_path / "mosquitto_sub.out"
    subscriber = mosquitto_sub(deployment, sub_out)
    agent = start_agent(tmp_path, deployment, feeder.path)
    try:
        everything.wait_for(everything.on(STATE, online=True), timeout=20)
        eventually(
            lambda: gateway.http.get(f"/v1/rooms/{ROOM}").json()["online"],
            timeout=10,
            what="room online",
        )

        session_id = gateway.start_session(ROOM, *deployment.people)
        started = everything.wait_for(everything.on(EVENTS, type="session_started"), 10)
        assert started.json()["session_id"] == session_id
        gateway.wait_for_session(session_id, lambda s: "start_confirmed" in steps(s))
        play(feeder, speech[: cut(24)])
        during = eventually(
            lambda: (
                (s := gateway.session(session_id))["audio"]
                and s["audio"]["chunks_received"] >= 2
                and s
            ),
            timeout=15,
            what="chunks during the session",
        )
        assert during["state"] == "recording", "chunks arrive while it records"
        play(feeder, speech[cut(24) :])
        time.sleep(0.5)

        stopped = gateway.http.post(f"/v1/sessions/{session_id}/stop")
        assert stopped.status_code == 200
        ready = gateway.wait_for_session(
            session_id, lambda s: "audio_ready" in steps(s), timeout=10
        )
        stop_to_audio_s = timeline_at(ready, "audio_ready") - timeline_at(ready, "stopped")
        done = gateway.wait_for_state(session_id, "notes_ready", timeout=20)
        note = everything.wait_for(everything.on(NOTIFY, type="notes_ready"), timeout=10)
        assert note.json() == {"at": note.json()["at"], "type": "notes_ready",
                               "session_id": session_id}  # fmt: skip
        eventually(
            lambda: f"session {session_id}: notes_ready" in agent.log(),
            timeout=10,
            what="agent log",
        )
        eventually(lambda: b"notes_ready" in sub_out.read_bytes(), timeout=10, what="mosquitto_sub")

        artifacts = gateway.http.get(f"/v1/sessions/{session_id}/artifacts").json()
        assert artifacts["state"] == "notes_ready"
        assert artifacts["progress_note"]["body"]["sessionId"]
        assert agent.stop() == 0
    finally:
        agent.kill()
        subscriber.terminate()
        subscriber.wait(5)

    # The audio at Blueprint is exactly the kept speech: every chunk once, in order.
    store = Gateway(deployment)
    chunks = store.chunks(session_id)
    manifest_speech_s = sum(chunk["duration_s"] for chunk in chunks)
    closed = everything.wait_for(everything.on(EVENTS, type="session_closed")).json()
    assert closed["chunks"] == len(chunks) == done["audio"]["manifest_chunks"] >= 4
    assert closed["speech_s"] == pytest.approx(manifest_speech_s, abs=0.01)
    at_blueprint = sim_session(sim, session_id)
    assert at_blueprint["audio_duration_s"] == pytest.approx(manifest_speech_s, abs=1e-3)
    assert sim.state()["audio_uploads"] == 1
    timeline = steps(done)
    for step in ("start_sent", "start_confirmed", "device_recording", "first_chunk_received",
                 "stop_sent", "stop_confirmed", "device_closed", "audio_closed", "audio_ready",
                 "audio_uploaded", "notes_ready", "device_notified"):  # fmt: skip
        assert step in timeline, step
    kept = "SELECT COUNT(*) FROM chunks WHERE session_id = ? AND sealed IS NOT NULL"
    eventually(
        lambda: deployment.gateway.query(kept, session_id)[0][0] == 0,
        timeout=10,
        what="the chunks deleted after Blueprint took the audio",
    )
    assert_no_phi(everything.messages, gateway.log(), agent.log())
    assert "Traceback" not in gateway.log() + agent.log()
    print(
        f"\nsession stop -> complete audio at the gateway: {stop_to_audio_s * 1000:.0f} ms"
        f" ({len(chunks)} chunks, {manifest_speech_s:.2f} s of speech; Blueprint got"
        f" {at_blueprint['audio_duration_s']:.3f} s)"
    )
    assert stop_to_audio_s < 1.0


def test_gateway_killed_and_broker_restarted_mid_session(
    tmp_path: Path,
    deployment: Deployment,
    everything: Probe,
    feeder: FifoFeeder,
    speech: np.ndarray,
    sim: SimulatorProcess,
) -> None:
    gateway = deployment.gateway
    store = Gateway(deployment)
    agent = start_agent(tmp_path, deployment, feeder.path)
    try:
        everything.wait_for(everything.on(STATE, online=True), timeout=20)
        session_id = gateway.start_session(ROOM, *deployment.people)
        everything.wait_for(everything.on(EVENTS, type="session_started"), 10)
        play(feeder, speech[: cut(8)])
        eventually(lambda: len(store.chunks(session_id)) >= 1, timeout=15, what="first chunks")

        gateway.kill()  # SIGKILL: the gateway is gone for most of the session
        killed_at = len(store.chunks(session_id))
        play(feeder, speech[cut(8) : cut(24)])
        deployment.broker.stop()  # and the broker restarts meanwhile (persistent)
        deployment.broker.start()
        mark = everything.count()
        play(feeder, speech[cut(24) :])
        time.sleep(0.5)
        backlog = everything.wait_for(
            lambda m: m.topic == STATE and m.json()["backlog_chunks"] >= 3, 15, mark
        ).json()
        assert backlog["online"] and backlog["recorder"] == "recording"
        assert len(store.chunks(session_id)) == killed_at, "nothing arrives while it is down"

        gateway.start()
        restarted = time.time()  # answering again
        drained = eventually(
            lambda: (
                (s := gateway.session(session_id))["audio"]
                and s["audio"]["chunks_received"] >= killed_at + backlog["backlog_chunks"]
                and s
            ),
            timeout=30,
            what="backlog drained",
        )
        assert drained["state"] == "recording"
        everything.wait_for(
            lambda m: m.topic == STATE and m.json()["backlog_chunks"] == 0, 15, mark
        )
        after = [c for c in store.chunks(session_id) if c["received_at"] >= restarted - 1]
        backlog_s = sum(c["duration_s"] for c in after)
        last = max(c["received_at"] for c in after)

        gateway.http.post(f"/v1/sessions/{session_id}/stop")
        done = gateway.wait_for_state(session_id, "notes_ready", timeout=30)
        assert agent.stop() == 0
    finally:
        agent.kill()

    chunks = store.chunks(session_id)
    closed = everything.wait_for(everything.on(EVENTS, type="session_closed")).json()
    assert [c["seq"] for c in chunks] == list(range(closed["chunks"])), "none lost"
    speech_s = sum(c["duration_s"] for c in chunks)
    assert closed["speech_s"] == pytest.approx(speech_s, abs=0.01)
    assert sim.state()["audio_uploads"] == 1, "uploaded once"
    at_blueprint = sim_session(sim, session_id)["audio_duration_s"]
    assert at_blueprint == pytest.approx(speech_s, abs=1e-3), "no chunk doubled or missing"
    assert done["audio"]["chunks_received"] == len(chunks)
    assert_no_phi(everything.messages, gateway.log(), agent.log())
    print(
        f"\noutage: {len(after)} chunks ({backlog_s:.1f} audio-s) delivered within"
        f" {last - restarted:.2f} s of the gateway answering again"
        f" ({backlog_s / (last - restarted):.0f} audio-s/s; a backlog this small is bounded by"
        f" the agent's retry timer, link.backoff_max_s; for throughput see"
        f" tests/benchmarks/gateway_ingest.py)"
    )
