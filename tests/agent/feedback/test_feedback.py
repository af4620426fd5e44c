"""The room's feedback with real parts where they can exist here: LED files in a temporary
directory standing in for /sys/class/leds, gpiozero's mock pin factory for GPIO LEDs and a
button, a file standing in for the SPI device of the APA102 ring, real hook processes, and
cues played through PortAudio into the ALSA file plugin (the samples arrive in its file).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory  # type: ignore[import-untyped]

from agent.feedback.apa102 import Apa102Ring, frame
from agent.feedback.cues import CUES, load_cue, make_cue
from agent.feedback.gpio import GpioButton, GpioLeds
from agent.feedback.hooks import Hooks
from agent.feedback.hub import FeedbackHub
from agent.feedback.indicator import Indicators
from agent.feedback.states import ROOM_STATES, Facts, room_state
from agent.feedback.sysfs_leds import SysfsLed
from agent.settings import AgentSettings, GpioSettings
from protocol.messages import NotesReady
from tests.support.alsa import add_speaker
from tests.support.eventually import eventually

ROOM_AGENT = str(Path(sys.executable).parent / "room-agent")


def fake_leds(root: Path, *names: str) -> Path:
    for name in names:
        led = root / name
        led.mkdir(parents=True)
        (led / "max_brightness").write_text("255\n")
        for attribute in ("brightness", "trigger", "delay_on", "delay_off"):
            (led / attribute).write_text("0\n")
    return root


def led_files(led: Path) -> dict[str, str]:
    return {f.name: f.read_text().strip() for f in led.iterdir() if f.name != "max_brightness"}


def test_the_state_people_see() -> None:
    assert room_state(Facts(recorder="recording", connected=False)) == "recording"
    assert room_state(Facts(recorder="recording", paused=True, problem="x")) == "paused"
    assert room_state(Facts(problem="spool_full", notes_ready=True)) == "problem"
    assert room_state(Facts(notes_ready=True, connected=False)) == "notes_ready"
    assert room_state(Facts(connected=False)) == "offline"
    assert room_state(Facts(recorder="closed")) == "idle"


def test_sysfs_leds_steady_and_blinking(tmp_path) -> None:
    root = fake_leds(tmp_path / "leds", "led0")
    led = SysfsLed(root, "led0")
    led.show("recording")
    assert led_files(root / "led0") | {"delay_on": "", "delay_off": ""} == {
        "trigger": "none", "brightness": "255", "delay_on": "", "delay_off": "",
    }  # fmt: skip
    led.show("paused")
    files = led_files(root / "led0")
    assert (files["trigger"], files["delay_on"], files["delay_off"]) == ("timer", "500", "500")
    led.show("idle")
    assert (led_files(root / "led0")["trigger"], led_files(root / "led0")["brightness"]) == (
        "none",
        "0",
    )
    with pytest.raises(FileNotFoundError, match="led9: no such LED"):
        SysfsLed(root, "led9")


def test_gpio_leds_follow_the_state() -> None:
    factory = MockFactory()
    leds = GpioLeds([17, 22], pin_factory=factory)
    pins = [factory.pin(17), factory.pin(22)]
    leds.show("recording")
    assert all(pin.state for pin in pins)
    leds.show("paused")  # blinking: both levels are seen
    seen: set[int] = set()

    def both_levels() -> bool:
        seen.add(pins[0].state)
        return seen == {0, 1}

    eventually(both_levels, 3, what="blinking")
    leds.show("idle")
    assert not any(pin.state for pin in pins)
    leds.close()


HOLD_S = 0.3  # a short press, and the quiet between presses: far above bounce_s (0.05)


def test_button_short_and_long_presses_debounced() -> None:
    factory = MockFactory()
    actions: list[str] = []
    settings = GpioSettings(button_pin=27, bounce_s=0.05, long_press_s=1.0)
    button = GpioButton(settings, actions.append, pin_factory=factory)
    pin = factory.pin(27)
    # A short press whose contacts bounce: one press.
    for _ in range(3):
        pin.drive_low()
        pin.drive_high()
    pin.drive_low()
    time.sleep(HOLD_S)
    pin.drive_high()
    eventually(lambda: actions == ["pause_resume"], 2, what="one short press")
    time.sleep(HOLD_S)
    pin.drive_low()  # held: a long press, and no short press at the release
    eventually(lambda: actions == ["pause_resume", "stop"], 3, what="the long press")
    pin.drive_high()
    time.sleep(HOLD_S)
    pin.drive_low()  # the sentinel: one more short press, the only other action
    time.sleep(HOLD_S)
    pin.drive_high()
    eventually(lambda: len(actions) == 3, 2, what="the sentinel press")
    assert actions == ["pause_resume", "stop", "pause_resume"]
    button.close()
    other = GpioButton(
        GpioSettings(button_pin=5, short_press="do_not_record", long_press="none"),
        actions.append,
        pin_factory=factory,
    )
    factory.pin(5).drive_low()
    time.sleep(HOLD_S)
    factory.pin(5).drive_high()
    eventually(lambda: actions[-1] == "do_not_record", 2, what="configured action")
    other.close()


def test_apa102_frames_on_the_spi_device(tmp_path) -> None:
    assert frame([(255, 0, 0), (0, 0, 255)], 8) == (
        b"\x00\x00\x00\x00" + bytes((0xE8, 0, 0, 255)) + bytes((0xE8, 255, 0, 0)) + b"\xff" * 4
    )
    spi = tmp_path / "spidev0.0"
    spi.write_bytes(b"")
    ring = Apa102Ring(str(spi), leds=12, brightness=31)
    ring.show("paused")
    data = spi.read_bytes()
    assert len(data) == 4 + 12 * 4 + 4
    assert data[4:8] == bytes((0xFF, 0, 120, 255)), "amber: blue 0, green 120, red 255"
    ring.close()
    assert set(spi.read_bytes()[4:-4:4]) == {0xFF} and not any(spi.read_bytes()[5:-4:4])
    with pytest.raises(FileNotFoundError):
        Apa102Ring(str(tmp_path / "nope"), 3, 8)


def test_hooks_get_ids_in_their_environment_and_are_bounded(tmp_path, caplog) -> None:
    out = tmp_path / "hook.out"
    script = f'echo "$ROOM_EVENT $ROOM_ID $ROOM_SESSION_ID" >> {out}'
    hooks = Hooks(
        {
            "paused": f"sh -c '{script}'",
            "stopped": "sh -c 'exit 3'",
            "problem": "sleep 30",
            "notes_ready": "/no/such/program",
        },
        "room-7",
        timeout_s=0.5,
    )
    assert hooks.run("paused", "ses_1") == 0
    assert out.read_text() == "paused room-7 ses_1\n"
    assert hooks.run("stopped", "ses_1") == 3
    started = time.monotonic()
    assert hooks.run("problem", None) is None
    assert time.monotonic() - started < 5, "killed at its timeout"
    assert hooks.run("notes_ready", "ses_1") is None
    assert hooks.run("resumed", "ses_1") is None, "no hook configured"
    logged = caplog.text
    assert "exited 3" in logged and "killed after" in logged and "not run" in logged
    hooks.start()
    hooks.fire("paused", "ses_2")  # queued, on the hooks thread
    eventually(lambda: out.read_text().endswith("paused room-7 ses_2\n"), 5, what="the queued hook")
    hooks.stop()


class Shown:
    name = "shown"

    def __init__(self) -> None:
        self.states: list[str] = []

    def show(self, state) -> None:
        self.states.append(state)

    def close(self) -> None:
        self.states.append("closed")


class NoCues:
    def play(self, cue, wait=False) -> None:
        pass


def test_the_hub_drives_the_indicator_and_notes_ready_fades(tmp_path) -> None:
    from agent.pipeline.recorder import RecorderSnapshot

    settings = AgentSettings(
        state_dir=tmp_path, mqtt={"broker_url": "mqtt://127.0.0.1:1"},
        feedback={"notes_ready_s": 0.3},
    )  # fmt: skip
    shown = Shown()
    hub = FeedbackHub(settings, None, Indicators([shown]), NoCues(), Hooks({}, "r", 1))  # type: ignore[arg-type]
    hub.start()
    assert shown.states == ["offline"], "not connected yet"
    hub.connection(False)
    hub.state_changed(RecorderSnapshot(state="recording"))
    hub.state_changed(RecorderSnapshot(state="recording", paused=True))
    hub.state_changed(RecorderSnapshot(state="closed"))
    hub.connection(True)
    hub.notified(NotesReady(session_id="ses_1"))
    eventually(lambda: shown.states[-1] == "idle", 3, what="notes_ready to fade")
    hub.state_changed(RecorderSnapshot(state="closed", last_error="spool_full"))
    hub.stop()
    assert shown.states == [
        "offline", "recording", "paused", "offline", "idle", "notes_ready", "idle",
        "problem", "closed",
    ]  # fmt: skip


def test_cues_are_generated_shipped_and_played_through_portaudio(tmp_path) -> None:
    for cue in CUES:
        assert np.array_equal(load_cue(cue), make_cue(cue)), f"shipped {cue}.wav is stale"
    out = tmp_path / "speaker.raw"
    env = {**os.environ, "ALSA_CONFIG_PATH": str(tmp_path / "asound.conf")}
    device = add_speaker(tmp_path / "asound.conf", out)
    play = (
        "from agent.feedback.cues import CuePlayer; from agent.settings import CueSettings;"
        f"CuePlayer(CueSettings(enabled=True, device={device!r}, volume=0.5))"
        ".play('start', wait=True)"
    )
    subprocess.run([sys.executable, "-c", play], env=env, check=True, timeout=30)
    played = np.frombuffer(out.read_bytes(), dtype="<i2")
    expected = (make_cue("start").astype(np.float64) * 0.5).astype(np.int16)
    assert locate(expected, played), "the cue's samples did not arrive in the output file"


def locate(part: np.ndarray, whole: np.ndarray) -> bool:
    if len(whole) < len(part):
        return False
    windows = np.lib.stride_tricks.sliding_window_view(whole, 32)
    for at in np.flatnonzero((windows == part[100:132]).all(axis=1)):
        start = at - 100
        if start >= 0 and np.array_equal(whole[start : start + len(part)], part):
            return True
    return False


def test_feedback_test_command_cycles_indicators_and_cues(tmp_path) -> None:
    root = fake_leds(tmp_path / "leds", "led0")
    out = tmp_path / "speaker.raw"
    device = add_speaker(tmp_path / "asound.conf", out)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_AGENT_")}
    env.update(
        ALSA_CONFIG_PATH=str(tmp_path / "asound.conf"),
        ROOM_AGENT_STATE_DIR=str(tmp_path / "state"),
        ROOM_AGENT_FEEDBACK__SYSFS_ROOT=str(root),
        ROOM_AGENT_FEEDBACK__SYSFS_LEDS='["led0"]',
        ROOM_AGENT_FEEDBACK__CUES__DEVICE=device,
    )
    done = subprocess.run(
        [ROOM_AGENT, "feedback", "test", "--seconds", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split()[1] for line in done.stdout.splitlines() if line.startswith("showing")] == (
        list(ROOM_STATES)
    )
    assert led_files(root / "led0")["brightness"] == "0", "left off"
    # The plugin's file is rewritten at each opening: it holds the last cue played.
    assert [line.split()[1] for line in done.stdout.splitlines() if line.startswith("cue")] == (
        list(CUES)
    )
    played = np.frombuffer(out.read_bytes(), dtype="<i2")
    assert locate((make_cue("stop").astype(np.float64) * 0.5).astype(np.int16), played)
    env["ROOM_AGENT_FEEDBACK__SYSFS_LEDS"] = '["led9"]'
    failed = subprocess.run(
        [ROOM_AGENT, "feedback", "test", "--seconds", "0", "--no-cues"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert failed.returncode == 1 and "led9: no such LED" in failed.stderr
    assert "Traceback" not in failed.stderr
