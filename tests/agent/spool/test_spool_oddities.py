"""Odd entries in the spool never stop the room: the real `room-agent spool verify`,
`room-agent run` and `room-agent record` on a spool a failing SD card, a confused
technician or an attacker left a directory, a FIFO, a symbolic link or a file where the
spool expects something else.

Each is set aside (quarantined: moved, never deleted) and reported; nothing is opened in a
way that blocks (a FIFO would hang the agent for ever) or follows a link out of the spool;
the good audio already spooled stays; new sessions record.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.agent.device_setup import device_env, room_agent, start_agent, wait_for_snapshot
from tests.support.speech import make_session

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def session_dir(spool: Path) -> Path:
    return spool / "sessions" / "good-1"


def swap(path: Path, make: Callable[[Path], object]) -> None:
    """Put what ``make`` makes where ``path`` is."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    make(path)


def replace_journal(spool: Path, make: Callable[[Path], object]) -> None:
    swap(session_dir(spool) / "journal.jsonl", make)


def outside_file(spool: Path) -> Path:
    secret = spool.parent.parent / "not-audio.txt"
    secret.write_text("a file outside the spool the agent must never read\n")
    return secret


ODDITIES: dict[str, tuple[str, Callable[[Path], object]]] = {
    "directory as a chunk": (
        "sessions/good-1/00000050.chunk",
        lambda s: (session_dir(s) / "00000050.chunk").mkdir(),
    ),
    "FIFO as a chunk": (
        "sessions/good-1/00000050.chunk",
        lambda s: os.mkfifo(session_dir(s) / "00000050.chunk"),
    ),
    "FIFO as a temporary chunk": (
        "sessions/good-1/00000051.tmp",
        lambda s: os.mkfifo(session_dir(s) / "00000051.tmp"),
    ),
    "dangling symbolic link as a chunk": (
        "sessions/good-1/00000050.chunk",
        lambda s: (session_dir(s) / "00000050.chunk").symlink_to("/nonexistent/chunk"),
    ),
    "symbolic link out of the spool as a chunk": (
        "sessions/good-1/00000050.chunk",
        lambda s: (session_dir(s) / "00000050.chunk").symlink_to(outside_file(s)),
    ),
    "directory as the journal": (
        "sessions/good-1/journal.jsonl",
        lambda s: replace_journal(s, Path.mkdir),
    ),
    "FIFO as the journal": (
        "sessions/good-1/journal.jsonl",
        lambda s: replace_journal(s, os.mkfifo),
    ),
    "directory as the lock": ("lock", lambda s: swap(s / "lock", Path.mkdir)),
    "FIFO as the lock": ("lock", lambda s: swap(s / "lock", os.mkfifo)),
    "directory as forgotten.jsonl": ("forgotten.jsonl", lambda s: (s / "forgotten.jsonl").mkdir()),
    "FIFO as forgotten.jsonl": ("forgotten.jsonl", lambda s: os.mkfifo(s / "forgotten.jsonl")),
    "file as the quarantine": (
        "quarantine",
        lambda s: swap(s / "quarantine", lambda p: p.write_text("x")),
    ),
    "directory as the quarantine index": (
        "quarantine/index.jsonl",
        lambda s: (s / "quarantine" / "index.jsonl").mkdir(parents=True),
    ),
    "symbolic link as a session": (
        "sessions/evil-1",
        lambda s: (s / "sessions" / "evil-1").symlink_to(s.parent.parent),
    ),
    "file as .trash": (".trash", lambda s: (s / ".trash").write_text("x")),
}


# One of each kind that can stand side by side.
AT_ONCE = [
    "directory as a chunk",
    "FIFO as a temporary chunk",
    "directory as the journal",
    "FIFO as the lock",
    "FIFO as forgotten.jsonl",
    "directory as the quarantine index",
    "symbolic link as a session",
    "file as .trash",
]


def digests(root: Path) -> set[str]:
    """sha256 of every regular .chunk file under ``root`` (quarantine included)."""
    return {
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*.chunk")
        if p.is_file() and not p.is_symlink()
    }


def record(env: dict[str, str], wav: Path, session_id: str):
    return room_agent(
        {**env, "ROOM_AGENT_AUDIO__MAX_CHUNK_S": "2"},
        *("record", "--input", str(wav), "--until-eof", "--session", session_id),
        timeout=60,
    )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A spool holding session good-1, recorded once by the real `room-agent record`."""
    base = tmp_path_factory.mktemp("recorded")
    env = device_env(base)
    wav = make_session(base / "session.wav", 6, 20, seed=3).path
    assert wav is not None
    done = record(env, wav, "good-1")
    assert done.returncode == 0, done.stderr
    return base


def device(tmp_path: Path, recorded: Path) -> tuple[dict[str, str], Path, Path]:
    """A device whose spool is a copy of ``recorded``'s: its env, spool and input."""
    shutil.copytree(recorded / "state", tmp_path / "state", symlinks=True)
    return device_env(tmp_path), tmp_path / "state" / "spool", recorded / "session.wav"


@pytest.mark.parametrize("oddity", list(ODDITIES))
def test_an_odd_spool_entry_is_set_aside_and_new_sessions_record(tmp_path, recorded, oddity):
    where, plant = ODDITIES[oddity]
    env, spool, wav = device(tmp_path, recorded)
    good = digests(spool)
    assert len(good) >= 2
    plant(spool)

    verify = room_agent(env, "spool", "verify", timeout=60)  # a FIFO once hung it for ever
    assert verify.returncode == 1, verify.stderr  # quarantined: a person decides
    assert f"{where}: quarantined: " in verify.stdout, verify.stdout
    assert "Traceback" not in verify.stdout + verify.stderr
    assert good <= digests(spool), "good audio is never deleted or moved out of reach"
    if "out of the spool" in oddity:
        assert (tmp_path / "not-audio.txt").exists(), "a link is moved, never followed"

    done = record(env, wav, "good-2")
    assert done.returncode == 0, done.stderr
    assert list((spool / "sessions" / "good-2").glob("*.chunk")), "a new session records"
    assert good <= digests(spool)


def test_the_agent_runs_with_every_oddity_at_once_and_reports_them(tmp_path, recorded):
    env, spool, wav = device(tmp_path, recorded)
    good = digests(spool)
    for name in AT_ONCE:
        ODDITIES[name][1](spool)
    agent = start_agent(tmp_path, env)
    try:
        wait_for_snapshot(tmp_path, lambda s: s.pid == agent.pid, timeout=60)
        status = room_agent(env, "status", timeout=60)
        assert "Traceback" not in status.stdout + status.stderr
        assert re.search(r"quarantine +\d+ file\(s\) quarantined", status.stdout), status.stdout
        doctor = room_agent(env, "doctor", "--no-check", timeout=60)
        assert "Traceback" not in doctor.stdout + doctor.stderr
        assert re.search(r"quarantine.*\d+ file\(s\) quarantined", doctor.stdout), doctor.stdout
        assert agent.stop(30) == 0
    finally:
        agent.kill()
    assert "Traceback" not in agent.log()
    assert good <= digests(spool)
    verify = room_agent(env, "spool", "verify", timeout=60)
    for where, _ in ODDITIES.values():
        assert "quarantine/" in verify.stdout and f"(was {where}" in verify.stdout, where
    done = record(env, wav, "good-2")
    assert done.returncode == 0, done.stderr


def test_a_file_where_the_sessions_directory_should_be(tmp_path):
    env = device_env(tmp_path)
    spool = tmp_path / "state" / "spool"
    spool.mkdir(parents=True)
    (spool / "sessions").write_text("not a directory")
    verify = room_agent(env, "spool", "verify", timeout=60)
    assert verify.returncode == 1, verify.stderr
    assert "sessions: quarantined: " in verify.stdout, verify.stdout
    assert "Traceback" not in verify.stdout + verify.stderr
    wav = make_session(tmp_path / "session.wav", 6, 20, seed=3).path
    assert wav is not None
    done = record(env, wav, "good-3")
    assert done.returncode == 0, done.stderr
    assert list((spool / "sessions" / "good-3").glob("*.chunk"))


def test_a_running_agent_is_not_hung_by_a_fifo_in_status_or_verify(tmp_path, recorded):
    """A live check (another process holds the spool) must not hang either."""
    env, spool, _ = device(tmp_path, recorded)
    agent = start_agent(tmp_path, env)
    try:
        wait_for_snapshot(tmp_path, lambda s: s.pid == agent.pid, timeout=60)
        os.mkfifo(session_dir(spool) / "00000050.chunk")
        verify = room_agent(env, "spool", "verify", timeout=60)
        assert "in use by the agent" in verify.stdout
        assert "sessions/good-1/00000050.chunk: would be quarantined: " in verify.stdout
        status = room_agent(env, "status", timeout=60)
        assert "Traceback" not in status.stdout + status.stderr + verify.stderr
        assert agent.stop(30) == 0
    finally:
        agent.kill()


def test_an_entry_that_cannot_even_be_moved_aside_is_skipped_and_reported(tmp_path, recorded):
    """quarantine/good-1 is a file, so nothing of good-1 can be moved there: the FIFO
    stays where it is, ignored (never opened), and is reported; recording goes on."""
    env, spool, wav = device(tmp_path, recorded)
    good = digests(spool)
    (spool / "quarantine" / "good-1").write_text("in the way")
    os.mkfifo(session_dir(spool) / "00000050.chunk")
    verify = room_agent(env, "spool", "verify", timeout=60)
    assert "sessions/good-1/00000050.chunk: skipped: not a regular file (a FIFO)" in verify.stdout
    agent = start_agent(tmp_path, env)
    try:
        snapshot = wait_for_snapshot(tmp_path, lambda s: s.pid == agent.pid, timeout=60)
        assert snapshot.last_error == "spool_entry_skipped"
        status = room_agent(env, "status", timeout=60)
        assert "can neither read nor move aside" in status.stdout, status.stdout
        assert agent.stop(30) == 0
    finally:
        agent.kill()
    assert "Traceback" not in agent.log() + verify.stderr + status.stderr
    assert (session_dir(spool) / "00000050.chunk").is_fifo(), "left where it was"
    assert record(env, wav, "good-2").returncode == 0
    assert good <= digests(spool)
