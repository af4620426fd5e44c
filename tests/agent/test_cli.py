"""room-agent segment / record / spool verify as a person runs them: a real process each,
except refusals that happen before any audio is taken (bad options, input files, settings):
those run in this process through click's CliRunner, and one of them also as a real
process, for the entry point (run_program) that turns a refusal into its line and status.

Every expected failure must be one line on stderr and exit status 2, never a traceback,
and must lose nothing that was already spooled.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner, Result

from agent.cli import cli
from agent.pipeline.seal import ChunkSealer
from agent.spool import Spool
from protocol.envelope import generate_private_key, open_chunk, public_key_to_text
from runtime.codec import decode
from tests.support.alsa import PERIOD_FRAMES, FifoFeeder, write_asound_conf
from tests.support.eventually import eventually
from tests.support.processes import Service
from tests.support.speech import make_session

KEY = generate_private_key()
ROOM_AGENT = str(Path(sys.executable).parent / "room-agent")


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return make_session(tmp_path_factory.mktemp("speech") / "session.wav", 40, 20, seed=11).path


@pytest.fixture
def env(tmp_path):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_AGENT_")}
    environment["ROOM_AGENT_STATE_DIR"] = str(tmp_path / "state")
    environment["ROOM_AGENT_GATEWAY_PUBLIC_KEY"] = public_key_to_text(KEY.public_key())
    environment["ROOM_AGENT_SPOOL__MIN_FREE_BYTES"] = "0"
    return environment


def run(env, *args, timeout=60):
    return subprocess.run(
        [ROOM_AGENT, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("room-agent: ")
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.fixture
def room_agent(env, monkeypatch, caplog) -> Callable[..., Result]:
    """`room-agent ARGS` with ``env`` as its environment, in this process: the group's
    standalone main shows a Fatal and exits with its status as run_program does (a real
    process: test_a_refusal_from_the_real_program). Fatal names the program by argv[0].
    A warning logged would be a line on a real process's stderr (logging's last resort;
    here pytest captures it), so there must be none."""
    monkeypatch.setattr(sys, "argv", [ROOM_AGENT])

    def invoke(*args: object) -> Result:
        unset: dict[str, str | None] = {k: None for k in os.environ if k not in env}
        caplog.clear()
        result = CliRunner().invoke(
            cli, [str(arg) for arg in args], env={**unset, **env}, prog_name="room-agent"
        )
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not logged, logged
        return result

    return invoke


def assert_refused(result: Result, *fragments: str) -> None:
    """assert_one_line_error for an in-process run (any exception but the exit would
    have been a traceback)."""
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("room-agent: ")
    for fragment in fragments:
        assert fragment in result.stderr


def unless_exited(proc: Service, condition: Callable[[], bool]) -> Callable[[], bool]:
    """``condition`` for eventually, failing at once if ``proc`` has exited; with its log."""

    def check() -> bool:
        if condition():
            return True
        if not proc.alive():
            pytest.fail(proc.log())  # an exited process: no use waiting on
        raise AssertionError(proc.log())  # not yet

    return check


def bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """Name -> (file, what the error line must say)."""
    folder.mkdir(exist_ok=True)
    files = {
        "missing": (folder / "missing.wav", "no such file"),
        "directory": (folder, "is a directory"),
        "unsupported": (folder / "notes.pdf", "not an audio file"),
        "garbage": (folder / "garbage.wav", "not an audio file"),
        "empty": (folder / "empty.flac", "empty file"),
    }
    files["unsupported"][0].write_bytes(b"%PDF-1.7\n" + b"1 0 obj << >> endobj\n" * 50)
    files["garbage"][0].write_bytes(os.urandom(4096))
    files["empty"][0].write_bytes(b"")
    return files


@pytest.mark.parametrize("command", ["segment", "record"])
@pytest.mark.parametrize("case", ["missing", "directory", "unsupported", "garbage", "empty"])
def test_bad_input_file(tmp_path, room_agent, command, case):
    path, message = bad_inputs(tmp_path / "inputs")[case]
    args = [command, path] if command == "segment" else [command, "--input", path, "--until-eof"]
    result = room_agent(*args)
    assert_refused(result, str(path), message)
    assert result.stdout == ""
    assert not (tmp_path / "state" / "spool" / "sessions").exists() or not any(
        (tmp_path / "state" / "spool" / "sessions").iterdir()
    ), "a bad input creates no session"


@pytest.mark.parametrize("command", [["segment", "{wav}"], ["record", "--input", "{wav}"]])
def test_config_with_a_wrong_key(tmp_path, room_agent, speech, command):
    config = wrong_key_config(tmp_path)
    args = [arg.format(wav=speech) for arg in command]
    result = room_agent("--config", config, *args)
    assert_refused(result, "agent.toml: agent.spool.max_byte: unknown key")
    assert "did you mean max_bytes?" in result.stderr


def wrong_key_config(folder: Path) -> Path:
    config = folder / "agent.toml"
    config.write_text('[agent]\ndevice_id = "room-1"\n\n[agent.spool]\nmax_byte = 5\n')
    return config


def test_a_refusal_from_the_real_program(tmp_path, env, speech):
    """The entry point (main, run_program) ends a refusal as one line and exit status 2;
    the other refusals run in this process (the room_agent fixture)."""
    result = run(env, "--config", wrong_key_config(tmp_path), "record", "--input", speech)
    assert_one_line_error(result, "agent.toml: agent.spool.max_byte: unknown key")
    assert "did you mean max_bytes?" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--until-eof"], "--until-eof needs --input"),
        (["--input", "{wav}", "--until-eof", "--seconds", "3"], "exclude each other"),
        (["--realtime"], "--realtime needs --input"),
        (["--input", "{wav}", "--session", "no spaces allowed"], "session id must be"),
    ],
)
def test_bad_record_options(room_agent, speech, args, message):
    result = room_agent("record", *[a.format(wav=speech) for a in args])
    assert_refused(result, message)


@pytest.mark.parametrize(
    "key, message",
    [(None, "gateway_public_key is not set"), ("AAAA", "must be 32 bytes"), ("%%", "base64")],
)
def test_record_needs_a_usable_gateway_key(env, room_agent, speech, key, message):
    env.pop("ROOM_AGENT_GATEWAY_PUBLIC_KEY")
    if key is not None:
        env["ROOM_AGENT_GATEWAY_PUBLIC_KEY"] = key
    assert_refused(room_agent("record", "--input", speech, "--until-eof"), message)


def test_record_a_file_and_resume_rules(tmp_path, env, speech):
    result = run(env, "record", "--input", speech, "--until-eof", "--session", "therapy-1")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["session_id"] == "therapy-1" and summary["reason"] == "stopped"
    assert summary["state"] == "closed" and not summary["resumed"]
    assert summary["chunks"] >= 3 and summary["speech_s"] > 10
    again = run(env, "record", "--input", speech, "--session", "therapy-1")
    assert_one_line_error(again, "session therapy-1 already exists")
    short = run(env, "record", "--input", speech, "--seconds", "6")
    assert short.returncode == 0, short.stderr
    generated = json.loads(short.stdout)["session_id"]
    assert len(generated) == 32 and generated != "therapy-1"
    with Spool(tmp_path / "state" / "spool", 1024**3, 0) as spool:
        infos = {s.session_id: s for s in spool.sessions()}
        assert infos["therapy-1"].chunks == summary["chunks"]
        assert infos[generated].end_s <= 6
        for chunk in spool.pending():
            open_chunk(spool.read(chunk.session_id, chunk.seq), KEY)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_session_cleanly(tmp_path, env, speech, sig):
    state_file = tmp_path / "state" / "recorder.json"
    argv = [ROOM_AGENT, "record", "--input", str(speech), "--realtime"]
    with Service(argv, tmp_path / "record.log", env=env) as proc:
        eventually(
            unless_exited(
                proc, lambda: state_file.exists() and b'session_id":"' in state_file.read_bytes()
            ),
            timeout=20,
            what="a session in recorder.json",
        )
        time.sleep(0.5)
        os.killpg(proc.pid, sig)
        assert proc.proc.wait(10) == 0, proc.log()
    summary = json.loads(proc.log().strip().splitlines()[-1])
    assert (summary["state"], summary["reason"]) == ("closed", "stopped")
    with Spool(tmp_path / "state" / "spool", 1024**3, 0) as spool:
        assert spool.session(summary["session_id"]).reason == "stopped"
    assert json.loads(state_file.read_text())["session_id"] is None, "nothing to resume"


def test_corrupt_input_midway_keeps_what_was_spooled(tmp_path, env, speech):
    """A FLAC file truncated in the middle: the chunks before the damage are kept."""
    flac = tmp_path / "damaged.flac"
    data, rate = soundfile.read(speech, dtype="int16")
    soundfile.write(flac, data, rate, format="FLAC")
    raw = bytearray(flac.read_bytes())
    cut = len(raw) * 3 // 4
    raw[cut : cut + 4000] = os.urandom(4000)
    flac.write_bytes(bytes(raw))
    result = run(env, "record", "--input", flac, "--until-eof")
    if result.returncode == 0:
        pytest.skip("libsndfile decoded the damaged FLAC without an error")
    assert_one_line_error(result, "corrupt audio", "chunks spooled are kept")
    summary = json.loads(result.stdout)
    assert summary["reason"] == "device_lost" and summary["chunks"] >= 1
    with Spool(tmp_path / "state" / "spool", 1024**3, 0) as spool:
        assert len(spool.pending()) == summary["chunks"]


# ---- spool verify ---------------------------------------------------------------------------


def corrupt_spool(spool_dir: Path) -> None:
    """A spool with a truncated chunk, a flipped byte, a torn tmp file, garbage files and a
    broken journal line, next to good chunks."""
    sealer = ChunkSealer("room-1", KEY.public_key())
    pcm = (np.random.default_rng(3).standard_normal(16_000) * 2000).astype(np.int16)
    with Spool(spool_dir, 1024**3, 0) as spool:
        for session in ("s-good", "s-bad"):
            spool.create_session(session, "room-1")
            for seq in range(4):
                spool.append(sealer.seal(session, seq, seq * 1.0, pcm))
    bad = spool_dir / "sessions" / "s-bad"
    chunk = (bad / "00000001.chunk").read_bytes()
    (bad / "00000001.chunk").write_bytes(chunk[:-100])
    flipped = bytearray((bad / "00000002.chunk").read_bytes())
    flipped[len(flipped) // 2] ^= 0x40
    (bad / "00000002.chunk").write_bytes(bytes(flipped))
    (bad / "00000004.tmp").write_bytes(chunk[:500])
    (bad / "core").write_bytes(os.urandom(100))
    (spool_dir / "sessions" / "README").write_text("not a session")
    journal = (bad / "journal.jsonl").read_text().splitlines()
    journal.insert(2, "{this is not json")
    (bad / "journal.jsonl").write_text("\n".join(journal) + "\n")


def test_verify_reports_quarantined_files(tmp_path, env, speech):
    spool_dir = tmp_path / "state" / "spool"
    corrupt_spool(spool_dir)
    good = {p.name: p.read_bytes() for p in (spool_dir / "sessions" / "s-good").glob("*.chunk")}

    result = run(env, "spool", "verify")
    assert result.returncode == 1, result.stderr
    text = result.stdout
    for fragment in (
        "quarantine/s-bad/00000001.chunk: unreadable envelope",
        "quarantine/s-bad/00000002.chunk: sealed sha256 differs from the journal",
        "quarantine/s-bad/00000004.tmp: torn write",
        "quarantine/s-bad/core: unexpected file",
        "quarantine/_spool/README: unexpected entry",
        "unreadable journal line 3",
    ):
        assert fragment in text, text
    assert "s-good" in text and "s-bad" in text

    report = json.loads(run(env, "spool", "verify", "--json").stdout)
    assert report["findings"] == [], "the second check finds nothing new"
    assert len(report["quarantine"]) == 6
    sessions = {s["session_id"]: s for s in report["sessions"]}
    assert (sessions["s-good"]["pending"], sessions["s-good"]["lost"]) == (4, 0)
    assert (sessions["s-bad"]["pending"], sessions["s-bad"]["lost"]) == (2, 2)
    assert sessions["s-bad"]["next_seq"] == 4

    # The agent starts on this spool and records; the good chunks are untouched.
    recorded = run(env, "record", "--input", speech, "--seconds", "10")
    assert recorded.returncode == 0, recorded.stderr
    assert {
        p.name: p.read_bytes() for p in (spool_dir / "sessions" / "s-good").glob("*.chunk")
    } == good


def test_verify_empty_and_live_spool(tmp_path, env, speech):
    result = run(env, "spool", "verify")
    assert result.returncode == 0 and "0 sessions" in result.stdout
    argv = [ROOM_AGENT, "record", "--input", str(speech), "--realtime"]
    lock = tmp_path / "state" / "spool" / "lock"
    with Service(argv, tmp_path / "record.log", env=env) as proc:
        eventually(
            unless_exited(proc, lambda: bool(lock.exists() and lock.read_text().strip())),
            timeout=20,
            what="the spool lock taken",
        )
        live = run(env, "spool", "verify", "--json")
        assert live.returncode == 0, live.stderr
        report = json.loads(live.stdout)
        assert report["live"] and len(report["sessions"]) == 1
        busy = run(env, "record", "--input", speech)
        assert_one_line_error(busy, "in use by another process")


def test_record_from_the_microphone(tmp_path, env, speech):
    """Without --input, record captures from settings.audio.device through real PortAudio
    (the ALSA file plugin as the microphone): the spooled chunks are the captured audio."""
    pcm, _ = soundfile.read(speech, dtype="int16")
    fifo = tmp_path / "mic.fifo"
    # Paced like a sound card (4x real time): an unpaced file would outrun the consumer
    # and the capture queue would drop blocks (counted, but the audio would then differ).
    with FifoFeeder(fifo, period_frames=PERIOD_FRAMES, speed=4) as feeder:
        env.update(write_asound_conf(tmp_path / "asound.conf", fifo))
        env["ROOM_AGENT_AUDIO__DEVICE"] = "testmic"
        feeder.play(pcm)
        result = run(env, "record", "--seconds", "12")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["reason"] == "stopped" and summary["chunks"] >= 1
    offsets = set()
    with Spool(tmp_path / "state" / "spool", 1024**3, 0) as spool:
        for chunk in spool.pending():
            opened = open_chunk(spool.read(chunk.session_id, chunk.seq), KEY)
            audio = decode(opened.audio).pcm
            at = locate(audio, pcm)
            assert at is not None, f"chunk {chunk.seq} is not a bit-exact part of the input"
            offsets.add(round(opened.header.start_s * 16_000) - at)
            assert chunk.start_s + chunk.duration_s <= 12
    # The capture began with some silence from the FIFO; after that, one constant offset.
    assert len(offsets) == 1, offsets


def locate(part, whole):
    """Where ``part`` occurs bit-exactly in ``whole`` (it may start in leading silence)."""
    lead = int(np.argmax(part != 0))
    probe = part[lead : lead + 64]
    windows = np.lib.stride_tricks.sliding_window_view(whole, len(probe))
    for at in np.flatnonzero((windows == probe).all(axis=1)) - lead:
        if at >= 0 and np.array_equal(whole[at : at + len(part)], part):
            return int(at)
        if at < 0 and np.array_equal(whole[: len(part) + at], part[-at:]):
            return int(at)
    return None


def test_devices_is_quiet_without_a_sound_card_and_verbose_on_request(env):
    """alsa-lib prints ~50 lines on a machine with no sound card (this one, CI's) when
    PortAudio probes the system's PCMs: they are debug log lines, shown with --verbose."""
    env.pop("ALSA_CONFIG_PATH", None)  # the system's own ALSA config
    done = run(env, "devices")
    assert done.returncode == 0, done.stderr
    assert "ALSA lib" not in done.stderr and "jack" not in done.stderr.lower(), done.stderr
    assert done.stderr == ""
    verbose = run(env, "--verbose", "devices")
    assert verbose.returncode == 0
    assert verbose.stdout == done.stdout
    assert all(line.startswith("DEBUG ") for line in verbose.stderr.splitlines())
