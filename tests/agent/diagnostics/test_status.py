"""room-agent status as a technician runs it on the device: a real `room-agent run`, a real
mosquitto, the stand-in ingest server, real spool files.

It must tell the truth about each part (agent running or not, broker and gateway reachable
and accepting this device's credentials, the backlog and quarantine), name a fix for each
problem, exit 0 only when healthy, and never print a secret.
"""

import os
import re

import pytest

from agent.diagnostics.status_file import STATUS_FILE
from agent.diagnostics.status_report import StatusReport
from protocol.envelope import generate_private_key, public_key_to_text
from protocol.messages import DeviceState, StartCommand, StopCommand
from protocol.topics import topic
from tests.agent.device_setup import (
    DEVICE,
    PASSWORD,
    TOKEN,
    device_env,
    room_agent,
    start_agent,
    wait_for_snapshot,
)
from tests.gateway.conftest import GatewayProcess
from tests.support.alsa import PERIOD_FRAMES, FifoFeeder
from tests.support.certs import Pki
from tests.support.mosquitto import Broker
from tests.support.mqtt_probe import Probe
from tests.support.speech import make_session, make_session_pcm

pytestmark = pytest.mark.timeout(60)


def block(done) -> dict[str, str]:
    """The aligned block's rows, label -> text (rows without a label are appended)."""
    rows: dict[str, str] = {}
    label = ""
    lines = done.stdout.split("\n\n")[0].splitlines()
    width = re.match(r"\S+(?: \S+)* {2,}", lines[0]).end()  # the labels' column
    for line in lines:
        name, text = line[:width].strip(), line[width:]
        label = name or label
        rows[label] = f"{rows[label]}\n{text}" if not name else text
    return rows


def problems(done) -> dict[str, str]:
    """item -> its fix, from the problems section."""
    lines = done.stdout.split("\n\n")[1].splitlines()[1:] if "\n\n" in done.stdout else []
    return {
        lines[i].strip().split(":")[0]: lines[i + 1].strip().removeprefix("fix: ")
        for i in range(0, len(lines), 2)
    }


def record(tmp_path, env, session_id: str) -> None:
    """A session recorded into the spool from a file, as `room-agent record` does."""
    wav = make_session(tmp_path / "session.wav", 12, 20, seed=5).path
    done = room_agent(
        {**env, "ROOM_AGENT_AUDIO__MAX_CHUNK_S": "2"},
        *("record", "--input", str(wav), "--until-eof", "--session", session_id),
    )
    assert done.returncode == 0, done.stderr


def test_with_no_agent_running_it_says_so_and_still_checks_the_network(tmp_path, broker, ingest):
    env = device_env(tmp_path, broker.url, ingest.url)
    done = room_agent(env, "status")
    assert done.returncode == 1, done.stderr
    rows = block(done)
    assert rows["device"] == DEVICE
    assert rows["agent"] == "not running"
    assert rows["broker"] == f"{broker.url} reachable, credentials accepted"
    assert rows["gateway"] == f"{ingest.url} reachable (/healthz 404), token accepted"
    assert rows["quarantine"] == "none"
    assert problems(done) == {
        "agent": "start it: sudo systemctl enable --now room-agent"
        " (its log: journalctl -u room-agent)"
    }

    done = room_agent(env, "status", "--json")
    assert done.returncode == 1
    report = StatusReport.model_validate_json(done.stdout)
    assert (report.device_id, report.healthy, report.agent.running) == (DEVICE, False, False)
    assert report.broker is not None and report.broker.connect == "accepted"
    assert report.gateway is not None and report.gateway.token == "accepted"
    verdicts = {f.item: f.verdict for f in report.findings}
    assert verdicts == {
        "agent": "problem",
        "microphone": "skipped",
        "broker": "ok",
        "gateway": "ok",
        "sealing key": "ok",
        "spool": "ok",
        "quarantine": "ok",
        "last error": "skipped",
    }
    # Each run's token probe was answered 415 and stored nothing.
    assert ingest.chunks() == {} and [r.status for r in ingest.requests()] == [415, 415]


def test_refused_credentials_and_a_wrong_port_are_reported_with_the_fix(tmp_path, broker, ingest):
    env = device_env(tmp_path, broker.url, ingest.url)
    (tmp_path / "credentials" / "mqtt-password").write_text("not-the-password\n")
    (tmp_path / "credentials" / "ingest-token").write_text("not-the-token\n")
    done = room_agent(env, "status")
    assert done.returncode == 1
    rows, fixes = block(done), problems(done)
    assert rows["broker"] == (
        f"127.0.0.1:{broker.port} refuses this device's credentials (Not authorized)"
    )
    assert rows["gateway"] == (
        f"{ingest.url} reachable (/healthz 404), but it refuses this device's token"
    )
    for item in ("broker", "gateway"):
        assert f"re-provision with `room-gateway device add {DEVICE} --rotate`" in fixes[item]

    env["ROOM_AGENT_MQTT__BROKER_URL"] = f"mqtt://127.0.0.1:{ingest.port}"  # a wrong port
    done = room_agent(env, "status")
    assert block(done)["broker"].startswith(f"127.0.0.1:{ingest.port} answers TCP but not MQTT (")
    assert problems(done)["broker"] == (
        "check mqtt.broker_url: the port, and mqtt:// versus mqtts://"
    )


def test_the_real_gateway_accepts_the_token_until_the_device_is_revoked(tmp_path):
    """`room-gateway device add` provisions the device; its token probe is answered 415
    (accepted, nothing stored), and 403 once `device revoke` refuses the device."""
    gateway = GatewayProcess(tmp_path / "gateway", "http://127.0.0.1:9", {})
    gateway.env["ROOM_GATEWAY_DEVICES__GATEWAY_URL"] = gateway.url
    gateway.start()
    try:
        gateway.cli("keygen")
        bundle = tmp_path / "bundle"
        gateway.cli("device", "add", DEVICE, "--out", str(bundle))
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_AGENT_")}
        env["ROOM_AGENT_STATE_DIR"] = str(tmp_path / "state")
        env["CREDENTIALS_DIRECTORY"] = str(bundle)  # as the unit's LoadCredential= would
        config = str(bundle / "agent.toml")
        done = room_agent(env, "--config", config, "status")
        assert block(done)["gateway"] == (f"{gateway.url} reachable (/healthz 200), token accepted")
        gateway.cli("device", "revoke", DEVICE)
        done = room_agent(env, "--config", config, "status")
        assert block(done)["gateway"] == f"{gateway.url}: device {DEVICE} is revoked there"
        assert problems(done)["gateway"] == (
            f"the gateway refuses this device's credentials: re-provision"
            f" with `room-gateway device add {DEVICE} --rotate` on the gateway and install the"
            " new credential files here"
        )
        stored = [path for path in (tmp_path / "gateway" / "chunks").rglob("*") if path.is_file()]
        assert stored == [], "the probes stored nothing"
        assert (bundle / "ingest-token").read_text().strip() not in done.stdout
    finally:
        gateway.stop()


def test_a_403_from_a_proxy_is_not_diagnosed_as_a_revocation(tmp_path, broker, ingest):
    env = device_env(tmp_path, broker.url, ingest.url)
    ingest.answer_all(403, proxy=True)  # an HTML page, as nginx or a firewall gives it
    done = room_agent(env, "status")
    assert done.returncode == 1
    assert block(done)["gateway"] == (
        f"{ingest.url} answers HTTP 403, but not as the room-gateway does (/healthz 404)"
    )
    fix = problems(done)["gateway"]
    assert fix.startswith("HTTP 403 from something that is not the room-gateway")
    assert "not a revocation" in fix and "--rotate" not in fix
    assert "revoked" not in done.stdout


def test_a_wrong_gateway_key_is_shown_with_the_gateways_reason(tmp_path, broker, ingest):
    """Chunks recorded to another key than the gateway's: the gateway's 422 wrong_key
    reaches the device state, `status` and its fix (not only the gateway's log)."""
    env = device_env(tmp_path, broker.url, ingest.url)
    stranger = generate_private_key().public_key()
    env["ROOM_AGENT_GATEWAY_PUBLIC_KEY"] = public_key_to_text(stranger)
    record(tmp_path, env, "therapy-8")
    with Probe(broker) as probe:
        agent = start_agent(tmp_path, env)
        try:
            refused = probe.wait_for(
                lambda m: m.topic == topic(DEVICE, "state") and '"wrong_key"' in m.payload.decode(),
                timeout=15,
            )
            state = DeviceState.model_validate_json(refused.payload)
            assert state.refused is not None
            assert (state.refused.session_id, state.refused.status) == ("therapy-8", 422)
            wait_for_snapshot(tmp_path, lambda s: s.uplink is not None and s.uplink.refused)
            done = room_agent(env, "status")
            assert agent.stop() == 0
        finally:
            agent.kill()
    assert done.returncode == 1
    rows = block(done)
    assert re.fullmatch(r"chunk \d+ of session therapy-8: HTTP 422 wrong_key", rows["refused"])
    assert rows["last error"] == "sealing_key_mismatch (gateway: HTTP 422 wrong_key)"
    assert "sealed to another key than the gateway's" in problems(done)["last error"]


def test_an_mqtts_broker_is_checked_as_the_agent_verifies_it(tmp_path):
    pki = Pki.create(tmp_path / "pki")
    with Broker(tmp_path / "broker", users={DEVICE: PASSWORD}, tls=pki) as broker:
        env = device_env(tmp_path, broker.url)
        done = room_agent(env, "status")
        found = block(done)["broker"]
        assert found.startswith(f"unreachable at 127.0.0.1:{broker.port} (TLS: "), found
        assert problems(done)["broker"] == (
            "the broker's certificate is not trusted or not for this name: set mqtt.ca_file to"
            " its CA (room-gateway device add writes it) and use the host name in its"
            " certificate"
        )
        env["ROOM_AGENT_MQTT__CA_FILE"] = str(pki.ca_cert)
        done = room_agent(env, "status")
        assert block(done)["broker"] == f"{broker.url} reachable, credentials accepted"


def test_a_running_agent_its_backlog_and_a_broker_that_goes_away(tmp_path, broker, ingest):
    env = device_env(tmp_path, broker.url, ingest.url)
    record(tmp_path, env, "therapy-5")
    ingest.answer_all(503)  # the gateway is failing: the backlog stays
    agent = start_agent(tmp_path, env)
    try:
        wait_for_snapshot(
            tmp_path,
            lambda s: (
                s.mqtt_connected
                and s.last_heartbeat_at is not None
                and s.uplink is not None
                and s.uplink.failures > 0
            ),
        )
        done = room_agent(env, "status")
        assert done.returncode == 1
        rows = block(done)
        assert re.fullmatch(rf"running, pid {agent.pid}, idle; status \d s old", rows["agent"])
        assert re.fullmatch(
            rf"{broker.url} reachable, credentials accepted; agent connected, last heartbeat"
            r" [0-2] s ago",
            rows["broker"],
        )
        waiting = re.match(r"(\d+) chunks \(.* KiB\) waiting, 0% of 2.0 GiB", rows["spool"])
        assert waiting is not None and int(waiting[1]) >= 4
        assert rows["spool"].split("\n")[1] == (
            f"therapy-5: closed, {waiting[1]} chunks, " + rows["spool"].split("(")[1].split(")")[0]
        )
        assert "failed attempts (gateway_error)" in rows["uplink"]
        assert rows["last error"] == "gateway_error"
        assert rows["gateway"] == f"{ingest.url} reachable but failing (HTTP 503)"
        fails = "the gateway fails: ask its operator (room-gateway logs and /readyz)"
        assert problems(done) == {"gateway": fails, "last error": fails}

        ingest.answer_all(None)  # the gateway recovers: the backlog drains
        ingest.wait_until(lambda: ingest.manifest("therapy-5") is not None)
        # The manifest at the ingest server is before the agent counts its answer: wait for
        # the count itself, not for the first snapshot without a reason.
        wait_for_snapshot(
            tmp_path,
            lambda s: (
                s.uplink is not None and s.uplink.reason is None and s.uplink.sessions_delivered
            ),
        )
        done = room_agent(env, "status")
        assert done.returncode == 0, done.stdout
        rows = block(done)
        assert rows["spool"].startswith("0 chunks (0 B) waiting")
        assert rows["uplink"].endswith("sent, 1 sessions delivered")
        assert rows["last error"] == "none"

        broker.kill()
        done = room_agent(env, "status", "--json")
        assert done.returncode == 1
        report = StatusReport.model_validate_json(done.stdout)
        assert report.broker is not None and not report.broker.reachable
        snapshot = report.agent.snapshot
        assert snapshot is not None
        assert (snapshot.pid, snapshot.device_id, snapshot.recorder) == (agent.pid, DEVICE, "idle")
        assert snapshot.uplink is not None and snapshot.uplink.sessions_delivered == 1
        assert report.agent.last_heartbeat_age_s is not None
        status_file = (tmp_path / "state" / STATUS_FILE).read_text()
        assert PASSWORD not in status_file and TOKEN not in status_file
        found = {f.item: f for f in report.findings}
        assert found["broker"].summary == (
            f"unreachable at 127.0.0.1:{broker.port} (connection refused)"
        )
        assert found["broker"].fix == (
            f"broker unreachable at 127.0.0.1:{broker.port}: check network/firewall,"
            " and that the broker runs"
        )
        assert agent.stop() == 0
    finally:
        agent.kill()
    done = room_agent(env, "status")
    assert re.fullmatch(
        rf"not running \(last seen \d s ago as pid {agent.pid}\)", block(done)["agent"]
    )


def test_a_status_file_that_cannot_be_written_never_disturbs_recording(tmp_path, broker, ingest):
    (tmp_path / "state" / STATUS_FILE).mkdir(parents=True)  # every write of it fails
    env = device_env(tmp_path, broker.url, ingest.url, tmp_path / "mic.fifo")
    env["ROOM_AGENT_AUDIO__MAX_CHUNK_S"] = "2"
    pcm, _ = make_session_pcm(12, 20, seed=5)
    with (
        FifoFeeder(tmp_path / "mic.fifo", period_frames=PERIOD_FRAMES, speed=8) as mic,
        Probe(broker) as probe,
    ):
        agent = start_agent(tmp_path, env)
        try:
            probe.wait_for(probe.on(topic(DEVICE, "state"), online=True), timeout=15)
            probe.publish(topic(DEVICE, "cmd"), StartCommand(command_id="go", session_id="s-7"))
            probe.wait_for(probe.on(topic(DEVICE, "state"), recorder="recording"))
            mic.play(pcm)
            ingest.wait_until(lambda: len(ingest.chunks("s-7")) >= 3, timeout=15)
            probe.publish(topic(DEVICE, "cmd"), StopCommand(command_id="end", session_id="s-7"))
            ingest.wait_until(lambda: ingest.manifest("s-7") is not None)
            done = room_agent(env, "status")
            assert agent.stop() == 0
        finally:
            agent.kill()
    assert done.returncode == 1
    assert block(done)["agent"] == f"running, pid {agent.pid}, but its status file cannot be read"
    warnings = [line for line in agent.log().splitlines() if "status:" in line]
    assert len(warnings) == 1, "said once, not at every attempt"
    assert warnings[0].endswith("not written (Is a directory); recording is not affected")
    assert "Traceback" not in agent.log()


def test_quarantined_files_are_a_problem_with_what_to_do(tmp_path):
    env = device_env(tmp_path)  # record only: no broker, no gateway
    record(tmp_path, env, "therapy-6")
    chunk = tmp_path / "state" / "spool" / "sessions" / "therapy-6" / "00000001.chunk"
    chunk.write_bytes(b"\0" * 64)  # what a failing SD card leaves
    done = room_agent(env, "status")
    assert block(done)["quarantine"] == (
        "0 file(s) quarantined; 1 more found corrupt (moved at the agent's next start)"
    )
    assert room_agent(env, "spool", "verify").returncode == 1  # quarantines it
    done = room_agent(env, "status")
    assert done.returncode == 1
    rows = block(done)
    assert rows["broker"] == "not configured (mqtt.broker_url): no commands"
    assert rows["quarantine"].startswith("1 file(s) quarantined (unreadable envelope: ")
    assert problems(done)["quarantine"] == (
        "they may hold sealed audio the gateway never got: list them with `room-agent spool"
        " verify`, then decide what happens to them (the agent never deletes them)"
    )
    assert not chunk.exists()


def test_settings_that_do_not_load_are_one_line_and_exit_2(tmp_path):
    env = device_env(tmp_path)
    env["ROOM_AGENT_MQTT__HEARTBEAT_S"] = "0"
    done = room_agent(env, "status")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "room-agent: environment ROOM_AGENT_MQTT__HEARTBEAT_S: agent.mqtt.heartbeat_s:"
        " must be 0.1..3600 (got '0')\n"
    )
