"""The MQTT control plane against a real mosquitto (tests/support/mosquitto.py), observed by a
real subscriber playing the gateway (tests/support/mqtt_probe.py).

The control link runs in this process with a real recorder and spool, except where the
agent must die: the last will is tested by SIGKILLing a real `room-agent run`.
"""

import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agent.link.applied import AppliedCommands
from agent.link.control import ControlLink
from agent.link.device_status import DeviceStatus
from agent.pipeline.audio import CaptureStats
from agent.pipeline.filesource import FileSource
from agent.pipeline.recorder import Recorder
from agent.privacy import PrivacySwitch, set_flag
from agent.settings import AgentSettings
from agent.spool import Spool
from agent.ticker import Ticker
from protocol.envelope import generate_private_key, public_key_to_text
from protocol.messages import (
    ChunkAcked,
    DeviceState,
    NotesReady,
    PauseCommand,
    PingCommand,
    ResumeCommand,
    SessionFailed,
    SessionStarted,
    SessionUploaded,
    StartCommand,
    StopCommand,
    device_events,
)
from protocol.topics import topic
from tests.support.alsa import PERIOD_FRAMES, FifoFeeder, write_asound_conf
from tests.support.certs import Pki
from tests.support.eventually import eventually
from tests.support.mosquitto import Broker
from tests.support.mqtt_probe import Probe, Received
from tests.support.processes import Service
from tests.support.speech import make_session

KEY = generate_private_key()
DEVICE = "room-5"
PASSWORD = "room-5-secret"
USERS = {DEVICE: PASSWORD, "gateway": "gateway-secret"}
STATE, EVENTS, CMD, NOTIFY = (topic(DEVICE, kind) for kind in ("state", "events", "cmd", "notify"))
ROOM_AGENT = str(Path(sys.executable).parent / "room-agent")
GIB = 1024**3


class Silence:
    """A live microphone in a quiet room: 100 ms blocks of zeros at real-time pace."""

    def __init__(self) -> None:
        self.stats = CaptureStats(device_name="silence", device_rate=16_000)
        self.closed = False
        self.due = time.monotonic()

    def read(self, timeout=None):
        if self.closed:
            return None
        time.sleep(max(0.0, self.due - time.monotonic()))
        self.due += 0.1
        self.stats.samples += 1600
        return np.zeros(1600, dtype=np.int16)

    def close(self) -> None:
        self.closed = True


class Paced(FileSource):
    """A speech file at 16x real time."""

    def read(self, timeout=None):
        time.sleep(0.25 / 16)
        return super().read(timeout)


@dataclass
class Stack:
    settings: AgentSettings
    spool: Spool
    recorder: Recorder
    control: ControlLink
    privacy: PrivacySwitch


def agent_settings(tmp_path, broker: Broker, **mqtt) -> AgentSettings:
    values = dict(
        broker_url=broker.url,
        password=PASSWORD,
        keepalive_s=5,
        heartbeat_s=30.0,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
    )
    return AgentSettings(
        device_id=DEVICE,
        state_dir=tmp_path / "state",
        gateway_public_key=public_key_to_text(KEY.public_key()),
        mqtt=values | mqtt,
    )


@contextmanager
def running_agent(settings: AgentSettings, source_factory=Silence):
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, source_factory)
        status = DeviceStatus(settings.device_id, recorder, spool)
        privacy = PrivacySwitch(settings.state_dir, settings.privacy.do_not_record)
        privacy.recorder = recorder
        status.privacy = privacy
        control = ControlLink(
            settings.mqtt,
            settings.device_id,
            recorder,
            status,
            settings.mqtt.password,
            AppliedCommands(settings.state_dir),
            privacy,
        )
        recorder.add_listener(control)
        privacy.on_change.append(lambda engaged: control.publish_state())
        control.start()
        privacy.start()
        ticker = Ticker()
        ticker.add("privacy", privacy.poll)
        ticker.start()
        try:
            yield Stack(settings, spool, recorder, control, privacy)
        finally:
            ticker.stop()
            control.stop()
            recorder.stop(10)


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "broker", users=USERS) as running:
        yield running


@pytest.fixture
def probe(broker):
    with Probe(broker) as watching:
        yield watching


def state_of(message: Received) -> DeviceState:
    return DeviceState.model_validate_json(message.payload)


def result(probe: Probe, command_id: str, timeout=10.0) -> dict:
    """The command's result; without the answers only check and logs commands carry."""
    answer = probe.wait_for(
        probe.on(EVENTS, type="command_result", command_id=command_id), timeout
    ).json()
    return {k: v for k, v in answer.items() if k not in ("check", "logs") or v is not None}


def retained_state(broker: Broker) -> DeviceState:
    """What a subscriber arriving now gets: the retained state."""
    with Probe(broker, topics=[STATE]) as fresh:
        message = fresh.wait_for(lambda m: m.topic == STATE, timeout=5)
        assert message.retain
        return state_of(message)


def assert_protocol_payloads(probe: Probe) -> None:
    """Every payload the device sent is a protocol model: ids, states, codes, numbers only
    (the models forbid any other field)."""
    for message in probe.messages:
        if message.topic == STATE:
            DeviceState.model_validate_json(message.payload)
        elif message.topic == EVENTS:
            device_events.validate_json(message.payload)


def test_state_is_retained_on_connect_and_on_every_change(tmp_path, broker, probe):
    settings = agent_settings(tmp_path, broker)
    with running_agent(settings) as agent:
        first = probe.wait_for(probe.on(STATE, online=True))
        assert state_of(first).recorder == "idle" and state_of(first).session_id is None
        assert retained_state(broker).online

        probe.publish(CMD, StartCommand(command_id="c-1", session_id="therapy-1"))
        assert result(probe, "c-1")["ok"] is True
        recording = probe.wait_for(probe.on(STATE, recorder="recording"))
        assert state_of(recording).session_id == "therapy-1"
        assert retained_state(broker).recorder == "recording"

        probe.publish(CMD, StopCommand(command_id="c-2", session_id="therapy-1"))
        assert result(probe, "c-2")["ok"] is True
        closed = probe.wait_for(probe.on(STATE, recorder="closed"))
        assert state_of(closed).session_id == "therapy-1"
        assert agent.recorder.state.state == "closed"
    states = [state_of(m).recorder for m in probe.messages if m.topic == STATE]
    assert states[:1] == ["idle"] and {"recording", "closing", "closed"} <= set(states)
    final = retained_state(broker)
    assert (final.online, final.recorder) == (False, "closed"), "a clean stop says offline"
    assert_protocol_payloads(probe)


def test_heartbeat_reports_backlog_free_space_and_uptime(tmp_path, broker, probe):
    speech = make_session(tmp_path / "speech.wav", 40, 20, seed=11)
    settings = agent_settings(tmp_path, broker, heartbeat_s=0.5)
    with running_agent(settings, lambda: Paced(speech.path)) as agent:
        probe.wait_for(probe.on(STATE, online=True))
        probe.publish(CMD, StartCommand(command_id="c-1", session_id="with-speech"))
        probe.wait_for(probe.on(STATE, recorder="closed"), timeout=20)
        pending = agent.spool.pending()
        after = probe.count()
        beat = probe.wait_for(probe.on(EVENTS, type="heartbeat"), after=after).json()
        state = state_of(probe.wait_for(probe.on(STATE), after=after))
    assert len(pending) >= 3, "record only: everything is still in the spool"
    assert beat["backlog_chunks"] == state.backlog_chunks == len(pending)
    assert beat["backlog_bytes"] == state.backlog_bytes == sum(c.bytes for c in pending)
    assert beat["spool_free_bytes"] > 0 and state.spool_free_bytes > 0
    assert beat["overruns"] == 0 and beat["dropped_s"] == 0
    assert 0 < beat["uptime_s"] < 60
    assert beat["version"] == state.version != ""
    assert_protocol_payloads(probe)


def test_recorder_events_reach_the_subscriber(tmp_path, broker, probe):
    speech = make_session(tmp_path / "speech.wav", 40, 20, seed=11)
    settings = agent_settings(tmp_path, broker)
    with running_agent(settings, lambda: Paced(speech.path)) as agent:
        probe.wait_for(probe.on(STATE, online=True))
        probe.publish(CMD, StartCommand(command_id="c-1", session_id="eventful"))
        closed = probe.wait_for(probe.on(EVENTS, type="session_closed"), timeout=20).json()
        manifest = agent.spool.manifest("eventful")
    events = [m.json() for m in probe.messages if m.topic == EVENTS]
    kinds = [e["type"] for e in events if e["type"] != "heartbeat"]
    assert kinds[0] in ("session_started", "command_result")
    assert {"session_started", "chunk_spooled", "session_closed"} <= set(kinds)
    spooled = [e for e in events if e["type"] == "chunk_spooled"]
    assert [e["seq"] for e in spooled] == [c.seq for c in manifest.chunks]
    assert [e["duration_s"] for e in spooled] == [c.duration_s for c in manifest.chunks]
    assert (closed["session_id"], closed["reason"], closed["chunks"]) == (
        "eventful",
        "stopped",
        len(manifest.chunks),
    )
    assert closed["speech_s"] == pytest.approx(manifest.speech_s, abs=0.01)
    assert_protocol_payloads(probe)


def test_commands_and_refusals(tmp_path, broker, probe):
    settings = agent_settings(tmp_path, broker)
    with running_agent(settings) as agent:
        probe.wait_for(probe.on(STATE, online=True))
        probe.publish(CMD, PingCommand(command_id="p-1"))
        assert result(probe, "p-1") | {"at": None} == {
            "type": "command_result",
            "command_id": "p-1",
            "ok": True,
            "reason": None,
            "at": None,
        }
        probe.publish(CMD, StartCommand(command_id="s-1", session_id="session-1"))
        assert result(probe, "s-1")["ok"] is True
        assert (agent.recorder.state.state, agent.recorder.state.session_id) == (
            "recording",
            "session-1",
        )
        probe.publish(CMD, StartCommand(command_id="s-1", session_id="session-1"))  # redelivered
        assert result(probe, "s-1")["ok"] is True
        probe.publish(CMD, StartCommand(command_id="s-2", session_id="session-2"))
        assert result(probe, "s-2") | {"at": None} == {
            "type": "command_result",
            "command_id": "s-2",
            "ok": False,
            "reason": "already_recording",
            "at": None,
        }
        probe.publish(CMD, StopCommand(command_id="x-1", session_id="session-2"))
        assert (result(probe, "x-1")["ok"], result(probe, "x-1")["reason"]) == (
            False,
            "not_recording",
        )
        assert agent.recorder.state.state == "recording", "a refused stop stops nothing"
        probe.publish(CMD, {"type": "start", "command_id": "bad-1", "session_id": "no spaces!"})
        assert result(probe, "bad-1")["reason"] == "invalid_command"
        probe.publish(CMD, b"not json at all")

        probe.publish(CMD, StopCommand(command_id="x-2", session_id="session-1"))
        assert result(probe, "x-2")["ok"] is True
        assert agent.recorder.state.state == "closed"
        assert agent.spool.session("session-1").closed
        probe.publish(CMD, StopCommand(command_id="x-2", session_id="session-1"))  # redelivered
        assert result(probe, "x-2", timeout=5)["ok"] is True
        probe.publish(CMD, StartCommand(command_id="s-3", session_id="session-1"))
        assert result(probe, "s-3")["reason"] == "session_closed"
        probe.publish(CMD, StartCommand(command_id="s-4", session_id="session-2"))
        assert result(probe, "s-4")["ok"] is True
        assert agent.recorder.state.session_id == "session-2"
        agent.control.refuse_commands()
        probe.publish(CMD, StopCommand(command_id="x-3", session_id="session-2"))
        assert result(probe, "x-3")["reason"] == "shutting_down"
        assert agent.recorder.state.state == "recording"
    assert_protocol_payloads(probe)


def test_each_command_id_is_applied_once_and_named_in_the_state(tmp_path, broker, probe):
    """The gateway sends its desired command again until the state names it: a repeat is
    answered as the first time and not carried out again, also after a restart."""
    settings = agent_settings(tmp_path, broker)
    with running_agent(settings) as agent:
        probe.wait_for(probe.on(STATE, online=True))
        probe.publish(CMD, StartCommand(command_id="s-1", session_id="session-1"))
        assert result(probe, "s-1")["ok"] is True
        probe.wait_for(probe.on(STATE, last_command_id="s-1", recorder="recording"))
        probe.publish(CMD, StopCommand(command_id="x-1", session_id="session-1"))
        assert result(probe, "x-1")["ok"] is True
        mark = probe.count()
        probe.publish(CMD, StartCommand(command_id="s-1", session_id="session-1"))  # again
        again = probe.wait_for(
            probe.on(EVENTS, type="command_result", command_id="s-1"), 10, mark
        ).json()
        assert (again["ok"], again["reason"]) == (True, None), "the first answer again"
        assert agent.recorder.state.state == "closed", "not carried out twice"
        assert not [m for m in probe.messages[mark:] if m.json().get("type") == "session_started"]
    mark = probe.count()
    with running_agent(settings):
        state = probe.wait_for(probe.on(STATE, online=True), 10, mark)
        assert state.json()["last_command_id"] == "x-1", "kept across a restart"
        probe.publish(CMD, StopCommand(command_id="x-1", session_id="session-1"))
        assert result(probe, "x-1")["ok"] is True
    record = settings.state_dir / "commands.json"
    assert record.stat().st_mode & 0o077 == 0, "private to the agent's user"
    assert b"session-1" not in record.read_bytes(), "ids of commands and answers only"


def test_pause_resume_and_the_do_not_record_switch(tmp_path, broker, probe):
    settings = agent_settings(tmp_path, broker)
    with running_agent(settings) as agent:
        probe.wait_for(probe.on(STATE, online=True))
        probe.publish(CMD, StartCommand(command_id="s-1", session_id="session-1", paused=True))
        assert result(probe, "s-1")["ok"] is True
        paused = probe.wait_for(probe.on(EVENTS, type="session_paused", session_id="session-1"))
        assert paused.json()["source"] == "command", "a start that begins paused"
        probe.wait_for(probe.on(STATE, paused=True, recorder="recording"))
        probe.publish(CMD, ResumeCommand(command_id="r-1", session_id="session-1"))
        assert result(probe, "r-1")["ok"] is True
        probe.wait_for(probe.on(EVENTS, type="session_resumed", source="command"))
        probe.wait_for(probe.on(STATE, paused=False, last_command_id="r-1"))
        probe.publish(CMD, PauseCommand(command_id="p-1", session_id="session-1"))
        assert result(probe, "p-1")["ok"] is True
        probe.publish(CMD, PauseCommand(command_id="p-2", session_id="session-1"))
        assert result(probe, "p-2")["ok"] is True, "pausing a paused session is fine"
        probe.publish(CMD, PauseCommand(command_id="p-3", session_id="other"))
        assert result(probe, "p-3")["reason"] == "not_recording"
        probe.publish(CMD, ResumeCommand(command_id="r-2", session_id="session-1"))
        assert result(probe, "r-2")["ok"] is True

        # The room's switch (`room-agent privacy on` writes the flag): the session pauses,
        # a resume from the gateway is refused, the state shows it; off resumes it.
        set_flag(settings.state_dir, True)
        probe.wait_for(probe.on(EVENTS, type="session_paused", source="do_not_record"))
        probe.wait_for(probe.on(STATE, do_not_record=True, paused=True))
        probe.publish(CMD, ResumeCommand(command_id="r-3", session_id="session-1"))
        assert result(probe, "r-3")["reason"] == "do_not_record"
        set_flag(settings.state_dir, False)
        probe.wait_for(probe.on(EVENTS, type="session_resumed", source="do_not_record"))
        probe.wait_for(probe.on(STATE, do_not_record=False, paused=False))
        probe.publish(CMD, StopCommand(command_id="x-1", session_id="session-1"))
        assert result(probe, "x-1")["ok"] is True
        assert len(agent.spool.manifest("session-1").paused) == 3

        agent.privacy.toggle()  # a button
        probe.wait_for(probe.on(STATE, do_not_record=True))
        probe.publish(CMD, StartCommand(command_id="s-2", session_id="session-2"))
        assert result(probe, "s-2")["reason"] == "do_not_record"
        assert agent.recorder.state.state == "closed", "nothing started"
        agent.privacy.toggle()
        probe.publish(CMD, StartCommand(command_id="s-3", session_id="session-2"))
        assert result(probe, "s-3")["ok"] is True
    assert_protocol_payloads(probe)


def test_notifications_are_kept_per_session(tmp_path, broker, probe):
    settings = agent_settings(tmp_path, broker)
    with running_agent(settings) as agent:
        probe.wait_for(probe.on(STATE, online=True))
        probe.publish(NOTIFY, ChunkAcked(session_id="a", seq=3))
        probe.publish(NOTIFY, SessionUploaded(session_id="a"))
        probe.publish(NOTIFY, NotesReady(session_id="a"))
        probe.publish(NOTIFY, SessionFailed(session_id="b", reason="blueprint_rejected"))
        probe.publish(NOTIFY, {"type": "notes_ready", "session_id": "c", "note": "free text"})
        eventually(lambda: set(agent.control.notifications()) == {"a", "b"}, what="notifications")
        time.sleep(0.2)  # the invalid one (an extra field) must not arrive late either
        kept = agent.control.notifications()
    assert set(kept) == {"a", "b"}
    assert kept["a"].type == "notes_ready"
    assert (kept["b"].type, kept["b"].reason) == ("failed", "blueprint_rejected")


def test_broker_restart_while_recording(tmp_path, broker, probe):
    settings = agent_settings(tmp_path, broker)
    with running_agent(settings) as agent:
        probe.wait_for(probe.on(STATE, online=True))  # subscribed by then
        probe.publish(CMD, StartCommand(command_id="c-1", session_id="long-session"))
        probe.wait_for(probe.on(STATE, recorder="recording"))
        before = agent.recorder.state.capture.samples
        broker.kill()
        eventually(lambda: not agent.control.connected, what="disconnect noticed")
        time.sleep(1.0)
        assert agent.recorder.state.state == "recording"
        assert agent.recorder.state.capture.samples > before, "recording goes on"
        after = probe.count()
        broker.start()  # same port, no persistence: the retained state is gone
        state = state_of(
            probe.wait_for(probe.on(STATE, online=True, recorder="recording"), 15, after)
        )
        assert state.session_id == "long-session"
        assert retained_state(broker).session_id == "long-session", "republished, retained"
        probe.publish(CMD, StopCommand(command_id="c-2", session_id="long-session"))
        assert result(probe, "c-2")["ok"] is True
    assert_protocol_payloads(probe)


def test_wrong_password_is_refused_and_retried(tmp_path, broker, probe):
    settings = agent_settings(tmp_path, broker, password="not-the-password")
    with running_agent(settings) as agent:
        time.sleep(1.0)
        assert not agent.control.connected
        assert not [m for m in probe.messages if m.topic == STATE]
        broker.set_password(DEVICE, "not-the-password")
        broker.restart()  # now the broker takes that password: the next retry gets in
        probe.wait_for(probe.on(STATE, online=True), timeout=10)
        assert agent.control.connected


def test_mqtts_with_ca_and_mutual_tls(tmp_path):
    pki = Pki.create(tmp_path / "pki")
    with (
        Broker(tmp_path / "tls", users=USERS, tls=pki) as broker,
        Probe(broker, ca_file=str(pki.ca_cert)) as probe,
        running_agent(agent_settings(tmp_path / "a", broker, ca_file=pki.ca_cert)),
    ):
        probe.wait_for(probe.on(STATE, online=True))
    device, gateway = pki.client(DEVICE), pki.client("gateway")
    with Broker(tmp_path / "mtls", users=USERS, tls=pki, require_certificate=True) as broker:
        settings = agent_settings(
            tmp_path / "b",
            broker,
            password=None,
            ca_file=pki.ca_cert,
            client_cert_file=device.cert,
            client_key_file=device.key,
        )
        with running_agent(settings) as agent:
            eventually(lambda: agent.control.connected, what="mTLS connection")
            with Probe(broker, topics=[STATE], ca_file=str(pki.ca_cert), cert=gateway) as fresh:
                # The device's CN is its ACL user: its own state topic is writable.
                assert state_of(fresh.wait_for(lambda m: m.topic == STATE)).online


def test_broker_run_from_an_existing_config(tmp_path):
    """What the gateway side's `room-gateway broker-config` writes is run as it is."""
    written = Broker(tmp_path / "written", users=USERS)  # files only, not started
    broker = Broker.from_config(written.config)
    assert (broker.port, broker.url) == (written.port, written.url)
    with broker, Probe(broker) as probe, running_agent(agent_settings(tmp_path, broker)):
        probe.wait_for(probe.on(STATE, online=True))


# -- a real `room-agent run`, really killed


def agent_env(tmp_path, broker: Broker, fifo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_AGENT_")}
    env.update(write_asound_conf(tmp_path / "asound.conf", fifo))
    env.update(
        ROOM_AGENT_DEVICE_ID=DEVICE,
        ROOM_AGENT_STATE_DIR=str(tmp_path / "state"),
        ROOM_AGENT_GATEWAY_PUBLIC_KEY=public_key_to_text(KEY.public_key()),
        ROOM_AGENT_SPOOL__MIN_FREE_BYTES="0",
        ROOM_AGENT_AUDIO__DEVICE="testmic",
        ROOM_AGENT_MQTT__BROKER_URL=broker.url,
        ROOM_AGENT_MQTT__RECONNECT_MIN_S="0.2",
        ROOM_AGENT_MQTT__RECONNECT_MAX_S="1",
    )
    (tmp_path / "mqtt-password").write_text(PASSWORD + "\n")
    env["ROOM_AGENT_MQTT__PASSWORD_FILE"] = str(tmp_path / "mqtt-password")
    return env


def test_last_will_and_commands_sent_while_the_agent_was_down(tmp_path, broker, probe):
    fifo = tmp_path / "mic.fifo"
    with FifoFeeder(fifo, period_frames=PERIOD_FRAMES):
        env = agent_env(tmp_path, broker, fifo)
        agent = Service([ROOM_AGENT, "run"], tmp_path / "agent.log", env=env).start()
        try:
            probe.wait_for(probe.on(STATE, online=True), timeout=15)
            agent.kill()
            will = probe.wait_for(probe.on(STATE, online=False), timeout=10)
            assert will.json()["device_id"] == DEVICE
            assert retained_state(broker).online is False, "the last will is retained"

            # Sent while the agent is down: the broker keeps it in the device's session.
            probe.publish(CMD, StartCommand(command_id="while-down", session_id="queued-1"))
            after = probe.count()
            agent = Service([ROOM_AGENT, "run"], tmp_path / "agent.log", env=env).start()
            assert result(probe, "while-down", timeout=20)["ok"] is True
            probe.wait_for(probe.on(STATE, recorder="recording", session_id="queued-1"), 10, after)
            probe.publish(CMD, StopCommand(command_id="stop-1", session_id="queued-1"))
            assert result(probe, "stop-1")["ok"] is True
            assert agent.stop() == 0
        finally:
            agent.kill()
    log = agent.log()
    assert "Traceback" not in log
    assert PASSWORD not in log
    assert_protocol_payloads(probe)
    for message in probe.messages:
        assert PASSWORD.encode() not in message.payload
        json.loads(message.payload)


def test_a_later_start_of_the_same_session_pauses_or_resumes_it(tmp_path, broker, probe):
    """The partner paused, then resumed, a session still starting at the gateway: each
    becomes a new start (paused, then not) that overtakes the last. A room that had taken
    the first start follows each one: the unpaused start resumes it (session_resumed),
    rather than answering ok and staying paused."""
    settings = agent_settings(tmp_path, broker)
    with running_agent(settings):
        probe.wait_for(probe.on(STATE, online=True))
        probe.publish(CMD, StartCommand(command_id="s-1", session_id="session-1"))
        assert result(probe, "s-1")["ok"] is True
        probe.publish(CMD, StartCommand(command_id="s-2", session_id="session-1", paused=True))
        assert result(probe, "s-2")["ok"] is True
        probe.wait_for(probe.on(EVENTS, type="session_paused", session_id="session-1"))
        probe.publish(CMD, StartCommand(command_id="s-3", session_id="session-1"))
        assert result(probe, "s-3")["ok"] is True
        probe.wait_for(probe.on(EVENTS, type="session_resumed", session_id="session-1"))
        probe.wait_for(probe.on(STATE, paused=False, last_command_id="s-3"))
        probe.publish(CMD, StopCommand(command_id="x-1", session_id="session-1"))
        assert result(probe, "x-1")["ok"] is True
    assert_protocol_payloads(probe)


def test_a_command_overtaken_on_its_way_is_not_carried_out(tmp_path, broker, probe):
    """The gateway numbers its decisions for the room (``generation``). Two of them may
    reach the room in the wrong order (sent by two replicas, or a send overtaken after the
    partner's next request): the older one is answered "superseded" and not carried out,
    so the room ends doing what was decided last; also after a restart."""

    def command(kind: str, command_id: str, generation: int, session="session-1", **extra):
        return {"type": kind, "command_id": command_id, "session_id": session,
                "generation": generation, **extra}  # fmt: skip

    settings = agent_settings(tmp_path, broker)
    with running_agent(settings) as agent:
        probe.wait_for(probe.on(STATE, online=True))
        # The partner paused a starting session: the later start (paused) arrives first.
        probe.publish(CMD, command("start", "s-2", 20, paused=True))
        assert result(probe, "s-2")["ok"] is True
        probe.publish(CMD, command("start", "s-1", 10))
        assert (result(probe, "s-1")["ok"], result(probe, "s-1")["reason"]) == (
            False,
            "superseded",
        )
        assert (agent.recorder.state.state, agent.recorder.state.paused) == ("recording", True)
        probe.publish(CMD, command("resume", "r-1", 30))
        assert result(probe, "r-1")["ok"] is True
        probe.publish(CMD, command("pause", "p-1", 25))
        assert result(probe, "p-1")["reason"] == "superseded"
        assert agent.recorder.state.paused is False, "the later resume holds"
        probe.wait_for(probe.on(STATE, last_command_id="r-1", paused=False))
    mark = probe.count()
    with running_agent(settings) as agent:
        probe.wait_for(probe.on(STATE, online=True), 10, mark)
        probe.publish(CMD, command("start", "s-3", 29, session="session-2"))
        assert result(probe, "s-3")["reason"] == "superseded", "the order survives a restart"
        assert agent.recorder.state.state == "idle"
        probe.publish(CMD, command("start", "s-4", 40, session="session-2"))
        assert result(probe, "s-4")["ok"] is True
        assert agent.recorder.state.session_id == "session-2"
    assert_protocol_payloads(probe)


def test_a_state_waiting_for_the_spool_never_holds_up_the_recorders_events(tmp_path, broker, probe):
    """Building the state reads the spool (its mutex, its files): that happens outside the
    link's lock, so an event from the recorder's thread (which must never block) goes out
    while a state is still waiting for a busy spool."""
    import threading

    settings = agent_settings(tmp_path, broker)
    with running_agent(settings) as agent:
        probe.wait_for(probe.on(STATE, online=True))
        reached = threading.Event()
        usage = agent.spool.usage

        def usage_seen():  # the state being built has reached the spool
            if threading.current_thread() is building:
                reached.set()
            return usage()

        agent.spool.usage = usage_seen
        building = threading.Thread(target=agent.control.publish_state, daemon=True)
        with agent.spool._mutex:  # the spool busy (a long scan, a slow disk)
            building.start()
            assert reached.wait(5), "the state never asked the spool"
            sent = threading.Thread(
                target=agent.control.session_started,
                args=(SessionStarted(session_id="session-1"),),
                daemon=True,
            )
            sent.start()
            event = probe.wait_for(probe.on(EVENTS, type="session_started"), timeout=5)
            assert event.json()["session_id"] == "session-1"
            assert building.is_alive(), "the state was still waiting for the spool"
        building.join(5)
        sent.join(5)
