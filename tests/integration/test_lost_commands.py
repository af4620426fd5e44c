"""Commands that always arrive, against real processes: mosquitto run from broker-config's
files with persistence off, `room-gateway serve`, and `room-agent run` capturing through
PortAudio from the ALSA file plugin. Each fault loses the start somewhere between the
partner's POST and the device's confirmation; each session must still record once and end
``notes_ready`` with all its audio at Blueprint, or fail with a reason after its deadline.

- the broker restarted (no persistence: the queued start and the device's session gone)
  between the start and the device's reconnect;
- the gateway SIGKILLed between ``POST /v1/sessions`` and the device's confirmation;
- the device offline at the start and online 30 s later;
- the same start delivered twice;
- the agent SIGKILLed the moment it has taken the start, before its confirmation went
  out (tests/support/mqtt_cut.py drops what it publishes after the start arrives).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.gateway.conftest import SimulatorProcess, steps
from tests.gateway.deployment import Deployment
from tests.integration.test_room_to_blueprint import (
    EVENTS,
    ROOM,
    STATE,
    Gateway,
    cut,
    play,
    sim_session,
    start_agent,
)
from tests.support.alsa import FifoFeeder
from tests.support.eventually import eventually
from tests.support.mqtt_cut import MqttCut
from tests.support.mqtt_probe import Probe
from tests.support.processes import Service

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
CMD = f"rooms/{ROOM}/cmd"

Deploy = Callable[..., Deployment]


@pytest.fixture
def deploy(tmp_path: Path, sim: SimulatorProcess) -> Iterator[Deploy]:
    made: list[Deployment] = []

    def make(expiry_s: int = 60) -> Deployment:
        deployed = Deployment(
            tmp_path / "site",
            sim.url,
            (ROOM,),
            ROOM_GATEWAY_INGEST__RETENTION_S="0",
            ROOM_GATEWAY_MQTT__COMMAND_EXPIRY_S=str(expiry_s),
            ROOM_GATEWAY_BROKER__PERSISTENCE="false",
        ).start()
        made.append(deployed)
        deployed.with_people(sim, "lost")
        return deployed

    yield make
    for deployed in made:
        deployed.stop()


def post_start(deployment: Deployment) -> str:
    """POST /v1/sessions: 202 ``starting``, the truth while the room has not confirmed."""
    body = {
        "room": ROOM,
        "clinician_external_id": deployment.people[0],
        "client_external_id": deployment.people[1],
    }
    answer = deployment.gateway.http.post("/v1/sessions", json=body)
    assert (answer.status_code, answer.json()["state"]) == (202, "starting"), answer.text
    return answer.json()["session_id"]


def record_and_finish(
    deployment: Deployment,
    agent: Service,
    feeder: FifoFeeder,
    speech: np.ndarray,
    session_id: str,
    sim: SimulatorProcess,
) -> dict:
    """The room records ``speech``; stopped; notes_ready with every chunk once at Blueprint."""
    gateway = deployment.gateway
    gateway.wait_for_state(session_id, "recording", timeout=30)
    # Three seconds of room silence after the speech: once they are in the FIFO, all the
    # speech has been read by the device (the FIFO holds less), however late a loaded
    # machine runs it; a stop keeps what the device read (seen: 1 chunk under load).
    play(feeder, np.concatenate([speech[: cut(12)], np.zeros(cut(3), dtype=speech.dtype)]))
    time.sleep(0.5)
    assert gateway.http.post(f"/v1/sessions/{session_id}/stop").status_code == 200
    done = gateway.wait_for_state(session_id, "notes_ready", timeout=40)
    assert agent.stop() == 0
    chunks = Gateway(deployment).chunks(session_id)
    assert [c["seq"] for c in chunks] == list(range(done["audio"]["manifest_chunks"]))
    assert len(chunks) >= 2, "speech was recorded"
    speech_s = sum(c["duration_s"] for c in chunks)
    assert sim_session(sim, session_id)["audio_duration_s"] == pytest.approx(speech_s, abs=1e-3)
    assert sim.state()["audio_uploads"] == 1, "recorded once, uploaded once"
    assert "Traceback" not in gateway.log() + agent.log()
    return done


def watch(deployment: Deployment) -> Probe:
    """A probe on rooms/# as the gateway's side sees it: as the deployment's observer user
    where it has one (a broker that makes the client id the user name would have a probe
    logged in as the gateway's own user knock the relay off), else as the gateway."""
    user = getattr(deployment, "observer", None) or "gateway"
    return Probe(deployment.broker, user, deployment.gateway_password)


def agent_online(probe: Probe, after: int = 0) -> None:
    probe.wait_for(probe.on(STATE, online=True), timeout=20, after=after)


@pytest.fixture
def probe() -> Iterator[Callable[[Deployment], Probe]]:
    """Every message on rooms/# of a deployment, as the gateway user sees them."""
    opened: list[Probe] = []

    def opened_on(deployment: Deployment) -> Probe:
        probe = watch(deployment).__enter__()
        opened.append(probe)
        return probe

    yield opened_on
    for probe in opened:
        probe.close()


def test_broker_restarted_without_persistence_before_the_device_reconnects(
    tmp_path, deploy, probe, feeder, speech, sim
) -> None:
    deployment = deploy()
    watching = probe(deployment)
    agent = start_agent(tmp_path, deployment, feeder.path)
    try:
        agent_online(watching)
        assert agent.stop() == 0  # away, its session kept by the broker...
        session_id = post_start(deployment)
        deployment.gateway.wait_for_session(session_id, lambda s: "start_sent" in steps(s))
        deployment.broker.stop()  # ...which restarts without persistence: all forgotten
        deployment.broker.start()
        agent = start_agent(tmp_path, deployment, feeder.path)
        done = record_and_finish(deployment, agent, feeder, speech, session_id, sim)
        assert "start_resent" in steps(done)
    finally:
        agent.kill()


def test_gateway_killed_between_the_start_and_its_confirmation(
    tmp_path, deploy, probe, feeder, speech, sim
) -> None:
    deployment = deploy()
    session_id = post_start(deployment)  # the room is offline: nothing can confirm it yet
    deployment.gateway.kill()
    agent = start_agent(tmp_path, deployment, feeder.path)
    try:
        time.sleep(1.0)  # the device is up while the gateway is down
        deployment.gateway.start()
        record_and_finish(deployment, agent, feeder, speech, session_id, sim)
    finally:
        agent.kill()


def test_device_offline_at_the_start_and_online_30_s_later(
    tmp_path, deploy, feeder, speech, sim
) -> None:
    deployment = deploy(expiry_s=60)
    session_id = post_start(deployment)
    time.sleep(30)
    assert deployment.gateway.session(session_id)["state"] == "starting", "still waiting"
    agent = start_agent(tmp_path, deployment, feeder.path)
    try:
        record_and_finish(deployment, agent, feeder, speech, session_id, sim)
    finally:
        agent.kill()


def test_a_start_delivered_twice_records_once(tmp_path, deploy, probe, feeder, speech, sim) -> None:
    deployment = deploy()
    watching = probe(deployment)
    agent = start_agent(tmp_path, deployment, feeder.path)
    try:
        agent_online(watching)
        session_id = post_start(deployment)
        order = watching.wait_for(watching.on(CMD, type="start", session_id=session_id))
        deployment.gateway.wait_for_state(session_id, "recording")
        mark = watching.count()
        watching.publish(CMD, order.payload)  # the same start, same id, once more
        answer = watching.wait_for(
            watching.on(EVENTS, type="command_result", command_id=order.json()["command_id"]),
            timeout=10,
            after=mark,
        )
        assert answer.json()["ok"] is True
        record_and_finish(deployment, agent, feeder, speech, session_id, sim)
    finally:
        agent.kill()
    started = [m for m in watching.messages if m.topic == EVENTS and
               m.json()["type"] == "session_started"]  # fmt: skip
    assert len(started) == 1, "one session started, not two"


def test_agent_killed_after_taking_the_start_before_its_confirmation(
    tmp_path, deploy, probe, feeder, speech, sim
) -> None:
    expiry_s = 15
    deployment = deploy(expiry_s=expiry_s)
    watching = probe(deployment)
    with MqttCut(deployment.broker_port) as relay:
        agent = start_agent(
            tmp_path, deployment, feeder.path, ROOM_AGENT_MQTT__BROKER_URL=relay.url
        )
        try:
            agent_online(watching)
            session_id = post_start(deployment)
            relay.cut_after = session_id.encode()
            state_file = tmp_path / "agent-state" / "recorder.json"
            eventually(
                lambda: state_file.exists() and session_id in state_file.read_text(),
                timeout=15,
                interval=0.002,
                what="the agent took the start",
            )
            agent.kill()  # the moment it has taken the start: its answer never went out
            assert relay.cut.is_set()
        finally:
            agent.kill()
    said = [m.json()["type"] for m in watching.messages if m.topic == EVENTS]
    assert "command_result" not in said and "session_started" not in said, said
    assert deployment.gateway.session(session_id)["state"] == "starting"
    agent = start_agent(tmp_path, deployment, feeder.path)  # back, straight to the broker
    try:
        gateway = deployment.gateway
        gateway.wait_for_state(session_id, "recording", timeout=30)
        play(feeder, speech[: cut(6)])
        eventually(
            lambda: len(Gateway(deployment).chunks(session_id)) >= 1,
            timeout=20,
            what="audio arrives",
        )
        # Past the start's deadline: the confirmation it missed must not lose the audio.
        time.sleep(expiry_s + 2)
        assert gateway.session(session_id)["state"] == "recording"
        record_and_finish(deployment, agent, feeder, speech[cut(6) :], session_id, sim)
    finally:
        agent.kill()
