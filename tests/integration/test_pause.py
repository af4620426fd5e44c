"""Pause from the partner API to the room's microphone, every part real: the gateway, mosquitto,
`room-agent run` capturing through PortAudio from the ALSA file plugin, the simulator.

A distinctive tone (beeps at 2731 Hz, over speech, so the VAD would keep it) is played
into the microphone only while the session is paused: the audio the gateway uploaded to
Blueprint holds none of it, the manifest's paused interval matches the timeline, and the
rest of the session arrives whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.gateway.conftest import SimulatorProcess, steps
from tests.gateway.deployment import Deployment
from tests.integration.test_lost_commands import watch
from tests.integration.test_room_to_blueprint import (
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
from tests.support.tone import mixed, tone, tone_level

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
HEARD = 1000.0  # the tone's amplitude in recorded audio above which it was let through
FLUSH_S = 4  # silence after the tone: the FIFO and PortAudio's buffers hold ~2 s at most


@pytest.fixture
def deployment(tmp_path: Path, sim: SimulatorProcess) -> Iterator[Deployment]:
    deployed = Deployment(
        tmp_path / "site",
        sim.url,
        (ROOM,),
        ROOM_GATEWAY_INGEST__RETENTION_S="3600",  # keep the uploaded file to look into
        ROOM_GATEWAY_MQTT__COMMAND_EXPIRY_S="60",
    ).start()
    deployed.with_people(sim, "pause")
    yield deployed
    deployed.stop()


def at(session: dict, step: str) -> float:
    entry = next(e for e in session["timeline"] if e["step"] == step)
    return datetime.fromisoformat(entry["at"]).timestamp()


def test_a_tone_played_only_while_paused_never_reaches_blueprint(
    tmp_path: Path,
    deployment: Deployment,
    feeder: FifoFeeder,
    speech: np.ndarray,
    sim: SimulatorProcess,
) -> None:
    gateway = deployment.gateway
    leds = tmp_path / "leds" / "led0"  # /sys/class/leds/led0 as the kernel has it
    leds.mkdir(parents=True)
    for attribute, value in (("max_brightness", "1"), ("brightness", "0"), ("trigger", "none"),
                             ("delay_on", "0"), ("delay_off", "0")):  # fmt: skip
        (leds / attribute).write_text(value + "\n")
    agent = start_agent(
        tmp_path, deployment, feeder.path,
        ROOM_AGENT_FEEDBACK__SYSFS_ROOT=str(leds.parent),
        ROOM_AGENT_FEEDBACK__SYSFS_LEDS='["led0"]',
    )  # fmt: skip
    try:
        with watch(deployment) as probe:
            probe.wait_for(probe.on(STATE, online=True), timeout=20)
        session_id = gateway.start_session(ROOM, *deployment.people)
        gateway.wait_for_state(session_id, "recording", timeout=20)
        eventually(lambda: led(leds) == "on", timeout=10, what="the LED on while recording")
        play(feeder, speech[: cut(12)])

        paused = gateway.http.post(f"/v1/sessions/{session_id}/pause")
        assert (paused.status_code, paused.json()["state"]) == (200, "paused"), paused.text
        gateway.wait_for_session(session_id, lambda s: "microphone_closed" in steps(s), 10)
        eventually(lambda: led(leds) == "500/500", timeout=10, what="the LED blinking while paused")
        play(feeder, mixed(speech[cut(12) : cut(24)], tone(12)))  # only while paused
        play(feeder, np.zeros(cut(FLUSH_S), dtype=np.int16))
        again = gateway.http.post(f"/v1/sessions/{session_id}/pause")
        assert again.json()["state"] == "paused", "harmless to repeat"
        resumed = gateway.http.post(f"/v1/sessions/{session_id}/resume")
        assert (resumed.status_code, resumed.json()["state"]) == (200, "recording")
        gateway.wait_for_session(session_id, lambda s: "microphone_opened" in steps(s), 10)
        play(feeder, speech[cut(24) :])

        assert gateway.http.post(f"/v1/sessions/{session_id}/stop").status_code == 200
        done = gateway.wait_for_state(session_id, "notes_ready", timeout=40)
        eventually(
            lambda: led(leds) == "100/1900", timeout=10, what="the LED saying the notes are ready"
        )
        lit = (leds / "delay_off").stat().st_mtime
        notes_to_led_ms = (lit - at(done, "notes_ready")) * 1000
        late = gateway.http.post(f"/v1/sessions/{session_id}/pause")
        assert (late.status_code, late.json()["code"]) == (409, "session_not_recording")
        assert agent.stop() == 0
    finally:
        agent.kill()

    # What Blueprint got is the file the gateway uploaded: no tone in it, speech around it.
    [row] = Gateway(deployment).query("SELECT audio_path FROM sessions WHERE id = ?", session_id)
    exported = uploaded_audio(deployment, row["audio_path"], tmp_path / "uploaded", session_id)
    uploaded, rate = soundfile.read(exported, dtype="int16")
    assert rate == 16_000
    at_blueprint = sim_session(sim, session_id)
    assert at_blueprint["audio_bytes"] == exported.stat().st_size
    assert at_blueprint["audio_duration_s"] == pytest.approx(len(uploaded) / rate, abs=1e-3)
    assert len(uploaded) / rate > 10, "the speech before and after the pause is there"
    assert tone_level(uploaded) < HEARD, "the tone played while paused reached Blueprint"
    assert tone_level(mixed(speech[: cut(12)], tone(12))) > HEARD, "the detector sees it"

    # The manifest's paused interval matches the timeline (device times, no audio).
    [interval] = done["audio"]["paused"]
    closed, opened = at(done, "microphone_closed"), at(done, "microphone_opened")
    started = datetime.fromisoformat(interval["started_at"]).timestamp()
    ended = datetime.fromisoformat(interval["ended_at"]).timestamp()
    assert started == pytest.approx(closed, abs=0.01)
    assert ended == pytest.approx(opened, abs=0.05)
    assert at(done, "paused") <= closed < opened and at(done, "resumed") <= opened
    # Its offset is where the session's audio timeline stood: speech before it, then
    # speech after it, none across it (the timeline does not advance while paused).
    offset = interval["offset_s"]
    chunks = Gateway(deployment).chunks(session_id)
    before = {c["seq"] for c in chunks if c["start_s"] + c["duration_s"] <= offset + 0.05}
    after = {c["seq"] for c in chunks if c["start_s"] >= offset - 0.05}
    assert before and after and before | after == {c["seq"] for c in chunks}
    assert "Traceback" not in gateway.log() + agent.log()
    print(f"\nnotes_ready at the gateway -> the room's LED changed: {notes_to_led_ms:.0f} ms")
    assert notes_to_led_ms < 2000


def uploaded_audio(deployment: Deployment, ref: str, directory: Path, name: str) -> Path:
    """The session's audio as the gateway keeps it (encrypted in its store's vault, or a
    file), decrypted to a file: what it uploaded to Blueprint."""
    from gateway.sessions.audio_vault import export_audio, is_vault_ref, open_vault
    from gateway.settings import GatewaySettings
    from gateway.store import Database

    if not is_vault_ref(ref):
        return Path(ref)
    settings = GatewaySettings(state_dir=deployment.gateway.state_dir)
    db = Database.open(settings.store_location)
    try:
        return export_audio(open_vault(db, settings.audio_key_path), ref, directory, name)
    finally:
        db.close()


def led(directory: Path) -> str:
    """What the LED shows: on, off, or on/off milliseconds of the kernel's timer."""
    files = {f.name: f.read_text().strip() for f in directory.iterdir()}
    if files["trigger"] == "timer":
        return f"{files['delay_on']}/{files['delay_off']}"
    return "on" if files["brightness"] != "0" else "off"
