"""The device tells the truth about itself: a real `room-agent run`, a real mosquitto, the
stand-in ingest server, real PortAudio through the ALSA file plugin.

- a sealing key that is not the gateway's is found before anything is recorded: starts are
  refused with the reason in the state, `status` names both keys and the fix;
- a missing microphone is in the state, the heartbeat, `status` and its exit code, and a
  start is refused naming it;
- after a rotation the running agent picks up the new password and token (on refusal and
  on SIGHUP) and reports the refusal while it lasts;
- either fault shows in the room as the indicator's ``problem``, with or without a broker.
"""

import re
import signal
from pathlib import Path

import pytest

from protocol.envelope import generate_private_key, key_fingerprint, public_key_to_text
from protocol.messages import (
    CheckCommand,
    CommandResult,
    DeviceState,
    Heartbeat,
    LogsCommand,
    StartCommand,
)
from protocol.topics import topic
from tests.agent.device_setup import (
    DEVICE,
    KEY,
    PASSWORD,
    TOKEN,
    device_env,
    room_agent,
    start_agent,
    wait_for_snapshot,
)
from tests.agent.diagnostics.test_status import block, problems, record
from tests.support.alsa import PERIOD_FRAMES, FifoFeeder
from tests.support.eventually import eventually
from tests.support.mqtt_probe import Probe
from tests.support.processes import free_port
from tests.support.speech import make_session_pcm

pytestmark = pytest.mark.timeout(90)
STATE, EVENTS, CMD = (topic(DEVICE, kind) for kind in ("state", "events", "cmd"))


def result(probe: Probe, command_id: str) -> CommandResult:
    def answered(message) -> bool:
        return message.topic == EVENTS and message.json().get("command_id") == command_id

    return CommandResult.model_validate_json(probe.wait_for(answered, timeout=15).payload)


def test_a_wrong_sealing_key_is_found_before_anything_is_recorded(tmp_path, broker, ingest):
    env = device_env(tmp_path, broker.url, ingest.url)
    stranger = generate_private_key().public_key()
    env["ROOM_AGENT_GATEWAY_PUBLIC_KEY"] = public_key_to_text(stranger)
    with Probe(broker) as probe:
        agent = start_agent(tmp_path, env)
        try:
            online = probe.wait_for(probe.on(STATE, online=True), timeout=15)
            state = DeviceState.model_validate_json(online.payload)
            assert (state.sealing_key, state.reason) == ("mismatch", "sealing_key_mismatch")
            probe.publish(CMD, StartCommand(command_id="go", session_id="s-wrong-key"))
            answer = result(probe, "go")
            assert (answer.ok, answer.reason) == (False, "sealing_key_mismatch")
            snapshot = wait_for_snapshot(tmp_path, lambda s: s.sealing_key == "mismatch")
            assert snapshot.recorder == "idle"
            done = room_agent(env, "status")
            doctor = room_agent(env, "doctor", "--no-check")
            assert agent.stop() == 0
        finally:
            agent.kill()
    assert not (tmp_path / "state" / "spool" / "sessions" / "s-wrong-key").exists()
    sent = {r.session_id for r in ingest.requests()}
    assert sent <= {"status-probe"}, "nothing was sealed to the wrong key, nothing sent"
    assert done.returncode == 1
    rows = block(done)
    mine, theirs = key_fingerprint(stranger)[:19], key_fingerprint(KEY.public_key())[:19]
    assert rows["sealing key"] == (
        f"not the gateway's: this device seals to {mine}..., the gateway opens {theirs}...;"
        " the agent refuses to record"
    )
    fix = problems(done)["sealing key"]
    assert f'agent.gateway_public_key = "{public_key_to_text(KEY.public_key())}"' in fix
    assert rows["last error"] == "sealing_key_mismatch"
    assert doctor.returncode == 1
    assert re.search(r"^PROBLEM +sealing key +not the gateway's", doctor.stdout, re.M)
    assert "Traceback" not in agent.log() + done.stderr + doctor.stderr


def test_the_right_key_is_verified(tmp_path, broker, ingest):
    env = device_env(tmp_path, broker.url, ingest.url)
    with Probe(broker) as probe:
        agent = start_agent(tmp_path, env)
        try:
            online = probe.wait_for(probe.on(STATE, online=True), timeout=15)
            assert DeviceState.model_validate_json(online.payload).sealing_key == "verified"
            done = room_agent(env, "status")
        finally:
            agent.stop()
    fingerprint = key_fingerprint(KEY.public_key())[:19]
    assert block(done)["sealing key"] == f"the gateway's ({fingerprint}...)"


def test_a_missing_microphone_is_reported_everywhere(tmp_path, broker, ingest):
    env = device_env(tmp_path, broker.url, ingest.url)
    env["ROOM_AGENT_AUDIO__DEVICE"] = "respeaker"  # not there: only testmic and default are
    with Probe(broker) as probe:
        agent = start_agent(tmp_path, env)
        try:
            online = probe.wait_for(probe.on(STATE, online=True), timeout=15)
            state = DeviceState.model_validate_json(online.payload)
            assert (state.microphone, state.microphone_device) == ("missing", "respeaker")
            assert state.reason == "microphone_missing"
            beat = probe.wait_for(probe.on(EVENTS, type="heartbeat"), timeout=15)
            assert Heartbeat.model_validate_json(beat.payload).microphone == "missing"
            probe.publish(CMD, StartCommand(command_id="go", session_id="s-no-mic"))
            answer = result(probe, "go")
            assert (answer.ok, answer.reason) == (False, "microphone_missing")
            wait_for_snapshot(tmp_path, lambda s: s.microphone == "missing")
            done = room_agent(env, "status")
            assert agent.stop() == 0
        finally:
            agent.kill()
    assert done.returncode == 1
    rows = block(done)
    assert rows["microphone"] == "missing: no input device matches audio.device 'respeaker'"
    assert rows["last error"] == "microphone_missing"
    assert "room-agent devices" in problems(done)["microphone"]


def test_a_microphone_plugged_in_later_is_found(tmp_path, broker, ingest):
    """The ALSA file plugin lists the PCM with no input channels while its FIFO is
    missing: that is how an unplugged microphone looks (devtools/demo/microphone.py)."""
    env = device_env(tmp_path, broker.url, ingest.url, tmp_path / "mic.fifo")
    env["ROOM_AGENT_AUDIO__PRESENCE_CHECK_S"] = "0.5"
    with Probe(broker) as probe:
        agent = start_agent(tmp_path, env)
        try:
            probe.wait_for(probe.on(STATE, online=True, microphone="missing"), timeout=15)
            with FifoFeeder(tmp_path / "mic.fifo", period_frames=PERIOD_FRAMES):
                probe.wait_for(probe.on(STATE, microphone="ok"), timeout=15)
                snapshot = wait_for_snapshot(tmp_path, lambda s: s.microphone == "ok")
                assert snapshot.last_error is None
            assert agent.stop() == 0
        finally:
            agent.kill()


def test_a_rotated_password_is_picked_up_without_a_restart(tmp_path, broker, ingest):
    env = device_env(tmp_path, broker.url, ingest.url)
    with Probe(broker) as probe:
        agent = start_agent(tmp_path, env)
        try:
            probe.wait_for(probe.on(STATE, online=True), timeout=15)
            # `device add --rotate` on the gateway: the broker takes only the new password
            # from now on; the device's file is replaced a while later.
            broker.set_password(DEVICE, "rotated-mqtt-password")
            broker.restart()
            refused = wait_for_snapshot(
                tmp_path, lambda s: s.last_error == "broker_not_authorized", timeout=20
            )
            assert not refused.mqtt_connected
            done = room_agent(env, "status")
            assert done.returncode == 1
            assert block(done)["last error"] == "broker_not_authorized"
            assert "--rotate" in problems(done)["last error"]
            after = probe.count()
            (tmp_path / "credentials" / "mqtt-password").write_text("rotated-mqtt-password\n")
            # The next refusal makes it re-read the file: back without a restart.
            probe.wait_for(probe.on(STATE, online=True), timeout=20, after=after)
            wait_for_snapshot(tmp_path, lambda s: s.mqtt_connected and s.last_error is None)
            assert agent.alive()
            assert agent.stop() == 0
        finally:
            agent.kill()
    log = agent.log()
    assert "credentials: MQTT password changed" in log and "Traceback" not in log
    assert "rotated-mqtt-password" not in log and PASSWORD not in log


@pytest.mark.parametrize("how", ["refusal", "sighup"])
def test_a_rotated_token_is_picked_up_without_a_restart(tmp_path, broker, ingest, how):
    env = device_env(tmp_path, broker.url, ingest.url)
    env["ROOM_AGENT_LINK__BACKOFF_MAX_S"] = "60" if how == "sighup" else "0.5"
    record(tmp_path, env, "after-rotation")
    ingest.state.tokens[DEVICE] = "rotated-ingest-token"  # the gateway rotated it
    agent = start_agent(tmp_path, env)
    try:
        refused = wait_for_snapshot(tmp_path, lambda s: s.last_error == "unauthorized")
        assert refused.uplink is not None and refused.uplink.refused is not None
        assert refused.uplink.refused.code == "device_unauthenticated"
        (tmp_path / "credentials" / "ingest-token").write_text("rotated-ingest-token\n")
        if how == "sighup":  # `systemctl reload room-agent`: no wait for the next refusal
            agent.proc.send_signal(signal.SIGHUP)
        ingest.wait_until(lambda: ingest.manifest("after-rotation") is not None, timeout=20)
        wait_for_snapshot(tmp_path, lambda s: s.last_error is None)
        assert agent.alive()
        assert agent.stop() == 0
    finally:
        agent.kill()
    log = agent.log()
    assert "credentials: ingest token changed" in log and "Traceback" not in log
    assert "rotated-ingest-token" not in log and TOKEN not in log


def test_the_gateway_can_ask_for_a_level_check_and_the_logs(tmp_path, broker, ingest):
    """What `room-gateway room check|logs` sends: numbers and the agent's own log lines."""
    env = device_env(tmp_path, broker.url, ingest.url, tmp_path / "mic.fifo")
    pcm, _ = make_session_pcm(8, 20, seed=3)
    # No idle silence: it would wait in the FIFO (64 KiB, 2 s of audio) ahead of the speech,
    # and a 2 s check would measure only that.
    with (
        FifoFeeder(
            tmp_path / "mic.fifo", period_frames=PERIOD_FRAMES, speed=2, idle_silence=False
        ) as mic,
        Probe(broker) as probe,
    ):
        agent = start_agent(tmp_path, env)
        try:
            probe.wait_for(probe.on(STATE, online=True), timeout=15)
            mic.play(pcm)
            probe.publish(CMD, CheckCommand(command_id="chk", seconds=2))
            answer = result(probe, "chk")
            assert answer.ok, answer
            assert answer.check is not None and answer.check.seconds >= 1.9
            assert answer.check.speech_share > 0 and answer.check.verdict
            probe.publish(CMD, LogsCommand(command_id="log", since_s=600))
            logs = result(probe, "log")
            assert logs.ok and logs.logs
            messages = [line.message for line in logs.logs]
            assert any("connected to the broker" in m for m in messages), messages
            assert all(PASSWORD not in m and TOKEN not in m for m in messages)
            assert agent.stop() == 0
        finally:
            agent.kill()


def leds(tmp_path) -> Path:
    """A directory standing in for /sys/class/leds with one LED, as the kernel has it."""
    led = tmp_path / "leds" / "led0"
    led.mkdir(parents=True)
    for attribute, value in (("max_brightness", "1"), ("brightness", "0"), ("trigger", "none"),
                             ("delay_on", "0"), ("delay_off", "0")):  # fmt: skip
        (led / attribute).write_text(value + "\n")
    return led


def blinking(led: Path) -> str:
    if (led / "trigger").read_text().strip() != "timer":
        return "off" if (led / "brightness").read_text().strip() == "0" else "on"
    return f"{(led / 'delay_on').read_text().strip()}/{(led / 'delay_off').read_text().strip()}"


@pytest.mark.parametrize("fault", ["microphone", "sealing key"])
def test_the_rooms_indicator_shows_a_problem_while_the_broker_is_away(tmp_path, ingest, fault):
    """No microphone, or a key that is not the gateway's: the room cannot record, and its
    LED says so (the fast blink of ``problem``), not ``offline``, also with no broker to
    send heartbeats to."""
    env = device_env(tmp_path, f"mqtt://127.0.0.1:{free_port()}", ingest.url)  # nobody there
    if fault == "microphone":
        env["ROOM_AGENT_AUDIO__DEVICE"] = "respeaker"
    else:
        stranger = generate_private_key().public_key()
        env["ROOM_AGENT_GATEWAY_PUBLIC_KEY"] = public_key_to_text(stranger)
    led = leds(tmp_path)
    env.update(
        ROOM_AGENT_FEEDBACK__SYSFS_ROOT=str(led.parent), ROOM_AGENT_FEEDBACK__SYSFS_LEDS='["led0"]'
    )
    agent = start_agent(tmp_path, env)
    try:
        wait_for_snapshot(
            tmp_path, lambda s: s.microphone == "missing" or s.sealing_key == "mismatch"
        )

        def problem_blink() -> bool:
            shown = blinking(led)
            assert shown == "100/100", (shown, agent.log()[-1500:])
            return True

        eventually(problem_blink, timeout=10, what="the problem blink on led0")
        assert agent.stop() == 0
    finally:
        agent.kill()
    assert "feedback: problem" in agent.log() and "Traceback" not in agent.log()
