"""room-agent check as a technician runs it: a real process, real PortAudio, the ALSA testmic.

The microphone is the ALSA file plugin reading a FIFO (tests/support/alsa.py), fed faster
than real time with synthetic speech of known level (tests/support/speech.py) over room
noise, so each verdict is tested on the signal that should earn it.
"""

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.alsa import PERIOD_FRAMES, FifoFeeder, write_asound_conf
from tests.support.speech import SAMPLE_RATE, room_noise, synthesize

ROOM_AGENT = str(Path(sys.executable).parent / "room-agent")
SECONDS = 2
BLOCK = PERIOD_FRAMES  # 240 ms, the default audio.block_ms
FULL_SCALE = 32_767
UTTERANCES = (
    ("Please close the door when you leave the room.", "en-us", 155),
    ("The bridge was painted green last summer.", "en+f3", 155),
)


def speech(level_dbfs: float, snr_db: float = 30.0, gain_db: float = 0.0) -> np.ndarray:
    """SECONDS of 16 kHz int16: 0.3 s of room noise, then speech whose active level (over
    the utterances only) is ``level_dbfs``, noise ``snr_db`` below it; ``gain_db`` more
    gain afterwards, clipped at full scale as an overdriven converter would."""
    total = SECONDS * SAMPLE_RATE
    clean = np.zeros(total, dtype=np.float64)
    spans, at = [], int(0.3 * SAMPLE_RATE)
    for text, voice, speed in UTTERANCES:
        clip = synthesize(text, voice, speed)[: max(0, total - at)]
        clean[at : at + len(clip)] = clip
        spans.append((at, at + len(clip)))
        at += len(clip) + SAMPLE_RATE // 4
    active = np.concatenate([clean[s:e] for s, e in spans])
    level = 10 ** (level_dbfs / 20) * FULL_SCALE
    clean *= level / np.sqrt(np.mean(active**2))
    return _mix(clean, level / 10 ** (snr_db / 20), gain_db)


def noise_only(level_dbfs: float) -> np.ndarray:
    """An empty room: its steady noise only."""
    return _mix(np.zeros(SECONDS * SAMPLE_RATE), 10 ** (level_dbfs / 20) * FULL_SCALE, 0.0)


def _mix(clean: np.ndarray, noise_rms: float, gain_db: float) -> np.ndarray:
    noise = room_noise(len(clean), np.random.default_rng(5)).astype(np.float64)
    mix = (clean + noise * noise_rms / np.sqrt(np.mean(noise**2))) * 10 ** (gain_db / 20)
    return np.clip(np.rint(mix), -FULL_SCALE - 1, FULL_SCALE).astype(np.int16)


@pytest.fixture
def env(tmp_path):
    """A room-agent environment whose configured microphone is testmic, fed by a FIFO."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_AGENT_")}
    environment.update(write_asound_conf(tmp_path / "asound.conf", tmp_path / "mic.fifo"))
    environment["ROOM_AGENT_STATE_DIR"] = str(tmp_path / "state")
    environment["ROOM_AGENT_AUDIO__DEVICE"] = "testmic"
    return environment


def feeding(tmp_path: Path, samples: np.ndarray) -> FifoFeeder:
    """The FIFO, with ``samples`` queued ahead of the idle silence a live microphone adds."""
    feeder = FifoFeeder(tmp_path / "mic.fifo", period_frames=BLOCK, speed=4, idle_silence=False)
    feeder.play(samples)
    feeder.idle_silence = True  # after the signal; lets the capture stream close
    return feeder


def run_check(tmp_path, env, samples, *args) -> subprocess.CompletedProcess:
    with feeding(tmp_path, samples):
        return subprocess.run(
            [ROOM_AGENT, "check", "--seconds", str(SECONDS), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )


def report_of(tmp_path, env, samples) -> tuple[int, dict]:
    done = run_check(tmp_path, env, samples, "--json")
    assert done.stderr == "", "--json off a terminal prints nothing but the report"
    return done.returncode, json.loads(done.stdout)


# -- the verdicts ---------------------------------------------------------------------------


def test_digital_silence_is_no_signal(tmp_path, env):
    status, report = report_of(tmp_path, env, np.zeros(SECONDS * SAMPLE_RATE, dtype=np.int16))
    assert status == 1
    assert (report["verdict"], report["message"]) == ("no_signal", "no signal: wrong device?")
    assert (report["device"], report["device_rate"]) == ("testmic", 16_000)
    assert report["levels"]["seconds"] == SECONDS
    assert report["levels"]["rms_dbfs"] == -120.0 and report["levels"]["span_lsb"] == 0


def test_a_stuck_converter_is_no_signal_however_loud(tmp_path, env):
    """Every sample the same (a DC offset): the level alone would pass it."""
    status, report = report_of(tmp_path, env, np.full(SECONDS * SAMPLE_RATE, 3000, np.int16))
    assert status == 1
    assert report["verdict"] == "no_signal"
    assert report["levels"]["rms_dbfs"] > -30


def test_normal_speech_is_good(tmp_path, env):
    status, report = report_of(tmp_path, env, speech(-25.0))
    levels = report["levels"]
    assert (status, report["verdict"], report["message"]) == (0, "good", "good")
    assert levels["speech_dbfs"] == pytest.approx(-25, abs=2)
    assert levels["peak_dbfs"] < -3 and levels["clipped_samples"] == 0
    assert 0.5 < levels["voiced_share"] < 0.95  # speech, with the lead-in and a pause
    assert levels["noise_floor_dbfs"] < levels["speech_dbfs"] - 25
    assert (report["overruns"], report["dropped_blocks"]) == (0, 0)


def test_clipped_speech_is_clipping(tmp_path, env):
    status, report = report_of(tmp_path, env, speech(-25.0, gain_db=20.0))
    assert (status, report["verdict"]) == (1, "clipping")
    assert report["message"] == "clipping: lower gain"
    assert report["levels"]["clipped_share"] > 0.01
    assert report["levels"]["peak_dbfs"] == 0.0


def test_very_quiet_speech_is_too_quiet(tmp_path, env):
    """At -55 dBFS webrtcvad hears almost nothing: the sounds above the floor are judged."""
    status, report = report_of(tmp_path, env, speech(-55.0))
    assert (status, report["verdict"]) == (1, "too_quiet")
    assert report["message"] == "too quiet: raise gain"
    assert report["levels"]["sound_dbfs"] == pytest.approx(-55, abs=3)


def test_quiet_speech_the_vad_still_hears_is_too_quiet(tmp_path, env):
    status, report = report_of(tmp_path, env, speech(-46.0))
    assert (status, report["verdict"]) == (1, "too_quiet")
    assert report["levels"]["voiced_s"] >= 0.3
    assert report["levels"]["speech_dbfs"] == pytest.approx(-46, abs=3)


def test_an_empty_room_is_no_speech_not_too_quiet(tmp_path, env):
    status, report = report_of(tmp_path, env, noise_only(-50.0))
    assert (status, report["verdict"]) == (1, "no_speech")
    assert report["levels"]["voiced_s"] < 0.3


def test_speech_barely_above_the_noise_is_a_noisy_room(tmp_path, env):
    status, report = report_of(tmp_path, env, speech(-25.0, snr_db=5.0))
    assert (status, report["verdict"]) == (1, "noisy_room")
    assert report["levels"]["snr_db"] < 15


# -- how it shows ---------------------------------------------------------------------------


def test_off_a_terminal_the_meter_prints_a_line_per_second_and_a_summary(tmp_path, env):
    done = run_check(tmp_path, env, speech(-25.0))
    assert done.returncode == 0
    meter = done.stderr.splitlines()
    assert [line.split()[0] for line in meter] == ["1.0/2", "2.0/2"]
    assert all("dBFS" in line and "speech" in line for line in meter)
    summary = done.stdout.splitlines()
    assert summary[0].startswith("device   testmic at 16000 Hz, 2.0 s measured")
    assert summary[-1].startswith("verdict  good (speech at -2")


def test_on_a_terminal_the_meter_redraws_one_line_and_ends_cleanly(tmp_path, env):
    with feeding(tmp_path, speech(-25.0, gain_db=20.0)):
        status, output = run_on_terminal([ROOM_AGENT, "check", "--seconds", str(SECONDS)], env)
    assert status == 1
    meter, _, summary = output.rpartition("\r\n")[0].partition("\r\ndevice ")
    redraws = meter.split("\r")[1:]
    assert len(redraws) >= 8  # every 0.2 s of audio
    assert redraws[-1].startswith(" 2.0/2 s  [")
    assert "clipped 0 " not in redraws[-1] and "peak    0.0 dBFS" in redraws[-1]
    assert summary.splitlines()[-1].startswith("verdict  clipping: lower gain")
    assert "Traceback" not in output


def run_on_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; what it wrote, and its exit status."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=10), b"".join(chunks).decode()


# -- errors ---------------------------------------------------------------------------------


def test_a_device_that_is_not_there_is_one_line_and_exit_2(tmp_path, env):
    env["ROOM_AGENT_AUDIO__DEVICE"] = "respeaker"
    done = run_check(tmp_path, env, speech(-25.0), "--json")
    assert done.returncode == 2
    assert done.stderr == (
        "room-agent: no input device matches 'respeaker' (input devices: 'testmic', 'default')\n"
    )
    assert done.stdout == ""


def test_a_bad_setting_is_one_line_and_exit_2(tmp_path, env):
    env["ROOM_AGENT_AUDIO__VAD_MODE"] = "7"
    done = run_check(tmp_path, env, speech(-25.0))
    assert done.returncode == 2
    assert done.stderr == (
        "room-agent: environment ROOM_AGENT_AUDIO__VAD_MODE: agent.audio.vad_mode:"
        " must be 0..3 (got '7')\n"
    )
