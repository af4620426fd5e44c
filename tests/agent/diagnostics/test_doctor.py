"""room-agent doctor as a technician runs it after installing a room: a real `room-agent run`,
a real mosquitto, the stand-in ingest server, and real PortAudio capturing the ALSA testmic
(a FIFO fed with synthetic speech, tests/support/alsa.py).

A healthy room is all ok (exit 0); each problem comes with the concrete fix (exit 1);
settings that do not load are one line (exit 2).
"""

import numpy as np
import pytest

from agent.diagnostics.doctor import DoctorReport
from agent.diagnostics.findings import Finding
from protocol.messages import StartCommand, StopCommand
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
from tests.support.alsa import PERIOD_FRAMES, FifoFeeder, write_raw
from tests.support.ingest_server import IngestServer
from tests.support.mosquitto import Broker
from tests.support.mqtt_probe import Probe
from tests.support.speech import SAMPLE_RATE, room_noise, synthesize

pytestmark = pytest.mark.timeout(60)

ITEMS = (
    "config",
    "microphone",
    "sound",
    "agent",
    "broker",
    "gateway",
    "sealing key",
    "spool",
    "quarantine",
    "last error",
)


def talking(seconds: int, level_dbfs: float = -25.0) -> np.ndarray:
    """Someone talking at a normal level in a quiet room: 0.3 s of room noise, then speech,
    the noise 30 dB below it."""
    total = seconds * SAMPLE_RATE
    clip = synthesize("Please close the door when you leave the room.", "en-us", 155)
    clip = clip[: total - SAMPLE_RATE // 3].astype(np.float64)
    mix = np.zeros(total)
    mix[SAMPLE_RATE // 3 : SAMPLE_RATE // 3 + len(clip)] = clip
    level = 10 ** (level_dbfs / 20) * 32_767
    mix *= level / np.sqrt(np.mean(clip**2))
    noise = room_noise(total, np.random.default_rng(3)).astype(np.float64)
    mix += noise * (level / 10 ** (30 / 20)) / np.sqrt(np.mean(noise**2))
    return np.clip(np.rint(mix), -32_768, 32_767).astype(np.int16)


def checklist(stdout: str) -> dict[str, tuple[str, str, str | None]]:
    """item -> (ok / PROBLEM / skipped, what was found, the fix)."""
    lines = stdout.splitlines()
    assert lines[0] == f"room-agent doctor: device {DEVICE}"
    found: dict[str, tuple[str, str, str | None]] = {}
    item = ""
    for line in lines[1:]:
        if not line.strip():
            break
        if line.strip().startswith("fix: "):
            mark, summary, _ = found[item]
            found[item] = (mark, summary, line.strip().removeprefix("fix: "))
            continue
        mark, rest = line[:8].strip(), line[9:]
        item = next(name for name in ITEMS if rest.startswith(name + " "))
        found[item] = (mark, rest[len(item) :].strip(), None)
    assert tuple(found) == ITEMS
    return found


def test_a_healthy_room_is_all_ok(tmp_path):
    users = {DEVICE: PASSWORD, "gateway": "gateway-secret"}
    with (
        Broker(tmp_path / "broker", users=users) as broker,
        IngestServer(KEY, {DEVICE: TOKEN}) as ingest,
        FifoFeeder(
            tmp_path / "mic.fifo", period_frames=PERIOD_FRAMES, speed=4, idle_silence=False
        ) as mic,
    ):
        env = device_env(tmp_path, broker.url, ingest.url, tmp_path / "mic.fifo")
        agent = start_agent(tmp_path, env)
        try:
            wait_for_snapshot(tmp_path, lambda s: s.mqtt_connected and s.last_heartbeat_at)
            mic.play(talking(2))
            mic.idle_silence = True  # after the speech; lets the capture stream close
            done = room_agent(env, "doctor", "--seconds", "2")
            assert agent.alive()
            during = doctor_while_recording(broker, ingest, mic, env)
        finally:
            agent.stop()
    assert during.verdict == "skipped"
    assert during.summary == "the agent is recording session s-1: not disturbed"
    assert done.returncode == 0, done.stdout + done.stderr
    prompt, *others = done.stderr.splitlines()
    assert prompt == "sound check: talk in the room for 2 s ..."
    # The FIFO plays at 4x: on a loaded machine it can outrun the capture queue, whose drop
    # warnings are then the only other lines (no traceback, no other noise).
    assert all(line.startswith("capture: ") for line in others), done.stderr
    found = checklist(done.stdout)
    assert {mark for mark, _, _ in found.values()} == {"ok"}, done.stdout
    assert found["microphone"][1] == "'testmic' (input devices: 'testmic', 'default')"
    assert found["sound"][1].startswith("good (speech at -2")
    assert found["broker"][1].startswith(f"{broker.url} reachable, credentials accepted;")
    assert found["gateway"][1] == f"{ingest.url} reachable (/healthz 404), token accepted"
    assert done.stdout.endswith("\nall ok\n")


def doctor_while_recording(broker, ingest, mic, env) -> Finding:
    """Doctor's sound check mid-session: the finding, once the session (recorded while
    doctor ran) has reached the gateway whole."""
    state, cmd = topic(DEVICE, "state"), topic(DEVICE, "cmd")
    with Probe(broker) as probe:
        probe.publish(cmd, StartCommand(command_id="go", session_id="s-1"))
        probe.wait_for(probe.on(state, recorder="recording"))
        mic.play(talking(2))
        done = room_agent(env, "doctor", "--json")
        ingest.wait_until(lambda: len(ingest.chunks("s-1")) >= 1)
        probe.publish(cmd, StopCommand(command_id="end", session_id="s-1"))
        ingest.wait_until(lambda: ingest.manifest("s-1") is not None)
    assert done.returncode == 0, done.stdout
    report = DoctorReport.model_validate_json(done.stdout)
    assert report.check is None, "the microphone was not opened"
    return next(f for f in report.findings if f.item == "sound")


def test_a_wrong_microphone_name_is_fixed_by_naming_the_ones_there(tmp_path):
    mic = write_raw(tmp_path / "mic.raw", np.zeros(SAMPLE_RATE, dtype=np.int16))
    env = device_env(tmp_path, mic=mic)  # no broker, no gateway: record only
    env["ROOM_AGENT_AUDIO__DEVICE"] = "respeaker"
    env["ROOM_AGENT_GATEWAY_PUBLIC_KEY"] = ""
    done = room_agent(env, "doctor")
    assert done.returncode == 1
    assert done.stderr == "", "no sound check without a microphone: nobody is asked to talk"
    found = checklist(done.stdout)
    assert found["config"] == (
        "PROBLEM",
        "environment ROOM_AGENT_GATEWAY_PUBLIC_KEY: agent.gateway_public_key: not set"
        " (required to record: audio is sealed to it)",
        "correct it in the environment (or the variable named), then: room-agent config validate",
    )
    assert found["microphone"] == (
        "PROBLEM",
        "no input device matches audio.device 'respeaker'",
        "set audio.device to a part of one of these names: 'testmic', 'default'",
    )
    assert found["sound"] == ("skipped", "no microphone to check", None)
    assert found["agent"][0] == "PROBLEM"
    assert found["broker"] == ("skipped", "not configured (mqtt.broker_url): no commands", None)
    assert done.stdout.endswith("\n3 problem(s) to fix\n")

    done = room_agent(env, "doctor", "--json")
    assert done.returncode == 1
    report = DoctorReport.model_validate_json(done.stdout)
    assert not report.healthy and report.check is None
    assert [f.item for f in report.findings] == list(ITEMS)


def test_settings_that_do_not_load_are_one_line_and_exit_2(tmp_path):
    env = device_env(tmp_path)
    env["ROOM_AGENT_AUDIO__VAD_MODE"] = "7"
    done = room_agent(env, "doctor")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "room-agent: environment ROOM_AGENT_AUDIO__VAD_MODE: agent.audio.vad_mode:"
        " must be 0..3 (got '7')\n"
    )
